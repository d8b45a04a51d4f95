//! What happens to one work unit, decided from its rows alone, with no database: so that
//! every rule of its life has a unit test of its own.
//!
//! - An error or a missed deadline asks for another replica, until `max_error_replicas`
//!   errors make the work unit fail.
//! - A run is deterministic, so an error is as reproducible as an output: once `min_quorum`
//!   replicas fail the same way (the same error, after the same fuel, under one version of
//!   the instrumentation), the work unit fails at once with that error. Errors that depend
//!   on the host (its speed, its disk) never agree.
//! - Once `min_quorum` successes are in, validation looks for a canonical result. Found: the
//!   agreeing replicas are valid and earn credit, the others are invalid, unsent replicas are
//!   no longer needed. Not found: one more replica.
//! - `max_total_replicas` caps everything: a work unit that needs more fails.
//! - After validation, late results are checked against the canonical one.
//! - Outputs and fuel are compared only between replicas of one version of the
//!   instrumentation pass.
//! - An app with a validator module decides only with comparisons already made: a work unit
//!   that needs a new one waits for it (see [`crate::validator::comparisons`]).
//! - A cancelled work unit fails at once.
//! - Quorums that Sybils cannot fill (unless the grid is private): accounts cost nothing to
//!   make, so accounts without a validated result of their own need one more agreeing replica
//!   than the quorum to decide by themselves, whether on an output or on an error; and the
//!   errors that count towards `max_error_replicas` come from distinct networks (replicas
//!   are handed to distinct networks already, see [`super::claim`]).
//! - Adaptive replication: a replica handed alone to a trusted host (see [`super::claim`])
//!   is accepted by itself, on trust, while its host is still trusted; if it fails, or its
//!   host is caught meanwhile, the work unit is replicated as usual.
//! - Looking back: a work unit accepted on trust whose host was later caught returning a
//!   wrong result is rechecked by other hosts, with its policy, as if it were new; its result
//!   is then confirmed, or corrected (a new canonical result, or a failure), and the credit
//!   of the wrong one withdrawn.

use wasmgrid_protocol::Sha256Hash;

use super::states::{Outcome, Recheck, ReplicaState, Validation, WorkUnitState};
use crate::credit::{self, CreditGrant};
use crate::validator::{self, Candidate, Validator, Verdict};

/// Retries go ahead of first copies in the queue so that work units finish.
pub const RETRY_PRIORITY: i32 = 1;

/// A work unit, as deciding needs it.
#[derive(Debug, Clone)]
pub struct WorkUnit {
    pub id: i64,
    pub app_version_id: i64,
    pub state: WorkUnitState,
    pub policy: Policy,
    pub canonical_replica_id: Option<i64>,
    /// The credit each valid replica earns, once validated.
    pub credit: Option<f64>,
    /// Whether its app compares outputs with a validator module (else bit for bit).
    pub has_validator_module: bool,
    /// Whether its replicas must come from distinct networks (its app's setting, on a public
    /// grid).
    pub distinct_networks: bool,
    /// Whether accounts without a validated result may decide by themselves (a private grid).
    pub new_accounts_decide: bool,
    /// Whether its result rests on one trusted host's word, not checked.
    pub accepted_on_trust: bool,
    /// Where a recheck of a result accepted on trust is, if one was asked for.
    pub recheck: Option<Recheck>,
}

/// How many replicas a work unit needs, and may have.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Successful replicas needed before validation; a canonical result needs more than half
    /// of them to agree.
    pub min_quorum: usize,
    /// Replicas created at first.
    pub target_replicas: usize,
    /// Failed replicas at which the work unit fails.
    pub max_error_replicas: usize,
    /// Replicas, of every outcome, that may ever be created.
    pub max_total_replicas: usize,
}

/// One replica of the work unit, as deciding needs it.
#[derive(Debug, Clone)]
pub struct Replica {
    pub id: i64,
    pub state: ReplicaState,
    pub outcome: Option<Outcome>,
    pub validation: Validation,
    pub host_id: Option<i64>,
    pub account_id: Option<i64>,
    pub output: Option<Sha256Hash>,
    pub fuel_used: Option<i64>,
    pub error_reason: Option<String>,
    pub instrumentation_version: i32,
    /// The network of the host it was handed to (none for replicas handed out before
    /// networks were recorded).
    pub network: Option<String>,
    /// Whether its account had a validated result before.
    pub account_has_history: bool,
    /// Whether it was handed alone to a trusted host (its siblings no longer needed).
    pub on_trust: bool,
    /// Whether its host is trusted for the work unit's app version now: a host caught since
    /// it was handed the replica is not believed on its word.
    pub host_trusted: bool,
}

impl Replica {
    fn is_success(&self) -> bool {
        self.outcome == Some(Outcome::Success)
    }

    fn is_error(&self) -> bool {
        self.outcome.is_some_and(Outcome::is_error)
    }

    /// A success not yet judged (or judged inconclusive): a candidate for the canonical
    /// result.
    fn is_candidate(&self) -> bool {
        self.is_success() && matches!(self.validation, Validation::Pending | Validation::Inconclusive)
    }

    fn is_outstanding(&self) -> bool {
        self.state != ReplicaState::Over
    }

    fn candidate(&self) -> anyhow::Result<Candidate> {
        let output = self.output.ok_or_else(|| anyhow::anyhow!("successful replica {} has no output", self.id))?;
        Ok(Candidate { replica_id: self.id, output, fuel: self.fuel_used.unwrap_or(0) })
    }
}

/// What deciding found must change, for the writer to apply.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// The work unit ends: its unsent replicas are then no longer needed.
    pub end: Option<End>,
    /// A recheck ends: the same, and the result is confirmed or corrected.
    pub recheck: Option<RecheckEnd>,
    /// Credit granted for results found wrong afterwards, to be withdrawn.
    pub withdrawals: Vec<Withdrawal>,
    pub judged: Vec<Judged>,
    pub grants: Vec<CreditGrant>,
    pub new_replicas: Option<NewReplicas>,
    /// What the validation says about hosts, for their trust.
    pub trust: Vec<Trust>,
    /// For an app with a validator module: whether the work unit waits for comparisons.
    pub awaiting_comparison: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// `on_trust`: the canonical replica is the only one, of a trusted host, not checked.
    Validated {
        canonical_replica_id: i64,
        credit: f64,
        on_trust: bool,
    },
    Failed {
        reason: String,
    },
}

