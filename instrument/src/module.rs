//! Rewriting a module section by section: the meter imported first (so the module's own
//! memories or globals move up by one), the counters' globals and exports appended, every
//! function body instrumented, everything else copied with its indices moved.

use std::collections::HashMap;
use std::convert::Infallible;

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{
    CodeSection, ConstExpr, DataCountSection, DataSection, ElementSection, EntityType, ExportKind, ExportSection,
    FunctionSection, GlobalSection, GlobalType, ImportSection, MemorySection, MemoryType, Module, SectionId,
    StartSection, TableSection, TypeSection,
};
use wasmparser::{
    CompositeInnerType, FuncValidatorAllocations, Parser, Payload, TypeRef, ValType, ValidPayload, Validator,
};

use crate::features::{self, Refusal};
use crate::function::{self, ModuleTypes};
use crate::meter::{MemoryBound, Meter};
use crate::{
    FUEL_LIMIT_GLOBAL, FUEL_USED_EXPORT, IMPORT_MODULE, LIMIT_BROKEN_EXPORT, MEMORY_LIMIT_GLOBAL, METER_MEMORY,
    Options, STACK_USED_EXPORT, START_EXPORT, Target,
};

/// Copies everything not instrumented, moving memory and global indices past the meter's.
pub(crate) struct IndexShift {
    globals: u32,
    memories: u32,
}

impl Reencode for IndexShift {
    type Error = Infallible;

    fn global_index(&mut self, global: u32) -> Result<u32, reencode::Error<Infallible>> {
        Ok(global + self.globals)
    }

    fn memory_index(&mut self, memory: u32) -> Result<u32, reencode::Error<Infallible>> {
        Ok(memory + self.memories)
    }
}

/// The pass's own additions, each written before the first section that must follow it.
#[derive(Default)]
struct Pending {
    imports: bool,
    globals: bool,
    exports: bool,
}

struct Rewrite {
    target: Target,
    options: Options,
    shift: IndexShift,
    out: Module,
    pending: Pending,
    types: Vec<(Vec<ValType>, Vec<ValType>)>,
    wrapper_types: HashMap<Vec<ValType>, u32>,
    function_types: Vec<u32>,
    /// Globals of the original module, imported and defined.
    globals: u32,
    code: Option<CodeSection>,
    functions_left: u32,
    next_function: u32,
    allocations: FuncValidatorAllocations,
    /// The module's start function, which [`Target::Portable`] exports instead.
    start_function: Option<u32>,
    /// How far every memory of the module may grow by its type, imported ones first.
    memory_bounds: Vec<MemoryBound>,
}

pub(crate) fn rewrite(wasm: &[u8], target: Target, options: Options) -> Result<Vec<u8>, Refusal> {
    let shift = match target {
        Target::Sandbox => IndexShift { globals: 0, memories: 1 },
        Target::Portable => IndexShift { globals: 2, memories: 0 },
    };
    let mut rewrite = Rewrite {
        target,
        options,
        shift,
        out: Module::new(),
        pending: Pending { imports: true, globals: true, exports: true },
        types: Vec::new(),
        wrapper_types: HashMap::new(),
        function_types: Vec::new(),
        globals: 0,
        code: None,
        functions_left: 0,
        next_function: 0,
        allocations: FuncValidatorAllocations::default(),
        start_function: start_function(wasm),
        memory_bounds: Vec::new(),
    };
    let mut validator = Validator::new_with_features(features::allowed());
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|error| Refusal::Invalid(error.to_string()))?;
        let validated = validator.payload(&payload).map_err(|error| features::explain(wasm, &error))?;
        rewrite.section(payload, validated, wasm)?;
    }
    let bytes = rewrite.out.finish();
    // A slip in the pass must show as a clear error here, never as a strange one in an engine.
    Validator::new_with_features(features::of_output()).validate_all(&bytes).map_err(|error| {
        Refusal::Invalid(format!("the instrumented module is invalid (a bug in the pass): {error}"))
    })?;
    Ok(bytes)
}

