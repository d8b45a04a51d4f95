//! Background priority for the threads that run volunteers' work units.
//!
//! A volunteer lends a machine they also use: the owner's programs must never wait for a
//! work unit. So a run started with [`crate::Sandbox::spawn_in_background`] first lowers its
//! own thread to the lowest CPU and I/O priority the system offers, and the scheduler gives
//! it only the time nothing else wants:
//! - Linux: the `SCHED_IDLE` policy (below every nice level), nice 19 as well (for kernels
//!   or containers that refuse `SCHED_IDLE`), and the idle I/O class;
//! - macOS: the background quality of service, which also throttles its I/O;
//! - Windows: background mode for the thread (`THREAD_MODE_BACKGROUND_BEGIN`), the lowest
//!   CPU, I/O and memory priority, which is what `IDLE_PRIORITY_CLASS` gives a process.
//!
//! Only the run's own thread is lowered, so the daemon's network and control stay prompt.
//! Threads the thread starts (wasmtime's parallel compilation) inherit the lowered priority.

use std::fmt;

/// What lowering a thread's priority achieved, for `wasmgrid status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Background {
    /// How the thread runs now, in the system's own terms.
    pub cpu: String,
    pub io: String,
}

impl fmt::Display for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU {}, I/O {}", self.cpu, self.io)
    }
}

/// Lowers the calling thread to background priority; says what it got. Never fails: where a
/// step is refused (a container without the capability, say) the report says so.
pub fn enter_background() -> Background {
    platform::enter_background()
}

#[cfg(target_os = "linux")]
mod platform {
    use super::Background;

    /// `ioprio_set`'s `which` for a thread (or process) id; 0 for the calling thread.
    const IOPRIO_WHO_PROCESS: libc::c_int = 1;
    /// The idle I/O class: served only when no other I/O is waiting.
    const IOPRIO_CLASS_IDLE: libc::c_int = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_int = 13;

    pub fn enter_background() -> Background {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` outlives the call.
        let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
        let idle_error = std::io::Error::last_os_error();
        // SAFETY: plain system calls on the calling thread's own id.
        let nice = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) } == 0;
        let io = unsafe {
            libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT)
        } == 0;
        let cpu = match (idle, nice) {
            (true, _) => "SCHED_IDLE".to_owned(),
            (false, true) => format!("nice 19 (SCHED_IDLE refused: {idle_error})"),
            (false, false) => format!("normal priority (SCHED_IDLE and nice refused: {idle_error})"),
        };
        let io = if io { "idle class".to_owned() } else { "normal class (idle refused)".to_owned() };
        Background { cpu, io }
    }
}

#[cfg(target_os = "macos")]
mod platform {
    use super::Background;

    pub fn enter_background() -> Background {
        // SAFETY: sets the calling thread's own class.
        let done = unsafe { libc::pthread_set_qos_class_self_np(libc::qos_class_t::QOS_CLASS_BACKGROUND, 0) } == 0;
        if done {
            Background { cpu: "background QoS".to_owned(), io: "throttled (background QoS)".to_owned() }
        } else {
            Background { cpu: "normal QoS (background refused)".to_owned(), io: "normal".to_owned() }
        }
    }
}

#[cfg(windows)]
mod platform {
    use super::Background;
    use windows_sys::Win32::System::Threading::{GetCurrentThread, SetThreadPriority, THREAD_MODE_BACKGROUND_BEGIN};

    pub fn enter_background() -> Background {
        // SAFETY: the pseudo-handle of the calling thread needs no closing.
        let done = unsafe { SetThreadPriority(GetCurrentThread(), THREAD_MODE_BACKGROUND_BEGIN) } != 0;
        if done {
            Background { cpu: "background mode (idle)".to_owned(), io: "background mode (very low)".to_owned() }
        } else {
            Background { cpu: "normal (background mode refused)".to_owned(), io: "normal".to_owned() }
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
mod platform {
    use super::Background;

    pub fn enter_background() -> Background {
        Background { cpu: "normal (no background priority on this system)".to_owned(), io: "normal".to_owned() }
    }
}