/// How the recheck of a result accepted on trust ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RecheckEnd {
    /// The other hosts agree with the result.
    Confirmed,
    /// They agree on another result, which replaces it.
    Corrected { canonical_replica_id: i64, credit: f64 },
    /// They could not reproduce it: the work unit fails.
    Failed { reason: String },
}

/// Credit granted to a replica whose result was found wrong afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct Withdrawal {
    pub replica_id: i64,
    pub reason: String,
}

/// A replica's new validation state, and its credit when it earns some.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub replica_id: i64,
    pub validation: Validation,
    pub credit: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewReplicas {
    pub priority: i32,
    pub count: i32,
}

/// What a validation says about the host that ran a replica of an app version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Valid {
        host_id: i64,
        app_version_id: i64,
    },
    /// Accepted on the host's word: one more result in its run, no evidence of trust.
    OnTrust {
        host_id: i64,
        app_version_id: i64,
    },
    Invalid {
        host_id: i64,
        app_version_id: i64,
    },
}

impl Decision {
    /// `replica` agrees with the canonical result, as checked against other hosts'.
    fn valid(&mut self, work_unit: &WorkUnit, replica: &Replica, credit: f64) -> anyhow::Result<()> {
        let host_id = self.credit(replica, credit)?;
        self.trust.push(Trust::Valid { host_id, app_version_id: work_unit.app_version_id });
        Ok(())
    }

    /// `replica` is the result, accepted on its host's word: credited as if validated, but no
    /// evidence of the host's trust.
    fn valid_on_trust(&mut self, work_unit: &WorkUnit, replica: &Replica, credit: f64) -> anyhow::Result<()> {
        let host_id = self.credit(replica, credit)?;
        self.trust.push(Trust::OnTrust { host_id, app_version_id: work_unit.app_version_id });
        Ok(())
    }

    fn credit(&mut self, replica: &Replica, credit: f64) -> anyhow::Result<i64> {
        let (Some(host_id), Some(account_id)) = (replica.host_id, replica.account_id) else {
            anyhow::bail!("valid replica {} has no host", replica.id);
        };
        self.judged.push(Judged { replica_id: replica.id, validation: Validation::Valid, credit: Some(credit) });
        self.grants.push(CreditGrant { replica_id: replica.id, host_id, account_id, credit });
        Ok(host_id)
    }

    fn invalid(&mut self, work_unit: &WorkUnit, replica: &Replica) {
        self.judged.push(Judged { replica_id: replica.id, validation: Validation::Invalid, credit: Some(0.0) });
        if let Some(host_id) = replica.host_id {
            self.trust.push(Trust::Invalid { host_id, app_version_id: work_unit.app_version_id });
        }
    }

    fn mark(&mut self, replica: &Replica, validation: Validation) {
        self.judged.push(Judged { replica_id: replica.id, validation, credit: None });
    }

    fn fail(&mut self, work_unit: &WorkUnit, reason: String) {
        tracing::info!(workunit.id = work_unit.id, reason, "work unit failed");
        self.end = Some(End::Failed { reason });
    }
}

/// Decides what happens to `work_unit`, given all its replicas, after an event touched it;
/// `cancelled` says its publisher cancelled it, and why.
pub fn decide(
    validator: &dyn Validator,
    work_unit: &WorkUnit,
    replicas: &[Replica],
    cancelled: Option<&str>,
) -> anyhow::Result<Decision> {
    let mut decision = Decision::default();
    if let Some(reason) = cancelled {
        if work_unit.state == WorkUnitState::Active {
            decision.fail(work_unit, reason.to_owned());
            decision.awaiting_comparison = Some(false);
        }
        return Ok(decision);
    }
    if work_unit.has_validator_module {
        // An app's validator module runs off the request's path: a decision that needs a
        // comparison not made yet waits for it.
        let needed = comparisons_needed(work_unit, replicas)?;
        let ready = needed.iter().all(|(a, b)| validator.compared(*a, *b));
        decision.awaiting_comparison = Some(!ready);
        if !ready {
            return Ok(decision);
        }
        decide_state(validator, work_unit, replicas, &mut decision)?;
        if needed.iter().any(|(a, b)| validator.failed_on(*a, *b))
            && let Some(End::Failed { reason }) = &mut decision.end
        {
            // The outputs may well have agreed.
            reason.push_str("; the app's validator module failed on some of them (see the batch status)");
        }
        return Ok(decision);
    }
    decide_state(validator, work_unit, replicas, &mut decision)?;
    Ok(decision)
}

fn decide_state(
    validator: &dyn Validator,
    work_unit: &WorkUnit,
    replicas: &[Replica],
    decision: &mut Decision,
) -> anyhow::Result<()> {
    match work_unit.state {
        WorkUnitState::Active => decide_active(validator, work_unit, replicas, decision),
        WorkUnitState::Validated if work_unit.recheck == Some(Recheck::Pending) => {
            decide_recheck(validator, work_unit, replicas, decision)
        }
        WorkUnitState::Validated => check_late_results(validator, work_unit, replicas, decision),
        WorkUnitState::Failed => Ok(()),
    }
}

/// The candidates that may be compared with each other: those of the one instrumentation
/// version with the most candidates (the newest on a tie). Outputs and fuel from different
/// versions of the client's instrumentation pass are not comparable, so a quorum is only ever
/// made of one version.
fn comparable_candidates(replicas: &[Replica]) -> Vec<&Replica> {
    let mut per_version: Vec<(i32, usize)> = Vec::new();
    for replica in replicas.iter().filter(|r| r.is_candidate()) {
        match per_version.iter_mut().find(|(version, _)| *version == replica.instrumentation_version) {
            Some((_, count)) => *count += 1,
            None => per_version.push((replica.instrumentation_version, 1)),
        }
    }
    let Some(&(version, _)) = per_version.iter().max_by_key(|&&(version, count)| (count, version)) else {
        return Vec::new();
    };
    replicas.iter().filter(|r| r.is_candidate() && r.instrumentation_version == version).collect()
}

