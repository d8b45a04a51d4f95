//! `nbody-inputs --out FILE.jsonl [--count 50] [--bodies 64] [--steps 20000]`: writes a
//! batch of nbody work units in the jobs format (see `workunits/README.md`), one line per
//! work unit: `count` simulations of the same size, seeds 1 to `count`, named `sim-0001`...

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("nbody-inputs: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    const USAGE: &str = "usage: nbody-inputs --out FILE.jsonl [--count 50] [--bodies 64] [--steps 20000]";
    let options =
        parse_options(&["--out", "--count", "--bodies", "--steps"]).map_err(|error| format!("{error}\n{USAGE}"))?;
    let out = PathBuf::from(options.get("--out").ok_or(USAGE)?);
    let count = number(&options, "--count", 50)?;
    let bodies = number(&options, "--bodies", 64)?;
    let steps = number(&options, "--steps", 20_000)?;
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
    if let Some(parent) = out.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    std::fs::write(&out, jobs).map_err(|error| format!("cannot write {}: {error}", out.display()))?;
    println!("{count} jobs in {}", out.display());
    Ok(())
}

/// The `--name value` options on the command line, each one of `known` and given once.
fn parse_options(known: &[&str]) -> Result<HashMap<String, String>, String> {
    let mut options = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(name) = args.next() {
        if !known.contains(&name.as_str()) {
            return Err(format!("unknown argument {name:?}"));
        }
        let value = args.next().ok_or_else(|| format!("{name} needs a value"))?;
        if options.insert(name.clone(), value).is_some() {
            return Err(format!("{name} is given twice"));
        }
    }
    Ok(options)
}

fn number(options: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, String> {
    options
        .get(name)
        .map_or(Ok(default), |text| text.parse().map_err(|_| format!("{name} {text:?} is not a non-negative integer")))
}
