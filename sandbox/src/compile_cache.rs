//! Compiled modules cached on disk, per module hash, instrumentation and engine, so a module
//! is instrumented and compiled once and later tasks start at once.
//!
//! Loading precompiled code is only safe for code this client compiled itself: the cache
//! lives in the client's own data directory, files are written under a temporary name and
//! renamed when complete, and their name binds them to the module's hash, to the
//! instrumentation pass's version and options, and to the engine's compatibility hash
//! (wasmtime version and settings). Precompiled code never comes from the network.
//!
//! The cache also remembers which modules this engine cannot compile at all, so that a
//! module that crashes the compiler is not compiled again before each of its tasks.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmgrid_protocol::Sha256Hash;
use wasmtime::{Engine, Module};

/// File name endings: compiled code, and the reason a module cannot be compiled.
const CODE: &str = "cwasm";
const UNCOMPILABLE: &str = "uncompilable";

pub struct CompileCache {
    dir: PathBuf,
    engine_tag: String,
}

impl CompileCache {
    /// The cache in `dir` for code compiled by `engine` from modules instrumented with
    /// `instrumentation` (a description of the pass's version and options).
    pub fn open(dir: impl Into<PathBuf>, engine: &Engine, instrumentation: &str) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        instrumentation.hash(&mut hasher);
        let cache = Self { dir, engine_tag: format!("{:016x}", hasher.finish()) };
        cache.remove_other_engines_code();
        Ok(cache)
    }

    /// Compiled code from an earlier client version or other settings can never be loaded
    /// again: clear it out rather than let it pile up over the client's upgrades.
    fn remove_other_engines_code(&self) {
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = [CODE, UNCOMPILABLE].iter().any(|kind| {
                name.ends_with(&format!(".{kind}")) && !name.ends_with(&format!("-{}.{kind}", self.engine_tag))
            });
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn path_of(&self, module_hash: &Sha256Hash, kind: &str) -> PathBuf {
        self.dir.join(format!("{module_hash}-{}.{kind}", self.engine_tag))
    }

    /// Why this engine could not compile the module, if an earlier attempt found it could not.
    pub fn known_uncompilable(&self, module_hash: &Sha256Hash) -> Option<String> {
        std::fs::read_to_string(self.path_of(module_hash, UNCOMPILABLE)).ok()
    }

    /// Remembers that this engine cannot compile the module, and why.
    pub fn mark_uncompilable(&self, module_hash: &Sha256Hash, reason: &str) {
        // Forgetting it only costs one more failed compilation.
        let _ = self.write_atomically(&self.path_of(module_hash, UNCOMPILABLE), reason.as_bytes());
    }

    /// The compiled module whose hash is `module_hash` (verified by the caller): from the
    /// cache when present and loadable, otherwise made by `compile` now and stored.
    pub fn load_or_compile<E>(
        &self,
        engine: &Engine,
        module_hash: &Sha256Hash,
        compile: impl FnOnce() -> Result<Module, E>,
    ) -> Result<Module, E> {
        let cached = self.path_of(module_hash, CODE);
        if cached.exists() {
            // SAFETY: the file was produced by `Module::serialize` in `store` below, by
            // this client, for an engine with the same compatibility hash; wasmtime also
            // checks the version and settings it records before loading.
            match unsafe { Module::deserialize_file(engine, &cached) } {
                Ok(module) => return Ok(module),
                Err(_) => {
                    let _ = std::fs::remove_file(&cached);
                }
            }
        }
        let module = compile()?;
        // A cache that cannot be written only costs a recompilation next time.
        let _ = self.store(&module, &cached);
        Ok(module)
    }

    fn store(&self, module: &Module, path: &Path) -> anyhow::Result<()> {
        self.write_atomically(path, &module.serialize()?)
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        let mut temporary = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::io::Write::write_all(&mut temporary, bytes)?;
        temporary.persist(path)?;
        Ok(())
    }
}