/// The pairs of outputs that deciding this work unit may compare: every pair of candidates
/// once a quorum is in, or each late result against the canonical one.
pub fn comparisons_needed(work_unit: &WorkUnit, replicas: &[Replica]) -> anyhow::Result<Vec<(Sha256Hash, Sha256Hash)>> {
    let mut pairs = Vec::new();
    match work_unit.state {
        WorkUnitState::Active => {
            let errors: Vec<&Replica> = replicas.iter().filter(|r| r.is_error()).collect();
            let candidates: Vec<Sha256Hash> = comparable_candidates(replicas)
                .iter()
                .map(|r| r.candidate().map(|c| c.output))
                .collect::<anyhow::Result<_>>()?;
            // As deciding counts errors (see `decide_active`).
            let errors = support(work_unit, &errors);
            if errors < work_unit.policy.max_error_replicas && candidates.len() >= work_unit.policy.min_quorum {
                for (i, a) in candidates.iter().enumerate() {
                    pairs.extend(candidates[i + 1..].iter().map(|b| (*a, *b)));
                }
            }
        }
        WorkUnitState::Validated if work_unit.recheck == Some(Recheck::Pending) => {
            // The other hosts' outputs among themselves, as for a new work unit, and each
            // against the result on trust, which may be the one they agree on.
            let (suspect, others) = split_suspect(work_unit, replicas)?;
            pairs = comparisons_needed(&as_new(work_unit), &others)?;
            let suspect = suspect.candidate()?.output;
            for other in comparable_candidates(&others) {
                pairs.push((suspect, other.candidate()?.output));
            }
        }
        WorkUnitState::Validated => {
            if let Some(canonical) = replicas.iter().find(|r| Some(r.id) == work_unit.canonical_replica_id) {
                for late in late_results(replicas, canonical) {
                    pairs.push((canonical.candidate()?.output, late.candidate()?.output));
                }
            }
        }
        WorkUnitState::Failed => {}
    }
    Ok(pairs)
}

/// Errors whose words say something about the host that ran the module, not the module: its
/// speed (a wall-clock limit), its disk (the scratch directory's share), or the server's
/// refusal of its upload. They are never the same run twice, so they never agree.
const HOST_DEPENDENT_ERRORS: [&str; 3] =
    ["wall-clock time limit exceeded", "scratch disk limit exceeded", "the server refused the output"];

/// What makes two errors the same: their words, the fuel used before them, and the version
/// of the instrumentation that counted it.
type ErrorKey<'r> = (&'r str, i64, i32);

/// The error that enough replicas agree on, if any (with how many agree): the same words,
/// after the same fuel, under the same version of the instrumentation, from `min_quorum`
/// networks (one more if only new accounts report it, see [`support_needed`]).
fn agreed_error<'r>(work_unit: &WorkUnit, replicas: &'r [Replica]) -> Option<(&'r str, i64, usize)> {
    let mut groups: Vec<(ErrorKey, Vec<&Replica>)> = Vec::new();
    for replica in replicas.iter().filter(|r| r.outcome == Some(Outcome::ClientError)) {
        let reason = replica.error_reason.as_deref().unwrap_or_default();
        if HOST_DEPENDENT_ERRORS.iter().any(|prefix| reason.starts_with(prefix)) {
            continue;
        }
        let key = (reason, replica.fuel_used.unwrap_or(0), replica.instrumentation_version);
        match groups.iter_mut().find(|(seen, _)| *seen == key) {
            Some((_, group)) => group.push(replica),
            None => groups.push((key, vec![replica])),
        }
    }
    groups.into_iter().find_map(|((reason, fuel, _), group)| {
        let support = support(work_unit, &group);
        (support >= support_needed(work_unit, &group)).then_some((reason, fuel, support))
    })
}

/// How many of `replicas` count towards a quorum: one per network where the work unit's
/// replicas must come from distinct networks (replicas whose network is not recorded count
/// alone), else one each.
fn support(work_unit: &WorkUnit, replicas: &[&Replica]) -> usize {
    if !work_unit.distinct_networks {
        return replicas.len();
    }
    let mut networks: Vec<&str> = Vec::new();
    let mut unknown = 0;
    for replica in replicas {
        match replica.network.as_deref() {
            Some(network) if !networks.contains(&network) => networks.push(network),
            Some(_) => {}
            None => unknown += 1,
        }
    }
    networks.len() + unknown
}

/// The support an answer (an output, or an error) needs to decide a work unit: `min_quorum`,
/// or one more when only accounts without a validated result give it, so that two accounts
/// made for free are never a whole quorum.
fn support_needed(work_unit: &WorkUnit, replicas: &[&Replica]) -> usize {
    let quorum = work_unit.policy.min_quorum.max(1);
    let only_new_accounts = replicas.iter().all(|r| !r.account_has_history);
    if only_new_accounts && !work_unit.new_accounts_decide { quorum + 1 } else { quorum }
}

