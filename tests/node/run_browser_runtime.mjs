// Runs a work unit with the browser volunteer's own runtime (web/static/contribute/), in
// Node's V8: the same instrumentation (instrument.wasm), WASI, limits, classification and
// output archive as a tab, without a browser. The differential tests compare what it prints
// with the native client's `wasmgrid exec --json`.
//
//   node run_browser_runtime.mjs MODULE FUEL MEMORY_BYTES OUTPUT_BYTES SCRATCH_BYTES SEED STDIN ARCHIVE [--input NAME=PATH]... [-- ARGS...]
//
// Prints one JSON line: outcome, reason, fuel used (a string: it may not fit a double),
// exit status, the output's SHA-256 and the error's stderr; writes the archive to ARCHIVE
// when the run succeeded.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const contribute = join(dirname(fileURLToPath(import.meta.url)), '../../web/static/contribute');
const { Instrumenter } = await import(join(contribute, 'instrument.js'));
const { prepare, run } = await import(join(contribute, 'runtime.js'));

const [modulePath, fuel, memory, output, scratch, seed, stdinPath, archivePath, ...rest] = process.argv.slice(2);
const inputs = [];
let args = [];
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === '--') {
    args = rest.slice(i + 1);
    break;
  }
  if (rest[i] === '--input') {
    const [name, path] = rest[++i].split(/=(.*)/s);
    inputs.push({ name, data: new Uint8Array(readFileSync(path)) });
  }
}

const instrumenter = await Instrumenter.load(readFileSync(join(contribute, 'instrument.wasm')));
const prepared = await prepare(instrumenter, new Uint8Array(readFileSync(modulePath)));
const report = prepared.failure ?? await run(instrumenter, prepared, {
  args,
  stdin: new Uint8Array(readFileSync(stdinPath)),
  inputs,
  limits: { fuel: BigInt(fuel), memory_bytes: BigInt(memory), output_bytes: BigInt(output) },
  seed: BigInt(seed),
  scratchLimit: Number(scratch),
});
if (report.archive) writeFileSync(archivePath, report.archive);
console.log(JSON.stringify({
  outcome: report.outcome,
  reason: report.reason ?? null,
  fuelUsed: String(report.fuelUsed ?? 0n),
  exitStatus: report.exitStatus ?? null,
  outputSha256: report.outputHash ?? null,
  stderr: report.stderr ?? '',
}));
