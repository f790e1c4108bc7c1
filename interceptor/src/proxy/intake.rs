//! Intake under abuse: a cap on the connections each workload holds open,
//! so one skill that floods (or holds slow connections) cannot use up the
//! daemon's file descriptors and starve another. The kernel redirect means
//! every workload shares one listener; fairness is enforced here, at the
//! first point a connection is attributed.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct ConnLimits {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
    /// Refusals are counted in `stats.over_cap`; when one was last logged
    /// (a flood would otherwise write a log line per connection).
    stats: Arc<crate::metrics::Stats>,
    last_logged_ms: AtomicU64,
}

/// One open connection of a workload; frees its slot when dropped.
pub struct Slot {
    limits: Arc<ConnLimits>,
    workload: String,
}

impl ConnLimits {
    pub fn new(max: usize, stats: Arc<crate::metrics::Stats>) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max,
            open: Mutex::new(HashMap::new()),
            stats,
            last_logged_ms: AtomicU64::new(0),
        })
    }

    /// A slot for one more connection of `workload`, or `None` at the cap.
    pub fn acquire(self: &Arc<Self>, workload: &str) -> Option<Slot> {
        let mut open = self.open.lock().unwrap();
        let n = open.entry(workload.to_string()).or_insert(0);
        if *n >= self.max {
            drop(open);
            let refused = self.stats.over_cap.fetch_add(1, Ordering::Relaxed) + 1;
            let now = crate::store::now_ms();
            let last = self.last_logged_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000
                && self
                    .last_logged_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    workload,
                    max = self.max,
                    refused_total = refused,
                    "connection refused: the workload holds max_connections_per_workload open \
                     connections (logged at most once a second)"
                );
            }
            return None;
        }
        *n += 1;
        Some(Slot {
            limits: self.clone(),
            workload: workload.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.workload) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.workload);
            }
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard one (the daemon holds two
/// descriptors per proxied connection) and returns the limit in force.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the rlimit argument is a live local of its type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: the rlimit argument is a live local of its type.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            r.rlim_cur = r.rlim_max;
        }
    }
    r.rlim_cur
}

/// The default cap: a quarter of the descriptors, so at least four
/// workloads at their cap still leave the daemon room to work, and at most
/// 1,024 (each open HTTP/2 connection may hold up to its 1 MiB flow-control
/// window of unread data in the daemon).
pub fn default_cap(nofile: u64) -> usize {
    ((nofile / 4) as usize).clamp(16, 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_workload_and_come_back() {
        let l = ConnLimits::new(2, Default::default());
        let a1 = l.acquire("a").unwrap();
        let _a2 = l.acquire("a").unwrap();
        assert!(l.acquire("a").is_none());
        let _b = l.acquire("b").unwrap();
        drop(a1);
        assert!(l.acquire("a").is_some());
        assert_eq!(l.stats.over_cap.load(Ordering::Relaxed), 1);
    }
}
