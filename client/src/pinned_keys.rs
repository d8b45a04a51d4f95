//! The publishers' keys this volunteer trusts, per project: pinned when the client attaches
//! (trust on first use, as BOINC pins a project's key), and from then on the only keys whose
//! signed modules run here (see [`wasmgrid_protocol::signing`]).
//!
//! Stored in `keys.json`, apart from `projects.json`, so that `wasmgrid trust` can change it
//! while the daemon runs: the daemon reads it afresh whenever it checks new work, and every
//! change is made under a lock (`keys.lock`), read, changed and written as one step, so that
//! no writer undoes another's.
//!
//! What runs, for a module of publisher P:
//! - signed by P's pinned key: yes;
//! - signed by a key that follows P's pinned key through key changes each signed by the key
//!   before: yes, and that key is pinned from then on;
//! - signed by a key that precedes P's pinned key so (retired in a signed change): yes, so
//!   that versions published before a routine change still run. A key replaced because it
//!   was stolen is replaced without its signature, which breaks the chain;
//! - signed by any other key of P: no, until the volunteer runs `wasmgrid trust`;
//! - not signed, while P has a pinned key or the project requires signatures: no;
//! - signed by a publisher with no pinned key: pinned on first use, unless the project
//!   requires signatures (then a publisher new since attaching needs `wasmgrid trust`);
//! - not signed, by such a publisher, in a project that does not require signatures: yes
//!   (the project chose to allow unsigned modules).
//!
//! A project that once required signatures is held to it: neither the server nor `wasmgrid
//! trust` makes this client looser (detaching forgets the pins; attaching again is a first
//! use). A volunteer may require signatures of a project that does not
//! (`attach --require-signatures`): without that, a server broken into can hand out an
//! unsigned module under the name of a publisher that has no key.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use wasmgrid_protocol::api::Assignment;
use wasmgrid_protocol::signing::{ProjectKeys, PublicKey};

use crate::data_dir::{DataDir, open_lock_file, read_json_or_default, write_atomically};

/// Every project's pins, by project URL.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyStore {
    pub projects: BTreeMap<String, PinnedKeys>,
}

/// One project's pins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PinnedKeys {
    pub require_signatures: bool,
    /// Each publisher's pinned key.
    pub publishers: BTreeMap<String, PublicKey>,
}

/// What to do with an assignment's module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Run,
    /// Signed by a publisher with no pinned key, where that is allowed: pin it and run.
    PinAndRun {
        publisher: String,
        key: PublicKey,
    },
    /// Signed by another key than the pinned one: whether the project's list of keys shows
    /// the change signed by the pinned key decides.
    KeyChanged {
        publisher: String,
        pinned: PublicKey,
        key: PublicKey,
    },
    Refuse(String),
}

impl KeyStore {
    pub fn load(data_dir: &DataDir) -> anyhow::Result<Self> {
        read_json_or_default(&data_dir.keys_file())
    }

    /// Reads the pins, lets `change` change them and writes them back if it did, holding the
    /// lock throughout.
    pub fn update<R>(data_dir: &DataDir, change: impl FnOnce(&mut KeyStore) -> R) -> anyhow::Result<R> {
        let lock = open_lock_file(&data_dir.keys_lock_file())?;
        lock.lock().context("cannot lock the pinned keys")?;
        let mut store = Self::load(data_dir)?;
        let before = store.clone();
        let result = change(&mut store);
        if store != before {
            write_atomically(&data_dir.keys_file(), &serde_json::to_vec_pretty(&store)?)?;
        }
        Ok(result)
    }
}

impl PinnedKeys {
    /// Trust on first use: every publisher's current key, and whether the project requires
    /// signatures, as the server says now.
    pub fn first_use(keys: &ProjectKeys) -> Self {
        let publishers = keys
            .publishers
            .iter()
            .filter_map(|publisher| Some((publisher.publisher.clone(), *publisher.current()?)))
            .collect();
        Self { require_signatures: keys.require_signatures, publishers }
    }

    /// Whether this client runs the module of `assignment` (see the module's comment).
    pub fn check(&self, assignment: &Assignment) -> Check {
        let publisher = &assignment.publisher;
        let pinned = self.publishers.get(publisher);
        let Some(signed) = &assignment.module_signature else {
            return match pinned {
                Some(pinned) => Check::Refuse(format!(
                    "the module is not signed, but its publisher {publisher:?} signs its modules (pinned key {pinned})"
                )),
                None if self.require_signatures => {
                    Check::Refuse("the module is not signed, and this project runs signed modules only".into())
                }
                None => Check::Run,
            };
        };
        if signed.public_key.verify_module(&assignment.module.sha256, &signed.signature).is_err() {
            return Check::Refuse(format!(
                "the module's signature does not verify (key {} of publisher {publisher:?})",
                signed.public_key
            ));
        }
        match pinned {
            Some(pinned) if *pinned == signed.public_key => Check::Run,
            Some(pinned) => Check::KeyChanged { publisher: publisher.clone(), pinned: *pinned, key: signed.public_key },
            None if self.require_signatures => Check::Refuse(format!(
                "the module is signed by key {} of publisher {publisher:?}, which was not pinned when this client \
                 attached; run `wasmgrid trust` if you trust it",
                signed.public_key
            )),
            None => Check::PinAndRun { publisher: publisher.clone(), key: signed.public_key },
        }
    }

