//! Instrumenting one function body: the fuel charges and checks, the stack-height count and
//! the NaN canonicalisation of [`crate::nan`], in one walk over its operators.
//!
//! The instrumented body is
//!
//! ```text
//! prologue: load the fuel count into a local, charge the first stretch, check it;
//!           add this function's frame to the stack height, check it
//! block (result <the function's results>)      ;; stands for the function's own label
//!   <the original body, `return` turned into a branch to this block>
//! end
//! epilogue: store the fuel count, take the frame off the stack height
//! end
//! ```
//!
//! so every way out of the function (falling off its end, `return`, a branch to its label)
//! passes the epilogue; tail calls run the epilogue themselves before they leave.

use std::collections::HashMap;

use wasm_encoder::reencode::Reencode;
use wasm_encoder::{BlockType as EncodedBlockType, Function, Instruction, ValType as EncodedValType};
use wasmparser::{BlockType, FuncValidator, FunctionBody, Operator, ValType, ValidatorResources};

use crate::Options;
use crate::bounded_loop::{self, BoundedLoop};
use crate::cost::{CALL_COST, ends_stretch, frame_cost, operator_cost};
use crate::features::Refusal;
use crate::meter::{Growth, MemoryBound, Meter};
use crate::module::IndexShift;
use crate::nan::{self, Effect, MAX_ANALYSIS_PASSES};

/// The most locals a function may have once the pass has added its own (the engines' limit).
const MAX_LOCALS: u64 = 50_000;

/// What the walk over a function needs to know about the module.
pub(crate) struct ModuleTypes<'m> {
    /// Every function type, by type index: parameters and results.
    pub types: &'m [(Vec<ValType>, Vec<ValType>)],
    /// The type index of every function, imported ones first.
    pub function_types: &'m [u32],
    /// The `[] -> results` types the pass added, for the wrapper block of multi-value functions.
    pub wrapper_types: &'m HashMap<Vec<ValType>, u32>,
    /// How far every memory may grow by its type, imported ones first.
    pub memory_bounds: &'m [MemoryBound],
    pub meter: Meter,
    pub options: Options,
}

/// One operator of the body and what it pops and pushes (only needed where it is reachable).
struct Recorded<'a> {
    operator: Operator<'a>,
    arity: Option<(u32, u32)>,
}

