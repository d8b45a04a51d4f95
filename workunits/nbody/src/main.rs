//! `nbody BODIES STEPS SEED`: simulates a cluster of BODIES stars for STEPS time steps from
//! initial conditions drawn from SEED, and prints the energy at the start and the end and
//! the final positions. Without arguments the three numbers are read from standard input.
//!
//! While it runs it keeps `progress` (its fraction done) and `checkpoint` (its state) up to
//! date in the working directory, and on starting it resumes from a `checkpoint` left there
//! by an earlier, interrupted run of the same parameters.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use nbody::Params;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("nbody: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input).map_err(|error| format!("cannot read standard input: {error}"))?;
        args = input.split_whitespace().map(str::to_owned).collect();
    }
    let [bodies, steps, seed] = args.as_slice() else {
        return Err("usage: nbody BODIES STEPS SEED (or `BODIES STEPS SEED` on standard input)".into());
    };
    let invalid = |text: &str| format!("{text:?} is not a non-negative integer");
    let params = Params {
        bodies: bodies.parse().map_err(|_| invalid(bodies))?,
        steps: steps.parse().map_err(|_| invalid(steps))?,
        seed: seed.parse().map_err(|_| invalid(seed))?,
    };
    params.validate()?;
    let output = nbody::run(params, Path::new("."), &mut std::io::stderr())
        .map_err(|error| format!("cannot keep the progress or checkpoint file: {error}"))?;
    std::io::stdout().write_all(output.as_bytes()).map_err(|error| format!("cannot write the output: {error}"))
}
