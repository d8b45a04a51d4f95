//! Checking a module before anyone runs it. The server refuses, when it is published, a
//! module that every volunteer would fail on, and says why, instead of letting thousands of
//! replicas fail one by one.

use std::fmt;

use wasmgrid_instrument::{IMPORT_MODULE, METER_MEMORY, Refusal};
use wasmtime::{ExternType, Store};
use wasmtime_wasi::WasiCtxBuilder;

use super::limits::MemoryLimiter;
use super::meter::Meter;
use super::{CompileError, Prepared, RunState, Sandbox};

/// Why a module cannot be a work unit (or a validator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleRejection {
    NotWasm,
    Component,
    Invalid(String),
    Reactor,
    NoStart,
    StartSignature,
    NoMemory,
    /// Imports that the sandbox does not provide, as `module::name`.
    ForbiddenImports(Vec<String>),
    ImportMismatch(String),
    /// Valid, but it cannot be made to compute the same on every host (threads, relaxed
    /// SIMD), or it uses a name the instrumentation needs.
    Nondeterministic(String),
    /// Valid, but this server's compiler cannot compile it.
    Uncompilable(String),
}

impl fmt::Display for ModuleRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotWasm => f.write_str("not a WebAssembly module: it does not start with the Wasm magic bytes"),
            Self::Component => f.write_str(
                "a WebAssembly component, not a core module: build for wasm32-wasip1 (WASI preview 1)",
            ),
            Self::Invalid(reason) => write!(f, "not valid WebAssembly: {reason}"),
            Self::Reactor => f.write_str(
                "a WASI reactor (a library exporting `_initialize`), not a command: build a program with a main function",
            ),
            Self::NoStart => f.write_str("not a WASI command module: it exports no `_start` function"),
            Self::StartSignature => f.write_str("not a WASI command module: `_start` must take and return nothing"),
            Self::NoMemory => {
                f.write_str("not a WASI command module: it imports WASI functions but exports no memory named `memory`")
            }
            Self::ForbiddenImports(imports) => write!(
                f,
                "imports what the sandbox does not provide (only WASI preview 1 is available): {}",
                imports.join(", ")
            ),
            Self::ImportMismatch(reason) => write!(f, "an import does not match the sandbox's: {reason}"),
            Self::Nondeterministic(reason) | Self::Uncompilable(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for ModuleRejection {}

/// Most forbidden imports named in one rejection.
const LISTED_IMPORTS: usize = 10;

impl Sandbox {
    /// Checks that `wasm` is a WASI preview 1 command module that this sandbox can run:
    /// valid, a core module that the instrumentation pass accepts, exporting `_start` (and
    /// `memory` for WASI), importing only what the sandbox provides, with matching types.
    /// Instruments and compiles the module the way volunteers will, so it is CPU-bound.
    pub fn check_command_module(&self, wasm: &[u8]) -> Result<(), ModuleRejection> {
        let Prepared { module, compiler } = self.instrument_and_compile(wasm).map_err(|error| match error {
            CompileError::Refused(Refusal::NotWasm) => ModuleRejection::NotWasm,
            CompileError::Refused(Refusal::Component) => ModuleRejection::Component,
            CompileError::Refused(Refusal::Invalid(reason)) => ModuleRejection::Invalid(reason),
            CompileError::Refused(other) => ModuleRejection::Nondeterministic(other.to_string()),
            CompileError::Compiler(reason) | CompileError::Unreadable(reason) => {
                ModuleRejection::Uncompilable(format!("this server cannot compile the module: {reason}"))
            }
        })?;

        match module.get_export("_start") {
            Some(ExternType::Func(start)) => {
                if start.params().len() != 0 || start.results().len() != 0 {
                    return Err(ModuleRejection::StartSignature);
                }
            }
            _ if module.get_export("_initialize").is_some() => return Err(ModuleRejection::Reactor),
            _ => return Err(ModuleRejection::NoStart),
        }
        // The linker answers "is this import defined?" only with a store at hand; an empty
        // WASI context is enough.
        let state = RunState {
            wasi: WasiCtxBuilder::new().build_p1(),
            limiter: MemoryLimiter::new(0, Default::default()),
            instance: None,
        };
        let mut store = Store::new(&compiler.engine, state);
        let is_meter =
            |import: &wasmtime::ImportType<'_>| (import.module(), import.name()) == (IMPORT_MODULE, METER_MEMORY);
        let forbidden: Vec<String> = module
            .imports()
            .filter(|import| !is_meter(import) && compiler.linker.get_by_import(&mut store, import).is_none())
            .map(|import| format!("{}::{}", import.module(), import.name()))
            .collect();
        if !forbidden.is_empty() {
            let mut listed: Vec<String> = forbidden.iter().take(LISTED_IMPORTS).cloned().collect();
            if forbidden.len() > LISTED_IMPORTS {
                listed.push(format!("and {} more", forbidden.len() - LISTED_IMPORTS));
            }
            return Err(ModuleRejection::ForbiddenImports(listed));
        }
        // WASI functions read and write the module's exported memory; a module that imports
        // none needs no memory.
        let imports_any = module.imports().any(|import| !is_meter(&import));
        if imports_any && !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
            return Err(ModuleRejection::NoMemory);
        }
        let meter = Meter::new(&mut store, 0).map_err(|error| ModuleRejection::Uncompilable(format!("{error:#}")))?;
        let mut linker = compiler.linker.clone();
        linker
            .define(&store, IMPORT_MODULE, METER_MEMORY, meter.memory)
            .map_err(|error| ModuleRejection::Uncompilable(format!("{error:#}")))?;
        linker
            .instantiate_pre(&module)
            .map_err(|error| ModuleRejection::ImportMismatch(super::first_line(&format!("{error:#}"))))?;
        Ok(())
    }
}
