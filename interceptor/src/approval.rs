//! Just-in-time approvals: a request under an `action = "approve"` rule is
//! held (its client waits) until an approver approves or denies it over the
//! admin socket, or it times out (denied). An approval can open a window in
//! which the same request (workload, uid, user, rule, method and canonical
//! target) passes without asking again; `approval_window_scope = "rule"`
//! widens it to any request under the rule from that workload, uid and user.
//! Held requests are capped per workload, so one skill cannot bury another's
//! approval under its own.
//!
//! Every approval is a record in the store; pending ones a dead daemon left
//! behind are marked interrupted at the next start.
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    /// The daemon stopped while it was pending; its client got an error.
    Interrupted,
    /// The client went away before a decision: nothing is waiting for it.
    Withdrawn,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approval {
    pub id: u64,
    pub created_ms: u64,
    pub state: State,
    pub rule: String,
    pub workload: String,
    /// The requesting process (uid checked against the approver's).
    pub pid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub method: String,
    pub host: String,
    pub path: String,
    /// Where the request goes (the address the skill dialled), and whether
    /// inside TLS verified for `host`; in cleartext `host` is only the
    /// skill's claim.
    #[serde(default)]
    pub destination: String,
    #[serde(default)]
    pub tls: bool,
    pub session: u64,
    pub expires_ms: u64,
    pub decided_ms: Option<u64>,
    /// Who decided: the approver's account (from the admin socket's peer
    /// credentials), or "timeout".
    pub approver: Option<String>,
    pub reason: Option<String>,
    /// Until when the same request (or, with scope "rule", the same rule)
    /// passes without asking.
    pub window_until_ms: Option<u64>,
    /// The window an approval opens unless the approver gives one (the
    /// rule's `approval_window`).
    #[serde(default)]
    pub window_s: Option<u64>,
    #[serde(default)]
    pub window_scope: WindowScope,
}

/// What an approval's window covers besides the workload, uid, OIDC user
/// and rule, which it always pins.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum WindowScope {
    /// The same method and canonical target (path and query).
    #[default]
    Request,
    /// Any request under the rule.
    Rule,
}

/// A request asking whether a window covers it.
pub struct Asking<'a> {
    pub workload: &'a str,
    pub uid: u32,
    pub user: Option<&'a str>,
    pub rule: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub target: &'a str,
    pub destination: &'a str,
    pub tls: bool,
}

impl Approval {
    /// What the request is for, as an approver must see it: the scheme (in
    /// cleartext the host is only the skill's claim) and where it goes.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.destination.is_empty() {
            format!("{scheme}://{}{}", self.host, self.path)
        } else {
            format!(
                "{scheme}://{}{} (to {})",
                self.host, self.path, self.destination
            )
        }
    }
}

/// What a held request learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Approved {
        by: String,
    },
    Denied {
        by: String,
        reason: String,
    },
    Expired,
    /// The daemon is stopping; the client gets a clear error to retry.
    Interrupted,
}

#[derive(Hash, PartialEq, Eq, Clone, Debug)]
struct WindowKey {
    workload: String,
    uid: u32,
    user: Option<String>,
    rule: String,
    /// Method, host, target, destination and TLS; `None` for a rule-wide
    /// window.
    request: Option<(String, String, String, String, bool)>,
}

impl WindowKey {
    fn of(a: &Asking, scope: WindowScope) -> WindowKey {
        WindowKey {
            workload: a.workload.into(),
            uid: a.uid,
            user: a.user.map(String::from),
            rule: a.rule.into(),
            request: (scope == WindowScope::Request).then(|| {
                (
                    a.method.into(),
                    a.host.into(),
                    a.target.into(),
                    a.destination.into(),
                    a.tls,
                )
            }),
        }
    }
}

/// A held request's answer, and the workload it counts against.
struct Waiting {
    workload: String,
    tx: oneshot::Sender<Outcome>,
}

