//! Deciding which outputs agree.
//!
//! A [`Validator`] says whether two outputs are equivalent; [`find_canonical`] turns that
//! into a verdict over all candidate outputs of a work unit. Bitwise comparison of output
//! hashes is the default; validators supplied by apps plug in through the same trait:
//!
//! - [`wasm`]: running an app's validator module on two outputs, in the sandbox;
//! - [`comparisons`]: its answers, stored, and the background task that produces them.

pub mod comparisons;
pub mod wasm;

use wasmgrid_protocol::Sha256Hash;

/// One successful replica's answer, as validation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub replica_id: i64,
    pub output: Sha256Hash,
    /// The fuel it reported using.
    pub fuel: i64,
}

pub trait Validator: Send + Sync {
    /// Are these two outputs the same answer? Must be symmetric.
    fn equivalent(&self, a: &Candidate, b: &Candidate) -> anyhow::Result<bool>;

    /// Whether [`Self::equivalent`] can answer for these two outputs now: a validator module's
    /// comparisons are made off the request's path, and a work unit waits for those it needs.
    fn compared(&self, _a: Sha256Hash, _b: Sha256Hash) -> bool {
        true
    }

    /// Whether the validator itself failed on these two outputs (they then count as
    /// different, though they may well agree).
    fn failed_on(&self, _a: Sha256Hash, _b: Sha256Hash) -> bool {
        false
    }
}

/// Answers agree when their output bytes are identical and so is the fuel they report,
/// which the sandbox's determinism makes the normal case across machines.
///
/// Fuel is part of the answer because credit is paid from it: a replica with the right
/// output and made-up fuel (zero, say, to cut its co-workers' credit, or more, to raise its
/// own) is as wrong as one with a wrong output.
pub struct Bitwise;

impl Validator for Bitwise {
    fn equivalent(&self, a: &Candidate, b: &Candidate) -> anyhow::Result<bool> {
        Ok(a.output == b.output && a.fuel == b.fuel)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// These replicas agree and form the canonical result; the first is canonical.
    Canonical(Vec<i64>),
    /// No answer has enough support yet.
    NoConsensus,
}

/// Groups the candidates into classes of equivalent outputs and returns the class that is a
/// strict majority of `min_quorum` (more than half of it) and larger than every other class.
///
/// So with honest replicas outnumbering the cheaters of a work unit, no wrong output can
/// become canonical; and a tie is never broken by arrival order.
pub fn find_canonical(
    validator: &dyn Validator,
    candidates: &[Candidate],
    min_quorum: usize,
) -> anyhow::Result<Verdict> {
    if candidates.len() < min_quorum {
        return Ok(Verdict::NoConsensus);
    }
    let mut classes: Vec<Vec<&Candidate>> = Vec::new();
    'candidates: for candidate in candidates {
        for class in &mut classes {
            if validator.equivalent(class[0], candidate)? {
                class.push(candidate);
                continue 'candidates;
            }
        }
        classes.push(vec![candidate]);
    }
    classes.sort_by_key(|class| std::cmp::Reverse(class.len()));
    let largest = classes[0].len();
    let runner_up = classes.get(1).map_or(0, Vec::len);
    let needed = min_quorum / 2 + 1;
    if largest >= needed && largest > runner_up {
        Ok(Verdict::Canonical(classes[0].iter().map(|c| c.replica_id).collect()))
    } else {
        Ok(Verdict::NoConsensus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(outputs: &[&str]) -> Vec<Candidate> {
        outputs
            .iter()
            .enumerate()
            .map(|(i, output)| Candidate {
                replica_id: i as i64 + 1,
                output: Sha256Hash::of(output.as_bytes()),
                fuel: 1000,
            })
            .collect()
    }

    fn verdict(outputs: &[&str], quorum: usize) -> Verdict {
        find_canonical(&Bitwise, &candidates(outputs), quorum).unwrap()
    }

    #[test]
    fn agreeing_quorum_is_canonical() {
        assert_eq!(verdict(&["a", "a"], 2), Verdict::Canonical(vec![1, 2]));
    }

    #[test]
    fn fewer_candidates_than_the_quorum_is_no_consensus() {
        assert_eq!(verdict(&["a"], 2), Verdict::NoConsensus);
    }

    #[test]
    fn a_disagreeing_pair_is_no_consensus() {
        assert_eq!(verdict(&["a", "b"], 2), Verdict::NoConsensus);
    }

    #[test]
    fn a_third_replica_breaks_the_disagreement() {
        assert_eq!(verdict(&["a", "b", "a"], 2), Verdict::Canonical(vec![1, 3]));
    }

    #[test]
    fn a_tie_between_two_classes_is_no_consensus() {
        assert_eq!(verdict(&["a", "b", "a", "b"], 3), Verdict::NoConsensus);
    }

    #[test]
    fn strict_majority_of_the_quorum_suffices() {
        assert_eq!(verdict(&["a", "a", "c"], 3), Verdict::Canonical(vec![1, 2]));
        assert_eq!(verdict(&["a", "b", "c"], 3), Verdict::NoConsensus);
    }

    #[test]
    fn the_same_output_with_other_fuel_is_another_answer() {
        let mut candidates = candidates(&["a", "a", "a"]);
        candidates[1].fuel = 0;
        assert_eq!(find_canonical(&Bitwise, &candidates[..2], 2).unwrap(), Verdict::NoConsensus);
        assert_eq!(find_canonical(&Bitwise, &candidates, 2).unwrap(), Verdict::Canonical(vec![1, 3]));
    }

    #[test]
    fn quorum_of_one_accepts_a_single_answer() {
        assert_eq!(verdict(&["a"], 1), Verdict::Canonical(vec![1]));
    }
}