fn decide_active(
    validator: &dyn Validator,
    work_unit: &WorkUnit,
    replicas: &[Replica],
    decision: &mut Decision,
) -> anyhow::Result<()> {
    let policy = work_unit.policy;
    if let Some((reason, fuel, count)) = agreed_error(work_unit, replicas) {
        let reason = format!("{count} replicas failed the same way, after {fuel} fuel: {reason}");
        decision.fail(work_unit, reason);
        return Ok(());
    }
    let errors: Vec<&Replica> = replicas.iter().filter(|r| r.is_error()).collect();
    let counted = support(work_unit, &errors);
    if counted >= policy.max_error_replicas {
        let last_reason = errors.iter().rev().find_map(|r| r.error_reason.as_deref()).unwrap_or("no reason given");
        let reason = if counted == errors.len() {
            format!("too many errors ({} replicas failed; last: {last_reason})", errors.len())
        } else {
            format!("too many errors ({} replicas failed, in {counted} networks; last: {last_reason})", errors.len())
        };
        decision.fail(work_unit, reason);
        return Ok(());
    }

    let successes = comparable_candidates(replicas);
    if let [single] = successes[..]
        && single.on_trust
        && single.host_trusted
        && replicas.iter().all(|r| r.id == single.id || !(r.is_outstanding() || r.is_success()))
    {
        return accept_on_trust(work_unit, single, decision);
    }
    let mut inconclusive = false;
    // An answer only new accounts give, with no more support than the quorum: one more
    // replica, from another account and network, must confirm it.
    let mut unconfirmed = false;
    if successes.len() >= policy.min_quorum {
        let candidates = successes.iter().map(|r| r.candidate()).collect::<anyhow::Result<Vec<_>>>()?;
        match validator::find_canonical(validator, &candidates, policy.min_quorum)? {
            Verdict::Canonical(agreeing) => {
                let class: Vec<&Replica> = successes.iter().copied().filter(|r| agreeing.contains(&r.id)).collect();
                if support(work_unit, &class) >= support_needed(work_unit, &class) {
                    let version = successes[0].instrumentation_version;
                    for other in replicas.iter().filter(|r| r.is_candidate() && r.instrumentation_version != version) {
                        decision.mark(other, Validation::Incomparable);
                    }
                    return accept(work_unit, &successes, &agreeing, decision);
                }
                unconfirmed = true;
            }
            Verdict::NoConsensus => {
                inconclusive = true;
                for replica in &successes {
                    decision.mark(replica, Validation::Inconclusive);
                }
            }
        }
    }

    // Keep enough replicas on the way: the target, or one more than the successes when they
    // disagree.
    let outstanding = replicas.iter().filter(|r| r.is_outstanding()).count() as i64;
    let wanted = if inconclusive || unconfirmed { successes.len() as i64 + 1 } else { policy.target_replicas as i64 };
    let missing = wanted - successes.len() as i64 - outstanding;
    let room = policy.max_total_replicas as i64 - replicas.len() as i64;
    let to_create = missing.min(room).max(0);
    if to_create > 0 {
        let priority = if replicas.is_empty() { 0 } else { RETRY_PRIORITY };
        decision.new_replicas = Some(NewReplicas { priority, count: to_create as i32 });
    }
    if outstanding + to_create == 0 {
        let reason = if inconclusive {
            format!("no consensus among {} successful replicas", successes.len())
        } else if unconfirmed {
            format!(
                "needs more than the maximum of {} replicas: only accounts without validated results agree",
                policy.max_total_replicas
            )
        } else {
            format!("needs more than the maximum of {} replicas", policy.max_total_replicas)
        };
        decision.fail(work_unit, reason);
    }
    Ok(())
}

/// A canonical result is found: the work unit is validated, once.
fn accept(
    work_unit: &WorkUnit,
    successes: &[&Replica],
    agreeing: &[i64],
    decision: &mut Decision,
) -> anyhow::Result<()> {
    let fuels: Vec<i64> =
        successes.iter().filter(|r| agreeing.contains(&r.id)).map(|r| r.fuel_used.unwrap_or(0)).collect();
    let credit = credit::credit_for_fuel(&fuels);
    let canonical = agreeing[0];
    decision.end = Some(End::Validated { canonical_replica_id: canonical, credit, on_trust: false });
    for replica in successes {
        if agreeing.contains(&replica.id) {
            decision.valid(work_unit, replica, credit)?;
        } else {
            decision.invalid(work_unit, replica);
        }
    }
    tracing::debug!(workunit.id = work_unit.id, replica.id = canonical, credit, "work unit validated");
    Ok(())
}

/// The only replica, handed alone to a host that is still trusted, succeeded: its result is
/// accepted on the host's word, and credited from the fuel it reported.
fn accept_on_trust(work_unit: &WorkUnit, replica: &Replica, decision: &mut Decision) -> anyhow::Result<()> {
    let credit = credit::credit_for_fuel(&[replica.fuel_used.unwrap_or(0)]);
    decision.end = Some(End::Validated { canonical_replica_id: replica.id, credit, on_trust: true });
    decision.valid_on_trust(work_unit, replica, credit)?;
    tracing::debug!(workunit.id = work_unit.id, replica.id = replica.id, credit, "work unit accepted on trust");
    Ok(())
}

/// The result accepted on trust (the canonical replica), and every other replica.
fn split_suspect<'r>(work_unit: &WorkUnit, replicas: &'r [Replica]) -> anyhow::Result<(&'r Replica, Vec<Replica>)> {
    let canonical_id = work_unit
        .canonical_replica_id
        .ok_or_else(|| anyhow::anyhow!("validated work unit {} without a canonical replica", work_unit.id))?;
    let suspect = replicas
        .iter()
        .find(|r| r.id == canonical_id)
        .ok_or_else(|| anyhow::anyhow!("canonical replica {canonical_id} is missing"))?;
    Ok((suspect, replicas.iter().filter(|r| r.id != canonical_id).cloned().collect()))
}

/// The work unit as a recheck decides it: active, with no result yet.
fn as_new(work_unit: &WorkUnit) -> WorkUnit {
    WorkUnit {
        state: WorkUnitState::Active,
        canonical_replica_id: None,
        credit: None,
        accepted_on_trust: false,
        recheck: None,
        ..work_unit.clone()
    }
}

/// A result accepted on trust whose host was caught returning a wrong one: the other hosts'
/// replicas decide the work unit again, with its policy, as if it were new (the suspect's
/// result has no vote). What they agree on confirms the result, or replaces it; if they fail
/// the work unit, it fails. Either correction makes the suspect's replica invalid and
/// withdraws its credit.
fn decide_recheck(
    validator: &dyn Validator,
    work_unit: &WorkUnit,
    replicas: &[Replica],
    decision: &mut Decision,
) -> anyhow::Result<()> {
    let (suspect, others) = split_suspect(work_unit, replicas)?;
    let as_new = as_new(work_unit);
    let mut check = Decision::default();
    decide_active(validator, &as_new, &others, &mut check)?;
    decision.judged.append(&mut check.judged);
    decision.grants.append(&mut check.grants);
    decision.trust.append(&mut check.trust);
    decision.new_replicas = check.new_replicas;
    let wrong = |decision: &mut Decision, reason: String| {
        decision.invalid(work_unit, suspect);
        decision.withdrawals.push(Withdrawal { replica_id: suspect.id, reason });
    };
    match check.end {
        None => {}
        Some(End::Validated { canonical_replica_id, credit, .. }) => {
            let canonical = others
                .iter()
                .find(|r| r.id == canonical_replica_id)
                .ok_or_else(|| anyhow::anyhow!("recheck's canonical replica {canonical_replica_id} is missing"))?;
            if validator.equivalent(&suspect.candidate()?, &canonical.candidate()?)? {
                tracing::info!(workunit.id = work_unit.id, "result accepted on trust confirmed");
                decision.recheck = Some(RecheckEnd::Confirmed);
            } else {
                tracing::info!(workunit.id = work_unit.id, replica.id = canonical_replica_id, "result corrected");
                decision.recheck = Some(RecheckEnd::Corrected { canonical_replica_id, credit });
                wrong(decision, format!("other hosts agree on another result (replica {canonical_replica_id})"));
            }
        }
        Some(End::Failed { reason }) => {
            tracing::info!(workunit.id = work_unit.id, reason, "result accepted on trust not reproduced");
            let reason = format!("the result accepted on trust was not reproduced: {reason}");
            decision.recheck = Some(RecheckEnd::Failed { reason: reason.clone() });
            wrong(decision, reason);
        }
    }
    Ok(())
}