/// The module's start function, looked up before the rewrite: the export section, where
/// [`Target::Portable`] names it, comes before the start section. A module that does not parse
/// is refused by the rewrite itself.
fn start_function(wasm: &[u8]) -> Option<u32> {
    Parser::new(0).parse_all(wasm).find_map(|payload| match payload {
        Ok(Payload::StartSection { func, .. }) => Some(func),
        _ => None,
    })
}

fn copy_error(error: reencode::Error<Infallible>) -> Refusal {
    Refusal::Invalid(error.to_string())
}

impl Rewrite {
    fn section(&mut self, payload: Payload<'_>, validated: ValidPayload<'_>, wasm: &[u8]) -> Result<(), Refusal> {
        if let Some(id) = section_id(&payload) {
            self.write_pending_before(id);
        }
        match payload {
            Payload::TypeSection(reader) => {
                let mut types = TypeSection::new();
                for group in reader.clone() {
                    let group = group.map_err(|error| Refusal::Invalid(error.to_string()))?;
                    for sub_type in group.into_types() {
                        let CompositeInnerType::Func(func) = &sub_type.composite_type.inner else {
                            return Err(Refusal::Unsupported("a non-function type".into()));
                        };
                        self.types.push((func.params().to_vec(), func.results().to_vec()));
                    }
                }
                self.shift.parse_type_section(&mut types, reader).map_err(copy_error)?;
                // `[] -> results` for the wrapper block of every multi-value function type.
                let mut next = self.types.len() as u32;
                for (_, results) in self.types.clone() {
                    if results.len() > 1 && !self.wrapper_types.contains_key(&results) {
                        let encoded: Vec<_> = results
                            .iter()
                            .map(|&ty| self.shift.val_type(ty))
                            .collect::<Result<_, _>>()
                            .map_err(copy_error)?;
                        types.ty().function([], encoded);
                        self.wrapper_types.insert(results, next);
                        next += 1;
                    }
                }
                self.out.section(&types);
            }
            Payload::ImportSection(reader) => {
                let mut imports = ImportSection::new();
                self.meter_import(&mut imports);
                self.pending.imports = false;
                for import in reader.clone().into_imports() {
                    let import = import.map_err(|error| Refusal::Invalid(error.to_string()))?;
                    if import.module == IMPORT_MODULE {
                        return Err(Refusal::Reserved(format!(
                            "imports `{}::{}`: the module name `{IMPORT_MODULE}` is reserved for the instrumentation",
                            import.module, import.name
                        )));
                    }
                    match import.ty {
                        TypeRef::Func(ty) => self.function_types.push(ty),
                        TypeRef::Global(_) => self.globals += 1,
                        TypeRef::Memory(_) => self.memory_bounds.push(MemoryBound::Imported),
                        _ => {}
                    }
                }
                self.shift.parse_import_section(&mut imports, reader).map_err(copy_error)?;
                self.out.section(&imports);
            }
            Payload::FunctionSection(reader) => {
                for ty in reader.clone() {
                    self.function_types.push(ty.map_err(|error| Refusal::Invalid(error.to_string()))?);
                }
                let mut functions = FunctionSection::new();
                self.shift.parse_function_section(&mut functions, reader).map_err(copy_error)?;
                self.out.section(&functions);
            }
            Payload::TableSection(reader) => {
                let mut tables = TableSection::new();
                self.shift.parse_table_section(&mut tables, reader).map_err(copy_error)?;
                self.out.section(&tables);
            }
            Payload::MemorySection(reader) => {
                for memory in reader.clone() {
                    let memory = memory.map_err(|error| Refusal::Invalid(error.to_string()))?;
                    self.memory_bounds.push(MemoryBound::Defined(memory.maximum));
                }
                let mut memories = MemorySection::new();
                self.shift.parse_memory_section(&mut memories, reader).map_err(copy_error)?;
                self.out.section(&memories);
            }
            Payload::GlobalSection(reader) => {
                self.globals += reader.count();
                let mut globals = GlobalSection::new();
                self.shift.parse_global_section(&mut globals, reader).map_err(copy_error)?;
                self.meter_globals(&mut globals);
                self.pending.globals = false;
                self.out.section(&globals);
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                for export in reader.clone() {
                    let export = export.map_err(|error| Refusal::Invalid(error.to_string()))?;
                    if [FUEL_USED_EXPORT, STACK_USED_EXPORT, LIMIT_BROKEN_EXPORT, START_EXPORT].contains(&export.name) {
                        return Err(Refusal::Reserved(format!(
                            "exports `{}`, a name reserved for the instrumentation",
                            export.name
                        )));
                    }
                }
                self.shift.parse_export_section(&mut exports, reader).map_err(copy_error)?;
                self.meter_exports(&mut exports);
                self.pending.exports = false;
                self.out.section(&exports);
            }
            Payload::StartSection { func, .. } => {
                if self.target == Target::Sandbox {
                    self.out.section(&StartSection { function_index: func });
                }
            }
            Payload::ElementSection(reader) => {
                let mut elements = ElementSection::new();
                self.shift.parse_element_section(&mut elements, reader).map_err(copy_error)?;
                self.out.section(&elements);
            }
            Payload::DataCountSection { count, .. } => {
                self.out.section(&DataCountSection { count });
            }
            Payload::CodeSectionStart { count, .. } => {
                self.code = Some(CodeSection::new());
                self.functions_left = count;
                self.next_function = (self.function_types.len() as u32).saturating_sub(count);
                self.finish_code_if_done();
            }
            Payload::CodeSectionEntry(body) => {
                let ValidPayload::Func(to_validate, _) = validated else {
                    unreachable!("the validator hands out every function body")
                };
                let validator = to_validate.into_validator(std::mem::take(&mut self.allocations));
                let module = ModuleTypes {
                    types: &self.types,
                    function_types: &self.function_types,
                    wrapper_types: &self.wrapper_types,
                    memory_bounds: &self.memory_bounds,
                    meter: self.meter(),
                    options: self.options,
                };
                let explain = |error: &wasmparser::BinaryReaderError| features::explain(wasm, error);
                let function =
                    function::instrument(&body, validator, self.next_function, &module, &mut self.shift, &explain)?;
                self.code.as_mut().expect("a code section was started").function(&function);
                self.next_function += 1;
                self.functions_left -= 1;
                self.finish_code_if_done();
            }
            Payload::DataSection(reader) => {
                let mut data = DataSection::new();
                self.shift.parse_data_section(&mut data, reader).map_err(copy_error)?;
                self.out.section(&data);
            }
            Payload::CustomSection(reader) => {
                // Debug information describes code offsets that the pass has moved.
                if !reader.name().starts_with(".debug") {
                    self.shift.parse_custom_section(&mut self.out, reader).map_err(copy_error)?;
                }
            }
            Payload::End(_) => self.write_pending_before(SectionId::Data),
            Payload::Version { .. } => {}
            other => {
                return Err(Refusal::Unsupported(format!("the section {:?}", other.as_section())));
            }
        }
        Ok(())
    }

