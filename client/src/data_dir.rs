//! The client's data directory and what lives where in it.
//!
//! ```text
//! client.toml      settings (the same as the `run` flags)
//! projects.json    attached projects with their secrets (mode 0600)
//! state.json       tasks and unreported results, replaced atomically at each exchange
//! state.journal    tasks finished since state.json was written
//! daemon.lock      held by the running daemon
//! daemon.sock      the running daemon's control socket (`wasmgrid status`, `suspend`, ...)
//! blobs/           downloaded modules and inputs, by SHA-256
//! compiled/        compiled modules, by module hash and engine
//! tasks/<project>/<replica id>/
//!                  one directory per task: input/, scratch/, output.tar
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use wasmgrid_protocol::Sha256Hash;

use crate::state::TaskId;

/// Overrides the data directory, like `--data-dir`.
pub const DATA_DIR_VARIABLE: &str = "WASMGRID_DATA_DIR";

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// `--data-dir`, else `$WASMGRID_DATA_DIR`, else the platform's data directory.
    pub fn locate(flag: Option<PathBuf>) -> anyhow::Result<Self> {
        let root = match flag.or_else(|| std::env::var_os(DATA_DIR_VARIABLE).map(PathBuf::from)) {
            Some(root) => root,
            None => dirs::data_dir()
                .context("no data directory on this platform: pass --data-dir or set WASMGRID_DATA_DIR")?
                .join("wasmgrid"),
        };
        Self::open(root)
    }

    /// Opens (creating it, private to this user) the data directory at `root`.
    pub fn open(root: PathBuf) -> anyhow::Result<Self> {
        fs::create_dir_all(&root).with_context(|| format!("cannot create the data directory {}", root.display()))?;
        make_private(&root)?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn settings_file(&self) -> PathBuf {
        self.root.join("client.toml")
    }

    pub fn projects_file(&self) -> PathBuf {
        self.root.join("projects.json")
    }

    /// The publishers' keys pinned per project (see [`crate::pinned_keys`]).
    pub fn keys_file(&self) -> PathBuf {
        self.root.join("keys.json")
    }

    /// Held while the pinned keys are read, changed and written.
    pub fn keys_lock_file(&self) -> PathBuf {
        self.root.join("keys.lock")
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// Task phase changes since the state file was last written.
    pub fn state_journal(&self) -> PathBuf {
        self.root.join("state.journal")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }

    /// Where the running daemon takes requests (see [`crate::control`]): a Unix socket, or
    /// on Windows a file naming the loopback port and the token.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("daemon.sock")
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn compiled(&self) -> PathBuf {
        self.root.join("compiled")
    }

    /// A task's directory: `tasks/<project>/<replica id>`, the project named by a hash of
    /// its URL, since replica ids are only unique within one project.
    pub fn task(&self, id: &TaskId) -> PathBuf {
        let project = Sha256Hash::of(id.project_url.as_bytes()).to_hex();
        self.tasks().join(&project[..16]).join(id.replica_id.to_string())
    }

    pub fn tasks(&self) -> PathBuf {
        self.root.join("tasks")
    }
}

/// Opens (creating it if needed) the file at `path` that a lock is taken on.
pub fn open_lock_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock {}", path.display()))
}

/// The JSON document in `path`, or the default when there is none yet; a file that does not
/// parse is an error naming it, never silently replaced.
pub fn read_json_or_default<T: serde::de::DeserializeOwned + Default>(path: &Path) -> anyhow::Result<T> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|error| anyhow::anyhow!("{} is damaged: {error}", path.display()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(error) => Err(error.into()),
    }
}

/// Replaces `path` with `contents` so that a crash at any moment leaves either the old or
/// the new file, complete: write a temporary file, sync it, rename it over, sync the
/// directory. The file is readable by its owner only.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a file to replace has a parent directory")?;
    let temporary = dir.join(format!(".{}.tmp", path.file_name().and_then(|name| name.to_str()).unwrap_or("file")));
    let mut file = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))?;
    sync_directory(dir)?;
    Ok(())
}

/// Options that create a file only its owner can read: mode 0600 on Unix. On Windows a new
/// file takes the access list of its directory, which in the user's profile is the user's.
pub fn private_file() -> fs::OpenOptions {
    #[allow(unused_mut)]
    let mut options = fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Makes a directory its owner's alone (mode 0700 on Unix; see [`private_file`] for Windows).
fn make_private(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Makes a rename in `dir` durable. Windows cannot open a directory as a file, and commits
/// a rename with the file's own metadata.
pub fn sync_directory(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
