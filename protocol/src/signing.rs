//! Signed modules: the defence against a compromised server.
//!
//! A publisher may register an Ed25519 key with the project. Every module it publishes is
//! then signed: the signature covers the module's SHA-256, so the server stores and forwards
//! it but cannot make one. A volunteer's client pins the project's keys when it attaches
//! (trust on first use) and from then on runs only modules whose signature verifies under a
//! pinned key. A publisher changes keys by signing the new key with the old one, which a
//! client follows by itself; any other change needs the volunteer's `wasmgrid trust`.
//!
//! Every signed message starts with a context string of its own, so that a signature made
//! for one purpose can never be replayed as another.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::Sha256Hash;

/// The header that carries a module's signature when it is published (`POST
/// /apps/{name}/versions`): the signature in base64.
pub const MODULE_SIGNATURE_HEADER: &str = "wasmgrid-module-signature";

const MODULE_CONTEXT: &[u8] = b"wasmgrid module signature v1\0";
const KEY_CHANGE_CONTEXT: &[u8] = b"wasmgrid key change v1\0";
const OWNERSHIP_CONTEXT: &[u8] = b"wasmgrid key ownership v1\0";

/// A publisher's public key, written `ed25519:` and the 32 bytes in base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

/// An Ed25519 signature, written in base64.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(ed25519_dalek::Signature);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("not a public key: {0}")]
    BadKey(String),
    #[error("not a signature: {0}")]
    BadSignature(String),
    #[error("the signature does not verify")]
    DoesNotVerify,
}

impl PublicKey {
    pub fn of(key: &SigningKey) -> Self {
        Self(key.verifying_key())
    }

    fn verify(&self, context: &[u8], message: &[u8], signature: &Signature) -> Result<(), SigningError> {
        // Strict: no malleable signatures, no weak keys.
        self.0.verify_strict(&[context, message].concat(), &signature.0).map_err(|_| SigningError::DoesNotVerify)
    }

    /// Whether `signature` is this key's signature of the module with hash `module`.
    pub fn verify_module(&self, module: &Sha256Hash, signature: &Signature) -> Result<(), SigningError> {
        self.verify(MODULE_CONTEXT, module.as_bytes(), signature)
    }

    /// Whether `signature` is this key's word that `next` replaces it.
    pub fn verify_key_change(&self, next: &PublicKey, signature: &Signature) -> Result<(), SigningError> {
        self.verify(KEY_CHANGE_CONTEXT, next.0.as_bytes(), signature)
    }

    /// Whether `signature` proves that whoever registers this key for `publisher` holds it.
    pub fn verify_ownership(&self, publisher: &str, signature: &Signature) -> Result<(), SigningError> {
        self.verify(OWNERSHIP_CONTEXT, &ownership_message(publisher, self), signature)
    }
}

fn ownership_message(publisher: &str, key: &PublicKey) -> Vec<u8> {
    [key.0.as_bytes().as_slice(), publisher.as_bytes()].concat()
}

/// Signs the module with hash `module`.
pub fn sign_module(key: &SigningKey, module: &Sha256Hash) -> Signature {
    Signature(key.sign(&[MODULE_CONTEXT, module.as_bytes()].concat()))
}

/// The old key's word that `next` replaces it.
pub fn sign_key_change(old: &SigningKey, next: &PublicKey) -> Signature {
    Signature(old.sign(&[KEY_CHANGE_CONTEXT, next.0.as_bytes()].concat()))
}

/// Proof that the holder of `key` registers it for `publisher`.
pub fn sign_ownership(key: &SigningKey, publisher: &str) -> Signature {
    Signature(key.sign(&[OWNERSHIP_CONTEXT, &ownership_message(publisher, &PublicKey::of(key))].concat()))
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", BASE64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = SigningError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| SigningError::BadKey(format!("{text:?}: {why}"));
        let encoded = text.strip_prefix("ed25519:").ok_or_else(|| bad("expected ed25519:BASE64"))?;
        let bytes = BASE64.decode(encoded).map_err(|_| bad("not base64"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a point of the curve"))?;
        if key.is_weak() {
            return Err(bad("a weak key"));
        }
        Ok(Self(key))
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0.to_bytes()))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Signature {
    type Err = SigningError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = BASE64.decode(text.trim()).map_err(|_| SigningError::BadSignature("not base64".into()))?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|_| SigningError::BadSignature("not 64 bytes".into()))?;
        Ok(Self(ed25519_dalek::Signature::from_bytes(&bytes)))
    }
}