    /// Whether a module of `publisher` signed by `key`, which is not the pinned key, runs,
    /// by the project's list of keys: `Some(true)` when `key` follows the pinned key through
    /// key changes each signed by the key before (it is pinned from now on); `Some(false)`
    /// when it precedes the pinned key so (a key retired in a signed change: what it signed
    /// stands); `None` otherwise. Takes the project's requirement of signatures if it has
    /// one now.
    pub fn follow(&mut self, keys: &ProjectKeys, publisher: &str, key: &PublicKey) -> Option<bool> {
        self.require_signatures |= keys.require_signatures;
        let (Some(pinned), Some(chain)) = (self.publishers.get(publisher), keys.publisher(publisher)) else {
            return None;
        };
        if chain.endorsed_from(pinned, key) {
            self.publishers.insert(publisher.to_owned(), *key);
            Some(true)
        } else if chain.endorsed_from(key, pinned) {
            Some(false)
        } else {
            None
        }
    }

    /// These pins once the volunteer trusts `keys`, as `wasmgrid trust` does: every
    /// publisher's current key pinned; keys the server no longer lists stay (trusting the
    /// server now adds, it does not forget), and so does a requirement of signatures.
    pub fn trusting(&self, keys: &ProjectKeys) -> PinnedKeys {
        let listed = PinnedKeys::first_use(keys);
        let mut publishers = self.publishers.clone();
        publishers.extend(listed.publishers);
        PinnedKeys { require_signatures: self.require_signatures || listed.require_signatures, publishers }
    }

    /// What `wasmgrid trust` changes: the lines to tell the volunteer.
    pub fn changes_to(&self, trusted: &PinnedKeys) -> Vec<String> {
        let mut changes = Vec::new();
        for (publisher, key) in &trusted.publishers {
            match self.publishers.get(publisher) {
                Some(pinned) if pinned == key => {}
                Some(pinned) => changes.push(format!("publisher {publisher}: key {pinned} replaced by {key}")),
                None => changes.push(format!("publisher {publisher}: key {key} pinned")),
            }
        }
        if trusted.require_signatures && !self.require_signatures {
            changes.push("only signed modules of this project will run here".to_owned());
        }
        changes
    }
}

