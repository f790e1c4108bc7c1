//! How much CPU masking one body may use. The masker's worst texts (runs
//! of backslashes for the escaped-secret reader, near misses of the
//! escaped secret) cost about 0.5 µs a byte, hundreds of times an
//! ordinary text's; an upstream must not turn one response into seconds
//! of a core (found by an attack pass). Past its allowance a body is cut
//! off, never passed on unmasked.
//!
//! Measured as the thread's CPU time around each masking step, not wall
//! time: a busy machine does not cut off honest responses, and time the
//! task spends waiting is not counted.
use std::time::Duration;

/// `base` for the body, and `per_byte` for each byte the upstream sent
/// (decoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuAllowance {
    pub base: Duration,
    pub per_byte: Duration,
}

impl Default for CpuAllowance {
    /// One second, and 200 ns a byte (5 MiB/s; masking an ordinary text
    /// runs at 800 MiB/s in bulk and 9 MiB/s three bytes at a time).
    /// Debug builds (the test suite's) mask about twenty times slower.
    fn default() -> Self {
        let slower = if cfg!(debug_assertions) { 20 } else { 1 };
        CpuAllowance {
            base: Duration::from_secs(1) * slower,
            per_byte: Duration::from_nanos(200) * slower,
        }
    }
}

/// What one body's masking has used.
#[derive(Debug)]
pub struct CpuMeter {
    allowance: CpuAllowance,
    used: Duration,
    bytes: u64,
}

impl CpuMeter {
    pub fn new(allowance: CpuAllowance) -> Self {
        CpuMeter {
            allowance,
            used: Duration::ZERO,
            bytes: 0,
        }
    }

    /// The thread's CPU time so far: taken before a step, given to
    /// `charge` after it.
    pub fn start() -> Duration {
        thread_cpu_time()
    }

    /// A step that began at `start` (`CpuMeter::start`) masked `bytes`
    /// more bytes; an error once the body has used more than it may.
    pub fn charge(&mut self, start: Duration, bytes: usize) -> Result<(), String> {
        self.add(thread_cpu_time().saturating_sub(start), bytes)
    }

    fn add(&mut self, used: Duration, bytes: usize) -> Result<(), String> {
        self.used += used;
        self.bytes += bytes as u64;
        let allowed = self.allowance.base
            + self
                .allowance
                .per_byte
                .saturating_mul(self.bytes.min(u32::MAX as u64) as u32);
        if self.used <= allowed {
            return Ok(());
        }
        Err(format!(
            "masking used {} ms of CPU for {} bytes, more than it may \
             ({} ms and {} ns a byte: config mask_cpu_base_ms, mask_cpu_ns_per_byte); \
             the rest is cut off",
            self.used.as_millis(),
            self.bytes,
            self.allowance.base.as_millis(),
            self.allowance.per_byte.as_nanos(),
        ))
    }
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a
    // constant Linux always has.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_may_use_its_base_and_its_share_per_byte() {
        let allowance = CpuAllowance {
            base: Duration::from_millis(100),
            per_byte: Duration::from_nanos(200),
        };
        let mut m = CpuMeter::new(allowance);
        // 1 MiB at 100 ns a byte: within.
        for _ in 0..16 {
            m.add(Duration::from_nanos(100 * 65536), 65536).unwrap();
        }
        // The same megabyte again at 500 ns a byte: within the base for a
        // while, then over.
        let mut cut = None;
        for i in 0..16 {
            if let Err(why) = m.add(Duration::from_nanos(500 * 65536), 65536) {
                cut = Some((i, why));
                break;
            }
        }
        let (at, why) = cut.expect("never cut off");
        assert!((3..16).contains(&at), "cut off after {at} steps");
        assert!(why.contains("mask_cpu_base_ms"), "{why}");
    }

    #[test]
    fn the_clock_counts_work_not_waiting() {
        let start = CpuMeter::start();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time() - start;
        assert!(slept < Duration::from_millis(25), "{slept:?}");
        // Work moves it (within a minute of wall time, however busy).
        let start = CpuMeter::start();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while thread_cpu_time() - start < Duration::from_millis(10) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the clock stands still"
            );
        }
    }
}