/// Instruments one function body, which `validator` validates on the way.
pub(crate) fn instrument<'a>(
    body: &FunctionBody<'a>,
    mut validator: FuncValidator<ValidatorResources>,
    function_index: u32,
    module: &ModuleTypes<'_>,
    shift: &mut IndexShift,
    explain: &dyn Fn(&wasmparser::BinaryReaderError) -> Refusal,
) -> Result<Function, Refusal> {
    let invalid = |error: wasmparser::BinaryReaderError| explain(&error);
    let mut declared = Vec::new();
    let mut locals_reader = body.get_locals_reader().map_err(invalid)?;
    for _ in 0..locals_reader.get_count() {
        let offset = locals_reader.original_position();
        let (count, ty) = locals_reader.read().map_err(invalid)?;
        validator.define_locals(offset, count, ty).map_err(invalid)?;
        declared.push((count, ty));
    }
    let mut operators = Vec::new();
    let mut reader = body.get_operators_reader().map_err(invalid)?;
    while !reader.eof() {
        let (operator, offset) = reader.read_with_offset().map_err(invalid)?;
        let arity = operator.operator_arity(&validator);
        validator.op(offset, &operator).map_err(invalid)?;
        operators.push(Recorded { operator, arity });
    }
    reader.finish().map_err(invalid)?;

    let type_index = module.function_types[function_index as usize];
    let (params, results) = &module.types[type_index as usize];
    let mut local_types: Vec<ValType> = params.clone();
    for &(count, ty) in &declared {
        local_types.extend(std::iter::repeat_n(ty, count as usize));
    }

    let mut walk = Walk::new(module, &operators, local_types, results.clone());
    walk.run(shift)?;
    let declared_count = walk.local_types.len() - params.len();
    let frame_units = frame_cost(params.len() as u64, declared_count as u64, walk.max_height as u64);

    let added = walk.scratch.added.len() as u64;
    if walk.local_types.len() as u64 + added > MAX_LOCALS {
        return Err(Refusal::TooLarge(format!(
            "function {function_index} has {} locals, and instrumenting it needs {added} more than the {MAX_LOCALS} engines allow",
            walk.local_types.len()
        )));
    }
    let mut locals: Vec<(u32, EncodedValType)> = Vec::new();
    for &(count, ty) in &declared {
        locals.push((count, encoded(ty)));
    }
    for &ty in &walk.scratch.added {
        locals.push((1, encoded(ty)));
    }
    let mut function = Function::new(locals);
    let mut prologue = Vec::new();
    let fuel = walk.scratch.fuel;
    if module.options.fuel {
        module.meter.load_fuel(&mut prologue);
        prologue.push(Instruction::LocalSet(fuel));
        charge(fuel, walk.stretch_cost[0], &mut prologue);
        module.meter.store_fuel(fuel, &mut prologue);
        module.meter.check_fuel(fuel, &mut prologue);
    }
    if module.options.stack {
        module.meter.enter_frame(frame_units, &mut prologue);
    }
    prologue.push(Instruction::Block(wrapper_block_type(results, module.wrapper_types)));
    for instruction in &prologue {
        function.instruction(instruction);
    }
    let mut tail_calls = walk.tail_calls.iter().peekable();
    for (position, instruction) in walk.code.iter().enumerate() {
        if tail_calls.next_if_eq(&&position).is_some() {
            let mut leave = Vec::new();
            if module.options.stack {
                module.meter.leave_frame(frame_units, &mut leave);
            }
            leave.iter().for_each(|instruction| {
                function.instruction(instruction);
            });
            continue;
        }
        function.instruction(instruction);
    }
    // The original body's last `end` closed the wrapper block; now the epilogue.
    let mut epilogue = Vec::new();
    if module.options.fuel {
        module.meter.store_fuel(fuel, &mut epilogue);
    }
    if module.options.stack {
        module.meter.leave_frame(frame_units, &mut epilogue);
    }
    epilogue.push(Instruction::End);
    for instruction in &epilogue {
        function.instruction(instruction);
    }
    Ok(function)
}

fn encoded(ty: ValType) -> EncodedValType {
    match ty {
        ValType::I32 => EncodedValType::I32,
        ValType::I64 => EncodedValType::I64,
        ValType::F32 => EncodedValType::F32,
        ValType::F64 => EncodedValType::F64,
        ValType::V128 => EncodedValType::V128,
        // Only funcref can occur: `features::allowed` leaves out GC types, which externref
        // and every other reference type need.
        ValType::Ref(_) => EncodedValType::FUNCREF,
    }
}

fn wrapper_block_type(results: &[ValType], wrapper_types: &HashMap<Vec<ValType>, u32>) -> EncodedBlockType {
    match results {
        [] => EncodedBlockType::Empty,
        [single] => EncodedBlockType::Result(encoded(*single)),
        many => EncodedBlockType::FunctionType(wrapper_types[many]),
    }
}

fn charge(fuel: u32, units: u64, out: &mut Vec<Instruction<'_>>) {
    if units > 0 {
        out.extend([
            Instruction::LocalGet(fuel),
            Instruction::I64Const(units as i64),
            Instruction::I64Add,
            Instruction::LocalSet(fuel),
        ]);
    }
}

/// A value on the operand stack, as far as NaN bits go: `Some(ty)` if it may be a NaN whose
/// bits arithmetic chose (of type `ty`, `f32` or `f64`), `None` if its bits are determined.
type Dirt = Option<ValType>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    Function,
    Block,
    Loop,
    If,
    Else,
}