/// The reason a module refused with [`Check::KeyChanged`] gets, when the change was not signed
/// by the pinned key.
pub fn unendorsed_change(publisher: &str, pinned: &PublicKey, key: &PublicKey) -> String {
    format!(
        "publisher {publisher:?} signs with key {key}, but the pinned key is {pinned} and it did not sign the \
         change; run `wasmgrid trust` if you trust the new key"
    )
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use ed25519_dalek::SigningKey;
    use wasmgrid_protocol::Sha256Hash;
    use wasmgrid_protocol::api::{BlobRef, RunLimits};
    use wasmgrid_protocol::signing::{KeyRecord, ModuleSignature, PublisherKeys, sign_key_change, sign_module};

    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn public(seed: u8) -> PublicKey {
        PublicKey::of(&key(seed))
    }

    /// An assignment of `publisher`'s module, signed by key `seed` if given.
    fn assignment(publisher: &str, signed_by: Option<u8>) -> Assignment {
        let module = Sha256Hash::of(b"module");
        Assignment {
            replica_id: 1,
            work_unit_id: 1,
            work_unit_name: "wu".into(),
            module: BlobRef { sha256: module, bytes: 6, url: String::new() },
            args: Vec::new(),
            stdin: None,
            inputs: Vec::new(),
            limits: RunLimits::DEFAULT,
            seed: 0,
            deadline: DateTime::UNIX_EPOCH,
            publisher: publisher.into(),
            module_signature: signed_by
                .map(|seed| ModuleSignature { public_key: public(seed), signature: sign_module(&key(seed), &module) }),
        }
    }

    fn pins(require_signatures: bool, publishers: &[(&str, u8)]) -> PinnedKeys {
        PinnedKeys {
            require_signatures,
            publishers: publishers.iter().map(|(name, seed)| (name.to_string(), public(*seed))).collect(),
        }
    }

    #[test]
    fn a_module_signed_by_the_pinned_key_runs_and_anything_else_of_that_publisher_does_not() {
        let pinned = pins(false, &[("alice", 1)]);
        assert_eq!(pinned.check(&assignment("alice", Some(1))), Check::Run);
        assert!(
            matches!(pinned.check(&assignment("alice", None)), Check::Refuse(reason) if reason.contains("not signed"))
        );
        assert_eq!(
            pinned.check(&assignment("alice", Some(2))),
            Check::KeyChanged { publisher: "alice".into(), pinned: public(1), key: public(2) }
        );
        // A signature moved onto another module.
        let mut swapped = assignment("alice", Some(1));
        swapped.module.sha256 = Sha256Hash::of(b"evil");
        assert!(matches!(pinned.check(&swapped), Check::Refuse(reason) if reason.contains("does not verify")));
    }

    #[test]
    fn publishers_without_a_pinned_key_are_pinned_on_first_use_unless_signatures_are_required() {
        let open = pins(false, &[("alice", 1)]);
        assert_eq!(open.check(&assignment("bob", None)), Check::Run);
        assert_eq!(
            open.check(&assignment("bob", Some(3))),
            Check::PinAndRun { publisher: "bob".into(), key: public(3) }
        );
        let strict = pins(true, &[("alice", 1)]);
        assert!(matches!(strict.check(&assignment("bob", None)), Check::Refuse(_)));
        assert!(
            matches!(strict.check(&assignment("bob", Some(3))), Check::Refuse(reason) if reason.contains("wasmgrid trust"))
        );
        assert_eq!(strict.check(&assignment("alice", Some(1))), Check::Run);
    }

    fn project(require_signatures: bool, keys: Vec<KeyRecord>) -> ProjectKeys {
        ProjectKeys { require_signatures, publishers: vec![PublisherKeys { publisher: "alice".into(), keys }] }
    }

    fn record(seed: u8, endorsed_by: Option<u8>) -> KeyRecord {
        KeyRecord {
            public_key: public(seed),
            endorsement: endorsed_by.map(|old| sign_key_change(&key(old), &public(seed))),
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_key_change_signed_by_the_pinned_key_is_followed_and_others_are_not() {
        let mut pinned = pins(false, &[("alice", 1)]);
        let endorsed = project(false, vec![record(1, None), record(2, Some(1)), record(3, Some(2))]);
        assert_eq!(pinned.follow(&endorsed, "alice", &public(2)), Some(true));
        assert_eq!(pinned.publishers["alice"], public(2));
        // What the retired key signed before the change still runs, and moves no pin.
        assert_eq!(pinned.follow(&endorsed, "alice", &public(1)), Some(false));
        assert_eq!(pinned.publishers["alice"], public(2));
        assert_eq!(pinned.follow(&endorsed, "alice", &public(3)), Some(true));
        assert_eq!(pinned.follow(&endorsed, "alice", &public(1)), Some(false));

        let mut pinned = pins(false, &[("alice", 1)]);
        let unendorsed = project(true, vec![record(1, None), record(2, None)]);
        assert_eq!(pinned.follow(&unendorsed, "alice", &public(2)), None);
        assert_eq!(pinned.publishers["alice"], public(1));
        // After trusting a key that replaced a stolen one, the stolen one signs nothing.
        let mut trusting_the_new = pins(false, &[("alice", 2)]);
        assert_eq!(trusting_the_new.follow(&unendorsed, "alice", &public(1)), None);
        // The server may make the client stricter, and it stays so.
        assert!(pinned.require_signatures);
        assert_eq!(pinned.follow(&project(false, vec![record(1, None)]), "alice", &public(2)), None);
        assert!(pinned.require_signatures);
    }

    #[test]
    fn first_use_pins_each_publishers_current_key_and_trust_adds_never_loosens_and_says_what_changes() {
        let keys = project(false, vec![record(1, None), record(2, Some(1))]);
        let first = PinnedKeys::first_use(&keys);
        assert_eq!(first, pins(false, &[("alice", 2)]));
        let strict = PinnedKeys { require_signatures: true, ..first.clone() };
        let mut later = project(false, vec![record(3, None)]);
        later.publishers[0].publisher = "bob".into();
        let trusted = strict.trusting(&later);
        assert_eq!(trusted, pins(true, &[("alice", 2), ("bob", 3)]), "alice's key stays, strictness too");
        assert_eq!(
            strict.changes_to(&trusted),
            ["publisher bob: key ".to_owned() + &public(3).to_string() + " pinned"]
        );
        let replaced = first.trusting(&project(true, vec![record(4, None)]));
        let changes = first.changes_to(&replaced);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes[0].contains("replaced by"), "{changes:?}");
        assert!(changes[1].contains("signed modules"), "{changes:?}");
        assert!(first.changes_to(&first).is_empty());
    }
}
