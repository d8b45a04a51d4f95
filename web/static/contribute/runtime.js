// One work unit's run in a browser (or Node, which the differential tests use): the module
// instrumented by the same pass as on a native client, run against the WASI of wasi.js within
// the work unit's limits, its end classified and reported in the native client's words, and
// its output packed into the same archive. The wall-clock limit is not here: whoever started
// the run's worker enforces it by terminating the worker (see page.js).
//
// A report is { outcome, reason, fuelUsed, runTimeMs, exitStatus, stderr, archive, outputHash }:
// - outcome `success`, with the archive and its SHA-256 (lowercase hex);
// - `error`: the module's fault, the same on every host (a broken limit, a trap, an exit
//   status), `reason` saying which as sandbox/src/lib.rs's RunError says it;
// - `host_error`: this tab cannot run the module (its engine failed to compile it, ran out of
//   stack before the module's own limit, or could not give it memory within its limit), which
//   says nothing about the work unit.

import { CALLS, Exit, LimitBroken, Trap, Wasi } from './wasi.js';
import { PathError, TooLarge, pack } from './tar.js';
import { hex } from './sha256.js';

/** The protocol's OUTPUT_ARCHIVE_ALLOWANCE: the archive's headers, beyond the output limit. */
export const OUTPUT_ARCHIVE_ALLOWANCE = 64 * 1024;

// sandbox/src/limits.rs's names of the limits.
export const LIMIT = {
  fuel: 'fuel limit exceeded',
  wallTime: 'wall-clock time limit exceeded',
  memory: 'memory limit exceeded',
  tables: 'table limit exceeded',
  stack: 'stack depth limit exceeded',
  output: 'output size limit exceeded',
  scratch: 'scratch disk limit exceeded',
};

/** The instrumented module's `wasmgrid_limit_broken` values (wasmgrid_instrument). */
const BROKE_MEMORY_LIMIT = 1;
const BROKE_TABLE_LIMIT = 2;
const BROKE_HOST_MEMORY = 3;

// V8's trap messages, and what wasmtime (so a native client) calls the same trap.
const TRAPS = new Map([
  ['unreachable', 'wasm `unreachable` instruction executed'],
  ['memory access out of bounds', 'out of bounds memory access'],
  ['divide by zero', 'integer divide by zero'],
  ['remainder by zero', 'integer divide by zero'],
  ['divide result unrepresentable', 'integer overflow'],
  ['float unrepresentable in integer range', 'invalid conversion to integer'],
  ['table index is out of bounds', 'undefined element: out of bounds table access'],
  ['element segment out of bounds', 'undefined element: out of bounds table access'],
  ['data segment out of bounds', 'out of bounds memory access'],
  ['operation does not support unaligned accesses', 'unaligned atomic'],
]);

export const moduleError = (reason) => ({ outcome: 'error', reason });
const invalidModule = (reason) => moduleError(`not a valid WASI command module: ${reason}`);
export const hostError = (reason) => ({ outcome: 'host_error', reason: `this host cannot run this module: ${reason}` });

/**
 * Instruments and compiles a work unit's module: { compiled, initialMemoryBytes,
 * initialTableElements, timings: { instrumentMs, compileMs } }, or { failure } (a report)
 * when it cannot run. `instrument: false` compiles the module as it is, to measure what the
 * pass costs (bench-browser): such a run counts no fuel and is not deterministic.
 */
export async function prepare(instrumenter, wasm, { instrument = true } = {}) {
  const started = performance.now();
  let module = { wasm, initialMemoryBytes: 0n, initialTableElements: 0n };
  if (instrument) {
    module = instrumenter.instrument(wasm);
    if (module.refusal !== undefined) return { failure: invalidModule(module.refusal) };
  }
  const instrumented = performance.now();
  let compiled;
  try {
    compiled = await WebAssembly.compile(module.wasm);
  } catch (error) {
    // The pass validated the module: a failure now is this engine's.
    return { failure: hostError(`the browser's engine cannot compile it: ${error.message}`) };
  }
  return {
    compiled,
    initialMemoryBytes: module.initialMemoryBytes,
    initialTableElements: module.initialTableElements,
    timings: { instrumentMs: instrumented - started, compileMs: performance.now() - instrumented },
  };
}

/**
 * Runs a prepared module: task = { args, stdin, inputs: [{ name, data }], limits: { fuel,
 * memory_bytes, output_bytes }, seed, scratchLimit }, with the limits as BigInts.
 * onProgress({ fuelUsed, fraction }) is called now and then from inside the run.
 */