struct Frame {
    kind: FrameKind,
    /// Index into [`Walk::labels`].
    label: usize,
    /// Operand stack height below the frame's parameters.
    height: usize,
    /// The dirt of the parameters on entry (for the `else` of an `if`).
    entry: Vec<Dirt>,
    /// Types of the values a branch to the frame carries: a loop's parameters, otherwise its
    /// results.
    label_types: Vec<ValType>,
    result_types: Vec<ValType>,
    /// Whether the code at this point of the frame can run.
    reachable: bool,
    /// Whether the whole frame is in unreachable code.
    dead: bool,
}

/// The locals the pass adds, after the function's own.
struct Scratch {
    next: u32,
    added: Vec<ValType>,
    fuel: u32,
    canonicalize: HashMap<ValType, u32>,
    spill: HashMap<(ValType, usize), u32>,
}

impl Scratch {
    fn new(first: u32) -> Self {
        let mut scratch =
            Self { next: first, added: Vec::new(), fuel: 0, canonicalize: HashMap::new(), spill: HashMap::new() };
        scratch.fuel = scratch.add(ValType::I64);
        scratch
    }

    fn add(&mut self, ty: ValType) -> u32 {
        self.added.push(ty);
        self.next += 1;
        self.next - 1
    }

    fn for_canonicalizing(&mut self, ty: ValType) -> u32 {
        if let Some(&local) = self.canonicalize.get(&ty) {
            return local;
        }
        let local = self.add(ty);
        self.canonicalize.insert(ty, local);
        local
    }

    fn for_spilling(&mut self, ty: ValType, slot: usize) -> u32 {
        if let Some(&local) = self.spill.get(&(ty, slot)) {
            return local;
        }
        let local = self.add(ty);
        self.spill.insert((ty, slot), local);
        local
    }
}

struct Walk<'a, 'w> {
    module: &'w ModuleTypes<'w>,
    operators: &'w [Recorded<'a>],
    local_types: Vec<ValType>,
    results: Vec<ValType>,
    /// The fuel of the straight-line stretch starting at each operator (0 where none starts).
    stretch_cost: Vec<u64>,
    /// The loops that get an unchecked copy, by the index of their `loop` operator.
    bounded_loops: HashMap<usize, BoundedLoop>,

    // The analysis, kept from one walk to the next until it settles.
    dirty_locals: Vec<bool>,
    /// Per block, loop and `if` (in order of appearance, the function's own first): whether
    /// each value a branch to it carries may be dirty.
    labels: Vec<Vec<bool>>,
    changed: bool,

    // One walk.
    stack: Vec<Dirt>,
    frames: Vec<Frame>,
    /// Per label: whether a reachable branch targets it (so the code after it is reachable).
    targeted: Vec<bool>,
    next_label: usize,
    loop_header: bool,
    /// Inside either copy of a bounded loop: the number of frames outside it. Branches that
    /// leave the loop cross the `if` around the copies, one label more.
    versioned_at: Option<usize>,
    /// Inside the unchecked copy of a bounded loop: its header goes without the fuel check.
    unchecked: bool,
    max_height: usize,
    scratch: Scratch,
    code: Vec<Instruction<'a>>,
    /// Where in `code` a tail call needs the frame taken off the stack height.
    tail_calls: Vec<usize>,
}

