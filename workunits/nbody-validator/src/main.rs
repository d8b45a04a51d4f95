//! `nbody-validator`: the validator module of the nbody app. The server runs it with two
//! outputs of one work unit unpacked under `/input/a` and `/input/b`; it exits with 0 if
//! they are the same answer, 1 if they differ (with the reason on standard error), and 2 if
//! it cannot read them. See "Validators" in `workunits/README.md`.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    match nbody_validator::compare_outputs(Path::new("/input/a"), Path::new("/input/b")) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(difference)) => {
            eprintln!("nbody-validator: the outputs differ: {difference}");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("nbody-validator: cannot read the outputs: {error}");
            ExitCode::from(2)
        }
    }
}
