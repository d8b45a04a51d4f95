//! A finished run's output, packed into one deterministic archive: a tar file holding
//! `stdout` and `files/<path>` for every regular file the module left in its scratch
//! directory, in sorted order, with fixed metadata, so that equal outputs are equal bytes.
//! Volunteers pack; the server (for validator modules) and publishers (for results) unpack.
//!
//! The top-level `checkpoint` and `progress` entries in the scratch directory are the
//! module's own business (state for resuming, and its fraction done) and are not part of the
//! output. Symbolic links and other special
//! files are never followed or packed.

use std::fs::File;
use std::path::{Path, PathBuf};

use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::OUTPUT_ARCHIVE_ALLOWANCE;
use wasmgrid_protocol::hash::Sha256Hasher;

/// The scratch entry that holds checkpoints and is left out of the output.
pub const CHECKPOINT_NAME: &str = "checkpoint";
/// Scratch entries that are not output.
const NOT_OUTPUT: [&str; 2] = [CHECKPOINT_NAME, crate::PROGRESS_FILE];

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("output size limit exceeded")]
    TooLarge,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Packs `stdout` and the scratch files into `destination`; returns its hash and size.
/// The content may be at most `limit` bytes (the archive at most that plus its headers).
pub fn pack(stdout: &[u8], scratch: &Path, destination: &Path, limit: u64) -> Result<(Sha256Hash, u64), PackError> {
    let files = output_files(scratch)?;
    let content: u64 = stdout.len() as u64 + files.iter().map(|(_, bytes, _)| bytes).sum::<u64>();
    if content > limit {
        return Err(PackError::TooLarge);
    }
    let mut archive = tar::Builder::new(File::create(destination)?);
    archive.mode(tar::HeaderMode::Deterministic);
    append(&mut archive, "stdout", stdout.len() as u64, stdout)?;
    for (relative, bytes, path) in &files {
        append(&mut archive, &format!("files/{relative}"), *bytes, File::open(path)?)?;
    }
    archive.into_inner()?.sync_all()?;
    let bytes = std::fs::metadata(destination)?.len();
    if bytes > limit + OUTPUT_ARCHIVE_ALLOWANCE {
        return Err(PackError::TooLarge);
    }
    Ok((hash_file(destination)?, bytes))
}

fn append(archive: &mut tar::Builder<File>, name: &str, bytes: u64, data: impl std::io::Read) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    archive.append_data(&mut header, name, data)
}

/// Regular files under `scratch`, as (relative path, size, full path), sorted by path.
fn output_files(scratch: &Path) -> std::io::Result<Vec<(String, u64, PathBuf)>> {
    let mut files = Vec::new();
    collect(scratch, scratch, &mut files)?;
    files.sort();
    Ok(files)
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, u64, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if dir == root && NOT_OUTPUT.iter().any(|name| entry.file_name() == *name) {
            continue;
        }
        // `file_type` does not follow symbolic links: a link is neither a file nor a dir.
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &path, files)?;
        } else if kind.is_file() {
            let relative = path.strip_prefix(root).expect("inside the scratch directory");
            let Some(relative) = relative.to_str() else { continue };
            files.push((relative.to_owned(), entry.metadata()?.len(), path));
        }
    }
    Ok(())
}

/// Unpacks an output archive into `destination` as `stdout` and `files/<path>`.
///
/// Archives come from volunteers, so they are read with suspicion: only regular files
/// named `stdout` or `files/...` with plain path components are written, never links, and
/// never anything outside `destination`.
pub fn unpack(archive: &Path, destination: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(destination.join("files"))?;
    let mut archive = tar::Archive::new(File::open(archive)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.into_owned();
        let plain = path.components().all(|component| matches!(component, std::path::Component::Normal(_)));
        let wanted = path == Path::new("stdout") || (path.starts_with("files") && path.components().count() > 1);
        if !plain || !wanted {
            continue;
        }
        let target = destination.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = File::create(&target)?;
        std::io::copy(&mut entry, &mut file)?;
    }
    // An output always has a standard output, if only an empty one.
    let stdout = destination.join("stdout");
    if !stdout.exists() {
        File::create(stdout)?;
    }
    Ok(())
}