impl<'a, 'w> Walk<'a, 'w> {
    fn new(
        module: &'w ModuleTypes<'w>,
        operators: &'w [Recorded<'a>],
        local_types: Vec<ValType>,
        results: Vec<ValType>,
    ) -> Self {
        let mut stretch_cost = vec![0; operators.len() + 1];
        stretch_cost[0] = CALL_COST;
        let mut start = 0;
        for (index, recorded) in operators.iter().enumerate() {
            stretch_cost[start] += operator_cost(&recorded.operator);
            if ends_stretch(&recorded.operator) {
                start = index + 1;
            }
        }
        let bounded_loops = if module.options.fuel && module.options.bounded_loops {
            let plain: Vec<&Operator<'a>> = operators.iter().map(|recorded| &recorded.operator).collect();
            (0..plain.len())
                .filter_map(|start| bounded_loop::analyse(&plain, start, &stretch_cost).map(|found| (start, found)))
                .collect()
        } else {
            HashMap::new()
        };
        let locals = local_types.len();
        Self {
            module,
            operators,
            bounded_loops,
            versioned_at: None,
            unchecked: false,
            dirty_locals: vec![false; locals],
            scratch: Scratch::new(locals as u32),
            local_types,
            results,
            stretch_cost,
            labels: Vec::new(),
            changed: false,
            stack: Vec::new(),
            frames: Vec::new(),
            targeted: Vec::new(),
            next_label: 0,
            loop_header: false,
            max_height: 0,
            code: Vec::new(),
            tail_calls: Vec::new(),
        }
    }

    /// Walks until the analysis settles (or gives up on precision), leaving the final code.
    fn run(&mut self, shift: &mut IndexShift) -> Result<(), Refusal> {
        for _ in 0..MAX_ANALYSIS_PASSES {
            self.walk(shift)?;
            if !self.changed {
                return Ok(());
            }
        }
        // Not settled: assume the worst of every float local and label, which cannot change
        // again (only floats can be dirty).
        for (dirty, &ty) in self.dirty_locals.iter_mut().zip(&self.local_types) {
            *dirty = is_float(ty);
        }
        self.labels.iter_mut().flatten().for_each(|dirty| *dirty = true);
        self.walk(shift)
    }

    fn walk(&mut self, shift: &mut IndexShift) -> Result<(), Refusal> {
        self.changed = false;
        self.stack.clear();
        self.frames.clear();
        self.targeted.clear();
        self.code.clear();
        self.tail_calls.clear();
        // Scratch locals of an earlier walk are not kept: only the final walk's are declared.
        self.scratch = Scratch::new(self.local_types.len() as u32);
        self.next_label = 0;
        self.loop_header = false;
        self.max_height = 0;
        let function_label = self.new_label(self.results.len());
        self.frames.push(Frame {
            kind: FrameKind::Function,
            label: function_label,
            height: 0,
            entry: Vec::new(),
            label_types: self.results.clone(),
            result_types: self.results.clone(),
            reachable: true,
            dead: false,
        });
        let mut index = 0;
        while index < self.operators.len() {
            if self.reachable()
                && let Some(bounded) = self.bounded_loops.get(&index)
            {
                let (end, guard) = (bounded.end, bounded.guard.clone());
                self.version_loop(index, end, guard, shift)?;
                index = end + 1;
            } else {
                self.step(index, shift)?;
                index += 1;
            }
        }
        Ok(())
    }

    /// Writes the bounded loop `operators[start..=end]` twice, without and with its header
    /// check, behind its guard (see [`bounded_loop`]).
    fn version_loop(
        &mut self,
        start: usize,
        end: usize,
        guard: Vec<Instruction<'static>>,
        shift: &mut IndexShift,
    ) -> Result<(), Refusal> {
        // The stretch before the loop was charged where it began; a loop directly inside a
        // loop has its outer header's check pending, which the entry check below makes.
        self.loop_header = false;
        self.module.meter.store_fuel(self.scratch.fuel, &mut self.code);
        self.module.meter.check_fuel(self.scratch.fuel, &mut self.code);
        self.code.extend(guard);
        // The guard's operands, on top of whatever the enclosing code has on the stack.
        self.max_height = self.max_height.max(self.stack.len() + 3);
        self.code.push(Instruction::If(EncodedBlockType::Empty));

        let (stack, reachable) = (self.stack.clone(), self.frame().reachable);
        self.versioned_at = Some(self.frames.len());
        self.unchecked = true;
        for index in start..=end {
            self.step(index, shift)?;
        }
        self.unchecked = false;
        self.code.push(Instruction::Else);
        // The second copy starts from where the first did.
        self.stack = stack;
        self.frames.last_mut().expect("the enclosing frame").reachable = reachable;
        for index in start..=end {
            self.step(index, shift)?;
        }
        self.versioned_at = None;
        self.code.push(Instruction::End);
        Ok(())
    }

    /// The depth to write for a branch `relative_depth` out: one more if it leaves a bounded
    /// loop, whose copies sit inside an `if` that the original does not have.
    fn branch_depth(&self, relative_depth: u32) -> u32 {
        match self.versioned_at {
            Some(outside) if self.frames.len() - 1 - (relative_depth as usize) < outside => relative_depth + 1,
            _ => relative_depth,
        }
    }

    fn new_label(&mut self, arity: usize) -> usize {
        let label = self.next_label;
        self.next_label += 1;
        if self.labels.len() <= label {
            self.labels.push(vec![false; arity]);
        }
        self.targeted.push(false);
        label
    }

    fn frame(&self) -> &Frame {
        self.frames.last().expect("the function's frame is there until its end")
    }

    fn reachable(&self) -> bool {
        let frame = self.frame();
        frame.reachable && !frame.dead
    }

    fn fuel_on(&self) -> bool {
        self.module.options.fuel
    }

    fn step(&mut self, index: usize, shift: &mut IndexShift) -> Result<(), Refusal> {
        let operator = &self.operators[index].operator;
        let translated = shift.instruction(operator.clone()).map_err(|error| Refusal::Invalid(error.to_string()))?;
        let reachable = self.reachable();
        match operator {
            Operator::Else => return self.on_else(translated),
            Operator::End => return self.on_end(translated),
            _ => {}
        }
        if !reachable {
            // Nothing here runs: keep it as it is, tracking only the nesting.
            if let Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } = operator {
                let label = self.new_label(0);
                self.frames.push(Frame {
                    kind: FrameKind::Block,
                    label,
                    height: self.stack.len(),
                    entry: Vec::new(),
                    label_types: Vec::new(),
                    result_types: Vec::new(),
                    reachable: false,
                    dead: true,
                });
            }
            self.code.push(translated);
            return Ok(());
        }

        if index > 0 && self.fuel_on() {
            charge(self.scratch.fuel, self.stretch_cost[index], &mut self.code);
        }
        if std::mem::take(&mut self.loop_header) && self.fuel_on() && !self.unchecked {
            self.module.meter.store_fuel(self.scratch.fuel, &mut self.code);
            self.module.meter.check_fuel(self.scratch.fuel, &mut self.code);
        }

        let (pops, pushes) =
            self.operators[index].arity.ok_or_else(|| Refusal::Unsupported(format!("the operator {operator:?}")))?;
        let (pops, pushes) = (pops as usize, pushes as usize);
        match *operator {
            Operator::Block { blockty } | Operator::Loop { blockty } | Operator::If { blockty } => {
                if let Operator::If { .. } = operator {
                    self.pop(1);
                }
                let kind = match operator {
                    Operator::Block { .. } => FrameKind::Block,
                    Operator::Loop { .. } => FrameKind::Loop,
                    _ => FrameKind::If,
                };
                self.enter_block(kind, blockty);
                if kind == FrameKind::Loop {
                    self.loop_header = true;
                }
                self.code.push(translated);
            }
            Operator::Br { relative_depth } => {
                self.branch(relative_depth, &[]);
                self.code.push(Instruction::Br(self.branch_depth(relative_depth)));
                self.become_unreachable();
            }
            Operator::BrIf { relative_depth } => {
                self.branch(relative_depth, &[ValType::I32]);
                self.pop(1);
                self.code.push(Instruction::BrIf(self.branch_depth(relative_depth)));
            }
            Operator::BrTable { ref targets } => {
                let depths: Vec<u32> = targets
                    .targets()
                    .chain(std::iter::once(Ok(targets.default())))
                    .collect::<Result<_, _>>()
                    .map_err(|error| Refusal::Invalid(error.to_string()))?;
                for &depth in &depths {
                    self.branch(depth, &[ValType::I32]);
                }
                self.pop(1);
                let (&default, targets) = depths.split_last().expect("br_table has a default");
                let targets: Vec<u32> = targets.iter().map(|&depth| self.branch_depth(depth)).collect();
                self.code.push(Instruction::BrTable(targets.into(), self.branch_depth(default)));
                self.become_unreachable();
            }
            Operator::Return => {
                let results = self.results.clone();
                self.observe(&results, &[]);
                self.code.push(Instruction::Br(self.branch_depth(self.frames.len() as u32 - 1)));
                self.become_unreachable();
            }
            Operator::Call { function_index } => {
                let type_index = self.module.function_types[function_index as usize];
                self.call(type_index, false, translated, false);
            }
            Operator::CallIndirect { type_index, .. } => self.call(type_index, true, translated, false),
            Operator::ReturnCall { function_index } => {
                let type_index = self.module.function_types[function_index as usize];
                self.call(type_index, false, translated, true);
            }
            Operator::ReturnCallIndirect { type_index, .. } => self.call(type_index, true, translated, true),
            Operator::Unreachable => {
                if self.fuel_on() {
                    self.module.meter.store_fuel(self.scratch.fuel, &mut self.code);
                }
                self.code.push(translated);
                self.become_unreachable();
            }
            Operator::MemoryGrow { mem } => {
                self.module.meter.check_growth(Growth::Memory(mem), &mut self.code);
                self.generic(pops, pushes, translated);
                let bound = self.module.memory_bounds.get(mem as usize).copied().unwrap_or(MemoryBound::Imported);
                self.module.meter.check_grown(mem, bound, &mut self.code);
            }
            Operator::TableGrow { table } => {
                self.module.meter.check_growth(Growth::Table(table), &mut self.code);
                self.generic(pops, pushes, translated);
            }
            Operator::LocalGet { local_index } => {
                let dirty = self.dirty_locals[local_index as usize];
                let ty = self.local_types[local_index as usize];
                self.stack.push((dirty && is_float(ty)).then_some(ty));
                self.code.push(translated);
            }
            Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                let dirt = self.top();
                if dirt.is_some() && !self.dirty_locals[local_index as usize] {
                    self.dirty_locals[local_index as usize] = true;
                    self.changed = true;
                }
                if let Operator::LocalSet { .. } = operator {
                    self.pop(1);
                }
                self.code.push(translated);
            }
            Operator::GlobalSet { .. } => {
                self.canonicalize_top();
                self.pop(1);
                self.code.push(translated);
            }
            Operator::Select | Operator::TypedSelect { .. } | Operator::TypedSelectMulti { .. } => {
                self.pop(1);
                let second = self.pop_one();
                let first = self.pop_one();
                self.stack.push(first.or(second));
                self.code.push(translated);
            }
            _ => match nan::effect(operator) {
                Effect::ProducesDirty(ty) => {
                    self.pop(pops);
                    self.stack.push(Some(ty));
                    self.code.push(translated);
                }
                Effect::PassesOn => {
                    let dirt = self.pop_one();
                    self.stack.push(dirt);
                    self.code.push(translated);
                }
                Effect::CopySign => {
                    self.canonicalize_top();
                    self.pop(1);
                    let magnitude = self.pop_one();
                    self.stack.push(magnitude);
                    self.code.push(translated);
                }
                Effect::ObservesTop => {
                    self.canonicalize_top();
                    self.generic(pops, pushes, translated);
                }
                Effect::VectorResult(lanes) => {
                    self.generic(pops, pushes, translated);
                    if self.module.options.nan_canonicalization {
                        let scratch = self.scratch.for_canonicalizing(ValType::V128);
                        nan::canonicalize(ValType::V128, lanes, scratch, &mut self.code);
                    }
                }
                Effect::Neutral => self.generic(pops, pushes, translated),
            },
        }
        self.max_height = self.max_height.max(self.stack.len());
        Ok(())
    }

    fn generic(&mut self, pops: usize, pushes: usize, translated: Instruction<'a>) {
        self.pop(pops);
        self.stack.extend(std::iter::repeat_n(None, pushes));
        self.code.push(translated);
    }

    fn pop(&mut self, count: usize) {
        let floor = self.frame().height;
        let keep = self.stack.len().saturating_sub(count).max(floor);
        self.stack.truncate(keep);
    }

    fn pop_one(&mut self) -> Dirt {
        let dirt = self.top();
        self.pop(1);
        dirt
    }

    fn top(&self) -> Dirt {
        if self.stack.len() > self.frame().height { self.stack.last().copied().flatten() } else { None }
    }

    fn become_unreachable(&mut self) {
        let height = self.frame().height;
        self.stack.truncate(height);
        self.frames.last_mut().expect("a frame").reachable = false;
    }

    fn block_signature(&self, blockty: BlockType) -> (Vec<ValType>, Vec<ValType>) {
        match blockty {
            BlockType::Empty => (Vec::new(), Vec::new()),
            BlockType::Type(ty) => (Vec::new(), vec![ty]),
            BlockType::FuncType(index) => self.module.types[index as usize].clone(),
        }
    }

    fn enter_block(&mut self, kind: FrameKind, blockty: BlockType) {
        let (params, results) = self.block_signature(blockty);
        let height = self.stack.len() - params.len();
        let label_types = if kind == FrameKind::Loop { params.clone() } else { results.clone() };
        let label = self.new_label(label_types.len());
        let mut entry: Vec<Dirt> = self.stack[height..].to_vec();
        if kind == FrameKind::Loop {
            // A loop's parameters are its entry values and whatever every branch back brings.
            self.merge(label, &entry);
            entry = dirt_of(&self.labels[label], &params);
            self.stack.truncate(height);
            self.stack.extend(entry.iter().copied());
        }
        self.frames.push(Frame {
            kind,
            label,
            height,
            entry,
            label_types,
            result_types: results,
            reachable: true,
            dead: false,
        });
    }

    fn merge(&mut self, label: usize, values: &[Dirt]) {
        for (known, value) in self.labels[label].iter_mut().zip(values) {
            if value.is_some() && !*known {
                *known = true;
                self.changed = true;
            }
        }
    }

    /// A branch to the label `relative_depth` out, with its values on the stack below the
    /// `skipped` ones (the condition or index of `br_if` and `br_table`).
    fn branch(&mut self, relative_depth: u32, skipped: &[ValType]) {
        let target = self.frames.len() - 1 - relative_depth as usize;
        if target == 0 {
            // Leaving the function: its results are observed.
            let results = self.results.clone();
            self.observe(&results, skipped);
            return;
        }
        let (label, count) = (self.frames[target].label, self.frames[target].label_types.len());
        let below = self.stack.len() - skipped.len();
        let values = self.stack[below - count..below].to_vec();
        self.merge(label, &values);
        self.targeted[label] = true;
    }

    fn on_else(&mut self, translated: Instruction<'a>) -> Result<(), Refusal> {
        let frame = self.frames.last().expect("an if frame");
        if !frame.dead {
            if frame.reachable {
                let values = self.stack[self.stack.len() - frame.result_types.len()..].to_vec();
                let label = frame.label;
                self.merge(label, &values);
                // The then-branch falls through to the code after the `end`.
                self.targeted[label] = true;
            }
            let frame = self.frames.last_mut().expect("an if frame");
            frame.kind = FrameKind::Else;
            frame.reachable = true;
            let (height, entry) = (frame.height, frame.entry.clone());
            self.stack.truncate(height);
            self.stack.extend(entry);
        }
        self.loop_header = false;
        self.code.push(translated);
        Ok(())
    }

    fn on_end(&mut self, translated: Instruction<'a>) -> Result<(), Refusal> {
        self.loop_header = false;
        if self.frames.len() == 1 {
            if self.reachable() {
                let results = self.results.clone();
                self.observe(&results, &[]);
            }
            // Closes the wrapper block; the caller adds the epilogue and the function's end.
            self.code.push(translated);
            self.frames.pop();
            return Ok(());
        }
        let frame = self.frames.pop().expect("a frame to end");
        self.code.push(translated);
        if frame.dead {
            return Ok(());
        }
        let fallthrough: Vec<Dirt> = if frame.reachable {
            self.stack[self.stack.len() - frame.result_types.len()..].to_vec()
        } else {
            vec![None; frame.result_types.len()]
        };
        let reachable_after = match frame.kind {
            FrameKind::Loop => frame.reachable,
            FrameKind::If => {
                // No `else`: the missing one passes the parameters through as the results.
                self.merge(frame.label, &frame.entry);
                true
            }
            _ => frame.reachable || self.targeted[frame.label],
        };
        let results = match frame.kind {
            FrameKind::Loop => fallthrough,
            _ => {
                if frame.reachable {
                    self.merge(frame.label, &fallthrough);
                }
                dirt_of(&self.labels[frame.label], &frame.result_types)
            }
        };
        self.stack.truncate(frame.height);
        self.stack.extend(results);
        self.frames.last_mut().expect("the enclosing frame").reachable = reachable_after;
        self.max_height = self.max_height.max(self.stack.len());
        Ok(())
    }

    fn call(&mut self, type_index: u32, indirect: bool, translated: Instruction<'a>, tail: bool) {
        let (params, results) = self.module.types[type_index as usize].clone();
        let skipped: &[ValType] = if indirect { &[ValType::I32] } else { &[] };
        self.observe(&params, skipped);
        if self.fuel_on() {
            self.module.meter.store_fuel(self.scratch.fuel, &mut self.code);
        }
        if tail {
            // The callee's frame replaces this one, which is left now. The frame's size is only
            // known once the whole body has been walked: a placeholder marks the place.
            self.tail_calls.push(self.code.len());
            self.code.push(Instruction::Nop);
            self.code.push(translated);
            self.become_unreachable();
            return;
        }
        self.pop(params.len() + skipped.len());
        self.stack.extend(std::iter::repeat_n(None, results.len()));
        self.code.push(translated);
        if self.fuel_on() {
            self.module.meter.load_fuel(&mut self.code);
            self.code.push(Instruction::LocalSet(self.scratch.fuel));
        }
    }

    /// Canonicalises the dirty ones among the `types.len()` values below the top `skipped`
    /// values of the stack, which all stay where they are.
    fn observe(&mut self, types: &[ValType], skipped: &[ValType]) {
        let top = self.stack.len();
        let first = top - skipped.len() - types.len();
        let Some(deepest_dirty) = (first..top - skipped.len()).find(|&slot| self.stack[slot].is_some()) else {
            return;
        };
        if !self.module.options.nan_canonicalization {
            self.stack[first..top - skipped.len()].iter_mut().for_each(|dirt| *dirt = None);
            return;
        }
        if skipped.is_empty() && deepest_dirty == top - 1 {
            self.canonicalize_top();
            return;
        }
        // Take the values off down to the deepest dirty one, and put them back canonicalised.
        let all_types: Vec<ValType> = types.iter().chain(skipped).copied().collect();
        let slot_type = |slot: usize| all_types[slot - first];
        let mut spilled = Vec::new();
        for slot in (deepest_dirty..top).rev() {
            let local = self.scratch.for_spilling(slot_type(slot), top - 1 - slot);
            self.code.push(Instruction::LocalSet(local));
            spilled.push((slot, local));
        }
        for &(slot, local) in spilled.iter().rev() {
            self.code.push(Instruction::LocalGet(local));
            if let Some(ty) = self.stack[slot].take() {
                let scratch = self.scratch.for_canonicalizing(ty);
                nan::canonicalize(ty, ty, scratch, &mut self.code);
            }
        }
    }

    /// Canonicalises the value on top of the stack if it may be dirty.
    fn canonicalize_top(&mut self) {
        let Some(ty) = self.top() else { return };
        if self.module.options.nan_canonicalization {
            let scratch = self.scratch.for_canonicalizing(ty);
            nan::canonicalize(ty, ty, scratch, &mut self.code);
        }
        *self.stack.last_mut().expect("a value on top") = None;
    }
}

/// The dirt of values of `types` whose dirtiness is `bits`.
fn dirt_of(bits: &[bool], types: &[ValType]) -> Vec<Dirt> {
    bits.iter().zip(types).map(|(&dirty, &ty)| (dirty && is_float(ty)).then_some(ty)).collect()
}

fn is_float(ty: ValType) -> bool {
    matches!(ty, ValType::F32 | ValType::F64)
}
