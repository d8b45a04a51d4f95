//! `primes LOW HIGH`: counts the primes in `[LOW, HIGH)`, prints the count on standard
//! output and writes the primes themselves, one per line, to `primes.txt` in the working
//! directory (the scratch directory under wasmgrid). Without arguments, `LOW HIGH` is read
//! from standard input, so a folder of input files can be submitted as a batch.
//!
//! With `--count-only` nothing is listed (for benchmarks, where writing a file would
//! measure the disk rather than the sieve).

use std::io::{BufWriter, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("primes: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let count_only = args.iter().any(|arg| arg == "--count-only");
    args.retain(|arg| arg != "--count-only");
    if args.is_empty() {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input).map_err(|error| format!("cannot read standard input: {error}"))?;
        args = input.split_whitespace().map(str::to_owned).collect();
    }
    let [low, high] = args.as_slice() else {
        return Err("usage: primes LOW HIGH (or `LOW HIGH` on standard input)".into());
    };
    let parse = |text: &str| text.parse::<u64>().map_err(|_| format!("{text:?} is not a non-negative integer"));
    let (low, high) = (parse(low)?, parse(high)?);
    if high > 1 << 52 {
        return Err("HIGH must be at most 2^52".into());
    }

    let count = if count_only {
        primes::count_primes(low, high)
    } else {
        let file = std::fs::File::create("primes.txt").map_err(|error| format!("cannot create primes.txt: {error}"))?;
        let mut list = BufWriter::new(file);
        let mut count = 0u64;
        let mut failure = None;
        primes::for_each_prime(low, high, |p| {
            count += 1;
            if failure.is_none()
                && let Err(error) = writeln!(list, "{p}")
            {
                failure = Some(error);
            }
        });
        if let Some(error) = failure {
            return Err(format!("cannot write primes.txt: {error}"));
        }
        list.flush().map_err(|error| format!("cannot write primes.txt: {error}"))?;
        count
    };
    println!("{count} primes in [{low}, {high})");
    Ok(())
}