#[derive(Default)]
pub struct Approvals {
    waiting: Mutex<HashMap<u64, Waiting>>,
    /// Open windows: key → until (unix ms).
    windows: Mutex<HashMap<WindowKey, u64>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{workload} already has {held} requests waiting for an approver (max_pending_approvals)")]
pub struct TooManyPending {
    pub workload: String,
    pub held: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error("no pending approval {0}")]
    NotPending(u64),
    #[error("{0} requested this and cannot approve it")]
    SelfApproval(String),
    #[error("{0} is not an approver (root or a member of the approvers group)")]
    NotAllowed(String),
    #[error("approval {0} has expired (its request was denied)")]
    Expired(u64),
}

impl Approvals {
    /// Whether an open window covers this request.
    pub fn window_open(&self, asking: &Asking, now_ms: u64) -> bool {
        let mut w = self.windows.lock().unwrap();
        w.retain(|_, until| *until > now_ms);
        [WindowScope::Request, WindowScope::Rule]
            .iter()
            .any(|s| w.contains_key(&WindowKey::of(asking, *s)))
    }

    /// Registers a held request, unless its workload already has `max`
    /// waiting; the receiver yields its outcome.
    pub fn hold(
        &self,
        id: u64,
        workload: &str,
        max: usize,
    ) -> Result<oneshot::Receiver<Outcome>, TooManyPending> {
        let mut waiting = self.waiting.lock().unwrap();
        let held = waiting.values().filter(|w| w.workload == workload).count();
        if held >= max {
            return Err(TooManyPending {
                workload: workload.into(),
                held,
            });
        }
        let (tx, rx) = oneshot::channel();
        waiting.insert(
            id,
            Waiting {
                workload: workload.into(),
                tx,
            },
        );
        Ok(rx)
    }

    /// Answers every held request (the daemon is stopping).
    pub fn interrupt_all(&self) -> usize {
        let waiting: Vec<_> = self.waiting.lock().unwrap().drain().collect();
        let n = waiting.len();
        for (_, w) in waiting {
            let _ = w.tx.send(Outcome::Interrupted);
        }
        n
    }

    pub fn forget(&self, id: u64) {
        self.waiting.lock().unwrap().remove(&id);
    }

    /// Applies an approver's decision to a pending approval record. The
    /// caller persists the returned record.
    pub fn decide(
        &self,
        mut a: Approval,
        approver: &Approver,
        approve: bool,
        reason: Option<String>,
        window: Option<Duration>,
        now_ms: u64,
    ) -> Result<Approval, DecideError> {
        if a.state != State::Pending {
            return Err(DecideError::NotPending(a.id));
        }
        if a.expires_ms <= now_ms {
            return Err(DecideError::Expired(a.id));
        }
        if !approver.allowed {
            return Err(DecideError::NotAllowed(approver.name.clone()));
        }
        // The requester is the process's account, and the OIDC user if any.
        // Withdrawing one's own request (deny) is fine; granting it is not.
        if approve && (approver.uid == a.uid || a.user.as_deref() == Some(approver.name.as_str())) {
            return Err(DecideError::SelfApproval(approver.name.clone()));
        }
        a.decided_ms = Some(now_ms);
        a.approver = Some(approver.name.clone());
        a.reason = reason.clone();
        let outcome = if approve {
            a.state = State::Approved;
            let window = window.or(a.window_s.map(Duration::from_secs));
            if let Some(w) = window.filter(|w| !w.is_zero()) {
                let until = now_ms + w.as_millis() as u64;
                a.window_until_ms = Some(until);
                let asking = Asking {
                    workload: &a.workload,
                    uid: a.uid,
                    user: a.user.as_deref(),
                    rule: &a.rule,
                    method: &a.method,
                    host: &a.host,
                    target: &a.path,
                    destination: &a.destination,
                    tls: a.tls,
                };
                let key = WindowKey::of(&asking, a.window_scope);
                self.windows.lock().unwrap().insert(key, until);
            }
            Outcome::Approved {
                by: approver.name.clone(),
            }
        } else {
            a.state = State::Denied;
            Outcome::Denied {
                by: approver.name.clone(),
                reason: reason.unwrap_or_else(|| "denied by an approver".into()),
            }
        };
        if let Some(w) = self.waiting.lock().unwrap().remove(&a.id) {
            let _ = w.tx.send(outcome);
        }
        Ok(a)
    }
}

