//! `nbody-inputs --out FILE.jsonl [--count 50] [--bodies 64] [--steps 20000]`: writes a
//! batch of nbody work units in the jobs format (see `workunits/README.md`), one line per
//! work unit: `count` simulations of the same size, seeds 1 to `count`, named `sim-0001`...

use std::fmt::Write as _;
use std::process::ExitCode;

use inputs_cli::Options;

fn main() -> ExitCode {
    inputs_cli::main("nbody-inputs", run)
}

fn run() -> Result<(), String> {
    const USAGE: &str = "usage: nbody-inputs --out FILE.jsonl [--count 50] [--bodies 64] [--steps 20000]";
    let options = Options::parse(&["--out", "--count", "--bodies", "--steps"], USAGE)?;
    let out = options.required_path("--out")?;
    let count: u64 = options.number("--count", 50)?;
    let bodies: u64 = options.number("--bodies", 64)?;
    let steps = options.number("--steps", 20_000)?;
    if count == 0 {
        return Err("--count must be positive".into());
    }
    let bodies = u32::try_from(bodies).map_err(|_| "--bodies is too large".to_owned())?;
    nbody::Params { bodies, steps, seed: 1 }.validate().map_err(|error| error.replace("BODIES", "--bodies"))?;
    // Names and arguments are digits and dashes, so they need no JSON escaping.
    let mut jobs = String::new();
    for seed in 1..=count {
        let _ = writeln!(jobs, r#"{{"name": "sim-{seed:04}", "args": ["{bodies}", "{steps}", "{seed}"]}}"#);
    }
    inputs_cli::write_file(&out, jobs)?;
    println!("{count} jobs in {}", out.display());
    Ok(())
}
