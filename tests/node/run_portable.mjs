// Runs a module instrumented for any engine (`wasmgrid instrument --target portable`) in
// Node's V8 through node:wasi, with the sandbox's contract: the arguments after "main.wasm",
// standard input from a file, /input read-only (by convention: node:wasi cannot enforce it),
// /scratch (also the working directory), no environment, random numbers seeded as the
// sandbox seeds them and the sandbox's frozen clocks. Prints one JSON line: the outcome and
// the fuel used, read from the module's exported counter.
//
//   node --stack-size=4000 run_portable.mjs MODULE FUEL MEMORY_BYTES SEED STDIN INPUT SCRATCH STDOUT STDERR [ARGS...]
import { createHash } from 'node:crypto';
import { openSync, readFileSync, closeSync } from 'node:fs';
import { WASI } from 'node:wasi';

const [module, fuel, memoryLimit, seed, stdinPath, inputDir, scratchDir, stdoutPath, stderrPath, ...args] = process.argv.slice(2);
const stdin = openSync(stdinPath, 'r');
const stdout = openSync(stdoutPath, 'w');
const stderr = openSync(stderrPath, 'w');
const wasi = new WASI({
  version: 'preview1',
  args: ['main.wasm', ...args],
  env: {},
  preopens: { '/input': inputDir, '/scratch': scratchDir, '.': scratchDir },
  stdin, stdout, stderr,
  returnOnExit: true,
});

// The sandbox's random numbers: SHA-256 in counter mode over the seed (sandbox/src/determinism.rs).
const seedBytes = Buffer.alloc(8);
seedBytes.writeBigUInt64LE(BigInt(seed));
let counter = 0n;
let block = Buffer.alloc(0);
function randomByte() {
  if (block.length === 0) {
    const counterBytes = Buffer.alloc(8);
    counterBytes.writeBigUInt64LE(counter++);
    block = createHash('sha256').update('wasmgrid random v1').update(seedBytes).update(counterBytes).digest();
  }
  const byte = block[0];
  block = block.subarray(1);
  return byte;
}

let memory;
const ERRNO_SUCCESS = 0, ERRNO_INVAL = 28;
let monotonicReadings = 0n;
const deterministic = {
  random_get(pointer, length) {
    // wasmtime-wasi draws a u32 for each byte and keeps its low byte: so must we.
    const bytes = new Uint8Array(memory.buffer, pointer, length);
    for (let i = 0; i < length; i++) {
      bytes[i] = randomByte();
      randomByte(); randomByte(); randomByte();
    }
    return ERRNO_SUCCESS;
  },
  // Realtime frozen at the epoch (resolution 1 s); monotonic one microsecond per reading.
  clock_time_get(id, _precision, result) {
    const view = new DataView(memory.buffer);
    if (id === 0) view.setBigUint64(result, 0n, true);
    else if (id === 1) view.setBigUint64(result, (++monotonicReadings) * 1000n, true);
    else return ERRNO_INVAL;
    return ERRNO_SUCCESS;
  },
  clock_res_get(id, result) {
    const view = new DataView(memory.buffer);
    if (id === 0) view.setBigUint64(result, 1000000000n, true);
    else if (id === 1) view.setBigUint64(result, 1000n, true);
    else return ERRNO_INVAL;
    return ERRNO_SUCCESS;
  },
};

const limit = new WebAssembly.Global({ value: 'i64', mutable: false }, BigInt(fuel));
const memoryBytes = new WebAssembly.Global({ value: 'i64', mutable: false }, BigInt(memoryLimit));
const compiled = await WebAssembly.compile(readFileSync(module));
const instance = await WebAssembly.instantiate(compiled, {
  wasi_snapshot_preview1: { ...wasi.wasiImport, ...deterministic },
  wasmgrid: { fuel_limit: limit, memory_limit: memoryBytes },
});
memory = instance.exports.memory;
let outcome = 'success', exitCode = 0, error = null;
try {
  exitCode = wasi.start(instance);
  if (exitCode !== 0) outcome = 'exit';
} catch (thrown) {
  outcome = 'trap';
  error = String(thrown);
}
for (const fd of [stdin, stdout, stderr]) closeSync(fd);
console.log(JSON.stringify({
  outcome, exitCode, error,
  fuelUsed: instance.exports.wasmgrid_fuel_used.value.toString(),
  stackUsed: instance.exports.wasmgrid_stack_used.value.toString(),
}));
