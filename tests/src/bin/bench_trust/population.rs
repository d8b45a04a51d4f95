//! Who the simulated volunteers are: honest hosts, each in a network of its own, and the
//! cheaters, who return wrong answers in the ways the trust rules must survive.

use std::net::{IpAddr, Ipv4Addr};

use rand::Rng;

/// How a host answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Behaviour {
    Honest,
    /// Every answer is junk, a different one each time.
    AlwaysWrong,
    /// Honest until it has returned [`RARELY_WRONG_AFTER`] results (enough to be trusted),
    /// then wrong one time in a hundred.
    RarelyWrong,
    /// Two accounts of one person in one network, giving the same wrong answer to every
    /// work unit, in the hope of being its quorum.
    ColludingPair,
    /// Many accounts of one person in one network, all giving the same wrong answer.
    Sybil,
}

impl Behaviour {
    pub fn name(self) -> &'static str {
        match self {
            Self::Honest => "honest",
            Self::AlwaysWrong => "always wrong",
            Self::RarelyWrong => "wrong 1% once trusted",
            Self::ColludingPair => "colluding pairs",
            Self::Sybil => "Sybil accounts",
        }
    }
}

/// Results a rarely-wrong cheater returns honestly first.
pub const RARELY_WRONG_AFTER: u64 = 40;
/// Its rate of wrong answers after that.
const RARELY_WRONG_RATE: f64 = 0.01;
/// Accounts per Sybil.
const SYBIL_ACCOUNTS: usize = 7;

/// One simulated host.
#[derive(Debug, Clone)]
pub struct Member {
    pub behaviour: Behaviour,
    /// Which person it belongs to, for the cheaters who are several accounts.
    pub person: usize,
    /// The address its requests come from: its network is the /24 of it.
    pub address: IpAddr,
}

/// `hosts` hosts of which a `cheaters` share cheat, split evenly between the four kinds
/// (pairs and Sybils rounded to whole people). Every person gets a network of their own
/// in 127.0.0.0/8, and each of their accounts an address in it.
pub fn population(hosts: usize, cheaters: f64) -> Vec<Member> {
    let cheating = ((hosts as f64) * cheaters).round() as usize;
    let quarter = cheating / 4;
    let pairs = quarter / 2;
    let sybils = (cheating - 2 * quarter - 2 * pairs) / SYBIL_ACCOUNTS;
    let mut people: Vec<(Behaviour, usize)> = Vec::new();
    people.extend(std::iter::repeat_n((Behaviour::AlwaysWrong, 1), quarter));
    people.extend(std::iter::repeat_n((Behaviour::RarelyWrong, 1), quarter));
    people.extend(std::iter::repeat_n((Behaviour::ColludingPair, 2), pairs));
    people.extend(std::iter::repeat_n((Behaviour::Sybil, SYBIL_ACCOUNTS), sybils));
    let cheating_hosts: usize = people.iter().map(|(_, accounts)| accounts).sum();
    people.extend(std::iter::repeat_n((Behaviour::Honest, 1), hosts.saturating_sub(cheating_hosts)));
    let mut members = Vec::with_capacity(hosts);
    for (person, (behaviour, accounts)) in people.into_iter().enumerate() {
        // Networks 127.1.0.0/24 onwards: 127.0.0.1 is the server's.
        let network = person + 256;
        for account in 0..accounts {
            let address = Ipv4Addr::new(127, (network >> 8) as u8, (network & 0xff) as u8, account as u8 + 1);
            members.push(Member { behaviour, person, address: address.into() });
        }
    }
    members
}

/// The right answer to work unit `name`.
pub fn right_answer(name: &str) -> Vec<u8> {
    format!("the answer to {name}\n").into_bytes()
}

impl Member {
    /// This host's answer to work unit `name` (replica `replica_id`), after it has returned
    /// `returned` results.
    pub fn answer(&self, name: &str, replica_id: i64, returned: u64, rng: &mut impl Rng) -> Vec<u8> {
        match self.behaviour {
            Behaviour::Honest => right_answer(name),
            Behaviour::AlwaysWrong => format!("junk {replica_id}\n").into_bytes(),
            Behaviour::RarelyWrong if returned >= RARELY_WRONG_AFTER && rng.random_bool(RARELY_WRONG_RATE) => {
                format!("junk {replica_id}\n").into_bytes()
            }
            Behaviour::RarelyWrong => right_answer(name),
            Behaviour::ColludingPair | Behaviour::Sybil => {
                format!("person {} says {name} is 42\n", self.person).into_bytes()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_percent_of_a_thousand_cheat_in_four_ways_from_networks_of_their_own() {
        let members = population(1000, 0.05);
        assert_eq!(members.len(), 1000);
        let count = |behaviour| members.iter().filter(|m| m.behaviour == behaviour).count();
        assert_eq!(count(Behaviour::AlwaysWrong), 12);
        assert_eq!(count(Behaviour::RarelyWrong), 12);
        assert_eq!(count(Behaviour::ColludingPair), 12);
        assert_eq!(count(Behaviour::Sybil), 14);
        let network = |m: &Member| match m.address {
            IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
            IpAddr::V6(_) => unreachable!(),
        };
        let pairs: Vec<&Member> = members.iter().filter(|m| m.behaviour == Behaviour::ColludingPair).collect();
        assert_eq!(network(pairs[0]), network(pairs[1]));
        assert_ne!(pairs[0].address, pairs[1].address);
        let mut networks: Vec<Vec<u8>> = members.iter().map(network).collect();
        networks.sort();
        networks.dedup();
        assert_eq!(networks.len(), 1000 - 6 - 2 * 6, "a pair shares one network, a Sybil's seven accounts one");
    }
}
