//! What the owner is doing with the machine, for the computing preferences: how busy the
//! CPU is with other programs, whether it runs on battery, how much memory is free.
//!
//! Each reading is `None` where this platform offers no way to take it; `status` says so,
//! and the preference that needs it never suspends computing there.

use std::path::Path;

/// Where Linux describes the power supplies.
const POWER_SUPPLIES: &str = "/sys/class/power_supply";

/// Measures the CPU time other programs use, between one reading and the next.
#[derive(Debug, Default)]
pub struct CpuMeter {
    previous: Option<CpuTimes>,
}

#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    /// Seconds of all CPUs, busy or idle, since boot.
    total: f64,
    /// Seconds of all CPUs busy.
    busy: f64,
    /// Seconds of CPU this process used.
    own: f64,
}

impl CpuMeter {
    /// The share of all CPUs that other programs used since the previous reading, in percent,
    /// or `None` on the first reading and where it cannot be measured.
    pub fn others_percent(&mut self) -> Option<f64> {
        let now = CpuTimes::read()?;
        let previous = self.previous.replace(now)?;
        let total = now.total - previous.total;
        if total <= 0.0 {
            return None;
        }
        let others = (now.busy - previous.busy) - (now.own - previous.own);
        Some((others / total * 100.0).clamp(0.0, 100.0))
    }

    pub fn is_supported() -> bool {
        CpuTimes::read().is_some()
    }
}

impl CpuTimes {
    #[cfg(target_os = "linux")]
    fn read() -> Option<Self> {
        // The first line of /proc/stat: user nice system idle iowait irq softirq steal ...,
        // in clock ticks. Idle and iowait are idle; the guest columns are in user already.
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|field| field.parse().ok())
            .collect::<Option<_>>()?;
        if ticks.len() < 5 {
            return None;
        }
        // SAFETY: a plain query.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let total: f64 = ticks.iter().sum::<f64>() / per_second;
        let idle = (ticks[3] + ticks[4]) / per_second;
        Some(Self { total, busy: total - idle, own: own_cpu_seconds()? })
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Option<Self> {
        None
    }
}

/// CPU time used by this process, every thread and finished child included.
#[cfg(target_os = "linux")]
fn own_cpu_seconds() -> Option<f64> {
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: a zeroed rusage is valid and getrusage fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to the struct.
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            return None;
        }
        total += seconds(usage.ru_utime) + seconds(usage.ru_stime);
    }
    Some(total)
}

/// Whether the machine runs on battery now: a battery discharges and no mains adapter is
/// online. `Some(false)` for a machine without a battery.
pub fn on_battery() -> Option<bool> {
    on_battery_from(Path::new(POWER_SUPPLIES))
}

#[cfg(target_os = "linux")]
fn on_battery_from(supplies: &Path) -> Option<bool> {
    let Ok(entries) = std::fs::read_dir(supplies) else {
        // No power supply class at all: a server or a container without sysfs.
        return Some(false);
    };
    let read = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).ok().map(|text| text.trim().to_owned());
    let (mut mains_online, mut discharging) = (false, false);
    for entry in entries.flatten() {
        let dir = entry.path();
        match read(&dir, "type").as_deref() {
            Some("Mains" | "USB") => mains_online |= read(&dir, "online").as_deref() == Some("1"),
            Some("Battery") => discharging |= read(&dir, "status").as_deref() == Some("Discharging"),
            _ => {}
        }
    }
    Some(discharging && !mains_online)
}

#[cfg(not(target_os = "linux"))]
fn on_battery_from(_supplies: &Path) -> Option<bool> {
    None
}

/// Memory available to new programs without swapping, in bytes: Linux's `MemAvailable`.
pub fn memory_available() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|line| line.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, files: &[(&str, &str)]) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, contents) in files {
            std::fs::write(dir.join(file), format!("{contents}\n")).unwrap();
        }
    }

    #[test]
    fn on_battery_means_discharging_with_no_adapter_online() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(on_battery_from(root.path()), Some(false), "no supplies: a desktop");
        supply(root.path(), "BAT0", &[("type", "Battery"), ("status", "Discharging")]);
        assert_eq!(on_battery_from(root.path()), Some(true));
        supply(root.path(), "AC", &[("type", "Mains"), ("online", "1")]);
        assert_eq!(on_battery_from(root.path()), Some(false), "plugged in");
        supply(root.path(), "AC", &[("type", "Mains"), ("online", "0")]);
        assert_eq!(on_battery_from(root.path()), Some(true));
        supply(root.path(), "BAT0", &[("type", "Battery"), ("status", "Full")]);
        assert_eq!(on_battery_from(root.path()), Some(false));
    }

    #[test]
    fn this_machine_reports_its_cpu_and_memory() {
        let mut meter = CpuMeter::default();
        assert_eq!(meter.others_percent(), None, "the first reading has nothing to compare with");
        // This process keeping a core busy is not "other programs": its own time is taken off.
        let spin_until = std::time::Instant::now() + std::time::Duration::from_millis(300);
        while std::time::Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        let percent = meter.others_percent().expect("a second reading");
        let one_core = 100.0 / std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(percent < one_core * 0.8, "this process's own spinning counted as others': {percent:.1}%");
        assert!(memory_available().is_some_and(|bytes| bytes > 0));
    }
}
