//! Compiled modules cached on disk, per module hash, instrumentation and engine, so a module
//! is instrumented and compiled once and later tasks start at once.
//!
//! Loading precompiled code is only safe for code this client compiled itself: the cache
//! lives in the client's own data directory, files are written under a temporary name and
//! renamed when complete, and their name binds them to the module's hash, to the
//! instrumentation pass's version and options, and to the engine's compatibility hash
//! (wasmtime version and settings). Precompiled code never comes from the network.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmgrid_protocol::Sha256Hash;
use wasmtime::{Engine, Module};

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
        let suffix = format!("-{}.cwasm", self.engine_tag);
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".cwasm") && !name.ends_with(&suffix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn path_of(&self, module_hash: &Sha256Hash) -> PathBuf {
        self.dir.join(format!("{module_hash}-{}.cwasm", self.engine_tag))
    }

    /// The compiled module whose hash is `module_hash` (verified by the caller): from the
    /// cache when present and loadable, otherwise made by `compile` now and stored.
    pub fn load_or_compile<E>(
        &self,
        engine: &Engine,
        module_hash: &Sha256Hash,
        compile: impl FnOnce() -> Result<Module, E>,
    ) -> Result<Module, E> {
        let cached = self.path_of(module_hash);
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
        let bytes = module.serialize()?;
        let mut temporary = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::io::Write::write_all(&mut temporary, &bytes)?;
        temporary.persist(path)?;
        Ok(())
    }
}