    fn finish_code_if_done(&mut self) {
        if self.functions_left == 0
            && let Some(code) = self.code.take()
        {
            self.out.section(&code);
        }
    }

    fn meter(&self) -> Meter {
        let first_added = self.globals + self.shift.globals;
        Meter {
            target: self.target,
            fuel_limit_global: 0,
            memory_limit_global: 1,
            stack_global: first_added,
            fuel_used_global: first_added + 1,
            grow_delta_global: first_added + 2,
            limit_broken_global: first_added + 3,
            grow_result_global: first_added + 4,
        }
    }

    fn meter_import(&self, imports: &mut ImportSection) {
        match self.target {
            Target::Sandbox => imports.import(
                IMPORT_MODULE,
                METER_MEMORY,
                EntityType::Memory(MemoryType {
                    minimum: 1,
                    maximum: Some(1),
                    memory64: false,
                    shared: false,
                    page_size_log2: None,
                }),
            ),
            Target::Portable => {
                let limit = EntityType::Global(GlobalType {
                    val_type: wasm_encoder::ValType::I64,
                    mutable: false,
                    shared: false,
                });
                imports.import(IMPORT_MODULE, FUEL_LIMIT_GLOBAL, limit);
                imports.import(IMPORT_MODULE, MEMORY_LIMIT_GLOBAL, limit)
            }
        };
    }

