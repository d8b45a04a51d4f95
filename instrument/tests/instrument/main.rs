//! The instrumentation pass, run on real modules in a real engine (wasmtime, with its own
//! fuel metering and NaN canonicalisation off, so only the pass makes runs deterministic).

mod bounded_loop;
mod fuel;
mod hostile;
mod nan;
mod stack;

use wasmgrid_instrument::{
    FUEL_LIMIT_GLOBAL, FUEL_USED_EXPORT, IMPORT_MODULE, LIMIT_BROKEN_EXPORT, MEMORY_LIMIT_GLOBAL, STACK_USED_EXPORT,
    Target,
};
use wasmtime::{
    Config, Engine, Extern, Global, GlobalType, Instance, Module, Mutability, Store, StoreLimits, StoreLimitsBuilder,
    Val, ValType,
};

/// How a call of an instrumented module's export ended.
#[derive(Debug)]
pub struct Run {
    pub results: Result<Vec<Val>, wasmtime::Error>,
    pub fuel_used: i64,
    pub stack_used: i64,
    /// Which growth limit the run broke (`wasmgrid_instrument::BROKE_*`), 0 if none.
    pub limit_broken: i32,
    pub memory: Vec<u8>,
}

/// An engine with the sandbox's stack (`wasmgrid_sandbox::engine::MAX_WASM_STACK`).
pub fn engine(configure: impl FnOnce(&mut Config)) -> Engine {
    let mut config = Config::new();
    config.wasm_multi_memory(true).max_wasm_stack(4 << 20).async_stack_size(5 << 20);
    configure(&mut config);
    Engine::new(&config).unwrap()
}

pub fn wasm(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

/// Instruments `wasm` for any engine and calls its export `name` with `args`, with
/// `fuel_limit` (and no memory limit to speak of).
pub fn run_portable(wasm: &[u8], name: &str, args: &[Val], fuel_limit: i64) -> Run {
    run_portable_limited(wasm, name, args, fuel_limit, i64::MAX)
}

/// [`run_portable`] with a memory limit of `memory_limit` bytes.
pub fn run_portable_limited(wasm: &[u8], name: &str, args: &[Val], fuel_limit: i64, memory_limit: i64) -> Run {
    run_portable_in(wasm, name, args, fuel_limit, memory_limit, usize::MAX)
}

/// [`run_portable_limited`] in an engine that refuses to grow a memory past `engine_memory`
/// bytes, as a browser short of memory does: `memory.grow` returns -1.
pub fn run_portable_in(
    wasm: &[u8],
    name: &str,
    args: &[Val],
    fuel_limit: i64,
    memory_limit: i64,
    engine_memory: usize,
) -> Run {
    let instrumented = wasmgrid_instrument::instrument(wasm, Target::Portable).unwrap();
    let engine = engine(|_| {});
    let module = Module::new(&engine, &instrumented).unwrap();
    let mut store = Store::new(&engine, StoreLimitsBuilder::new().memory_size(engine_memory).build());
    store.limiter(|limits| limits);
    let constant = |store: &mut Store<StoreLimits>, value: i64| {
        Global::new(store, GlobalType::new(ValType::I64, Mutability::Const), Val::I64(value)).unwrap()
    };
    let (fuel_limit, memory_limit) = (constant(&mut store, fuel_limit), constant(&mut store, memory_limit));
    let imports: Vec<Extern> = module
        .imports()
        .map(|import| match (import.module(), import.name()) {
            (IMPORT_MODULE, FUEL_LIMIT_GLOBAL) => Extern::Global(fuel_limit),
            (IMPORT_MODULE, MEMORY_LIMIT_GLOBAL) => Extern::Global(memory_limit),
            other => panic!("only the meter is imported, not {other:?}"),
        })
        .collect();
    let instance = Instance::new(&mut store, &module, &imports).unwrap();
    let results = call(&mut store, instance, name, args);
    let read = |store: &mut Store<StoreLimits>, export: &str| {
        instance.get_global(&mut *store, export).unwrap().get(&mut *store).i64().unwrap()
    };
    let memory =
        instance.get_memory(&mut store, "memory").map(|memory| memory.data(&store).to_vec()).unwrap_or_default();
    Run {
        results,
        fuel_used: read(&mut store, FUEL_USED_EXPORT),
        stack_used: read(&mut store, STACK_USED_EXPORT),
        limit_broken: instance.get_global(&mut store, LIMIT_BROKEN_EXPORT).unwrap().get(&mut store).i32().unwrap(),
        memory,
    }
}

/// Calls `name` of the module as it is, in wasmtime with its own fuel metering on; returns the
/// results and the fuel wasmtime counted.
pub fn run_with_wasmtime_fuel(wasm: &[u8], name: &str, args: &[Val]) -> (Result<Vec<Val>, wasmtime::Error>, u64) {
    let engine = engine(|config| {
        config.consume_fuel(true);
    });
    let module = Module::new(&engine, wasm).unwrap();
    let mut store = Store::new(&engine, ());
    const FUEL: u64 = 1 << 40;
    store.set_fuel(FUEL).unwrap();
    let instance = Instance::new(&mut store, &module, &[]).unwrap();
    let results = call(&mut store, instance, name, args);
    (results, FUEL - store.get_fuel().unwrap())
}

fn call<T>(store: &mut Store<T>, instance: Instance, name: &str, args: &[Val]) -> Result<Vec<Val>, wasmtime::Error> {
    let function = instance.get_func(&mut *store, name).unwrap();
    let mut results = vec![Val::I32(0); function.ty(&*store).results().len()];
    function.call(&mut *store, args, &mut results).map(|()| results)
}

pub fn trap_of(run: &Run) -> Option<wasmtime::Trap> {
    run.results.as_ref().err().and_then(|error| error.downcast_ref::<wasmtime::Trap>().copied())
}
