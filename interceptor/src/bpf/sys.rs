//! The few bpf(2) commands aya 0.14 keeps crate-private: open a pinned
//! object as a plain fd, replace a link's program in place, detach a link,
//! read a link's program id, and list the programs attached to a cgroup.
//! Each is one syscall with a fixed `union bpf_attr` layout (uapi
//! linux/bpf.h); the attr is zero-padded to the size the kernel accepts.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr` as a zeroed buffer; each command fills its own prefix.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().unwrap())
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live buffer of the size passed, laid out as the kernel's bpf_attr for `cmd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// BPF_OBJ_GET: an fd for the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut a = Attr::new();
    a.u64(0, c.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut a)?;
    // SAFETY: the kernel just returned this fd, open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_OBJ_PIN: pins `fd` at `path` (which must not exist).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut a = Attr::new();
    a.u64(0, c.as_ptr() as u64).u32(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut a).map(|_| ())
}

/// BPF_LINK_UPDATE: the link runs `prog` from now on, atomically (no moment
/// with both or neither).
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, link.as_raw_fd() as u32)
        .u32(4, prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut a).map(|_| ())
}

/// BPF_LINK_DETACH: detaches the link even while other fds or pins hold it.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, link.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut a).map(|_| ())
}

/// The program a link runs (`struct bpf_link_info`: type, id, prog_id).
pub fn link_prog_id(link: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u32; 16];
    let mut a = Attr::new();
    a.u32(0, link.as_raw_fd() as u32)
        .u32(4, std::mem::size_of_val(&info) as u32)
        .u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok(info[2])
}

/// BPF_PROG_QUERY: ids of the programs attached to the cgroup itself (not
/// inherited) for one attach type. `prog_attach_flags` is passed always:
/// the kernel requires it for BPF_LSM_CGROUP (EINVAL otherwise).
pub fn cgroup_prog_ids(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut n = 64;
    loop {
        let mut ids = vec![0u32; n];
        let mut flags = vec![0u32; n];
        let mut a = Attr::new();
        a.u32(0, cgroup.as_raw_fd() as u32)
            .u32(4, attach_type)
            .u64(16, ids.as_mut_ptr() as u64)
            .u32(24, n as u32)
            .u64(32, flags.as_mut_ptr() as u64);
        match bpf(BPF_PROG_QUERY, &mut a) {
            Ok(_) => {
                ids.truncate(a.get_u32(24) as usize);
                return Ok(ids);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n < 4096 => n *= 4,
            Err(e) => return Err(e),
        }
    }
}

/// Attach types (uapi `enum bpf_attach_type`) of our programs.
pub mod attach {
    pub const INET_INGRESS: u32 = 0;
    pub const INET_SOCK_CREATE: u32 = 2;
    pub const SOCK_OPS: u32 = 3;
    pub const INET4_CONNECT: u32 = 10;
    pub const INET6_CONNECT: u32 = 11;
    pub const INET4_POST_BIND: u32 = 12;
    pub const INET6_POST_BIND: u32 = 13;
    pub const UDP4_SENDMSG: u32 = 14;
    pub const UDP6_SENDMSG: u32 = 15;
    pub const INET4_GETPEERNAME: u32 = 29;
    pub const INET6_GETPEERNAME: u32 = 30;
    pub const LSM_CGROUP: u32 = 43;
}
