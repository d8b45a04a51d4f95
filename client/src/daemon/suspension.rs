//! When computing is suspended, and why: the volunteer's `wasmgrid suspend`, and the
//! computing preferences (see [`crate::settings::Settings`]), read against the machine.
//!
//! While any reason holds, running tasks are paused where they are (keeping their memory)
//! and no task starts; network activity goes on. Low memory is different, since a paused
//! task keeps its memory: the daemon stops tasks instead, newest first, and they run again
//! from their checkpoints once there is room.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::compute_hours;
use crate::machine::{self, CpuMeter};
use crate::settings::Settings;

/// How often the machine is read: the CPU share is an average over this long, and a
/// condition that begins suspends computing within this long.
pub const READING_INTERVAL: Duration = Duration::from_millis(500);
/// Other programs must stay below the CPU threshold this long before computing resumes, so
/// that a program that pauses for a moment does not make tasks start and stop each second.
const CPU_CALM: Duration = Duration::from_secs(3);

/// Why computing is suspended.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// `wasmgrid suspend`, until `resume` or the time given.
    User {
        until: Option<DateTime<Utc>>,
    },
    /// Other programs use more of the CPU than `suspend_when_cpu_above` allows.
    CpuBusy {
        percent: f64,
        limit: f64,
    },
    OnBattery,
    /// Outside every `compute_hours` window.
    OutsideComputeHours,
    /// Less memory available than `suspend_when_memory_below`.
    MemoryLow {
        available: u64,
        limit: u64,
    },
}

impl Reason {
    /// Whether tasks are stopped rather than paused: a paused task would keep the memory.
    pub fn frees_memory(&self) -> bool {
        matches!(self, Self::MemoryLow { .. })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User { until: None } => f.write_str("suspended by the volunteer (wasmgrid resume ends it)"),
            Self::User { until: Some(until) } => {
                let local = until.with_timezone(&chrono::Local);
                write!(f, "suspended by the volunteer until {}", local.format("%Y-%m-%d %H:%M:%S"))
            }
            Self::CpuBusy { percent, limit } => {
                write!(f, "other programs use {percent:.0}% of the CPU (suspend_when_cpu_above = {limit})")
            }
            Self::OnBattery => f.write_str("the machine runs on battery (suspend_on_battery)"),
            Self::OutsideComputeHours => f.write_str("outside the compute_hours"),
            Self::MemoryLow { available, limit } => write!(
                f,
                "{} MiB of memory available, below suspend_when_memory_below ({} MiB)",
                available >> 20,
                limit >> 20
            ),
        }
    }
}

/// The suspension state of the daemon.
#[derive(Debug, Default)]
pub struct Suspension {
    user: Option<UserSuspension>,
    cpu: CpuMeter,
    last_reading: Option<Instant>,
    others_cpu: Option<f64>,
    /// Other programs are over the CPU threshold, or were until less than [`CPU_CALM`] ago.
    cpu_busy: bool,
    /// Since when they have been back under it, while still counted as busy.
    cpu_calm_since: Option<Instant>,
    on_battery: Option<bool>,
    memory_available: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct UserSuspension {
    until: Option<DateTime<Utc>>,
}

impl Suspension {
    /// `wasmgrid suspend [--for]`.
    pub fn suspend_by_user(&mut self, duration: Option<Duration>) -> Option<DateTime<Utc>> {
        let until = duration.and_then(|duration| chrono::Duration::from_std(duration).ok()).map(|d| Utc::now() + d);
        self.user = Some(UserSuspension { until });
        until
    }

    /// `wasmgrid resume`; whether there was a suspension to end.
    pub fn resume_by_user(&mut self) -> bool {
        self.user.take().is_some()
    }

