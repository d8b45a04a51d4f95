//! `primes-inputs --out DIR [--count 50] [--start 0] [--span 10000000]`: writes the inputs
//! of a batch of primes work units, one file per work unit (`DIR/range-0000`, ...), each
//! holding `LOW HIGH`: `count` consecutive ranges of `span` numbers from `start`. Each file
//! becomes the standard input of one work unit under `wasmgrid batch submit --inputs DIR`.

use std::process::ExitCode;

use inputs_cli::Options;

/// The largest HIGH the primes module accepts.
const MAX_HIGH: u64 = 1 << 52;

fn main() -> ExitCode {
    inputs_cli::main("primes-inputs", run)
}

fn run() -> Result<(), String> {
    const USAGE: &str = "usage: primes-inputs --out DIR [--count 50] [--start 0] [--span 10000000]";
    let options = Options::parse(&["--out", "--count", "--start", "--span"], USAGE)?;
    let out = options.required_path("--out")?;
    let count: u64 = options.number("--count", 50)?;
    let start = options.number("--start", 0)?;
    let span = options.number("--span", 10_000_000)?;
    if count == 0 || span == 0 {
        return Err("--count and --span must be positive".into());
    }
    let end = count.checked_mul(span).and_then(|width| width.checked_add(start));
    if end.is_none_or(|end| end > MAX_HIGH) {
        return Err(format!("the ranges must end by 2^52 = {MAX_HIGH}"));
    }
    // Files left from an earlier, larger batch would become work units of this one.
    if out.read_dir().is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(format!("{} is not empty: choose a new directory", out.display()));
    }
    std::fs::create_dir_all(&out).map_err(|error| format!("cannot create {}: {error}", out.display()))?;
    for index in 0..count {
        let low = start + index * span;
        let path = out.join(format!("range-{index:04}"));
        std::fs::write(&path, format!("{low} {}\n", low + span))
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    println!("{count} inputs in {}", out.display());
    Ok(())
}
