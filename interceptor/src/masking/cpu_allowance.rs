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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Masking CPU for the whole daemon: each body's allowance, and each
/// workload's share across all its bodies at once (six costly streams
/// at once kept both cores busy, each within its own allowance; found by
/// an attack pass).
pub struct MaskCpu {
    allowance: CpuAllowance,
    /// CPU seconds per second a workload's masking may use together.
    cores: f64,
    /// What it may save up, in CPU seconds.
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    /// CPU seconds left; below zero, every body of the workload is cut off
    /// until it refills.
    left: f64,
    at: Instant,
}

impl MaskCpu {
    /// `cores`: the workload's share (1.0 = one core), saved up for at
    /// most two seconds.
    pub fn new(allowance: CpuAllowance, cores: f64) -> Arc<MaskCpu> {
        Arc::new(MaskCpu {
            allowance,
            cores,
            burst: 2.0 * cores,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// A meter for one body (or WebSocket connection) of `workload`.
    pub fn meter(self: &Arc<Self>, workload: &str) -> CpuMeter {
        let mut m = CpuMeter::new(self.allowance);
        m.share = Some((self.clone(), workload.to_string()));
        m
    }

    fn take(&self, workload: &str, used: Duration, now: Instant) -> Result<(), String> {
        let mut buckets = self.buckets.lock().unwrap();
        let b = buckets.entry(workload.to_string()).or_insert(Bucket {
            left: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.cores;
        b.left = (b.left + refill).min(self.burst) - used.as_secs_f64();
        b.at = now;
        if b.left >= 0.0 {
            return Ok(());
        }
        Err(format!(
            "masking this workload's responses used more than its share of CPU \
             ({} core(s) across all its responses: config mask_cpu_cores_per_workload); \
             the rest is cut off",
            self.cores
        ))
    }
}

/// What one body's masking has used.
pub struct CpuMeter {
    allowance: CpuAllowance,
    used: Duration,
    bytes: u64,
    /// The workload's share, charged with the same time.
    share: Option<(Arc<MaskCpu>, String)>,
}

impl std::fmt::Debug for CpuMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuMeter")
            .field("used", &self.used)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl CpuMeter {
    pub fn new(allowance: CpuAllowance) -> Self {
        CpuMeter {
            allowance,
            used: Duration::ZERO,
            bytes: 0,
            share: None,
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
        let used = thread_cpu_time().saturating_sub(start);
        self.add(used, bytes)?;
        match &self.share {
            Some((share, workload)) => share.take(workload, used, Instant::now()),
            None => Ok(()),
        }
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
    fn a_workload_shares_its_cores_across_its_bodies() {
        let cpu = MaskCpu::new(CpuAllowance::default(), 1.0);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Two seconds saved up: 1.9 s of work at once is within it.
        cpu.take("a", ms(1900), t0).unwrap();
        // Another workload has its own.
        cpu.take("b", ms(1900), t0).unwrap();
        // 0.2 s more at once is not; a second later the bucket has
        // refilled by one second.
        let why = cpu.take("a", ms(200), t0).unwrap_err();
        assert!(why.contains("mask_cpu_cores_per_workload"), "{why}");
        cpu.take("a", ms(500), t0 + ms(1000)).unwrap();
        // Steady work at one core a second stays within it.
        for i in 2..20 {
            cpu.take("a", ms(990), t0 + ms(1000 * i)).unwrap();
        }
    }

    /// Each body's meter charges its workload's share with what it used.
    #[test]
    fn meters_draw_on_their_workloads_share() {
        let cpu = MaskCpu::new(CpuAllowance::default(), 0.01);
        let (mut a, mut b) = (cpu.meter("w"), cpu.meter("w"));
        let burn = |m: &mut CpuMeter| {
            let start = CpuMeter::start();
            let mut x = 0u64;
            while thread_cpu_time() - start < Duration::from_millis(30) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            m.charge(start, 1 << 20)
        };
        // 0.02 s saved up: the first 30 ms overdraws it, and the other
        // body of the same workload is cut off too.
        let first = burn(&mut a);
        let second = burn(&mut b);
        assert!(first.is_err() || second.is_err(), "{first:?} {second:?}");
        assert!(second.unwrap_err().contains("share of CPU"));
        let roomy = MaskCpu::new(CpuAllowance::default(), 100.0);
        burn(&mut roomy.meter("w")).unwrap();
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