/// The successes that arrived after validation and can be compared with the canonical one
/// (they ran through the same instrumentation version).
fn late_results<'r>(replicas: &'r [Replica], canonical: &Replica) -> impl Iterator<Item = &'r Replica> {
    let version = canonical.instrumentation_version;
    replicas
        .iter()
        .filter(move |r| r.is_success() && r.validation == Validation::Pending && r.instrumentation_version == version)
}

/// After validation, successes that arrive late are compared with the canonical output.
fn check_late_results(
    validator: &dyn Validator,
    work_unit: &WorkUnit,
    replicas: &[Replica],
    decision: &mut Decision,
) -> anyhow::Result<()> {
    let canonical_id = work_unit
        .canonical_replica_id
        .ok_or_else(|| anyhow::anyhow!("validated work unit {} without a canonical replica", work_unit.id))?;
    let canonical_row = replicas
        .iter()
        .find(|r| r.id == canonical_id)
        .ok_or_else(|| anyhow::anyhow!("canonical replica {canonical_id} is missing"))?;
    let canonical = canonical_row.candidate()?;
    for other in replicas.iter().filter(|r| {
        r.is_success()
            && r.validation == Validation::Pending
            && r.instrumentation_version != canonical_row.instrumentation_version
    }) {
        decision.mark(other, Validation::Incomparable);
    }
    let credit = work_unit.credit.unwrap_or(0.0);
    for replica in late_results(replicas, canonical_row) {
        if validator.equivalent(&canonical, &replica.candidate()?)? {
            decision.valid(work_unit, replica, credit)?;
        } else {
            decision.invalid(work_unit, replica);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validator::Bitwise;

    const FUEL: i64 = 2_000_000_000;

    fn work_unit(min_quorum: usize, target_replicas: usize) -> WorkUnit {
        WorkUnit {
            id: 1,
            app_version_id: 7,
            state: WorkUnitState::Active,
            policy: Policy { min_quorum, target_replicas, max_error_replicas: 3, max_total_replicas: 6 },
            canonical_replica_id: None,
            credit: None,
            has_validator_module: false,
            distinct_networks: false,
            new_accounts_decide: true,
            accepted_on_trust: false,
            recheck: None,
        }
    }

    /// A work unit on a public grid: distinct networks, and new accounts never decide alone.
    fn public(min_quorum: usize, target_replicas: usize) -> WorkUnit {
        WorkUnit { distinct_networks: true, new_accounts_decide: false, ..work_unit(min_quorum, target_replicas) }
    }

    /// Replica `id` of host and account `id`, still waiting for its host.
    fn sent(id: i64) -> Replica {
        Replica {
            id,
            state: ReplicaState::InProgress,
            outcome: None,
            validation: Validation::Pending,
            host_id: Some(id),
            account_id: Some(id),
            output: None,
            fuel_used: None,
            error_reason: None,
            instrumentation_version: 2,
            network: Some(format!("10.0.{id}.0/24")),
            account_has_history: false,
            on_trust: false,
            host_trusted: false,
        }
    }

    /// `replica`, from an account with validated results.
    fn established(replica: Replica) -> Replica {
        Replica { account_has_history: true, ..replica }
    }

    /// `replica`, handed to a host in `network`.
    fn in_network(replica: Replica, network: &str) -> Replica {
        Replica { network: Some(network.to_owned()), ..replica }
    }

    fn unsent(id: i64) -> Replica {
        Replica { state: ReplicaState::Unsent, host_id: None, account_id: None, ..sent(id) }
    }

    fn succeeded(id: i64, output: &str) -> Replica {
        Replica {
            state: ReplicaState::Over,
            outcome: Some(Outcome::Success),
            output: Some(Sha256Hash::of(output.as_bytes())),
            fuel_used: Some(FUEL),
            ..sent(id)
        }
    }

    fn failed(id: i64, reason: &str) -> Replica {
        Replica {
            state: ReplicaState::Over,
            outcome: Some(Outcome::ClientError),
            error_reason: Some(reason.to_owned()),
            fuel_used: Some(id),
            ..sent(id)
        }
    }

    /// Failed with `reason` after `fuel`.
    fn failed_after(id: i64, reason: &str, fuel: i64) -> Replica {
        Replica { fuel_used: Some(fuel), ..failed(id, reason) }
    }

    fn missed(id: i64) -> Replica {
        Replica { state: ReplicaState::Over, outcome: Some(Outcome::NoReply), ..sent(id) }
    }

    fn decided(work_unit: &WorkUnit, replicas: &[Replica]) -> Decision {
        decide(&Bitwise, work_unit, replicas, None).unwrap()
    }

    #[test]
    fn a_new_work_unit_gets_its_target_of_replicas_at_normal_priority() {
        let decision = decided(&work_unit(2, 2), &[]);
        assert_eq!(decision.new_replicas, Some(NewReplicas { priority: 0, count: 2 }));
        assert_eq!(decision.end, None);
    }

    #[test]
    fn an_agreeing_quorum_validates_credits_every_agreeing_host_and_ends_the_work_unit() {
        let decision = decided(&work_unit(2, 2), &[succeeded(1, "a"), succeeded(2, "a")]);
        let credit = FUEL as f64 / crate::credit::FUEL_PER_CREDIT;
        assert_eq!(decision.end, Some(End::Validated { canonical_replica_id: 1, credit, on_trust: false }));
        assert_eq!(decision.grants.len(), 2);
        assert_eq!(
            decision.trust,
            [Trust::Valid { host_id: 1, app_version_id: 7 }, Trust::Valid { host_id: 2, app_version_id: 7 }]
        );
        assert_eq!(decision.new_replicas, None);
    }

    #[test]
    fn a_disagreement_asks_for_one_more_replica_ahead_of_first_copies() {
        let decision = decided(&work_unit(2, 2), &[succeeded(1, "a"), succeeded(2, "b")]);
        assert_eq!(decision.end, None);
        assert_eq!(decision.new_replicas, Some(NewReplicas { priority: RETRY_PRIORITY, count: 1 }));
        assert!(decision.judged.iter().all(|judged| judged.validation == Validation::Inconclusive));
    }

    #[test]
    fn the_third_replica_settles_a_disagreement_and_the_odd_one_is_invalid() {
        let replicas = [
            Replica { validation: Validation::Inconclusive, ..succeeded(1, "a") },
            Replica { validation: Validation::Inconclusive, ..succeeded(2, "b") },
            succeeded(3, "a"),
        ];
        let decision = decided(&work_unit(2, 2), &replicas);
        assert!(matches!(decision.end, Some(End::Validated { canonical_replica_id: 1, .. })));
        assert_eq!(
            decision.trust,
            [
                Trust::Valid { host_id: 1, app_version_id: 7 },
                Trust::Invalid { host_id: 2, app_version_id: 7 },
                Trust::Valid { host_id: 3, app_version_id: 7 }
            ]
        );
    }

    #[test]
    fn errors_and_missed_deadlines_ask_for_replacements_and_enough_errors_fail_the_work_unit() {
        let decision = decided(&work_unit(2, 2), &[failed(1, "trap"), missed(2)]);
        assert_eq!(decision.new_replicas, Some(NewReplicas { priority: RETRY_PRIORITY, count: 2 }));
        let decision = decided(&work_unit(2, 2), &[failed(1, "trap"), failed(2, "trap"), failed(3, "exit 3")]);
        assert_eq!(
            decision.end,
            Some(End::Failed { reason: "too many errors (3 replicas failed; last: exit 3)".into() })
        );
    }

    #[test]
    fn a_quorum_of_the_same_error_after_the_same_fuel_fails_the_work_unit_at_once() {
        let trap = "trap: wasm trap: integer divide by zero";
        let decision = decided(&work_unit(2, 2), &[failed_after(1, trap, 500), failed_after(2, trap, 500)]);
        assert_eq!(
            decision.end,
            Some(End::Failed { reason: format!("2 replicas failed the same way, after 500 fuel: {trap}") })
        );
        assert_eq!(decision.new_replicas, None);
    }

    #[test]
    fn errors_that_differ_in_words_fuel_or_version_count_as_before() {
        let trap = "trap: wasm trap: integer divide by zero";
        let other_version = Replica { instrumentation_version: 1, ..failed_after(2, trap, 500) };
        for second in [failed_after(2, "fuel limit exceeded", 500), failed_after(2, trap, 501), other_version] {
            let decision = decided(&work_unit(2, 2), &[failed_after(1, trap, 500), second]);
            assert_eq!(decision.end, None);
            assert_eq!(decision.new_replicas, Some(NewReplicas { priority: RETRY_PRIORITY, count: 2 }));
        }
    }

    #[test]
    fn errors_that_depend_on_the_host_never_agree() {
        for reason in
            ["wall-clock time limit exceeded", "scratch disk limit exceeded", "the server refused the output: 413"]
        {
            let decision = decided(&work_unit(1, 1), &[failed_after(1, reason, 500)]);
            assert_eq!(decision.end, None, "{reason}");
        }
    }

    #[test]
    fn two_new_accounts_agreeing_are_not_a_whole_quorum_and_a_third_replica_confirms() {
        let decision = decided(&public(2, 2), &[succeeded(1, "a"), succeeded(2, "a")]);
        assert_eq!(decision.end, None, "two accounts made for free decide nothing");
        assert_eq!(decision.new_replicas, Some(NewReplicas { priority: RETRY_PRIORITY, count: 1 }));
        assert!(decision.judged.is_empty(), "they stay pending, neither valid nor inconclusive");

        let confirmed = decided(&public(2, 2), &[succeeded(1, "a"), succeeded(2, "a"), succeeded(3, "a")]);
        assert!(matches!(confirmed.end, Some(End::Validated { .. })), "three agreeing accounts do");
        let with_history = decided(&public(2, 2), &[established(succeeded(1, "a")), succeeded(2, "a")]);
        assert!(matches!(with_history.end, Some(End::Validated { .. })), "one established account is enough");
    }

    #[test]
    fn on_a_private_grid_new_accounts_decide_as_any() {
        let decision = decided(&work_unit(2, 2), &[succeeded(1, "a"), succeeded(2, "a")]);
        assert!(matches!(decision.end, Some(End::Validated { .. })));
    }

    #[test]
    fn errors_from_one_network_count_once() {
        let mut unit = public(2, 2);
        unit.policy.max_error_replicas = 2;
        let same_network =
            [in_network(failed(1, "trap"), "10.9.9.0/24"), in_network(failed(2, "exit 3"), "10.9.9.0/24")];
        let decision = decided(&unit, &same_network);
        assert_eq!(decision.end, None, "two errors from one network are one");
        let decision = decided(&unit, &[failed(1, "trap"), failed(2, "exit 3")]);
        assert_eq!(
            decision.end,
            Some(End::Failed { reason: "too many errors (2 replicas failed; last: exit 3)".into() })
        );
    }

    #[test]
    fn new_accounts_agreeing_on_an_error_need_one_more_as_they_would_on_an_output() {
        let trap = "trap: wasm trap: integer divide by zero";
        let two = [failed_after(1, trap, 500), failed_after(2, trap, 500)];
        assert_eq!(decided(&public(2, 2), &two).end, None);
        let three = [failed_after(1, trap, 500), failed_after(2, trap, 500), failed_after(3, trap, 500)];
        assert!(matches!(decided(&public(2, 2), &three).end, Some(End::Failed { .. })));
        let established = [established(failed_after(1, trap, 500)), failed_after(2, trap, 500)];
        assert!(matches!(decided(&public(2, 2), &established).end, Some(End::Failed { .. })));
    }

    #[test]
    fn a_work_unit_that_would_need_more_than_its_maximum_fails() {
        let mut small = work_unit(2, 2);
        small.policy.max_total_replicas = 2;
        let decision = decided(&small, &[succeeded(1, "a"), missed(2)]);
        assert_eq!(decision.new_replicas, None);
        assert_eq!(decision.end, Some(End::Failed { reason: "needs more than the maximum of 2 replicas".into() }));
    }

    #[test]
    fn replicas_on_their_way_are_counted_before_asking_for_more() {
        let decision = decided(&work_unit(2, 2), &[succeeded(1, "a"), sent(2)]);
        assert_eq!((decision.end, decision.new_replicas), (None, None));
        let decision = decided(&work_unit(2, 2), &[succeeded(1, "a"), unsent(2)]);
        assert_eq!(decision.new_replicas, None);
    }

    #[test]
    fn only_replicas_of_one_instrumentation_version_are_compared() {
        let old = Replica { instrumentation_version: 1, ..succeeded(3, "b") };
        let decision = decided(&work_unit(2, 2), &[succeeded(1, "a"), succeeded(2, "a"), old]);
        assert!(matches!(decision.end, Some(End::Validated { .. })));
        let incomparable = decision.judged.iter().find(|judged| judged.replica_id == 3).unwrap();
        assert_eq!(incomparable.validation, Validation::Incomparable);
        assert_eq!(decision.trust.len(), 2, "the other version's host is neither valid nor invalid");
    }

    #[test]
    fn a_late_result_is_checked_against_the_canonical_one() {
        let validated = WorkUnit {
            state: WorkUnitState::Validated,
            canonical_replica_id: Some(1),
            credit: Some(2.0),
            ..work_unit(2, 2)
        };
        let replicas = [
            Replica { validation: Validation::Valid, ..succeeded(1, "a") },
            Replica { validation: Validation::Valid, ..succeeded(2, "a") },
            succeeded(3, "a"),
            succeeded(4, "b"),
        ];
        let decision = decided(&validated, &replicas);
        assert_eq!(decision.end, None, "a work unit ends once");
        assert_eq!(
            decision.grants.iter().map(|grant| (grant.replica_id, grant.credit)).collect::<Vec<_>>(),
            [(3, 2.0)]
        );
        assert_eq!(
            decision.trust,
            [Trust::Valid { host_id: 3, app_version_id: 7 }, Trust::Invalid { host_id: 4, app_version_id: 7 }]
        );
    }

    #[test]
    fn a_failed_work_unit_changes_no_more() {
        let failed_unit = WorkUnit { state: WorkUnitState::Failed, ..work_unit(2, 2) };
        assert_eq!(decided(&failed_unit, &[succeeded(1, "a"), succeeded(2, "a")]), Decision::default());
    }

    #[test]
    fn a_cancelled_work_unit_fails_with_the_reason_and_an_ended_one_stays_as_it_is() {
        let decision = decide(&Bitwise, &work_unit(2, 2), &[sent(1)], Some("cancelled by its publisher")).unwrap();
        assert_eq!(decision.end, Some(End::Failed { reason: "cancelled by its publisher".into() }));
        let validated = WorkUnit { state: WorkUnitState::Validated, ..work_unit(2, 2) };
        assert_eq!(decide(&Bitwise, &validated, &[], Some("cancelled")).unwrap(), Decision::default());
    }

    /// A validator module's comparisons, some made and some not.
    struct Compared {
        made: Vec<(Sha256Hash, Sha256Hash)>,
        failed: bool,
    }

    impl Validator for Compared {
        fn equivalent(&self, a: &Candidate, b: &Candidate) -> anyhow::Result<bool> {
            Ok(a.output == b.output)
        }

        fn compared(&self, a: Sha256Hash, b: Sha256Hash) -> bool {
            self.made.contains(&(a, b)) || self.made.contains(&(b, a))
        }

        fn failed_on(&self, _: Sha256Hash, _: Sha256Hash) -> bool {
            self.failed
        }
    }

    #[test]
    fn an_app_with_a_validator_module_waits_for_its_comparisons_before_deciding() {
        let with_module = WorkUnit { has_validator_module: true, ..work_unit(2, 2) };
        let replicas = [succeeded(1, "a"), succeeded(2, "a")];
        let pair = (Sha256Hash::of(b"a"), Sha256Hash::of(b"a"));
        let waiting = decide(&Compared { made: Vec::new(), failed: false }, &with_module, &replicas, None).unwrap();
        assert_eq!((waiting.awaiting_comparison, waiting.end), (Some(true), None));
        let ready = decide(&Compared { made: vec![pair], failed: false }, &with_module, &replicas, None).unwrap();
        assert_eq!(ready.awaiting_comparison, Some(false));
        assert!(matches!(ready.end, Some(End::Validated { .. })));
    }

    #[test]
    fn a_failure_after_the_validator_module_failed_says_so() {
        let mut with_module = WorkUnit { has_validator_module: true, ..work_unit(2, 2) };
        with_module.policy.max_total_replicas = 2;
        let replicas = [succeeded(1, "a"), succeeded(2, "b")];
        let pair = (Sha256Hash::of(b"a"), Sha256Hash::of(b"b"));
        let decision = decide(&Compared { made: vec![pair], failed: true }, &with_module, &replicas, None).unwrap();
        let Some(End::Failed { reason }) = decision.end else { panic!("{decision:?}") };
        assert!(reason.starts_with("no consensus among 2") && reason.contains("validator module failed"), "{reason}");
    }

    /// Replica `id`, handed alone to a trusted host, which reported `output`.
    fn alone_on_trust(id: i64, output: &str) -> Replica {
        Replica { on_trust: true, host_trusted: true, ..established(succeeded(id, output)) }
    }

    fn no_longer_needed(id: i64) -> Replica {
        Replica { state: ReplicaState::Over, outcome: Some(Outcome::DidntNeed), ..unsent(id) }
    }

    /// Work unit 1 accepted on trust from replica 1, `output`, and now being rechecked.
    fn rechecking(output: &str) -> (WorkUnit, Replica) {
        let unit = WorkUnit {
            state: WorkUnitState::Validated,
            canonical_replica_id: Some(1),
            credit: Some(2.0),
            accepted_on_trust: true,
            recheck: Some(Recheck::Pending),
            ..public(2, 2)
        };
        let suspect = Replica { validation: Validation::Valid, ..alone_on_trust(1, output) };
        (unit, suspect)
    }

    #[test]
    fn a_replica_alone_on_trust_is_accepted_by_itself_and_credited_but_proves_no_trust() {
        let decision = decided(&public(2, 2), &[alone_on_trust(1, "a"), no_longer_needed(2)]);
        let credit = credit::credit_for_fuel(&[FUEL]);
        assert_eq!(decision.end, Some(End::Validated { canonical_replica_id: 1, credit, on_trust: true }));
        assert_eq!(decision.grants.len(), 1);
        assert_eq!(decision.judged[0].validation, Validation::Valid);
        assert_eq!(
            decision.trust,
            [Trust::OnTrust { host_id: 1, app_version_id: 7 }],
            "an unchecked result is no evidence of trust, only one more in the host's run"
        );
        assert_eq!(decision.new_replicas, None);
    }

    #[test]
    fn a_replica_on_trust_is_replicated_as_usual_when_its_host_was_caught_or_it_failed_or_has_company() {
        let caught = Replica { host_trusted: false, ..alone_on_trust(1, "a") };
        let decision = decided(&public(2, 2), &[caught, no_longer_needed(2)]);
        assert_eq!(decision.end, None, "a host caught since is not believed on its word");
        assert_eq!(decision.new_replicas, Some(NewReplicas { priority: RETRY_PRIORITY, count: 1 }));

        let failed_alone = Replica { on_trust: true, host_trusted: true, ..failed(1, "trap") };
        let decision = decided(&public(2, 2), &[failed_alone, no_longer_needed(2)]);
        assert_eq!(decision.new_replicas, Some(NewReplicas { priority: RETRY_PRIORITY, count: 2 }));

        // A sibling another claim took at the same moment runs: it decides with the quorum.
        let decision = decided(&public(2, 2), &[alone_on_trust(1, "a"), sent(2)]);
        assert_eq!((decision.end, decision.new_replicas), (None, None));
        let both = [alone_on_trust(1, "a"), established(succeeded(2, "a"))];
        let decision = decided(&public(2, 2), &both);
        assert!(matches!(decision.end, Some(End::Validated { on_trust: false, .. })));
        assert_eq!(decision.trust.len(), 2, "a checked result counts");
    }

    #[test]
    fn a_recheck_asks_the_policy_of_other_hosts_and_the_suspect_has_no_vote() {
        let (unit, suspect) = rechecking("wrong");
        let decision = decided(&unit, &[suspect.clone(), no_longer_needed(2)]);
        assert_eq!(decision.new_replicas, Some(NewReplicas { priority: RETRY_PRIORITY, count: 2 }));
        assert_eq!(decision.recheck, None);
        // One other host agreeing with the suspect is not a quorum: the suspect does not vote.
        let one = [suspect, no_longer_needed(2), established(succeeded(3, "wrong")), sent(4)];
        assert_eq!(decided(&unit, &one).recheck, None);
    }

    #[test]
    fn a_recheck_that_agrees_confirms_the_result_and_credits_the_checkers() {
        let (unit, suspect) = rechecking("right");
        let replicas =
            [suspect, no_longer_needed(2), established(succeeded(3, "right")), established(succeeded(4, "right"))];
        let decision = decided(&unit, &replicas);
        assert_eq!(decision.recheck, Some(RecheckEnd::Confirmed));
        assert!(decision.withdrawals.is_empty());
        assert_eq!(decision.grants.iter().map(|g| g.replica_id).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(decision.end, None, "the work unit stays validated");
    }

    #[test]
    fn a_recheck_that_disagrees_corrects_the_result_and_withdraws_the_wrong_credit() {
        let (unit, suspect) = rechecking("wrong");
        let replicas =
            [suspect, no_longer_needed(2), established(succeeded(3, "right")), established(succeeded(4, "right"))];
        let decision = decided(&unit, &replicas);
        let credit = credit::credit_for_fuel(&[FUEL, FUEL]);
        assert_eq!(decision.recheck, Some(RecheckEnd::Corrected { canonical_replica_id: 3, credit }));
        assert_eq!(decision.withdrawals.len(), 1);
        assert_eq!(decision.withdrawals[0].replica_id, 1);
        assert!(decision.judged.contains(&Judged {
            replica_id: 1,
            validation: Validation::Invalid,
            credit: Some(0.0)
        }));
        assert!(decision.trust.contains(&Trust::Invalid { host_id: 1, app_version_id: 7 }));
    }

    #[test]
    fn a_result_on_trust_that_other_hosts_cannot_reproduce_fails_the_work_unit() {
        let (unit, suspect) = rechecking("an output");
        let trap = "trap: wasm trap: unreachable";
        let replicas = [
            suspect,
            no_longer_needed(2),
            established(failed_after(3, trap, 500)),
            established(failed_after(4, trap, 500)),
        ];
        let decision = decided(&unit, &replicas);
        let Some(RecheckEnd::Failed { reason }) = &decision.recheck else { panic!("{decision:?}") };
        assert!(reason.contains("not reproduced") && reason.contains(trap), "{reason}");
        assert_eq!(decision.withdrawals[0].replica_id, 1);
    }

    #[test]
    fn a_recheck_with_a_validator_module_waits_for_comparisons_with_the_suspect_too() {
        let (unit, suspect) = rechecking("x");
        let unit = WorkUnit { has_validator_module: true, ..unit };
        let replicas = [suspect, established(succeeded(3, "y")), established(succeeded(4, "y"))];
        let needed = comparisons_needed(&unit, &replicas).unwrap();
        let (x, y) = (Sha256Hash::of(b"x"), Sha256Hash::of(b"y"));
        assert_eq!(needed, [(y, y), (x, y), (x, y)]);
        let waiting = decide(&Compared { made: vec![(y, y)], failed: false }, &unit, &replicas, None).unwrap();
        assert_eq!((waiting.awaiting_comparison, waiting.recheck), (Some(true), None));
        let ready = decide(&Compared { made: vec![(y, y), (x, y)], failed: false }, &unit, &replicas, None).unwrap();
        assert!(matches!(ready.recheck, Some(RecheckEnd::Corrected { canonical_replica_id: 3, .. })));
    }
}
