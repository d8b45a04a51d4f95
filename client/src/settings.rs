//! Client settings: `client.toml` in the data directory, overridden by flags, and changed
//! by `wasmgrid set` while the daemon runs.
//!
//! Besides what the daemon may use, they hold the computing preferences, after BOINC's: each
//! names a condition that suspends computing while it holds (see `daemon::suspension`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::compute_hours::HoursWindow;
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
    /// Suspend computing while other programs use more than this share of all CPUs, in
    /// percent (BOINC: "suspend when non-BOINC CPU usage is above").
    pub suspend_when_cpu_above: Option<f64>,
    /// Suspend computing while the machine runs on battery.
    pub suspend_on_battery: bool,
    /// Stop tasks, newest first, while less memory than this is available to programs, in
    /// bytes; they run again, from their checkpoints, once there is room.
    pub suspend_when_memory_below: Option<u64>,
    /// Compute only inside these windows of local time, such as `"mon-fri 18:00-08:00"`;
    /// empty: at any time.
    pub compute_hours: Vec<HoursWindow>,
    /// Let each task use at most this share of a core, in percent, by pausing it for the
    /// rest of every second (for a quiet fan or a cool laptop).
    pub max_cpu_percent: Option<u8>,
    /// The local address that connections to projects leave from, on a machine with
    /// several (each project sees the network it is in); default: the system's choice.
    pub bind: Option<IpAddr>,
    /// A certificate authority to trust besides the system's, for a project whose server
    /// certificate it signed: a PEM file (a relative path is in the data directory).
    pub ca_cert: Option<PathBuf>,
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
            suspend_when_cpu_above: None,
            suspend_on_battery: true,
            suspend_when_memory_below: None,
            compute_hours: Vec::new(),
            max_cpu_percent: None,
            bind: None,
            ca_cert: None,
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
    pub suspend_when_cpu_above: Option<f64>,
    pub suspend_on_battery: Option<bool>,
    pub suspend_when_memory_below: Option<u64>,
    /// Given at least once: replaces the file's windows.
    pub compute_hours: Vec<HoursWindow>,
    pub max_cpu_percent: Option<u8>,
    pub bind: Option<IpAddr>,
    pub ca_cert: Option<PathBuf>,
}

impl Overrides {
    /// Whether a flag sets `key`, so that the file's value for it does not count.
    pub fn pins(&self, key: &str) -> bool {
        match key {
            "cores" => self.cores.is_some(),
            "memory" => self.memory.is_some(),
            "disk" => self.disk.is_some(),
            "exit_when_idle" => self.exit_when_idle.is_some(),
            "allow_insecure" => self.allow_insecure.is_some(),
            "suspend_when_cpu_above" => self.suspend_when_cpu_above.is_some(),
            "suspend_on_battery" => self.suspend_on_battery.is_some(),
            "suspend_when_memory_below" => self.suspend_when_memory_below.is_some(),
            "compute_hours" => !self.compute_hours.is_empty(),
            "max_cpu_percent" => self.max_cpu_percent.is_some(),
            "bind" => self.bind.is_some(),
            "ca_cert" => self.ca_cert.is_some(),
            _ => false,
        }
    }
}

