//! The sandbox against real modules: the hostile corpus in `workunits/hostile/`, and a
//! probe of everything that could make replicas disagree.

mod determinism;
mod hostile;
mod module_check;
mod pause;
mod priority;
mod progress;
mod random_modules;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::engine::EngineSettings;
use wasmgrid_sandbox::{RunControl, RunReport, RunSpec, Sandbox};

pub const LIMITS: RunLimits =
    RunLimits { fuel: 1_000_000_000, memory_bytes: 64 << 20, output_bytes: 1 << 20, wall_time_seconds: 30 };

/// A sandbox with its own compile cache, and directories for one run.
pub struct Harness {
    pub sandbox: Arc<Sandbox>,
    pub dir: tempfile::TempDir,
}

impl Default for Harness {
    fn default() -> Self {
        Self::with_settings(EngineSettings::FULL)
    }
}

impl Harness {
    pub fn with_settings(settings: EngineSettings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::with_settings(&dir.path().join("cache"), settings).unwrap();
        Self { sandbox, dir }
    }

    /// A run of `wasm` with `limits`, fresh input and scratch directories, and seed 42.
    pub fn spec(&self, wasm: &[u8], limits: RunLimits) -> RunSpec {
        let hash = Sha256Hash::of(wasm);
        let module_path = self.dir.path().join(format!("{hash}.wasm"));
        std::fs::write(&module_path, wasm).unwrap();
        let run_dir = tempfile::tempdir_in(self.dir.path()).unwrap().keep();
        let (input_dir, scratch_dir) = (run_dir.join("input"), run_dir.join("scratch"));
        std::fs::create_dir_all(&input_dir).unwrap();
        std::fs::create_dir_all(&scratch_dir).unwrap();
        RunSpec {
            module_hash: hash,
            module_path,
            args: Vec::new(),
            stdin: Vec::new(),
            input_dir,
            scratch_dir,
            limits,
            scratch_limit_bytes: 8 << 20,
            seed: 42,
        }
    }

    pub fn run(&self, spec: RunSpec) -> RunReport {
        let control = Arc::new(RunControl::default());
        self.sandbox.spawn(spec, control).unwrap().blocking_recv().expect("the run reports")
    }
}

pub fn workunits() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workunits")
}

/// Compiles a WAT file from `workunits/` to Wasm.
pub fn wat(relative: &str) -> Vec<u8> {
    wat::parse_file(workunits().join(relative)).unwrap_or_else(|error| panic!("{relative}: {error}"))
}