macro_rules! serde_as_text {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(PublicKey);
serde_as_text!(Signature);

// On the wire a key and a signature are the text their `Display` writes (see
// `serde_as_text!`): the base64 of 32 bytes has 43 digits and one `=`, of 64 bytes 86 and
// two.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for PublicKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::openapi::text_schema(
            "An Ed25519 public key: `ed25519:` and its 32 bytes in base64.",
            "^ed25519:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
            52,
            52,
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for PublicKey {}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Signature {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::openapi::text_schema(
            "An Ed25519 signature: its 64 bytes in base64.",
            "^[A-Za-z0-9+/]{85}[AQgw]==$",
            88,
            88,
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Signature {}

/// An assignment's module signature: whose, and by which key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModuleSignature {
    pub public_key: PublicKey,
    pub signature: Signature,
}

/// `GET /api/v1/keys`: the keys of every publisher that registered one, which a client pins
/// when it attaches.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectKeys {
    /// Whether the project publishes signed modules only.
    pub require_signatures: bool,
    pub publishers: Vec<PublisherKeys>,
}

/// A publisher's keys, oldest first: the last one is the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublisherKeys {
    pub publisher: String,
    pub keys: Vec<KeyRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyRecord {
    pub public_key: PublicKey,
    /// The previous key's signature of this one ([`sign_key_change`]); none for the first
    /// key, or for a key that replaced its predecessor without it.
    pub endorsement: Option<Signature>,
    pub created_at: DateTime<Utc>,
}

impl ProjectKeys {
    pub fn publisher(&self, name: &str) -> Option<&PublisherKeys> {
        self.publishers.iter().find(|keys| keys.publisher == name)
    }
}

impl PublisherKeys {
    pub fn current(&self) -> Option<&PublicKey> {
        self.keys.last().map(|record| &record.public_key)
    }

    /// Whether `target` follows `pinned` through an unbroken chain of key changes, each
    /// signed by the key before it.
    pub fn endorsed_from(&self, pinned: &PublicKey, target: &PublicKey) -> bool {
        let Some(start) = self.keys.iter().position(|record| record.public_key == *pinned) else {
            return false;
        };
        let mut previous = pinned;
        for record in &self.keys[start + 1..] {
            let endorsed = record
                .endorsement
                .as_ref()
                .is_some_and(|signature| previous.verify_key_change(&record.public_key, signature).is_ok());
            if !endorsed {
                return false;
            }
            if record.public_key == *target {
                return true;
            }
            previous = &record.public_key;
        }
        false
    }
}

/// `PUT /api/v1/publisher/key`: register the publisher's signing key, or replace it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterKeyRequest {
    pub public_key: PublicKey,
    /// [`sign_ownership`] by the new key, for this publisher's name.
    pub ownership: Signature,
    /// [`sign_key_change`] by the current key, when there is one.
    #[serde(default)]
    pub endorsement: Option<Signature>,
    /// Replace the current key without its endorsement (it was lost): volunteers' clients
    /// then refuse the publisher's modules until each volunteer runs `wasmgrid trust`.
    #[serde(default)]
    pub unendorsed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn keys_and_signatures_survive_their_text_form_and_bad_text_is_refused() {
        let public = PublicKey::of(&key(1));
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        let json = serde_json::to_string(&public).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), public);
        let signature = sign_module(&key(1), &Sha256Hash::of(b"module"));
        assert_eq!(signature.to_string().parse::<Signature>().unwrap(), signature);
        for bad in ["", "ed25519:", "ed25519:!!", "rsa:AAAA", "ed25519:AAAA"] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
        }
        // The identity point is a weak key: any signature would verify.
        let weak = format!("ed25519:{}", BASE64.encode([1u8].iter().chain(&[0u8; 31]).copied().collect::<Vec<_>>()));
        assert!(weak.parse::<PublicKey>().is_err());
        assert!("AAAA".parse::<Signature>().is_err());
    }

    #[test]
    fn a_module_signature_verifies_for_that_module_and_key_only() {
        let module = Sha256Hash::of(b"module");
        let signature = sign_module(&key(1), &module);
        assert_eq!(PublicKey::of(&key(1)).verify_module(&module, &signature), Ok(()));
        assert_eq!(
            PublicKey::of(&key(1)).verify_module(&Sha256Hash::of(b"other"), &signature),
            Err(SigningError::DoesNotVerify)
        );
        assert_eq!(PublicKey::of(&key(2)).verify_module(&module, &signature), Err(SigningError::DoesNotVerify));
    }

    #[test]
    fn a_signature_for_one_purpose_is_no_signature_for_another() {
        let next = PublicKey::of(&key(2));
        let change = sign_key_change(&key(1), &next);
        assert_eq!(PublicKey::of(&key(1)).verify_key_change(&next, &change), Ok(()));
        // The same 32 bytes, read as a module hash.
        let as_module = Sha256Hash::from_bytes(*next.0.as_bytes());
        assert!(PublicKey::of(&key(1)).verify_module(&as_module, &change).is_err());
        let ownership = sign_ownership(&key(1), "alice");
        assert_eq!(PublicKey::of(&key(1)).verify_ownership("alice", &ownership), Ok(()));
        assert!(PublicKey::of(&key(1)).verify_ownership("mallory", &ownership).is_err());
    }

    fn record(key: &SigningKey, endorsed_by: Option<&SigningKey>) -> KeyRecord {
        let public_key = PublicKey::of(key);
        KeyRecord {
            public_key,
            endorsement: endorsed_by.map(|old| sign_key_change(old, &public_key)),
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_chain_of_endorsed_changes_is_followed_and_a_broken_one_is_not() {
        let (k1, k2, k3, k4) = (key(1), key(2), key(3), key(4));
        let chain = PublisherKeys {
            publisher: "alice".into(),
            keys: vec![record(&k1, None), record(&k2, Some(&k1)), record(&k3, Some(&k2)), record(&k4, None)],
        };
        let public = |k: &SigningKey| PublicKey::of(k);
        assert!(chain.endorsed_from(&public(&k1), &public(&k3)));
        assert!(chain.endorsed_from(&public(&k2), &public(&k3)));
        // k4 replaced k3 without its signature.
        assert!(!chain.endorsed_from(&public(&k1), &public(&k4)));
        // Never backwards, never from a key that is not in the list.
        assert!(!chain.endorsed_from(&public(&k3), &public(&k1)));
        assert!(!chain.endorsed_from(&public(&key(9)), &public(&k2)));
        // An endorsement by a key other than the one before does not count.
        let forged =
            PublisherKeys { publisher: "alice".into(), keys: vec![record(&k1, None), record(&k2, Some(&key(9)))] };
        assert!(!forged.endorsed_from(&public(&k1), &public(&k2)));
    }
}
