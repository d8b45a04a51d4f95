//! Pausing a run where it is, and resuming it: how a volunteer's daemon steps aside when
//! the owner needs the machine, without losing the task's memory or its progress.
//!
//! Nothing on the module's hot path looks for a pause. A check at every loop header costs
//! as much as the fuel check, and even a call to the host on the fuel check's cold path
//! slows compute-bound modules by up to 60% (Cranelift keeps values out of registers around
//! a call it cannot prove untaken). So a pause is delivered from outside:
//! - **In compiled code** (Cranelift, on Linux and macOS, x86_64 and aarch64): the run's
//!   thread gets a signal, and the handler holds the thread, inside the handler, until the
//!   pause ends. It holds it only when the interrupted instruction is in the module's own
//!   compiled code, which takes no lock and owns no allocation: a thread held in the middle
//!   of `malloc` or of a WASI call would block every other thread that needs the same lock.
//!   Anywhere else (in a host call, in wasmtime's runtime) the handler returns at once, and
//!   the run's watch signals again a few milliseconds later.
//! - **At host calls**: the store's call hook holds the run on its way into and out of every
//!   host call, which is a safe point on every platform and with every back end.
//!
//! Where the first way is not available (Windows, other CPUs, Pulley's interpreter), a
//! compute-bound module pauses only at its next host call: [`PAUSES_ANYWHERE`] says which,
//! and a daemon on such a platform stops tasks instead (they resume from their checkpoint).
//!
//! A cap on a run's share of the CPU ([`PauseGate::limit_cpu`]) is the same pause, on a duty
//! cycle: for a cool laptop or a quiet fan rather than for the owner's programs, which idle
//! priority already serves. It applies only where the run can be held anywhere.
//!
//! Paused time does not count against the run's wall-clock limit.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Whether a run in compiled code can be paused wherever it is, on this platform.
pub const PAUSES_ANYWHERE: bool = signal::SUPPORTED;

/// How often a run waiting at a host call re-reads its pause, as a backstop for a wake-up
/// that was missed.
const HELD_RECHECK: Duration = Duration::from_millis(200);
/// How soon the pause signal is sent again when it found the run outside compiled code.
const PAUSE_RETRY: Duration = Duration::from_millis(5);
/// The period of a CPU cap's duty cycle (BOINC's throttle works in seconds too).
const DUTY_CYCLE: Duration = Duration::from_secs(1);

/// The pause state of one run, part of its [`crate::RunControl`].
#[derive(Debug, Default)]
pub struct PauseGate {
    /// A pause asked for, until a resume.
    requested: AtomicBool,
    /// The run's share of the CPU is capped, and this is the off part of its duty cycle.
    throttled: AtomicBool,
    /// The cap, in percent of one core (0: none).
    cpu_limit_percent: AtomicU8,
    /// The run's thread is being held (in the signal handler or at a host call).
    held: AtomicBool,
    /// The run is in Wasm, in compiled code that a signal can hold anywhere.
    holds_anywhere: AtomicBool,
    /// The run has reached Wasm (it is no longer staged or compiled).
    in_wasm: AtomicBool,
    time: Mutex<PausedTime>,
    /// Wakes a run held at a host call.
    wake: Condvar,
    /// The thread that runs the module, while it is in Wasm: where to send the signal.
    thread: Mutex<Option<signal::Thread>>,
}

#[derive(Debug, Default)]
struct PausedTime {
    /// Paused time of pauses that ended.
    total: Duration,
    /// When the pause in force began.
    since: Option<Instant>,
}

impl PauseGate {
    /// Asks the run to pause; it is held within a few milliseconds of entering Wasm code.
    pub fn pause(&self) {
        self.set(&self.requested, true);
    }

    /// Lets a paused run go on.
    pub fn resume(&self) {
        self.set(&self.requested, false);
    }

