//! The publisher's signing key: `wasmgrid key generate|register|show`, and the signature
//! `wasmgrid app publish --signing-key` sends with a module (see
//! [`wasmgrid_protocol::signing`]).
//!
//! A key file is an Ed25519 private key in PKCS#8 PEM, the form `openssl genpkey -algorithm
//! ed25519` writes too, readable by its owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use wasmgrid_protocol::signing::{PublicKey, PublisherKeys, RegisterKeyRequest, sign_key_change, sign_ownership};

use super::commands::{Connection, print};

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Make a new signing key, written to FILE (readable by you only); prints its public key.
    Generate {
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Register the key of FILE as yours with the project: from then on every module you
    /// publish must be signed with it, and volunteers run only modules it signed.
    Register {
        /// The key to register.
        #[arg(long)]
        signing_key: PathBuf,
        /// Your current key, which signs the change so that volunteers' clients follow it.
        #[arg(long, conflicts_with = "unendorsed")]
        old_key: Option<PathBuf>,
        /// Replace your current key without its signature (it is lost). Volunteers' clients
        /// then refuse your modules until each volunteer runs `wasmgrid trust`.
        #[arg(long)]
        unendorsed: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show your keys as the project lists them, oldest first.
    Show {
        #[arg(long)]
        json: bool,
    },
}

pub async fn key(connection: &Connection, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Generate { out } => {
            let key = generate(&out)?;
            println!("wrote a new signing key to {}; its public key is {}", out.display(), PublicKey::of(&key));
            println!("keep the file secret and backed up: a lost key cannot sign the change to the next one");
            Ok(())
        }
        KeyCommand::Register { signing_key, old_key, unendorsed, json } => {
            let client = connection.client()?;
            let key = load(&signing_key)?;
            let public_key = PublicKey::of(&key);
            let mine = client.own_keys().await?;
            let endorsement =
                old_key.map(|path| load(&path)).transpose()?.map(|old| sign_key_change(&old, &public_key));
            let request = RegisterKeyRequest {
                public_key,
                ownership: sign_ownership(&key, &mine.publisher),
                endorsement,
                unendorsed,
            };
            let keys = client.register_key(&request).await?;
            print(json, &keys, || format!("registered key {public_key} for publisher {}\n", keys.publisher))
        }
        KeyCommand::Show { json } => {
            let keys = connection.client()?.own_keys().await?;
            print(json, &keys, || describe(&keys))
        }
    }
}

fn describe(keys: &PublisherKeys) -> String {
    if keys.keys.is_empty() {
        return format!("publisher {} has no key: its modules are not signed\n", keys.publisher);
    }
    let mut text = format!("publisher {}:\n", keys.publisher);
    for (index, record) in keys.keys.iter().enumerate() {
        let status = if index + 1 == keys.keys.len() { "current" } else { "retired" };
        let endorsed = match (index, &record.endorsement) {
            (0, _) => "",
            (_, Some(_)) => ", signed by the key before",
            (_, None) => ", NOT signed by the key before",
        };
        text.push_str(&format!("  {} ({status}, since {}{endorsed})\n", record.public_key, record.created_at));
    }
    text
}

/// A new key, written to `path`, which must not exist.
pub fn generate(path: &Path) -> anyhow::Result<SigningKey> {
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|error| anyhow::anyhow!("cannot encode the key: {error}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    Ok(key)
}

/// The signing key in `path`.
pub fn load(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read the key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|error| anyhow::anyhow!("{} is not an Ed25519 private key in PKCS#8 PEM: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_back_and_is_never_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publisher.pem");
        let key = generate(&path).unwrap();
        assert_eq!(load(&path).unwrap().to_bytes(), key.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(generate(&path).is_err());
        assert_eq!(load(&path).unwrap().to_bytes(), key.to_bytes());
        std::fs::write(dir.path().join("junk.pem"), "not a key").unwrap();
        let error = load(&dir.path().join("junk.pem")).unwrap_err().to_string();
        assert!(error.contains("not an Ed25519 private key"), "{error}");
    }
}
