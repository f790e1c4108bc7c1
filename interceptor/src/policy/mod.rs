//! Connection policy: ordered rules from `*.toml` files, first match wins,
//! default deny.
//!
//! This build decides per connection on the workload (cgroup path) and the
//! original destination (IP/CIDR and port). Per-request matching (host names,
//! methods, paths, users) needs the HTTP/TLS data path and is not here yet.
mod destination;
mod file;

pub use destination::Destination;
pub use file::PolicyError;

use globset::GlobSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug)]
pub struct Rule {
    pub id: String,
    /// cgroup path globs; `None` matches every workload.
    workloads: Option<GlobSet>,
    /// `None` matches every destination.
    destinations: Option<Vec<Destination>>,
    pub action: Action,
    pub reason: Option<String>,
}

/// What a connection is, as far as policy is concerned.
pub struct Subject<'a> {
    /// cgroup path relative to the cgroup2 mount.
    pub workload: &'a str,
    pub destination: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The rule that decided; `None` for the default deny.
    pub rule: Option<String>,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub files: Vec<PathBuf>,
}

impl Rule {
    fn matches(&self, s: &Subject) -> bool {
        self.workloads
            .as_ref()
            .is_none_or(|g| g.is_match(s.workload))
            && self
                .destinations
                .as_ref()
                .is_none_or(|ds| ds.iter().any(|d| d.matches(s.destination)))
    }
}

impl Policy {
    /// Loads every `*.toml` in `dir`, in file name order. All errors are
    /// reported, each with file:line:col.
    pub fn load_dir(dir: &Path) -> Result<Policy, Vec<PolicyError>> {
        file::load_dir(dir)
    }

    pub fn decide(&self, s: &Subject) -> Decision {
        for r in &self.rules {
            if r.matches(s) {
                let reason = r.reason.clone().unwrap_or_else(|| match r.action {
                    Action::Allow => format!("allowed by rule {}", r.id),
                    Action::Deny => format!("denied by rule {}", r.id),
                });
                return Decision {
                    action: r.action,
                    rule: Some(r.id.clone()),
                    reason,
                };
            }
        }
        Decision {
            action: Action::Deny,
            rule: None,
            reason: "no rule matched (default deny)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        let dir = tempdir();
        std::fs::write(dir.join("a.toml"), text).unwrap();
        let p = Policy::load_dir(&dir).unwrap_or_else(|e| panic!("{e:?}"));
        std::fs::remove_dir_all(&dir).unwrap();
        p
    }

    pub(crate) fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "icpt-policy-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn shipped_examples_load_and_mean_what_they_say() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let p = Policy::load_dir(&dir).unwrap_or_else(|e| panic!("{e:#?}"));
        assert!(p.files.len() >= 2);
        let d = |w: &str, a: &str| p.decide(&Subject { workload: w, destination: a.parse().unwrap() });
        assert_eq!(d("skills.slice/x.service", "169.254.169.254:80").rule.as_deref(), Some("deny-cloud-metadata"));
        assert_eq!(d("skills.slice/x.service", "127.0.0.1:5433").action, Action::Allow);
        assert_eq!(d("skills.slice/billing.service", "10.20.0.7:8443").rule.as_deref(), Some("billing-api"));
        assert_eq!(d("skills.slice/other.service", "10.20.0.7:8443").action, Action::Deny);
        assert_eq!(d("skills.slice/billing.service", "10.20.0.7:25").rule.as_deref(), Some("deny-smtp"));
    }

    #[test]
    fn first_match_wins_and_default_denies() {
        let p = policy(
            r#"
[[rule]]
id = "no-metadata"
destination = ["169.254.169.254"]
action = "deny"
reason = "cloud metadata is off limits"

[[rule]]
id = "skills-local"
workload = "skills.slice/**"
destination = ["127.0.0.0/8:8000-8999", "[::1]:8080"]
action = "allow"
"#,
        );
        let d = |w: &str, a: &str| {
            p.decide(&Subject {
                workload: w,
                destination: a.parse().unwrap(),
            })
        };
        assert_eq!(
            d("skills.slice/x.service", "127.0.0.1:8080").action,
            Action::Allow
        );
        assert_eq!(
            d("skills.slice/x.service", "[::1]:8080").rule.as_deref(),
            Some("skills-local")
        );
        assert_eq!(d("skills.slice/x.service", "127.0.0.1:9000").rule, None);
        assert_eq!(d("other.slice", "127.0.0.1:8080").action, Action::Deny);
        let m = d("skills.slice/x.service", "169.254.169.254:80");
        assert_eq!(m.rule.as_deref(), Some("no-metadata"));
        assert_eq!(m.reason, "cloud metadata is off limits");
    }
}
