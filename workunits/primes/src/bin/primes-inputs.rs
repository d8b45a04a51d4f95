//! `primes-inputs --out DIR [--count 50] [--start 0] [--span 10000000]`: writes the inputs
//! of a batch of primes work units, one file per work unit (`DIR/range-0000`, ...), each
//! holding `LOW HIGH`: `count` consecutive ranges of `span` numbers from `start`. Each file
//! becomes the standard input of one work unit under `wasmgrid batch submit --inputs DIR`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// The largest HIGH the primes module accepts.
const MAX_HIGH: u64 = 1 << 52;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("primes-inputs: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    const USAGE: &str = "usage: primes-inputs --out DIR [--count 50] [--start 0] [--span 10000000]";
    let options =
        parse_options(&["--out", "--count", "--start", "--span"]).map_err(|error| format!("{error}\n{USAGE}"))?;
    let out = PathBuf::from(options.get("--out").ok_or(USAGE)?);
    let count = number(&options, "--count", 50)?;
    let start = number(&options, "--start", 0)?;
    let span = number(&options, "--span", 10_000_000)?;
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
