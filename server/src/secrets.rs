//! The bearer secrets of the API: account keys, host tokens and publisher tokens.
//!
//! They are 256-bit random values, shown once and stored only as SHA-256 hashes. Being
//! random and long, they need no slow password hash: a hash lookup is enough and keeps every
//! authenticated request cheap. A short prefix says what a secret is for, which helps people
//! who paste the wrong one; the server never relies on it.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A fresh secret: its prefix, then 256 random bits in hex.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// What the database keeps of a secret.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}
