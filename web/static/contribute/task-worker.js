// One task's Web Worker (see page.js): runs one replica and ends. The page sends everything
// the run needs in one message and terminates the worker to stop it (a wall-clock limit, an
// abort, a pause); the worker's own Content-Security-Policy gives it no network at all.
//
// In:  { instrumenter: WebAssembly.Module, module: { bytes } or { prepared }, task } (runtime.js),
//      and `plain: true` to run the module uninstrumented (bench-browser measures the pass so)
// Out: { type: 'prepared', prepared }   the module instrumented and compiled, for the page to
//                                       reuse for later tasks of the same module;
//      { type: 'progress', fuelUsed, fraction };
//      { type: 'done', report };
//      { type: 'failed', message }      the worker itself failed (not the module).

import { Instrumenter } from './instrument.js';
import { prepare, run } from './runtime.js';

self.onmessage = async ({ data }) => {
  try {
    const instrumenter = await Instrumenter.load(data.instrumenter);
    let prepared = data.module.prepared;
    if (!prepared) {
      prepared = await prepare(instrumenter, data.module.bytes, { instrument: !data.plain });
      if (prepared.failure) {
        self.postMessage({ type: 'done', report: { ...prepared.failure, fuelUsed: 0n, runTimeMs: 0, stderr: '' } });
        return;
      }
      self.postMessage({ type: 'prepared', prepared });
    }
    const report = await run(instrumenter, prepared, data.task, (progress) => {
      self.postMessage({ type: 'progress', ...progress });
    });
    self.postMessage({ type: 'done', report }, report.archive ? [report.archive.buffer] : []);
  } catch (error) {
    self.postMessage({ type: 'failed', message: String(error?.stack ?? error) });
  }
};