impl Settings {
    /// The settings file, or the defaults when there is none.
    pub fn load(data_dir: &DataDir) -> anyhow::Result<Self> {
        let path = data_dir.settings_file();
        match std::fs::read_to_string(&path) {
            // The parse error names the line and column and quotes it; the path says which
            // file, since a volunteer may not know the daemon reads one.
            Ok(text) => Self::parse(&text)
                .map(|settings| settings.in_data_dir(data_dir))
                .map_err(|error| anyhow::anyhow!("the settings file {} is invalid: {error}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(anyhow::anyhow!("cannot read the settings file {}: {error}", path.display())),
        }
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let settings: Self = toml::from_str(text)?;
        settings.check()?;
        Ok(settings)
    }

    /// Paths in the file are relative to the data directory it lives in.
    fn in_data_dir(mut self, data_dir: &DataDir) -> Self {
        self.ca_cert = self.ca_cert.map(|path| data_dir.root().join(path));
        self
    }

    /// How to connect to projects: from [`Self::bind`], trusting [`Self::ca_cert`] too (an
    /// error naming the file if it cannot be used).
    pub fn connect_options(&self) -> anyhow::Result<crate::api::ConnectOptions> {
        crate::api::ConnectOptions::new(self.bind, self.ca_cert.as_deref())
    }

    /// Refuses values that parse but mean nothing.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(percent) = self.suspend_when_cpu_above
            && !(0.0..=100.0).contains(&percent)
        {
            anyhow::bail!("suspend_when_cpu_above is a percentage, from 0 to 100, not {percent}");
        }
        if let Some(percent) = self.max_cpu_percent
            && !(1..=100).contains(&percent)
        {
            anyhow::bail!("max_cpu_percent is a percentage, from 1 to 100, not {percent}");
        }
        if self.cores == Some(0) {
            anyhow::bail!("cores must be at least 1");
        }
        Ok(())
    }

    /// Sets `key` to `value` in the settings file, keeping the rest of the file as it is,
    /// and returns the settings it then holds. `value` is a TOML value (`4`, `true`,
    /// `["mon-fri 18:00-08:00"]`), else taken as a string; `default` removes the key. The
    /// file is left alone when the result would not be valid settings.
    pub fn set_in_file(data_dir: &DataDir, key: &str, value: &str) -> anyhow::Result<Self> {
        let path = data_dir.settings_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => anyhow::bail!("cannot read the settings file {}: {error}", path.display()),
        };
        let mut document: toml_edit::DocumentMut = text
            .parse()
            .map_err(|error| anyhow::anyhow!("the settings file {} is invalid: {error}", path.display()))?;
        if !Self::KEYS.contains(&key) {
            anyhow::bail!("unknown setting {key:?}; the settings are: {}", Self::KEYS.join(", "));
        }
        if value == "default" {
            document.remove(key);
        } else {
            let value = value.parse::<toml_edit::Value>().unwrap_or_else(|_| toml_edit::Value::from(value));
            document[key] = toml_edit::value(value);
        }
        let new_text = document.to_string();
        let settings = Self::parse(&new_text)
            .map(|settings| settings.in_data_dir(data_dir))
            .map_err(|error| anyhow::anyhow!("{key} = {value}: {error}"))?;
        // A certificate file that cannot be used is refused now, not at the next start.
        if key == "ca_cert" {
            settings.connect_options()?;
        }
        crate::data_dir::write_atomically(&path, new_text.as_bytes())?;
        Ok(settings)
    }

    /// Every key of the settings file.
    pub const KEYS: &[&str] = &[
        "cores",
        "memory",
        "disk",
        "exit_when_idle",
        "allow_insecure",
        "backoff_min_seconds",
        "backoff_max_seconds",
        "work_buffer_seconds",
        "suspend_when_cpu_above",
        "suspend_on_battery",
        "suspend_when_memory_below",
        "compute_hours",
        "max_cpu_percent",
        "bind",
        "ca_cert",
    ];

