//! Preparing a task's directory: its module, standard input and input files, downloaded
//! by hash into the cache and copied into `tasks/<id>/input`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use wasmgrid_protocol::api::Assignment;

use crate::api::ServerClient;
use crate::blob_cache::BlobCache;

/// What a prepared task runs with.
pub struct Staged {
    pub module_path: PathBuf,
    pub stdin: Vec<u8>,
    pub input_dir: PathBuf,
    pub scratch_dir: PathBuf,
}

/// Why a task could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The server cannot be reached, or sent bytes that do not match their hash: try later.
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// The assignment itself is unusable (a hostile or broken server): report an error.
    #[error("{0}")]
    Invalid(String),
}

pub async fn stage(
    server: &ServerClient,
    cache: &BlobCache,
    assignment: &Assignment,
    task_dir: &Path,
) -> Result<Staged, StagingError> {
    let transient = StagingError::Transient;
    let module_path = cache.fetch(server, &assignment.module).await.map_err(transient)?;
    let stdin = match &assignment.stdin {
        Some(blob) => {
            let path = cache.fetch(server, blob).await.map_err(transient)?;
            std::fs::read(path).map_err(|error| transient(error.into()))?
        }
        None => Vec::new(),
    };
    let input_dir = task_dir.join("input");
    let scratch_dir = task_dir.join("scratch");
    // The input directory is rebuilt each time; the scratch directory is kept, because a
    // restarted module may resume from what it left there.
    if input_dir.exists() {
        make_writable(&input_dir);
        std::fs::remove_dir_all(&input_dir).map_err(|error| transient(error.into()))?;
    }
    std::fs::create_dir_all(&input_dir).map_err(|error| transient(error.into()))?;
    std::fs::create_dir_all(&scratch_dir).map_err(|error| transient(error.into()))?;
    for input in &assignment.inputs {
        check_file_name(&input.name).map_err(StagingError::Invalid)?;
        let cached = cache.fetch(server, &input.blob).await.map_err(transient)?;
        let target = input_dir.join(&input.name);
        copy_with_fixed_time(&cached, &target)
            .with_context(|| format!("cannot stage input {}", input.name))
            .map_err(transient)?;
    }
    Ok(Staged { module_path, stdin, input_dir, scratch_dir })
}

/// Input files are plain names in one directory: nothing that could climb out of it.
fn check_file_name(name: &str) -> Result<(), String> {
    let plain =
        !name.is_empty() && name != "." && name != ".." && name.len() <= 255 && !name.contains(['/', '\\', '\0']);
    if plain { Ok(()) } else { Err(format!("the server sent an unusable input file name {name:?}")) }
}

/// Copies an input and stamps it with the Unix epoch, so that its timestamp is the same on
/// every host and cannot make outputs differ.
fn copy_with_fixed_time(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)?;
    let file = std::fs::File::options().append(true).open(to)?;
    file.set_modified(SystemTime::UNIX_EPOCH)?;
    Ok(())
}

fn make_writable(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    #[cfg(not(unix))]
    if let Ok(metadata) = std::fs::metadata(dir) {
        let mut permissions = metadata.permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
        let _ = std::fs::set_permissions(dir, permissions);
    }
}

#[cfg(test)]
mod tests {
    use super::check_file_name;

    #[test]
    fn input_names_cannot_leave_the_input_directory() {
        assert!(check_file_name("data.csv").is_ok());
        assert!(check_file_name(".hidden").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "nul\0"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }
}
