//! Memory the daemon holds on a workload's behalf while it inspects: request
//! bodies a guardrail reads before deciding, JSON responses buffered for
//! field-path masking, the largest frame of each open WebSocket. Drawn from
//! a budget per workload and one for the whole daemon, so neither one skill
//! nor many together can make the daemon hold more (beyond it: a 503, or a
//! 502 for a response that cannot be masked).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct BodyBudget {
    per_workload: u64,
    total: u64,
    used: Mutex<Used>,
}

#[derive(Default)]
struct Used {
    by_workload: HashMap<String, u64>,
    total: u64,
}

/// Bytes one request holds; given back when dropped.
pub struct Lease {
    budget: Arc<BodyBudget>,
    workload: String,
    held: u64,
}

impl BodyBudget {
    pub fn new(per_workload: u64, total: u64) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            per_workload,
            total,
            used: Mutex::new(Used::default()),
        })
    }

    pub fn lease(self: &Arc<Self>, workload: &str) -> Lease {
        Lease {
            budget: self.clone(),
            workload: workload.to_string(),
            held: 0,
        }
    }
}

impl Lease {
    /// The workload's budget.
    pub fn limit(&self) -> u64 {
        self.budget.per_workload
    }

    /// Takes `n` more bytes; false when the workload's or the daemon's
    /// budget is spent.
    pub fn grow(&mut self, n: u64) -> bool {
        let mut used = self.budget.used.lock().unwrap();
        let mine = used.by_workload.get(&self.workload).copied().unwrap_or(0);
        if mine + n > self.budget.per_workload || used.total + n > self.budget.total {
            return false;
        }
        *used.by_workload.entry(self.workload.clone()).or_insert(0) += n;
        used.total += n;
        self.held += n;
        true
    }

    /// Gives back `n` of the bytes held (what was freed early).
    pub fn give_back(&mut self, n: u64) {
        let n = n.min(self.held);
        if n == 0 {
            return;
        }
        let mut used = self.budget.used.lock().unwrap();
        used.total -= n;
        if let Some(u) = used.by_workload.get_mut(&self.workload) {
            *u -= n;
            if *u == 0 {
                used.by_workload.remove(&self.workload);
            }
        }
        self.held -= n;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.held == 0 {
            return;
        }
        let mut used = self.budget.used.lock().unwrap();
        used.total -= self.held;
        if let Some(u) = used.by_workload.get_mut(&self.workload) {
            *u -= self.held;
            if *u == 0 {
                used.by_workload.remove(&self.workload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_budgets_are_per_workload_and_come_back() {
        let b = BodyBudget::new(10, 100);
        let mut l1 = b.lease("a");
        assert!(l1.grow(6));
        let mut l2 = b.lease("a");
        assert!(!l2.grow(6));
        assert!(b.lease("b").grow(10));
        drop(l1);
        assert!(l2.grow(6));
    }

    #[test]
    fn the_daemon_wide_budget_holds_across_workloads() {
        let b = BodyBudget::new(10, 15);
        let mut a = b.lease("a");
        assert!(a.grow(10));
        let mut c = b.lease("c");
        assert!(!c.grow(6));
        assert!(c.grow(5));
        drop(a);
        assert!(c.grow(5));
    }
}
