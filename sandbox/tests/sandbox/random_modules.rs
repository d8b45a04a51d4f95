//! Random modules from `wasm-smith`, made into WASI commands that print what they compute,
//! must give the same outcome, output and fuel on Cranelift and on Pulley (wasmtime's
//! interpreter, a second execution path that shares no machine-code generation with it).
//!
//! Each generated module becomes a command by a rewrite: `fd_write` is imported (every
//! function index moves up by one), and a `_start` is added that calls each exported
//! function with fixed arguments (NaNs with payloads among them), writes the results'
//! bytes to standard output after each call, and at the end writes the whole memory. A
//! trap, a broken fuel or stack limit, ends the run where it happens, on both back ends
//! alike.
//!
//! `WASMGRID_RANDOM_MODULES=N` sets how many modules to try (CI's default is below); a
//! disagreement leaves the module in the system's temporary directory and names its seed.

use std::convert::Infallible;

use arbitrary::Unstructured;
use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{
    CodeSection, DataCountSection, ElementSection, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, HeapType, Ieee32, Ieee64, ImportSection, Instruction, MemArg, MemorySection, MemoryType, Module,
    StartSection, TableSection, TypeSection, ValType,
};
use wasmgrid_protocol::api::RunLimits;
use wasmgrid_sandbox::engine::EngineSettings;
use wasmgrid_sandbox::{Backend, RunOutcome};
use wasmparser::{CompositeInnerType, ExternalKind, Parser, Payload};

use crate::{Harness, LIMITS};

/// Modules tried when `WASMGRID_RANDOM_MODULES` is not set.
const DEFAULT_MODULES: u64 = 300;
/// Enough for loops to run a while, small enough that Pulley finishes quickly.
const FUEL: u64 = 3_000_000;

#[test]
fn random_modules_compute_the_same_on_cranelift_and_pulley() {
    let modules = std::env::var("WASMGRID_RANDOM_MODULES").ok().and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_MODULES);
    let cranelift = Harness::default();
    let pulley = Harness::with_settings(EngineSettings { backend: Backend::Pulley, ..EngineSettings::FULL });
    let limits = RunLimits { fuel: FUEL, output_bytes: 16 << 20, ..LIMITS };
    let mut tally = Tally::default();
    for seed in 0..modules {
        let Some(command) = random_command(seed) else {
            tally.not_generated += 1;
            continue;
        };
        if wasmgrid_instrument::instrument(&command, wasmgrid_instrument::Target::Sandbox).is_err() {
            // A feature work units may not use (an `externref`, say): refused, not run.
            tally.refused += 1;
            continue;
        }
        let native = cranelift.run(cranelift.spec(&command, limits));
        let interpreted = pulley.run(pulley.spec(&command, limits));
        if (&native.outcome, &native.stdout, native.fuel_used)
            != (&interpreted.outcome, &interpreted.stdout, interpreted.fuel_used)
        {
            let kept = std::env::temp_dir().join(format!("wasmgrid-random-{seed}.wasm"));
            std::fs::write(&kept, &command).unwrap();
            panic!(
                "seed {seed}, kept in {}: Cranelift {:?} after {} fuel, {} bytes out; Pulley {:?} after {} fuel, {} bytes out",
                kept.display(),
                native.outcome,
                native.fuel_used,
                native.stdout.len(),
                interpreted.outcome,
                interpreted.fuel_used,
                interpreted.stdout.len(),
            );
        }
        assert_eq!(native.backend, Some(Backend::Cranelift));
        assert_eq!(interpreted.backend, Some(Backend::Pulley));
        tally.count(&native.outcome);
    }
    println!("{tally:?}");
    // The comparison means something only if most modules ran, and ran to different ends.
    assert!(tally.compared() * 2 > modules, "{tally:?}");
    assert!(tally.succeeded > 0 && tally.failed > 0, "{tally:?}");
}

#[derive(Debug, Default)]
struct Tally {
    not_generated: u64,
    refused: u64,
    succeeded: u64,
    failed: u64,
}

impl Tally {
    fn count(&mut self, outcome: &RunOutcome) {
        match outcome {
            RunOutcome::Success => self.succeeded += 1,
            _ => self.failed += 1,
        }
    }

