// The deterministic instrumentation pass, as the native client runs it: `instrument.wasm` is
// the `wasmgrid-instrument` crate built for the browser (web/instrument, web/build-instrument),
// behind a C ABI of a few functions. This file is its JavaScript side.

const decoder = new TextDecoder();

export class Instrumenter {
  /** An instrumenter from `instrument.wasm`, given compiled (a WebAssembly.Module) or as bytes. */
  static async load(wasm) {
    const instance = wasm instanceof WebAssembly.Module
      ? await WebAssembly.instantiate(wasm, {})
      : (await WebAssembly.instantiate(wasm, {})).instance;
    return new Instrumenter(instance.exports);
  }

  constructor(exports) {
    this.exports = exports;
    /** The pass's version: results are compared only within one version. */
    this.version = exports.wasmgrid_version();
    /** The stack height past which the instrumented module traps (in the pass's units). */
    this.stackLimit = exports.wasmgrid_stack_limit();
    /** The most elements a table may have. */
    this.maxTableElements = BigInt(exports.wasmgrid_max_table_elements());
  }

  /**
   * The module `wasm` (bytes) instrumented for any engine:
   * { wasm, initialMemoryBytes, initialTableElements }, or { refusal } saying why it cannot be.
   */
  instrument(wasm) {
    const exports = this.exports;
    const input = exports.wasmgrid_alloc(wasm.length);
    new Uint8Array(exports.memory.buffer, input >>> 0, wasm.length).set(wasm);
    const status = exports.wasmgrid_instrument(input, wasm.length);
    exports.wasmgrid_free(input, wasm.length);
    // Read the result only now: the call may have grown (and so replaced) the memory's buffer.
    const result = new Uint8Array(exports.memory.buffer, exports.wasmgrid_result_ptr() >>> 0, exports.wasmgrid_result_len() >>> 0).slice();
    if (status !== 0) return { refusal: decoder.decode(result) };
    return {
      wasm: result,
      initialMemoryBytes: BigInt.asUintN(64, exports.wasmgrid_initial_memory_bytes()),
      initialTableElements: BigInt.asUintN(64, exports.wasmgrid_initial_table_elements()),
    };
  }
}