    fn meter_globals(&self, globals: &mut GlobalSection) {
        let counter = GlobalType { val_type: wasm_encoder::ValType::I64, mutable: true, shared: false };
        globals.global(counter, &ConstExpr::i64_const(0));
        if self.target == Target::Portable {
            globals.global(counter, &ConstExpr::i64_const(0));
            let flag = GlobalType { val_type: wasm_encoder::ValType::I32, mutable: true, shared: false };
            // The growth's delta, the flag of the limit broken, the growth's result.
            globals.global(flag, &ConstExpr::i32_const(0));
            globals.global(flag, &ConstExpr::i32_const(0));
            globals.global(flag, &ConstExpr::i32_const(0));
        }
    }

    fn meter_exports(&self, exports: &mut ExportSection) {
        let meter = self.meter();
        exports.export(STACK_USED_EXPORT, ExportKind::Global, meter.stack_global);
        if self.target == Target::Portable {
            exports.export(FUEL_USED_EXPORT, ExportKind::Global, meter.fuel_used_global);
            exports.export(LIMIT_BROKEN_EXPORT, ExportKind::Global, meter.limit_broken_global);
            if let Some(start) = self.start_function {
                exports.export(START_EXPORT, ExportKind::Func, start);
            }
        }
    }

    /// Writes the additions whose sections come before a section `next`, if the module had
    /// none of its own to add them to.
    fn write_pending_before(&mut self, next: SectionId) {
        let order = section_order(next);
        if self.pending.imports && order > section_order(SectionId::Import) {
            let mut imports = ImportSection::new();
            self.meter_import(&mut imports);
            self.out.section(&imports);
            self.pending.imports = false;
        }
        if self.pending.globals && order > section_order(SectionId::Global) {
            let mut globals = GlobalSection::new();
            self.meter_globals(&mut globals);
            self.out.section(&globals);
            self.pending.globals = false;
        }
        if self.pending.exports && order > section_order(SectionId::Export) {
            let mut exports = ExportSection::new();
            self.meter_exports(&mut exports);
            self.out.section(&exports);
            self.pending.exports = false;
        }
    }
}

fn section_id(payload: &Payload<'_>) -> Option<SectionId> {
    Some(match payload {
        Payload::TypeSection(_) => SectionId::Type,
        Payload::ImportSection(_) => SectionId::Import,
        Payload::FunctionSection(_) => SectionId::Function,
        Payload::TableSection(_) => SectionId::Table,
        Payload::MemorySection(_) => SectionId::Memory,
        Payload::TagSection(_) => SectionId::Tag,
        Payload::GlobalSection(_) => SectionId::Global,
        Payload::ExportSection(_) => SectionId::Export,
        Payload::StartSection { .. } => SectionId::Start,
        Payload::ElementSection(_) => SectionId::Element,
        Payload::DataCountSection { .. } => SectionId::DataCount,
        Payload::CodeSectionStart { .. } => SectionId::Code,
        Payload::DataSection(_) => SectionId::Data,
        _ => return None,
    })
}

/// The order sections must appear in (which is not the order of their ids).
fn section_order(id: SectionId) -> u8 {
    match id {
        SectionId::Custom => 0,
        SectionId::Type => 1,
        SectionId::Import => 2,
        SectionId::Function => 3,
        SectionId::Table => 4,
        SectionId::Memory => 5,
        SectionId::Tag => 6,
        SectionId::Global => 7,
        SectionId::Export => 8,
        SectionId::Start => 9,
        SectionId::Element => 10,
        SectionId::DataCount => 11,
        SectionId::Code => 12,
        SectionId::Data => 13,
    }
}