    /// Caps the run at `percent` of one core (100 or more, or 0: no cap), as a duty cycle of
    /// one second: running for `percent` of it, paused for the rest.
    pub fn limit_cpu(&self, percent: u8) {
        let percent = if percent >= 100 { 0 } else { percent };
        self.update(|| {
            self.cpu_limit_percent.store(percent, Ordering::SeqCst);
            if percent == 0 {
                self.throttled.store(false, Ordering::SeqCst);
            }
        });
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Whether the run must be held now: paused, or in the off part of its duty cycle.
    pub fn is_closed(&self) -> bool {
        self.is_requested() || self.throttled.load(Ordering::SeqCst)
    }

    /// Whether the run's thread is being held now: the pause is in effect.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Whether the run can be held wherever it is now (see [`PAUSES_ANYWHERE`]); if not, a
    /// compute-bound run pauses only at its next host call.
    pub fn holds_anywhere(&self) -> bool {
        self.holds_anywhere.load(Ordering::SeqCst)
    }

    /// Whether the run has reached Wasm: before, a pause holds it at its first instruction.
    pub fn is_in_wasm(&self) -> bool {
        self.in_wasm.load(Ordering::SeqCst)
    }

    /// Time spent paused or throttled so far, the pause in force included.
    pub fn paused_for(&self) -> Duration {
        let time = lock(&self.time);
        time.total + time.since.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Sets one of the reasons to hold the run, keeping the paused time, and signals the
    /// run when that closes or opens the gate.
    fn set(&self, reason: &AtomicBool, value: bool) {
        self.update(|| reason.store(value, Ordering::SeqCst));
    }

    /// Makes `change` to the reasons to hold the run under the lock, so that changes from
    /// different threads (a new CPU cap, the duty cycle's tick) never interleave.
    fn update<R>(&self, change: impl FnOnce() -> R) -> R {
        let (changed, result) = {
            let mut time = lock(&self.time);
            let was_closed = self.is_closed();
            let result = change();
            let closed = self.is_closed();
            match (was_closed, closed) {
                (false, true) => time.since = Some(Instant::now()),
                (true, false) => {
                    if let Some(since) = time.since.take() {
                        time.total += since.elapsed();
                    }
                }
                _ => {}
            }
            (was_closed != closed, result)
        };
        if changed {
            self.wake.notify_all();
            self.signal();
        }
        result
    }

    /// Wakes a held run so that it looks again at whether it must stay held (after a stop
    /// request).
    pub(crate) fn wake_up(&self) {
        drop(lock(&self.time));
        self.wake.notify_all();
        self.signal();
    }

    /// Called by the run's watch thread on each tick, `run_time` after the run started:
    /// moves the duty cycle on, and sends the signal again while the run must be held but
    /// was interrupted outside compiled code. Returns how long the watch may sleep before
    /// the next tick is due.
    pub(crate) fn tick(&self, run_time: Duration, longest: Duration) -> Duration {
        // The cap is read and the duty cycle moved on in one step: a cap lifted meanwhile
        // must not leave the run throttled. A run that cannot be held where it is (Pulley,
        // or a platform without the signal) is not throttled: it would run on regardless,
        // and its off time would count as paused.
        let next_change = self.update(|| {
            let percent = self.cpu_limit_percent.load(Ordering::SeqCst);
            if percent == 0 || !self.holds_anywhere() {
                self.throttled.store(false, Ordering::SeqCst);
                return None;
            }
            let into_cycle = Duration::from_nanos((run_time.as_nanos() % DUTY_CYCLE.as_nanos()) as u64);
            let on_part = DUTY_CYCLE * u32::from(percent) / 100;
            let off = into_cycle >= on_part;
            self.throttled.store(off, Ordering::SeqCst);
            Some(if off { DUTY_CYCLE - into_cycle } else { on_part - into_cycle })
        });
        let mut sleep = next_change.map_or(longest, |next| longest.min(next));
        if self.is_closed() && !self.is_held() {
            self.signal();
            sleep = sleep.min(PAUSE_RETRY);
        }
        sleep
    }

    /// Holds the run at a host call while `must_hold` says so (a pause is requested and no
    /// stop is): called from the store's call hook, a safe point.
    pub(crate) fn hold_at_host_call(&self, must_hold: impl Fn() -> bool) {
        if !must_hold() {
            return;
        }
        let mut time = lock(&self.time);
        self.held.store(true, Ordering::SeqCst);
        while must_hold() {
            time = self.wake.wait_timeout(time, HELD_RECHECK).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
        self.held.store(false, Ordering::SeqCst);
    }

    fn signal(&self) {
        if let Some(thread) = lock(&self.thread).as_ref() {
            thread.interrupt();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// While alive, the calling thread runs `control`'s module, whose compiled code is `code`:
/// a pause signal holds the thread when it interrupts that code.
pub(crate) struct InWasm<'a> {
    control: &'a crate::RunControl,
}

impl<'a> InWasm<'a> {
    pub(crate) fn enter(control: &'a crate::RunControl, code: Option<std::ops::Range<usize>>) -> Self {
        control.pause.in_wasm.store(true, Ordering::SeqCst);
        if let Some(code) = code {
            signal::enter(control, code);
            let thread = signal::Thread::current();
            control.pause.holds_anywhere.store(thread.is_some(), Ordering::SeqCst);
            *lock(&control.pause.thread) = thread;
        }
        Self { control }
    }
}

impl Drop for InWasm<'_> {
    fn drop(&mut self) {
        // Under the lock, so that no signal is sent to the thread once it has left (it may
        // run something else next, or end, and its id be reused).
        let mut thread = lock(&self.control.pause.thread);
        *thread = None;
        self.control.pause.holds_anywhere.store(false, Ordering::SeqCst);
        self.control.pause.in_wasm.store(false, Ordering::SeqCst);
        signal::leave();
    }
}

#[cfg(all(any(target_os = "linux", target_os = "macos"), any(target_arch = "x86_64", target_arch = "aarch64")))]
mod signal {
    //! The signal that holds a thread in compiled code. `SIGURG`, as the Go runtime chose
    //! for preempting goroutines: nothing else in the client uses it, and its default
    //! action is to be ignored, so a stray one harms nothing.

    use std::cell::Cell;
    use std::ops::Range;
    use std::sync::Once;
    use std::sync::atomic::Ordering;

    use crate::RunControl;

    pub const SUPPORTED: bool = true;
    const PAUSE_SIGNAL: libc::c_int = libc::SIGURG;

    thread_local! {
        /// The run on this thread and its compiled code; read by the signal handler (a
        /// constant initialiser and no destructor, so reading it there allocates nothing).
        static RUNNING: Cell<Option<(*const RunControl, usize, usize)>> = const { Cell::new(None) };
    }

    #[derive(Debug)]
    pub struct Thread(libc::pthread_t);

    impl Thread {
        pub fn current() -> Option<Self> {
            // SAFETY: always safe to call.
            Some(Self(unsafe { libc::pthread_self() }))
        }

        /// Sends the pause signal. Only called under the gate's lock while the thread is
        /// known to be in its run, so the id is that of a live thread.
        pub fn interrupt(&self) {
            // SAFETY: the id is of a live thread (see above); the handler is installed.
            unsafe { libc::pthread_kill(self.0, PAUSE_SIGNAL) };
        }
    }

    pub fn enter(control: &RunControl, code: Range<usize>) {
        install_handler();
        RUNNING.set(Some((control as *const RunControl, code.start, code.end)));
    }

    pub fn leave() {
        RUNNING.set(None);
    }

    fn install_handler() {
        static INSTALLED: Once = Once::new();
        INSTALLED.call_once(|| {
            // SAFETY: a zeroed `sigaction` is valid; the handler is async-signal-safe (it
            // reads atomics and a thread-local, and calls sigsuspend and pthread_sigmask).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_pause_signal as *const () as usize;
                // On the alternate stack wasmtime sets up for each thread that runs Wasm;
                // restart interrupted system calls of the run's event loop.
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(PAUSE_SIGNAL, &action, std::ptr::null_mut());
            }
        });
    }

    extern "C" fn on_pause_signal(_signal: libc::c_int, _info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        let Some((control, code_start, code_end)) = RUNNING.get() else { return };
        // SAFETY: `RUNNING` is set only while the run, and so its control, is alive.
        let control = unsafe { &*control };
        if !control.must_hold() || !(code_start..code_end).contains(&interrupted_instruction(context)) {
            return;
        }
        let saved_errno = errno();
        let gate = &control.pause;
        gate.held.store(true, Ordering::SeqCst);
        // SAFETY: plain signal-mask calls on valid, initialised sets.
        unsafe {
            // The handler's own mask blocks the pause signal; wait with it unblocked, so the
            // wake-up (the same signal, sent by resume or stop) ends the wait. A wake-up sent
            // between the check and the wait stays pending and ends it at once.
            let mut waiting: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut waiting);
            libc::sigdelset(&mut waiting, PAUSE_SIGNAL);
            while control.must_hold() {
                libc::sigsuspend(&waiting);
            }
        }
        gate.held.store(false, Ordering::SeqCst);
        set_errno(saved_errno);
    }

    /// The address of the instruction the signal interrupted.
    fn interrupted_instruction(context: *mut libc::c_void) -> usize {
        let context = context as *const libc::ucontext_t;
        // SAFETY: the kernel passes a valid `ucontext_t` to an `SA_SIGINFO` handler.
        unsafe {
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            return (*context).uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
            #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
            return (*context).uc_mcontext.pc as usize;
            #[cfg(all(target_os = "macos", target_arch = "x86_64"))]
            return (*(*context).uc_mcontext).__ss.__rip as usize;
            #[cfg(all(target_os = "macos", target_arch = "aarch64"))]
            return (*(*context).uc_mcontext).__ss.__pc as usize;
        }
    }

    fn errno() -> libc::c_int {
        // SAFETY: the thread's errno location is always valid.
        unsafe { *errno_location() }
    }

    fn set_errno(value: libc::c_int) {
        // SAFETY: as above.
        unsafe { *errno_location() = value };
    }

    #[cfg(target_os = "linux")]
    unsafe fn errno_location() -> *mut libc::c_int {
        // SAFETY: always safe to call.
        unsafe { libc::__errno_location() }
    }

    #[cfg(target_os = "macos")]
    unsafe fn errno_location() -> *mut libc::c_int {
        // SAFETY: always safe to call.
        unsafe { libc::__error() }
    }
}

#[cfg(not(all(any(target_os = "linux", target_os = "macos"), any(target_arch = "x86_64", target_arch = "aarch64"))))]
mod signal {
    //! No way here to hold a thread in compiled code: runs pause at host calls only.

    use std::ops::Range;

    use crate::RunControl;

    pub const SUPPORTED: bool = false;

    #[derive(Debug)]
    pub struct Thread;

    impl Thread {
        pub fn current() -> Option<Self> {
            None
        }

        pub fn interrupt(&self) {}
    }

    pub fn enter(_control: &RunControl, _code: Range<usize>) {}

    pub fn leave() {}
}
