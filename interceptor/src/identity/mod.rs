//! Who is calling. Workload identity comes from the kernel (cgroup id,
//! pid/tgid, uid/gid recorded at connect time), never from anything the
//! workload sends.
pub mod oidc;

use crate::cgroup::CgroupNames;
use interceptor_common::ConnRecord;
use serde::{Deserialize, Serialize};

/// Who opened the connection, as the kernel and /proc told us.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Workload {
    /// cgroup path relative to the cgroup2 mount ("skills.slice/foo.service").
    pub cgroup: String,
    pub cgroup_id: u64,
    /// Thread id and process id (tgid) that called connect().
    pub tid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// /proc/PID/exe at accept time; empty when the process was already gone.
    pub exe: String,
    pub comm: String,
}

/// Builds the workload of a redirected connection. The cgroup is resolved
/// from the kernel's cgroup id; exe and comm are read from /proc and are
/// best-effort (the process may already have exited).
pub fn workload(rec: &ConnRecord, names: &CgroupNames) -> Workload {
    let proc_dir = format!("/proc/{}", rec.tgid);
    Workload {
        cgroup: names.name(rec.cgroup_id).unwrap_or_default(),
        cgroup_id: rec.cgroup_id,
        tid: rec.pid,
        pid: rec.tgid,
        uid: rec.uid,
        gid: rec.gid,
        exe: std::fs::read_link(format!("{proc_dir}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        comm: std::fs::read_to_string(format!("{proc_dir}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
    }
}
