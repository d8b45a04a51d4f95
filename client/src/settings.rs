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
    /// Exit once no project has work and every result is reported.
    pub exit_when_idle: bool,
    /// Allow plain http to servers that are not on this machine.
    pub allow_insecure: bool,
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
            exit_when_idle: false,
            allow_insecure: false,
            backoff_min_seconds: 60,
            backoff_max_seconds: 4 * 3600,
            work_buffer_seconds: 600,
        }
    }
}

/// The settings given as flags; each one given wins over the settings file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub cores: Option<usize>,
    pub memory: Option<u64>,
    pub disk: Option<u64>,
    pub exit_when_idle: Option<bool>,
    pub allow_insecure: Option<bool>,
}

impl Settings {
    /// The settings file, or the defaults when there is none.
    pub fn load(data_dir: &DataDir) -> anyhow::Result<Self> {
        let path = data_dir.settings_file();
        match std::fs::read_to_string(&path) {
            // The parse error names the line and column and quotes it; the path says which
            // file, since a volunteer may not know the daemon reads one.
            Ok(text) => toml::from_str(&text)
                .map_err(|error| anyhow::anyhow!("the settings file {} is invalid: {error}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(anyhow::anyhow!("cannot read the settings file {}: {error}", path.display())),
        }
    }

    /// These settings with the flags that were given put over them.
    pub fn overridden_by(self, flags: &Overrides) -> Self {
        Self {
            cores: flags.cores.or(self.cores),
            memory: flags.memory.or(self.memory),
            disk: flags.disk.unwrap_or(self.disk),
            exit_when_idle: flags.exit_when_idle.unwrap_or(self.exit_when_idle),
            allow_insecure: flags.allow_insecure.unwrap_or(self.allow_insecure),
            ..self
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
        let settings: Settings = toml::from_str("cores = 3\ndisk = 1000\nallow_insecure = true\n").unwrap();
        assert_eq!(settings.cores(), 3);
        assert_eq!(settings.disk, 1000);
        assert!(settings.allow_insecure);
        assert!(!settings.exit_when_idle);
        assert_eq!(settings.backoff_min_seconds, 60);
    }

    #[test]
    fn an_unknown_setting_is_an_error() {
        assert!(toml::from_str::<Settings>("coers = 3\n").is_err());
    }

    #[test]
    fn flags_override_the_settings_file_and_keep_what_they_do_not_name() {
        let file: Settings =
            toml::from_str("cores = 3\nmemory = 5000\ndisk = 1000\nexit_when_idle = true\nallow_insecure = true\n")
                .unwrap();
        let flags = Overrides {
            cores: Some(1),
            disk: Some(7),
            exit_when_idle: Some(false),
            allow_insecure: None,
            memory: None,
        };

        let settings = file.clone().overridden_by(&flags);

        assert_eq!(settings.cores, Some(1));
        assert_eq!(settings.disk, 7);
        assert!(!settings.exit_when_idle, "an explicit --exit-when-idle=false wins over the file");
        assert_eq!(settings.memory, Some(5000));
        assert!(settings.allow_insecure);
        assert_eq!(file.clone().overridden_by(&Overrides::default()), file);
    }

    #[test]
    fn a_malformed_settings_file_is_an_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(dir.path().to_path_buf()).unwrap();
        std::fs::write(data_dir.settings_file(), "cores = 2\ndisk = \"lots\"\n").unwrap();

        let message = format!("{:#}", Settings::load(&data_dir).unwrap_err());

        assert!(message.contains(&data_dir.settings_file().display().to_string()), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }
}
