//! Writes the machine code the sandbox compiles a module to, for reading the hot loops
//! (README.md, "Client speed", says what was found there):
//!
//! ```sh
//! cargo run --release -p wasmgrid-sandbox --example machine_code -- MODULE.wasm OUT.elf [--plain]
//! objdump -d --no-show-raw-insn OUT.elf
//! ```
//!
//! The module (binary or text) is instrumented and compiled with the sandbox's own engine
//! settings; with `--plain`, compiled as it is with wasmtime's defaults, for comparison. The
//! instrumented module is written next to the object, as `OUT.elf.wasm`.

use anyhow::{Context, bail};
use wasmgrid_sandbox::engine::{self, Backend, EngineSettings};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (module, out, plain) = match args.as_slice() {
        [module, out] => (module, out, false),
        [module, out, flag] if flag == "--plain" => (module, out, true),
        _ => bail!("usage: machine_code MODULE.wasm OUT.elf [--plain]"),
    };
    let wasm = wat::parse_file(module).with_context(|| format!("reading {module}"))?;
    let (wasm, config) = if plain {
        (wasm, wasmtime::Config::new())
    } else {
        let instrumented = wasmgrid_instrument::instrument(&wasm, wasmgrid_instrument::Target::Sandbox)?;
        std::fs::write(format!("{out}.wasm"), &instrumented)?;
        (instrumented, engine::config(EngineSettings::FULL, Backend::Cranelift)?)
    };
    let engine = wasmtime::Engine::new(&config)?;
    std::fs::write(out, engine.precompile_module(&wasm)?).with_context(|| format!("writing {out}"))?;
    Ok(())
}
