//! A scientist at the command line, for the programs that drive the grid (the demo, the
//! publishing benchmark): a publisher token from `wasmgrid-server token create`, and the
//! `wasmgrid` publishing commands with `--json`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::bench::sibling_binary;

/// A publisher token for `name`, made beside the server running on `data_dir`.
pub async fn create_token(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    let output = Command::new(sibling_binary("wasmgrid-server")?)
        .args(["token", "create", "--scope", "publish", "--name", name, "--json", "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .output()
        .await?;
    if !output.status.success() {
        bail!("token create failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let created: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(created["token"].as_str().context("a token")?.to_owned())
}

pub struct Scientist {
    pub url: String,
    pub token: String,
    /// Where each command and its output are appended, if anywhere.
    pub log: Option<PathBuf>,
}

impl Scientist {
    /// Runs `wasmgrid ARGS --json` and returns its document.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let output = Command::new(sibling_binary("wasmgrid")?)
            .args(args)
            .arg("--json")
            .env("WASMGRID_SERVER", &self.url)
            .env("WASMGRID_TOKEN", &self.token)
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        if let Some(log) = &self.log {
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
            writeln!(log, "$ wasmgrid {}", args.join(" "))?;
            log.write_all(&output.stdout)?;
            log.write_all(&output.stderr)?;
        }
        if !output.status.success() {
            bail!("wasmgrid {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }
}