    fn compared(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// The random module of `seed`, made into a WASI command; `None` when `wasm-smith` found
/// its random bytes too few to build a module.
fn random_command(seed: u64) -> Option<Vec<u8>> {
    let bytes = random_bytes(seed, 4096 + (seed % 8) as usize * 4096);
    let mut input = Unstructured::new(&bytes);
    let config = wasm_smith::Config {
        // The features work units may use; externref may still appear with reference
        // types, and the pass refuses those modules.
        threads_enabled: false,
        shared_everything_threads_enabled: false,
        relaxed_simd_enabled: false,
        gc_enabled: false,
        exceptions_enabled: false,
        memory64_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        simd_enabled: true,
        tail_call_enabled: true,
        reference_types_enabled: seed.is_multiple_of(4),
        // `_start` imports `fd_write` itself and needs one memory to print from.
        max_imports: 0,
        min_memories: 1,
        max_memories: 1,
        max_memory32_bytes: 4 << 16,
        memory_max_size_required: true,
        min_funcs: 1,
        max_funcs: 20,
        min_exports: 1,
        max_instructions: 400,
        export_everything: seed.is_multiple_of(2),
        // Half the modules trap rarely, so that their calls run to the end.
        disallow_traps: seed % 2 == 1,
        ..wasm_smith::Config::default()
    };
    let module = wasm_smith::Module::new(config, &mut input).ok()?;
    Some(into_command(&module.to_bytes(), seed))
}

/// Deterministic pseudo-random bytes (SplitMix64).
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Re-encodes a module with every function index one higher, making room for the import.
struct ShiftFunctions;

impl Reencode for ShiftFunctions {
    type Error = Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Infallible>> {
        Ok(func + 1)
    }
}

/// Where `_start` keeps the `fd_write` vector and its count, at the end of the first page.
const IOVEC: i32 = 65536 - 16;
const NWRITTEN: i32 = 65536 - 8;

/// `wasm` (a module with no imports and one memory) as a WASI command, as the module
/// documentation describes. Argument values depend on `seed`.
fn into_command(wasm: &[u8], seed: u64) -> Vec<u8> {
    let mut shift = ShiftFunctions;
    let mut func_types: Vec<Option<(Vec<wasmparser::ValType>, Vec<wasmparser::ValType>)>> = Vec::new();
    let mut defined_types: Vec<u32> = Vec::new();
    let mut types = TypeSection::new();
    let mut functions = FunctionSection::new();
    let mut tables = None;
    let mut memories = MemorySection::new();
    let mut globals = None;
    let mut exports = ExportSection::new();
    let mut exported_functions = Vec::new();
    let mut start = None;
    let mut elements = None;
    let mut data_count = None;
    let mut code = CodeSection::new();
    let mut data = None;

    for payload in Parser::new(0).parse_all(wasm) {
        match payload.unwrap() {
            Payload::TypeSection(reader) => {
                for group in reader.clone() {
                    for sub_type in group.unwrap().into_types() {
                        func_types.push(match &sub_type.composite_type.inner {
                            CompositeInnerType::Func(ty) => Some((ty.params().to_vec(), ty.results().to_vec())),
                            _ => None,
                        });
                    }
                }
                shift.parse_type_section(&mut types, reader).unwrap();
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    let ty = ty.unwrap();
                    defined_types.push(ty);
                    functions.function(ty);
                }
            }
            Payload::TableSection(reader) => {
                let mut section = TableSection::new();
                shift.parse_table_section(&mut section, reader).unwrap();
                tables = Some(section);
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.unwrap();
                    // At least one page, for the results and the `fd_write` vector.
                    let minimum = memory.initial.max(1);
                    let maximum = memory.maximum.map(|maximum| maximum.max(minimum));
                    memories.memory(MemoryType {
                        minimum,
                        maximum,
                        memory64: false,
                        shared: false,
                        page_size_log2: None,
                    });
                }
            }
            Payload::GlobalSection(reader) => {
                let mut section = GlobalSection::new();
                shift.parse_global_section(&mut section, reader).unwrap();
                globals = Some(section);
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.unwrap();
                    // The command's own exports take these names.
                    if export.name == "memory" || export.name == "_start" {
                        continue;
                    }
                    let kind = ExportKind::from(export.kind);
                    let index = match export.kind {
                        ExternalKind::Func => {
                            exported_functions.push(export.index);
                            export.index + 1
                        }
                        _ => export.index,
                    };
                    exports.export(export.name, kind, index);
                }
            }
            Payload::StartSection { func, .. } => start = Some(func + 1),
            Payload::ElementSection(reader) => {
                let mut section = ElementSection::new();
                shift.parse_element_section(&mut section, reader).unwrap();
                elements = Some(section);
            }
            Payload::DataCountSection { count, .. } => data_count = Some(count),
            Payload::CodeSectionEntry(body) => shift.parse_function_body(&mut code, body).unwrap(),
            Payload::DataSection(reader) => {
                let mut section = wasm_encoder::DataSection::new();
                shift.parse_data_section(&mut section, reader).unwrap();
                data = Some(section);
            }
            _ => {}
        }
    }

    let fd_write_type = func_types.len() as u32;
    types.ty().function([ValType::I32; 4], [ValType::I32]);
    let start_type = fd_write_type + 1;
    types.ty().function([], []);
    let mut imports = ImportSection::new();
    imports.import("wasi_snapshot_preview1", "fd_write", EntityType::Function(fd_write_type));
    let start_index = 1 + defined_types.len() as u32;
    functions.function(start_type);
    exports.export("memory", ExportKind::Memory, 0);
    exports.export("_start", ExportKind::Func, start_index);

    let signature_of = |func: u32| func_types[defined_types[func as usize] as usize].clone();
    code.function(&start_body(&exported_functions, signature_of, seed));

    let mut module = Module::new();
    module.section(&types);
    module.section(&imports);
    module.section(&functions);
    if let Some(tables) = &tables {
        module.section(tables);
    }
    module.section(&memories);
    if let Some(globals) = &globals {
        module.section(globals);
    }
    module.section(&exports);
    if let Some(function_index) = start {
        module.section(&StartSection { function_index });
    }
    if let Some(elements) = &elements {
        module.section(elements);
    }
    if let Some(count) = data_count {
        module.section(&DataCountSection { count });
    }
    module.section(&code);
    if let Some(data) = &data {
        module.section(data);
    }
    module.finish()
}