export async function run(instrumenter, prepared, task, onProgress = () => {}) {
  const started = performance.now();
  const report = (fields, fuelUsed = 0n) => ({
    fuelUsed,
    exitStatus: null,
    stderr: '',
    archive: null,
    outputHash: null,
    ...fields,
    runTimeMs: Math.round(performance.now() - started),
  });
  const { limits } = task;
  if (prepared.initialMemoryBytes > limits.memory_bytes) return report(moduleError(LIMIT.memory));
  if (prepared.initialTableElements > instrumenter.maxTableElements) return report(moduleError(LIMIT.tables));
  const missing = missingImport(prepared.compiled);
  if (missing) return report(moduleError(`the sandbox does not provide the import ${missing}`));

  let instance = null;
  let fraction = null;
  let lastProgress = 0;
  const fuelUsed = () => {
    const used = instance?.exports.wasmgrid_fuel_used?.value ?? 0n;
    return used < 0n ? 0n : used > limits.fuel ? limits.fuel : used;
  };
  const progress = (force) => {
    const now = performance.now();
    if (!force && now - lastProgress < 250) return;
    lastProgress = now;
    onProgress({ fuelUsed: fuelUsed(), fraction });
  };
  const wasi = new Wasi({
    args: task.args,
    stdin: task.stdin,
    inputs: task.inputs,
    seed: task.seed,
    stdoutLimit: Number(limits.output_bytes),
    scratchLimit: task.scratchLimit,
    onProgress: (done) => {
      fraction = done;
      progress(true);
    },
    onCall: () => progress(false),
  });
  const imports = {
    wasi_snapshot_preview1: wasi.imports(),
    wasmgrid: {
      fuel_limit: new WebAssembly.Global({ value: 'i64', mutable: false }, limits.fuel),
      memory_limit: new WebAssembly.Global({ value: 'i64', mutable: false }, limits.memory_bytes),
    },
  };

  let ended;
  try {
    instance = await WebAssembly.instantiate(prepared.compiled, imports);
    wasi.start(instance.exports.memory ?? null);
    // The module's start function, which the pass exports for us to call, so that a trap in
    // it leaves the instance (and its counters) in our hands.
    instance.exports.wasmgrid_start?.();
    if (typeof instance.exports._start !== 'function') {
      ended = invalidModule('the module exports no `_start` function: it is not a WASI command');
    } else {
      instance.exports._start();
      ended = { outcome: 'success', exitStatus: 0 };
    }
  } catch (thrown) {
    ended = classify(thrown, instance, instrumenter, limits);
  }
  const ran = performance.now();
  const fuel = fuelUsed();
  const stderr = new TextDecoder().decode(wasi.stderr);
  if (ended.outcome === 'success' && !wasi.scratchWithinLimits()) ended = moduleError(LIMIT.scratch);
  if (ended.outcome !== 'success') return report({ ...ended, stderr }, fuel);

  let archive;
  try {
    archive = pack(wasi.stdout, wasi.outputFiles(), Number(limits.output_bytes), OUTPUT_ARCHIVE_ALLOWANCE);
  } catch (error) {
    if (error instanceof TooLarge) return report({ ...moduleError(error.message), stderr }, fuel);
    if (error instanceof PathError) return report({ ...hostError(`its output cannot be packed: ${error.message}`), stderr }, fuel);
    throw error;
  }
  const packed = performance.now();
  const outputHash = hex(new Uint8Array(await crypto.subtle.digest('SHA-256', archive)));
  // Where the time went, for the benchmark: the run itself, packing, hashing.
  const timings = { runMs: ran - started, packMs: packed - ran, hashMs: performance.now() - packed };
  return report({ outcome: 'success', exitStatus: 0, stderr, archive, outputHash, timings }, fuel);
}

/** The first import a native client would not provide, as `module::name`, if any. */
function missingImport(compiled) {
  for (const { module, name } of WebAssembly.Module.imports(compiled)) {
    const provided = (module === 'wasi_snapshot_preview1' && CALLS.includes(name))
      || (module === 'wasmgrid' && (name === 'fuel_limit' || name === 'memory_limit'));
    if (!provided) return `${module}::${name}`;
  }
  return null;
}

/** Why a run that threw ended, in the native client's words (sandbox/src/lib.rs, `classify`). */
function classify(thrown, instance, instrumenter, limits) {
  if (thrown instanceof Exit) {
    return thrown.code === 0
      ? { outcome: 'success', exitStatus: 0 }
      : { ...moduleError(`exited with status ${thrown.code}`), exitStatus: thrown.code };
  }
  if (thrown instanceof LimitBroken) return moduleError(LIMIT[thrown.limit]);
  const exports = instance?.exports ?? {};
  const broken = exports.wasmgrid_limit_broken?.value ?? 0;
  if (broken === BROKE_MEMORY_LIMIT) return moduleError(LIMIT.memory);
  if (broken === BROKE_TABLE_LIMIT) return moduleError(LIMIT.tables);
  if (broken === BROKE_HOST_MEMORY) {
    return hostError('the browser could not give the module memory it may have (within its limit)');
  }
  if (thrown instanceof Trap) return moduleError(`trap: ${thrown.message}`);
  const fuelUsed = exports.wasmgrid_fuel_used?.value ?? 0n;
  const stackUsed = exports.wasmgrid_stack_used?.value ?? 0n;
  if (thrown instanceof WebAssembly.RuntimeError) {
    const message = thrown.message.replace(/^.*?: /, '');
    if (message === 'unreachable') {
      // wasmgrid_instrument::classify_trap: the pass's own checks end in `unreachable`.
      if (fuelUsed > limits.fuel) return moduleError(LIMIT.fuel);
      if (stackUsed > instrumenter.stackLimit) return moduleError(LIMIT.stack);
    }
    const trap = TRAPS.get(message);
    if (trap) return moduleError(`trap: wasm trap: ${trap}`);
    // V8 says "null function or function signature mismatch" for two traps wasmtime tells
    // apart; a tab cannot say which of the two a native client would report.
    return hostError(`the browser's engine reports a trap a native client names otherwise: ${message}`);
  }
  if (thrown instanceof RangeError && /call stack/i.test(thrown.message)) {
    if (stackUsed > instrumenter.stackLimit) return moduleError(LIMIT.stack);
    // The module stayed within its own stack limit: the tab's stack is what is too small.
    return hostError('the browser ran out of stack before the module reached its stack limit');
  }
  if (thrown instanceof WebAssembly.LinkError) return moduleError(`trap: ${thrown.message}`);
  return hostError(`the browser failed to run it: ${thrown?.message ?? thrown}`);
}
