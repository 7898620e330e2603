//! Background storage work (encoding a snapshot) on a thread of its own, at
//! a lower CPU priority than the replica's serving threads.
//!
//! A snapshot costs a replica tens to hundreds of milliseconds of CPU, and
//! every replica takes one at about the same log index. On a machine whose
//! cores the replicas share, that work took the cores from the threads that
//! answer callers and replicate, and callers' latency rose for as long as it
//! ran. At nice [`BACKGROUND_NICE`] the scheduler gives it what the serving
//! threads leave; it still runs at full speed on an idle machine. The thread
//! is new for each job and ends with it, so lowering its priority never
//! touches a pooled thread that serving work might use later.

use tokio::sync::oneshot;

/// The nice value background threads lower themselves to (0 is normal, 19
/// the lowest). At 10 a busy thread gets about a tenth of what a normal one
/// gets on a contended core, so a snapshot is slowed under full load but not
/// starved.
pub const BACKGROUND_NICE: i32 = 10;

/// Why background work did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("cannot start the {name} thread: {source}")]
    Spawn { name: &'static str, source: std::io::Error },
    #[error("the {name} thread panicked")]
    Panicked { name: &'static str },
}

/// Runs `work` on a new thread named `name` and returns its result. `work`
/// starts at normal priority (so it can finish something other tasks wait
/// for, such as a copy under a lock) and calls [`lower_this_thread_priority`]
/// when what remains is its own.
pub async fn run_on_own_thread<T, F>(name: &'static str, work: F) -> Result<T, BackgroundError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (result, answer) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = result.send(work());
        })
        .map_err(|source| BackgroundError::Spawn { name, source })?;
    // The sender is dropped without a value only when `work` panicked.
    answer.await.map_err(|_| BackgroundError::Panicked { name })
}

/// Lowers the calling thread to [`BACKGROUND_NICE`]. Only for threads of
/// [`run_on_own_thread`]: a thread cannot raise its priority back without
/// privileges. Best effort: if the system refuses, the work runs at normal
/// priority, which is only slower for others.
pub fn lower_this_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // On Linux a nice value belongs to a thread, named by its thread id.
        // SAFETY: gettid and setpriority take plain integers and touch no
        // memory of ours.
        let refused = unsafe {
            let thread_id = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, thread_id, BACKGROUND_NICE) != 0
        };
        if refused {
            tracing::debug!(error = %std::io::Error::last_os_error(), "background thread keeps normal priority");
        }
    }
}

/// CPU time the calling thread has used so far (zero where the system
/// cannot say). The difference of two readings is the CPU a piece of
/// background work cost, which its wall time does not tell when the work
/// waited for a core at its lowered priority.
pub fn this_thread_cpu_time() -> std::time::Duration {
    #[cfg(target_os = "linux")]
    {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes only into the timespec we pass.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0 {
            return std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
        }
    }
    std::time::Duration::ZERO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_its_own_thread_and_lowers_only_that_thread() {
        let caller_nice = current_nice();
        let (name, nice) = run_on_own_thread("qm-test-bg", || {
            lower_this_thread_priority();
            (std::thread::current().name().map(str::to_owned), current_nice())
        })
        .await
        .expect("work returns");
        assert_eq!(Some("qm-test-bg".to_owned()), name);
        assert_eq!(BACKGROUND_NICE.max(caller_nice), nice);
        assert_eq!(caller_nice, current_nice(), "the calling thread keeps its priority");
    }

    #[tokio::test]
    async fn a_panic_in_the_work_is_an_error() {
        let error = run_on_own_thread("qm-test-panic", || -> u8 { panic!("on purpose") })
            .await
            .expect_err("panicked");
        assert!(matches!(error, BackgroundError::Panicked { name: "qm-test-panic" }), "{error:?}");
    }

    #[test]
    fn the_thread_cpu_clock_counts_this_threads_work() {
        // Busy for a bounded while (a clock that never moves must fail the
        // test, not hang it); only "more than before" is asserted, no amount.
        let before = this_thread_cpu_time();
        let busy_until = std::time::Instant::now() + std::time::Duration::from_millis(20);
        let mut sum = 0u64;
        while std::time::Instant::now() < busy_until {
            for i in 0..10_000u64 {
                sum = sum.wrapping_add(std::hint::black_box(i));
            }
        }
        assert!(this_thread_cpu_time() > before, "the clock did not move ({sum})");
    }

    fn current_nice() -> i32 {
        // SAFETY: plain integers in and out.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
    }
}