/// Argument values: zeros, extremes, and NaNs with payloads and signs.
const I32S: [i32; 6] = [0, 1, -1, i32::MIN, i32::MAX, 0x1234_5678];
const I64S: [i64; 6] = [0, 1, -1, i64::MIN, i64::MAX, 0x0123_4567_89AB_CDEF];
const F32S: [u32; 8] = [0, 0x8000_0000, 0x3F80_0000, 0x7FC0_0000, 0x7FA0_0001, 0xFFC0_0BEE, 0x7F80_0000, 1];
const F64S: [u64; 8] = [
    0,
    0x8000_0000_0000_0000,
    0x3FF0_0000_0000_0000,
    0x7FF8_0000_0000_0000,
    0x7FF4_0000_0000_0001,
    0xFFF8_0000_0000_BEEF,
    0x7FF0_0000_0000_0000,
    1,
];

/// `_start`: each exported function called in turn, its results written to standard
/// output, then the whole memory.
fn start_body(
    exported: &[u32],
    signature_of: impl Fn(u32) -> Option<(Vec<wasmparser::ValType>, Vec<wasmparser::ValType>)>,
    seed: u64,
) -> Function {
    let mut locals: Vec<ValType> = Vec::new();
    let mut body: Vec<Instruction<'static>> = Vec::new();
    let memarg = |align: u32| MemArg { offset: 0, align, memory_index: 0 };
    for (call, &func) in exported.iter().enumerate() {
        let Some((params, results)) = signature_of(func) else { continue };
        let mut arguments = Vec::new();
        for (position, param) in params.iter().enumerate() {
            let pick = seed as usize + call * 7 + position * 3;
            arguments.push(match param {
                wasmparser::ValType::I32 => Instruction::I32Const(I32S[pick % I32S.len()]),
                wasmparser::ValType::I64 => Instruction::I64Const(I64S[pick % I64S.len()]),
                wasmparser::ValType::F32 => Instruction::F32Const(Ieee32::new(F32S[pick % F32S.len()])),
                wasmparser::ValType::F64 => Instruction::F64Const(Ieee64::new(F64S[pick % F64S.len()])),
                wasmparser::ValType::V128 => {
                    let low = F64S[pick % F64S.len()] as u128;
                    let high = F32S[(pick + 1) % F32S.len()] as u128 | (F32S[(pick + 2) % F32S.len()] as u128) << 32;
                    Instruction::V128Const((high << 64 | low) as i128)
                }
                wasmparser::ValType::Ref(reference) if reference.is_nullable() => {
                    let heap = if reference.is_func_ref() { HeapType::FUNC } else { HeapType::EXTERN };
                    Instruction::RefNull(heap)
                }
                // A non-null reference cannot be made up: the function is not called.
                wasmparser::ValType::Ref(_) => break,
            });
        }
        if arguments.len() != params.len() {
            continue;
        }
        body.extend(arguments);
        body.push(Instruction::Call(func + 1));

        // The results, from the top of the stack down, into locals of their own.
        let first_local = locals.len() as u32;
        for result in &results {
            locals.push(match result {
                wasmparser::ValType::I32 => ValType::I32,
                wasmparser::ValType::I64 => ValType::I64,
                wasmparser::ValType::F32 => ValType::F32,
                wasmparser::ValType::F64 => ValType::F64,
                wasmparser::ValType::V128 => ValType::V128,
                wasmparser::ValType::Ref(reference) => ValType::Ref(
                    wasm_encoder::reencode::RoundtripReencoder.ref_type(*reference).expect("a reference type"),
                ),
            });
        }
        for index in (0..results.len() as u32).rev() {
            body.push(Instruction::LocalSet(first_local + index));
        }
        let mut offset = 0i32;
        for (index, result) in results.iter().enumerate() {
            body.push(Instruction::I32Const(offset));
            body.push(Instruction::LocalGet(first_local + index as u32));
            let (store, bytes) = match result {
                wasmparser::ValType::I32 => (Instruction::I32Store(memarg(2)), 4),
                wasmparser::ValType::I64 => (Instruction::I64Store(memarg(3)), 8),
                wasmparser::ValType::F32 => (Instruction::F32Store(memarg(2)), 4),
                wasmparser::ValType::F64 => (Instruction::F64Store(memarg(3)), 8),
                wasmparser::ValType::V128 => (Instruction::V128Store(memarg(4)), 16),
                wasmparser::ValType::Ref(_) => {
                    body.push(Instruction::RefIsNull);
                    (Instruction::I32Store(memarg(2)), 4)
                }
            };
            body.push(store);
            offset += bytes;
        }
        write_to_stdout(&mut body, Instruction::I32Const(0), vec![Instruction::I32Const(offset)]);
    }
    // The whole memory, last: what the calls stored, and NaN bits among it.
    write_to_stdout(
        &mut body,
        Instruction::I32Const(0),
        vec![Instruction::MemorySize(0), Instruction::I32Const(65536), Instruction::I32Mul],
    );
    body.push(Instruction::End);

    let mut function = Function::new(locals.into_iter().map(|ty| (1, ty)));
    for instruction in &body {
        function.instruction(instruction);
    }
    function
}

/// Writes `length` bytes from `pointer` to standard output with `fd_write`.
fn write_to_stdout(
    body: &mut Vec<Instruction<'static>>,
    pointer: Instruction<'static>,
    length: Vec<Instruction<'static>>,
) {
    let memarg = MemArg { offset: 0, align: 2, memory_index: 0 };
    body.extend([Instruction::I32Const(IOVEC), pointer, Instruction::I32Store(memarg)]);
    body.extend([Instruction::I32Const(IOVEC + 4)]);
    body.extend(length);
    body.push(Instruction::I32Store(memarg));
    body.extend([
        Instruction::I32Const(1),
        Instruction::I32Const(IOVEC),
        Instruction::I32Const(1),
        Instruction::I32Const(NWRITTEN),
        Instruction::Call(0),
        Instruction::Drop,
    ]);
}