    /// These settings with the flags that were given put over them.
    pub fn overridden_by(self, flags: &Overrides) -> Self {
        Self {
            cores: flags.cores.or(self.cores),
            memory: flags.memory.or(self.memory),
            disk: flags.disk.unwrap_or(self.disk),
            exit_when_idle: flags.exit_when_idle.unwrap_or(self.exit_when_idle),
            allow_insecure: flags.allow_insecure.unwrap_or(self.allow_insecure),
            suspend_when_cpu_above: flags.suspend_when_cpu_above.or(self.suspend_when_cpu_above),
            suspend_on_battery: flags.suspend_on_battery.unwrap_or(self.suspend_on_battery),
            suspend_when_memory_below: flags.suspend_when_memory_below.or(self.suspend_when_memory_below),
            compute_hours: if flags.compute_hours.is_empty() {
                self.compute_hours.clone()
            } else {
                flags.compute_hours.clone()
            },
            max_cpu_percent: flags.max_cpu_percent.or(self.max_cpu_percent),
            bind: flags.bind.or(self.bind),
            ca_cert: flags.ca_cert.clone().or(self.ca_cert),
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
            compute_hours: vec!["08:00-09:00".parse().unwrap()],
            ..Overrides::default()
        };

        let settings = file.clone().overridden_by(&flags);

        assert_eq!(settings.cores, Some(1));
        assert_eq!(settings.disk, 7);
        assert!(!settings.exit_when_idle, "an explicit --exit-when-idle=false wins over the file");
        assert_eq!(settings.memory, Some(5000));
        assert!(settings.allow_insecure);
        assert_eq!(settings.compute_hours.len(), 1);
        assert_eq!(file.clone().overridden_by(&Overrides::default()), file);
    }

    #[test]
    fn every_key_of_the_settings_is_listed_for_set() {
        let table = toml::Table::try_from(Settings {
            cores: Some(1),
            memory: Some(1),
            suspend_when_cpu_above: Some(1.0),
            suspend_when_memory_below: Some(1),
            max_cpu_percent: Some(1),
            bind: Some(std::net::Ipv4Addr::LOCALHOST.into()),
            ca_cert: Some("ca.pem".into()),
            ..Settings::default()
        })
        .unwrap();
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut listed = Settings::KEYS.to_vec();
        listed.sort_unstable();
        assert_eq!(keys, listed);
    }

    #[test]
    fn set_changes_one_key_keeps_comments_and_refuses_nonsense() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(dir.path().to_path_buf()).unwrap();
        std::fs::write(data_dir.settings_file(), "# my laptop\ncores = 2 # two of four\n").unwrap();

        let settings = Settings::set_in_file(&data_dir, "max_cpu_percent", "50").unwrap();
        assert_eq!((settings.cores, settings.max_cpu_percent), (Some(2), Some(50)));
        let settings = Settings::set_in_file(&data_dir, "compute_hours", r#"["mon-fri 18:00-08:00"]"#).unwrap();
        assert_eq!(settings.compute_hours[0].to_string(), "mon-fri 18:00-08:00");
        let text = std::fs::read_to_string(data_dir.settings_file()).unwrap();
        assert!(text.starts_with("# my laptop\ncores = 2 # two of four\n"), "{text}");

        for (key, value) in
            [("max_cpu_percent", "0"), ("cores", "many"), ("coers", "2"), ("compute_hours", "[\"8-5\"]")]
        {
            assert!(Settings::set_in_file(&data_dir, key, value).is_err(), "{key} = {value}");
        }
        assert_eq!(std::fs::read_to_string(data_dir.settings_file()).unwrap(), text, "nothing changed");

        let settings = Settings::set_in_file(&data_dir, "cores", "default").unwrap();
        assert_eq!(settings.cores, None);
    }

    #[test]
    fn a_relative_ca_cert_is_in_the_data_directory_and_one_that_cannot_be_used_is_not_set() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(dir.path().to_path_buf()).unwrap();
        std::fs::write(data_dir.settings_file(), "ca_cert = \"grid-ca.pem\"\n").unwrap();
        assert_eq!(Settings::load(&data_dir).unwrap().ca_cert, Some(data_dir.root().join("grid-ca.pem")));

        let message = format!("{:#}", Settings::set_in_file(&data_dir, "ca_cert", "\"other-ca.pem\"").unwrap_err());
        assert!(message.contains("cannot read the CA certificate") && message.contains("other-ca.pem"), "{message}");
        let text = std::fs::read_to_string(data_dir.settings_file()).unwrap();
        assert_eq!(text, "ca_cert = \"grid-ca.pem\"\n", "nothing changed");
        assert_eq!(Settings::set_in_file(&data_dir, "ca_cert", "default").unwrap().ca_cert, None);
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
