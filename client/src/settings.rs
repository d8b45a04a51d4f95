//! Client settings: `client.toml` in the data directory, overridden by flags.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::data_dir::DataDir;

/// What the daemon may use of the machine, and how it treats servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Tasks run at once; default: every core.
    pub cores: Option<usize>,
    /// Linear memory all running tasks may use together; default: half the machine's.
    pub memory: Option<u64>,
    /// Disk for cached blobs and task directories.
    pub disk: u64,
    /// First wait after a failed request to a project (BOINC: one minute).
    pub backoff_min_seconds: u64,
    /// Longest wait after repeated failures (BOINC: four hours).
    pub backoff_max_seconds: u64,
    /// Work to keep at hand, in seconds of running on every slot, so that slots do not
    /// idle between requests and one request serves many tasks.
    pub work_buffer_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cores: None,
            memory: None,
            disk: 10 << 30,
            backoff_min_seconds: 60,
            backoff_max_seconds: 4 * 3600,
            work_buffer_seconds: 600,
        }
    }
}

impl Settings {
    /// The settings file, or the defaults when there is none.
    pub fn load(data_dir: &DataDir) -> anyhow::Result<Self> {
        let path = data_dir.settings_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(error.into()),
        }
    }

    pub fn cores(&self) -> usize {
        self.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
    }

    pub fn memory(&self) -> u64 {
        self.memory.unwrap_or_else(|| crate::host_info::memory_bytes() / 2)
    }

    pub fn backoff(&self) -> (Duration, Duration) {
        (Duration::from_secs(self.backoff_min_seconds), Duration::from_secs(self.backoff_max_seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_file_overrides_the_defaults_it_names() {
        let settings: Settings = toml::from_str("cores = 3\ndisk = 1000\n").unwrap();
        assert_eq!(settings.cores(), 3);
        assert_eq!(settings.disk, 1000);
        assert_eq!(settings.backoff_min_seconds, 60);
    }

    #[test]
    fn an_unknown_setting_is_an_error() {
        assert!(toml::from_str::<Settings>("coers = 3\n").is_err());
    }
}