    /// Reads the machine, at most once per [`READING_INTERVAL`].
    pub fn read_machine(&mut self, settings: &Settings, now: Instant) {
        if self.last_reading.is_some_and(|at| now.duration_since(at) < READING_INTERVAL) {
            return;
        }
        self.last_reading = Some(now);
        // The CPU meter takes every reading, so that each one covers the last interval.
        self.others_cpu = self.cpu.others_percent();
        if let (Some(limit), Some(percent)) = (settings.suspend_when_cpu_above, self.others_cpu) {
            if percent > limit {
                self.cpu_busy = true;
                self.cpu_calm_since = None;
            } else if self.cpu_busy {
                let calm_since = *self.cpu_calm_since.get_or_insert(now);
                if now.duration_since(calm_since) >= CPU_CALM {
                    self.cpu_busy = false;
                    self.cpu_calm_since = None;
                }
            }
        } else {
            self.cpu_busy = false;
        }
        self.on_battery = if settings.suspend_on_battery { machine::on_battery() } else { None };
        self.memory_available =
            if settings.suspend_when_memory_below.is_some() { machine::memory_available() } else { None };
    }

    /// Every reason computing is suspended at `local` (the local time), as of the latest
    /// reading; empty when it may go on.
    pub fn reasons(&mut self, settings: &Settings, local: NaiveDateTime) -> Vec<Reason> {
        let mut reasons = Vec::new();
        if let Some(user) = self.user {
            match user.until {
                Some(until) if until <= Utc::now() => self.user = None,
                until => reasons.push(Reason::User { until }),
            }
        }
        if let (true, Some(limit)) = (self.cpu_busy, settings.suspend_when_cpu_above) {
            reasons.push(Reason::CpuBusy { percent: self.others_cpu.unwrap_or(limit), limit });
        }
        if settings.suspend_on_battery && self.on_battery == Some(true) {
            reasons.push(Reason::OnBattery);
        }
        if !compute_hours::allowed(&settings.compute_hours, local) {
            reasons.push(Reason::OutsideComputeHours);
        }
        if let (Some(limit), Some(available)) = (settings.suspend_when_memory_below, self.memory_available)
            && available < limit
        {
            reasons.push(Reason::MemoryLow { available, limit });
        }
        reasons
    }

    /// Memory that tasks may still take without going below `suspend_when_memory_below`, if
    /// it is set and can be read.
    pub fn memory_headroom(&self, settings: &Settings) -> Option<u64> {
        Some(self.memory_available?.saturating_sub(settings.suspend_when_memory_below?))
    }

    /// Whether the machine was read at `now` (the latest reading is new).
    pub fn just_read(&self, now: Instant) -> bool {
        self.last_reading == Some(now)
    }

    /// The latest reading of other programs' CPU share, in percent.
    pub fn others_cpu(&self) -> Option<f64> {
        self.others_cpu
    }
}

/// The preferences in force, for `status`: each as `key = value`.
pub fn preferences_in_force(settings: &Settings) -> Vec<String> {
    let mut preferences = Vec::new();
    if let Some(limit) = settings.suspend_when_cpu_above {
        preferences.push(format!("suspend_when_cpu_above = {limit}"));
    }
    preferences.push(format!("suspend_on_battery = {}", settings.suspend_on_battery));
    if let Some(limit) = settings.suspend_when_memory_below {
        preferences.push(format!("suspend_when_memory_below = {limit}"));
    }
    if !settings.compute_hours.is_empty() {
        let windows: Vec<String> = settings.compute_hours.iter().map(|window| format!("\"{window}\"")).collect();
        preferences.push(format!("compute_hours = [{}]", windows.join(", ")));
    }
    if let Some(percent) = settings.max_cpu_percent {
        preferences.push(format!("max_cpu_percent = {percent}"));
    }
    preferences
}

/// What this platform cannot do of the preferences and the pausing, for `status`.
pub fn unsupported_here() -> Vec<String> {
    let mut missing = Vec::new();
    if !CpuMeter::is_supported() {
        missing.push("suspend_when_cpu_above: this platform's CPU use cannot be read; it never suspends".to_owned());
    }
    if machine::on_battery().is_none() {
        missing.push("suspend_on_battery: this platform's power supply cannot be read; it never suspends".to_owned());
    }
    if machine::memory_available().is_none() {
        missing.push(
            "suspend_when_memory_below: this platform's free memory cannot be read; it never suspends".to_owned(),
        );
    }
    if !wasmgrid_sandbox::pause::PAUSES_ANYWHERE {
        missing.push(
            "pausing in place: tasks cannot be held in compiled code here, so suspending stops them and they run \
             again from their checkpoints"
                .to_owned(),
        );
    }
    missing
}
