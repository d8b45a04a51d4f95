//! Content addresses: every module, input and output is named by the SHA-256 of its bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest, written as 64 lowercase hex digits on the wire and in URLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash([u8; 32]);

impl Sha256Hash {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Incremental hashing for data that arrives in pieces (uploads, large files).
#[derive(Default, Clone)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Sha256Hash {
        Sha256Hash(self.0.finalize().into())
    }
}

/// Why a string is not a valid content address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHash;

impl fmt::Display for InvalidHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SHA-256 hash is 64 lowercase hexadecimal digits")
    }
}

impl std::error::Error for InvalidHash {}

impl FromStr for Sha256Hash {
    type Err = InvalidHash;

    /// Accepts exactly 64 lowercase hex digits, so every hash has one spelling and
    /// can be compared as text in the database and in URLs.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(InvalidHash);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| InvalidHash)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hash({})", self.to_hex())
    }
}

impl Serialize for Sha256Hash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Hash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// On the wire a hash is the string its `Serialize` writes: 64 lowercase hex digits.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Sha256Hash {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::openapi::text_schema("A SHA-256 digest: 64 lowercase hexadecimal digits.", "^[0-9a-f]{64}$", 64, 64)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Sha256Hash {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_of_empty_input_matches_the_published_test_vector() {
        assert_eq!(Sha256Hash::of(b"").to_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn incremental_hash_equals_one_shot_hash() {
        let mut hasher = Sha256Hasher::new();
        hasher.update(b"hello ");
        hasher.update(b"world");
        assert_eq!(hasher.finish(), Sha256Hash::of(b"hello world"));
    }

    #[test]
    fn parsing_accepts_only_lowercase_hex_of_the_right_length() {
        let good = Sha256Hash::of(b"x").to_hex();
        assert_eq!(good.parse::<Sha256Hash>().unwrap().to_hex(), good);
        assert!(good.to_uppercase().parse::<Sha256Hash>().is_err());
        assert!(good[..63].parse::<Sha256Hash>().is_err());
        assert!(format!("{good}0").parse::<Sha256Hash>().is_err());
        assert!("../../etc/passwd".parse::<Sha256Hash>().is_err());
    }

    #[test]
    fn hash_round_trips_through_json_as_a_string() {
        let hash = Sha256Hash::of(b"abc");
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json, format!("\"{}\"", hash.to_hex()));
        assert_eq!(serde_json::from_str::<Sha256Hash>(&json).unwrap(), hash);
        assert!(serde_json::from_str::<Sha256Hash>("\"nothex\"").is_err());
    }
}
