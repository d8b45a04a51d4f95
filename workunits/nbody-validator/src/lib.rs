//! Decides whether two outputs of one nbody work unit are the same answer.
//!
//! The sandbox makes a run the same bytes everywhere, so most outputs agree bit for bit; this
//! validator also accepts outputs whose numbers differ in their last digits (from an nbody
//! build with another compiler, say), while anything else (a word, the number of tokens, the
//! set of files) must match exactly. Every comparison is symmetric.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Numbers agree when they differ by at most this fraction of the larger magnitude...
pub const RELATIVE_TOLERANCE: f64 = 1e-9;
/// ...or by at most this much, for numbers near zero (where a relative error means little).
pub const ABSOLUTE_TOLERANCE: f64 = 1e-12;

/// How two outputs differ: the one-line reason a validator prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference(pub String);

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Do two numbers agree within the tolerances? Two NaNs agree (the same non-answer), and
/// infinities agree only with themselves.
pub fn numbers_agree(a: f64, b: f64) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    if !a.is_finite() || !b.is_finite() {
        return false;
    }
    let difference = (a - b).abs();
    difference <= ABSOLUTE_TOLERANCE || difference <= RELATIVE_TOLERANCE * a.abs().max(b.abs())
}

/// Compares two texts token by token (tokens are separated by ASCII whitespace): tokens that
/// both parse as `f64` must agree by [`numbers_agree`], others must be identical.
pub fn compare_text(a: &[u8], b: &[u8]) -> Result<(), Difference> {
    let mut left = tokens(a);
    let mut right = tokens(b);
    let mut index = 0u64;
    loop {
        index += 1;
        let (x, y) = match (left.next(), right.next()) {
            (None, None) => return Ok(()),
            (Some(x), Some(y)) => (x, y),
            _ => {
                let (count_a, count_b) = (tokens(a).count(), tokens(b).count());
                return Err(Difference(format!("{count_a} tokens against {count_b}")));
            }
        };
        if x == y {
            continue;
        }
        let agree = match (number(x), number(y)) {
            (Some(x), Some(y)) => numbers_agree(x, y),
            _ => false,
        };
        if !agree {
            return Err(Difference(format!(
                "token {index} differs: {} against {}",
                String::from_utf8_lossy(x),
                String::from_utf8_lossy(y)
            )));
        }
    }
}

fn tokens(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(u8::is_ascii_whitespace).filter(|token| !token.is_empty())
}

fn number(token: &[u8]) -> Option<f64> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// Compares two unpacked outputs, each a directory holding `stdout` and `files/<path>`:
/// the standard outputs by [`compare_text`], the two sets of file paths exactly, and each
/// file's contents by [`compare_text`]. A missing `files/` directory is an empty one.
/// An error means an output cannot be read, which is not a verdict.
pub fn compare_outputs(a: &Path, b: &Path) -> io::Result<Result<(), Difference>> {
    let read = |path: PathBuf| std::fs::read(&path).map_err(|error| with_path(error, &path));
    if let Err(difference) = compare_text(&read(a.join("stdout"))?, &read(b.join("stdout"))?) {
        return Ok(Err(Difference(format!("stdout: {difference}"))));
    }
    let (files_a, files_b) = (list_files(&a.join("files"))?, list_files(&b.join("files"))?);
    if files_a != files_b {
        let only = |these: &[String], those: &[String]| these.iter().find(|path| !those.contains(path)).cloned();
        let reason = match (only(&files_a, &files_b), only(&files_b, &files_a)) {
            (Some(path), _) => format!("files/{path} is in one output only"),
            (None, Some(path)) => format!("files/{path} is in one output only"),
            (None, None) => unreachable!("different lists of distinct paths differ in a path"),
        };
        return Ok(Err(Difference(reason)));
    }
    for path in &files_a {
        let contents_a = read(a.join("files").join(path))?;
        let contents_b = read(b.join("files").join(path))?;
        if let Err(difference) = compare_text(&contents_a, &contents_b) {
            return Ok(Err(Difference(format!("files/{path}: {difference}"))));
        }
    }
    Ok(Ok(()))
}

fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// The relative paths of the regular files under `root`, sorted; none if it does not exist.
fn list_files(root: &Path) -> io::Result<Vec<String>> {
    let mut files = Vec::new();
    if root.exists() {
        collect(root, "", &mut files)?;
    }
    files.sort();
    Ok(files)
}

