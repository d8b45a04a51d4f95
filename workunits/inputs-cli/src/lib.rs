//! What the examples' input generators (`primes-inputs`, `mandelbrot-inputs`,
//! `nbody-inputs`) share: `--name value` options, each known and given once; numbers with
//! defaults; writing a file whose folder may not exist yet; and a `main` that prints the
//! error and exits with status 2. No dependencies, so the examples stay small to build.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

/// Runs a generator: exit status 0 when `run` succeeds, otherwise its message, after the
/// program's name, on standard error and status 2.
pub fn main(program: &str, run: impl FnOnce() -> Result<(), String>) -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{program}: {message}");
            ExitCode::from(2)
        }
    }
}

/// The `--name value` options of a command line.
#[derive(Debug)]
pub struct Options {
    values: HashMap<String, String>,
    usage: &'static str,
}

impl Options {
    /// The options of this process's command line; each must be one of `known`, and given
    /// once. Errors end with `usage`.
    pub fn parse(known: &[&str], usage: &'static str) -> Result<Self, String> {
        Self::parse_from(std::env::args().skip(1), known, usage)
    }

    pub fn parse_from(
        args: impl IntoIterator<Item = String>,
        known: &[&str],
        usage: &'static str,
    ) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut args = args.into_iter();
        while let Some(name) = args.next() {
            if !known.contains(&name.as_str()) {
                return Err(format!("unknown argument {name:?}\n{usage}"));
            }
            let value = args.next().ok_or_else(|| format!("{name} needs a value\n{usage}"))?;
            if values.insert(name.clone(), value).is_some() {
                return Err(format!("{name} is given twice\n{usage}"));
            }
        }
        Ok(Self { values, usage })
    }

    /// A path that must be given.
    pub fn required_path(&self, name: &str) -> Result<PathBuf, String> {
        self.values.get(name).map(PathBuf::from).ok_or_else(|| self.usage.to_owned())
    }

    /// A non-negative integer, or `default` when not given.
    pub fn number<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        self.values.get(name).map_or(Ok(default), |text| {
            text.parse().map_err(|_| format!("{name} {text:?} is not a non-negative integer"))
        })
    }
}

/// Writes `contents` to `path`, making its folder first if need be.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    std::fs::write(path, contents).map_err(|error| format!("cannot write {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = "usage: gen --out FILE [--count 5]";

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse_from(args.iter().map(|arg| arg.to_string()), &["--out", "--count"], USAGE)
    }

    #[test]
    fn options_are_known_given_once_and_with_a_value() {
        let options = parse(&["--count", "7", "--out", "jobs.jsonl"]).unwrap();
        assert_eq!(options.number("--count", 5u64), Ok(7));
        assert_eq!(options.required_path("--out"), Ok(PathBuf::from("jobs.jsonl")));
        assert_eq!(parse(&[]).unwrap().number("--count", 5u32), Ok(5), "the default");
        assert_eq!(parse(&[]).unwrap().required_path("--out"), Err(USAGE.to_owned()));
        for (args, error) in [
            (&["--size", "3"][..], "unknown argument \"--size\""),
            (&["--count"][..], "--count needs a value"),
            (&["--count", "1", "--count", "2"][..], "--count is given twice"),
        ] {
            assert_eq!(parse(args).unwrap_err(), format!("{error}\n{USAGE}"));
        }
        let negative = parse(&["--count", "-1"]).unwrap().number("--count", 5u64);
        assert_eq!(negative, Err("--count \"-1\" is not a non-negative integer".to_owned()));
    }

    #[test]
    fn files_are_written_into_folders_made_for_them() {
        let dir = std::env::temp_dir().join(format!("inputs-cli-test-{}", std::process::id()));
        let path = dir.join("a/b/jobs.jsonl");
        write_file(&path, "{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