pub fn hash_file(path: &Path) -> std::io::Result<Sha256Hash> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256Hasher::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = std::io::Read::read(&mut file, &mut buffer)?;
        if read == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buffer[..read]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        dir
    }

    #[test]
    fn equal_outputs_pack_to_equal_bytes() {
        let out = tempfile::tempdir().unwrap();
        let a = scratch_with(&[("b.txt", b"2"), ("a/x.txt", b"1")]);
        let b = scratch_with(&[("a/x.txt", b"1"), ("b.txt", b"2")]);
        let (hash_a, _) = pack(b"hi", a.path(), &out.path().join("a.tar"), 1000).unwrap();
        let (hash_b, _) = pack(b"hi", b.path(), &out.path().join("b.tar"), 1000).unwrap();
        assert_eq!(hash_a, hash_b);
    }

    #[test]
    fn the_archive_holds_stdout_and_files_but_not_checkpoints_progress_or_links() {
        let out = tempfile::tempdir().unwrap();
        let scratch =
            scratch_with(&[("result.txt", b"42"), ("checkpoint/state", b"resume here"), ("progress", b"0.5")]);
        std::os::unix::fs::symlink("/etc/passwd", scratch.path().join("passwd")).unwrap();
        let archive_path = out.path().join("out.tar");
        pack(b"printed", scratch.path(), &archive_path, 1000).unwrap();

        let mut archive = tar::Archive::new(File::open(&archive_path).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|entry| entry.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["stdout", "files/result.txt"]);
    }

    #[test]
    fn content_over_the_limit_is_refused() {
        let out = tempfile::tempdir().unwrap();
        let scratch = scratch_with(&[("big", &[0u8; 600])]);
        let result = pack(&[1u8; 500], scratch.path(), &out.path().join("out.tar"), 1000);
        assert!(matches!(result, Err(PackError::TooLarge)));
    }
    fn hostile_archive(entries: &[(&str, tar::EntryType, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut builder = tar::Builder::new(file.reopen().unwrap());
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // `set_path` refuses `..`; a hostile archive writes the raw name.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap();
        file
    }

    #[test]
    fn a_packed_output_unpacks_to_stdout_and_files() {
        let out = tempfile::tempdir().unwrap();
        let scratch = scratch_with(&[("out/data.txt", b"data")]);
        let archive = out.path().join("out.tar");
        pack(b"42\n", scratch.path(), &archive, 1000).unwrap();
        let unpacked = out.path().join("unpacked");
        unpack(&archive, &unpacked).unwrap();
        assert_eq!(std::fs::read(unpacked.join("stdout")).unwrap(), b"42\n");
        assert_eq!(std::fs::read(unpacked.join("files/out/data.txt")).unwrap(), b"data");
    }

    #[test]
    fn hostile_entries_are_not_unpacked() {
        let tar = hostile_archive(&[
            ("../escaped", tar::EntryType::Regular, b"x"),
            ("files/../../escaped2", tar::EntryType::Regular, b"x"),
            ("files/link", tar::EntryType::Symlink, b""),
            ("elsewhere", tar::EntryType::Regular, b"x"),
        ]);
        let outer = tempfile::tempdir().unwrap();
        let destination = outer.path().join("a");
        unpack(tar.path(), &destination).unwrap();
        assert!(!outer.path().join("escaped").exists());
        assert!(!outer.path().join("escaped2").exists());
        assert!(!destination.join("files/link").exists());
        assert!(!destination.join("elsewhere").exists());
        assert_eq!(std::fs::read(destination.join("stdout")).unwrap(), b"", "an empty stdout is made");
    }
}