fn collect(dir: &Path, prefix: &str, files: &mut Vec<String>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|error| with_path(error, dir))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if entry.file_type()?.is_dir() {
            collect(&entry.path(), &relative, files)?;
        } else {
            files.push(relative);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares both ways round, and checks that the verdicts agree.
    fn compare(a: &str, b: &str) -> Result<(), Difference> {
        let forward = compare_text(a.as_bytes(), b.as_bytes());
        let backward = compare_text(b.as_bytes(), a.as_bytes());
        assert_eq!(forward.is_ok(), backward.is_ok(), "{a:?} and {b:?} are not compared symmetrically");
        forward
    }

    #[test]
    fn identical_and_nearly_equal_outputs_are_equivalent() {
        let output =
            "nbody bodies 2 steps 10 seed 1\nenergy start -3.07340767387739744e-1 end -3.07340954778043240e-1\n";
        assert_eq!(compare(output, output), Ok(()));
        let nudged = "nbody bodies 2 steps 10 seed 1\nenergy start -3.07340767387740000e-1 end -3.0734095477804e-1\n";
        assert_eq!(compare(output, nudged), Ok(()));
        // Whitespace is only a separator, and a number may be written another way.
        assert_eq!(compare("1.0e0  2\n", "1 2.000000000000"), Ok(()));
        // Near zero the absolute tolerance applies.
        assert_eq!(compare("0 1e-13", "-1e-13 -0"), Ok(()));
        assert_eq!(compare("NaN inf", "NaN inf"), Ok(()));
    }

    #[test]
    fn different_numbers_are_rejected() {
        assert_eq!(
            compare("x 1.0 2.0", "x 1.0 2.000001"),
            Err(Difference("token 3 differs: 2.0 against 2.000001".into()))
        );
        assert!(compare("1e-11", "0").is_err());
        assert!(compare("1e300", "inf").is_err());
        assert!(compare("inf", "-inf").is_err());
        assert!(compare("NaN", "0").is_err());
    }

    #[test]
    fn words_must_match_exactly() {
        assert!(compare("seed 1", "Seed 1").is_err());
        assert!(compare("bodies 2", "2 2").is_err());
    }

    #[test]
    fn a_different_token_count_is_rejected() {
        assert_eq!(compare("1 2 3", "1 2"), Err(Difference("3 tokens against 2".into())));
        assert!(compare("", "0").is_err());
        assert_eq!(compare("", " \n"), Ok(()));
    }

    #[test]
    fn tolerances_are_symmetric_at_the_boundary() {
        let (a, b) = (1.0, 1.0 + 1e-9);
        assert_eq!(numbers_agree(a, b), numbers_agree(b, a));
        assert!(numbers_agree(1e6, 1e6 + 5e-4));
        assert!(!numbers_agree(1e6, 1e6 + 2e-3));
    }

    #[test]
    fn outputs_compare_their_stdout_and_their_files() {
        let root = std::env::temp_dir().join(format!("nbody-validator-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |path: &str, contents: &str| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        };
        write("a/stdout", "energy 1.0\n");
        write("b/stdout", "energy 1.0000000000001\n");
        write("a/files/result/x.txt", "7");
        write("b/files/result/x.txt", "7.0");
        let (a, b) = (root.join("a"), root.join("b"));
        assert_eq!(compare_outputs(&a, &b).unwrap(), Ok(()));

        write("b/files/extra.txt", "");
        let difference = Difference("files/extra.txt is in one output only".into());
        assert_eq!(compare_outputs(&a, &b).unwrap(), Err(difference.clone()));
        assert_eq!(compare_outputs(&b, &a).unwrap(), Err(difference));

        std::fs::remove_file(root.join("b/files/extra.txt")).unwrap();
        write("b/files/result/x.txt", "8");
        assert!(compare_outputs(&a, &b).unwrap().is_err());
        write("b/stdout", "energy 2.0\n");
        assert_eq!(
            compare_outputs(&a, &b).unwrap(),
            Err(Difference("stdout: token 2 differs: 1.0 against 2.0".into()))
        );

        std::fs::remove_file(root.join("b/stdout")).unwrap();
        assert!(compare_outputs(&a, &b).is_err(), "an unreadable output is no verdict");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