/// The account on the other end of the admin socket.
#[derive(Clone, Debug)]
pub struct Approver {
    pub uid: u32,
    pub name: String,
    /// root, or a member of the approvers group.
    pub allowed: bool,
}

impl Approver {
    pub fn from_peer(uid: u32, approvers_group: Option<&str>) -> Approver {
        let name = user_name(uid).unwrap_or_else(|| format!("uid {uid}"));
        let allowed = uid == 0 || approvers_group.is_some_and(|g| in_group(&name, uid, g));
        Approver { uid, name, allowed }
    }
}

/// The user name of a uid (NSS via libc, so LDAP/sssd users work too).
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: a C struct of integers and pointers: all zeroes is a valid, empty value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of its type, and `buf` is as long as the length passed.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    Some(
        // SAFETY: the lookup succeeded: pw_name is a NUL-terminated string in `buf`, alive here.
        unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Membership by the group's member list or the user's primary group.
fn in_group(user: &str, uid: u32, group: &str) -> bool {
    let Ok(cgroup) = std::ffi::CString::new(group) else {
        return false;
    };
    let mut buf = vec![0 as libc::c_char; 65536];
    // SAFETY: a C struct of integers and pointers: all zeroes is a valid, empty value.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of its type, and `buf` is as long as the length passed.
    let rc = unsafe {
        libc::getgrnam_r(
            cgroup.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return false;
    }
    let mut p = grp.gr_mem;
    // SAFETY: the lookup succeeded: gr_mem is a NULL-terminated array of NUL-terminated strings in `buf`; `p` stops at the NULL.
    while !p.is_null() && !unsafe { *p }.is_null() {
        // SAFETY: the lookup succeeded: gr_mem is a NULL-terminated array of NUL-terminated strings in `buf`; `p` stops at the NULL.
        if unsafe { std::ffi::CStr::from_ptr(*p) }.to_string_lossy() == user {
            return true;
        }
        // SAFETY: the lookup succeeded: gr_mem is a NULL-terminated array of NUL-terminated strings in `buf`; `p` stops at the NULL.
        p = unsafe { p.add(1) };
    }
    // Primary group.
    let mut pbuf = vec![0 as libc::c_char; 4096];
    // SAFETY: a C struct of integers and pointers: all zeroes is a valid, empty value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut pout: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of its type, and `buf` is as long as the length passed.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, pbuf.as_mut_ptr(), pbuf.len(), &mut pout) };
    rc == 0 && !pout.is_null() && pwd.pw_gid == grp.gr_gid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: u64, uid: u32, user: Option<&str>) -> Approval {
        Approval {
            id,
            created_ms: 0,
            state: State::Pending,
            rule: "deploy".into(),
            workload: "skills.slice/a".into(),
            pid: 1,
            uid,
            user: user.map(String::from),
            method: "POST".into(),
            host: "api".into(),
            path: "/deploy".into(),
            destination: "10.0.0.1:443".into(),
            tls: true,
            session: 1,
            expires_ms: 100_000,
            decided_ms: None,
            approver: None,
            reason: None,
            window_until_ms: None,
            window_s: None,
            window_scope: WindowScope::Request,
        }
    }

    fn asking<'a>(uid: u32, user: Option<&'a str>, target: &'a str) -> Asking<'a> {
        Asking {
            workload: "skills.slice/a",
            uid,
            user,
            rule: "deploy",
            method: "POST",
            host: "api",
            target,
            destination: "10.0.0.1:443",
            tls: true,
        }
    }

    fn root() -> Approver {
        Approver {
            uid: 0,
            name: "root".into(),
            allowed: true,
        }
    }

    #[tokio::test]
    async fn approve_deny_self_and_windows() {
        let a = Approvals::default();
        let rx = a.hold(1, "skills.slice/a", 8).unwrap();
        let done = a
            .decide(
                pending(1, 1000, None),
                &root(),
                true,
                None,
                Some(Duration::from_secs(60)),
                10,
            )
            .unwrap();
        assert_eq!(done.state, State::Approved);
        assert_eq!(rx.await.unwrap(), Outcome::Approved { by: "root".into() });
        assert!(a.window_open(&asking(1000, None, "/deploy"), 20));
        assert!(!a.window_open(&asking(1000, Some("bob"), "/deploy"), 20));
        assert!(!a.window_open(&asking(1001, None, "/deploy"), 20));
        assert!(!a.window_open(&asking(1000, None, "/deploy/other"), 20));
        assert!(!a.window_open(&asking(1000, None, "/deploy"), 60_011));
        // Not the same path to another address, or in cleartext.
        let mut elsewhere = asking(1000, None, "/deploy");
        elsewhere.destination = "10.9.9.9:80";
        assert!(!a.window_open(&elsewhere, 20));
        let mut clear = asking(1000, None, "/deploy");
        clear.tls = false;
        assert!(!a.window_open(&clear, 20));
        // Scope "rule": any target, still the same uid; the rule's own
        // window applies when the approver gives none.
        let mut wide = pending(6, 1000, None);
        wide.window_scope = WindowScope::Rule;
        wide.window_s = Some(60);
        a.decide(wide, &root(), true, None, None, 10).unwrap();
        assert!(a.window_open(&asking(1000, None, "/deploy/other"), 20));
        assert!(!a.window_open(&asking(1001, None, "/deploy/other"), 20));
        // An expired approval cannot be approved late.
        let mut late = pending(7, 1000, None);
        late.expires_ms = 100;
        assert_eq!(
            a.decide(late, &root(), true, None, None, 100),
            Err(DecideError::Expired(7))
        );
        // Deciding twice is refused.
        assert_eq!(
            a.decide(done, &root(), false, None, None, 30),
            Err(DecideError::NotPending(1))
        );
        // The requester's own account, by uid or by OIDC name.
        assert!(matches!(
            a.decide(pending(2, 0, None), &root(), true, None, None, 0),
            Err(DecideError::SelfApproval(_))
        ));
        assert!(matches!(
            a.decide(pending(3, 1000, Some("root")), &root(), true, None, None, 0),
            Err(DecideError::SelfApproval(_))
        ));
        let nobody = Approver {
            uid: 65534,
            name: "nobody".into(),
            allowed: false,
        };
        assert!(matches!(
            a.decide(pending(4, 1000, None), &nobody, true, None, None, 0),
            Err(DecideError::NotAllowed(_))
        ));
        let rx = a.hold(5, "skills.slice/a", 8).unwrap();
        a.decide(
            pending(5, 1000, None),
            &root(),
            false,
            Some("not today".into()),
            None,
            0,
        )
        .unwrap();
        assert_eq!(
            rx.await.unwrap(),
            Outcome::Denied {
                by: "root".into(),
                reason: "not today".into()
            }
        );
    }

    #[test]
    fn held_requests_are_capped_per_workload() {
        let a = Approvals::default();
        let _r1 = a.hold(1, "w1", 2).unwrap();
        let _r2 = a.hold(2, "w1", 2).unwrap();
        assert_eq!(a.hold(3, "w1", 2).unwrap_err().held, 2);
        let _r4 = a.hold(4, "w2", 2).unwrap();
        a.forget(1);
        let _r5 = a.hold(5, "w1", 2).unwrap();
    }

    #[test]
    fn peer_accounts() {
        let r = Approver::from_peer(0, None);
        assert_eq!((r.name.as_str(), r.allowed), ("root", true));
        let n = Approver::from_peer(65534, None);
        assert!(!n.allowed);
        assert!(Approver::from_peer(65534, Some("nogroup")).allowed); // nobody's primary group
    }
}
