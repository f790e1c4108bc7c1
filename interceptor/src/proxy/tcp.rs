//! Opaque TCP forwarding with exact byte counts each way, half-close
//! included (a client that shuts down its write side still gets the reply).
//!
//! Bytes move socket → pipe → socket with `splice(2)`, in the kernel: no
//! copy through the proxy's memory (opaque TCP is never looked into). A
//! copy through a buffer stays as the fallback when a pipe cannot be had.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

const BUF: usize = 64 * 1024;
/// What one splice moves at most; the pipe is made this large.
const PIPE: usize = 1 << 20;

pub struct Transfer {
    pub up: u64,
    pub down: u64,
    pub error: Option<String>,
}

/// Forwards both ways until both sides are done. An error on one direction
/// ends the other too (its peer is gone), so nothing hangs half-open.
pub async fn splice(client: TcpStream, upstream: TcpStream) -> Transfer {
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let error = match (Pipe::new(), Pipe::new()) {
        (Ok(p_up), Ok(p_down)) => {
            let up_fut = pump_spliced(&client, &upstream, &p_up, &up);
            let down_fut = pump_spliced(&upstream, &client, &p_down, &down);
            both(up_fut, down_fut).await
        }
        _ => {
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            both(pump_copied(cr, uw, &up), pump_copied(ur, cw, &down)).await
        }
    };
    Transfer {
        up: up.into_inner(),
        down: down.into_inner(),
        error,
    }
}

/// Runs both directions; the first error ends both.
async fn both(
    up_fut: impl Future<Output = std::io::Result<()>>,
    down_fut: impl Future<Output = std::io::Result<()>>,
) -> Option<String> {
    tokio::pin!(up_fut, down_fut);
    tokio::select! {
        r = &mut up_fut => match r {
            Ok(()) => down_fut.await.err().map(|e| format!("upstream→client: {e}")),
            Err(e) => Some(format!("client→upstream: {e}")),
        },
        r = &mut down_fut => match r {
            Ok(()) => up_fut.await.err().map(|e| format!("client→upstream: {e}")),
            Err(e) => Some(format!("upstream→client: {e}")),
        },
    }
}

/// A pipe for splice: both ends non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> std::io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given,
        // which has room for two.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created by pipe2 and are owned
        // by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Larger than the default 64 KiB: fewer splices for bulk data. A
        // refusal (the per-user pipe limit) leaves the default.
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE as libc::c_int) };
        Ok(Pipe { read, write })
    }
}

/// One non-blocking splice; WouldBlock when either side is not ready.
fn splice_once(from: RawFd, to: RawFd, len: usize) -> std::io::Result<usize> {
    // SAFETY: splice reads and writes only the kernel objects behind the
    // two descriptors, which the callers keep open for the call; no user
    // memory is passed (null offsets: the current file positions).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `from` → pipe → `to` until EOF, then shuts down `to`'s write side.
/// `count` holds the bytes written to `to` so far, also when the copy stops
/// on an error or is cancelled.
async fn pump_spliced(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    count: &AtomicU64,
) -> std::io::Result<()> {
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice_once(from.as_raw_fd(), pipe.write.as_raw_fd(), PIPE)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => break r?,
            }
        };
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice_once(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => {
                    let m = r?;
                    left -= m;
                    count.fetch_add(m as u64, Ordering::Relaxed);
                }
            }
        }
    }
    // SAFETY: shutdown on a socket the caller keeps open; SHUT_WR only
    // ends this direction.
    unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
    Ok(())
}

/// The same through a buffer in memory (no pipe to be had).
async fn pump_copied(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// 8 MiB one way and a reply after the half-close the other way, every
    /// byte in order and counted.
    #[test]
    fn bytes_are_spliced_both_ways_with_half_close() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut client, proxy_client) = pair().await;
            let (proxy_upstream, mut upstream) = pair().await;
            let relay = tokio::spawn(splice(proxy_client, proxy_upstream));
            let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                client.write_all(&sent).await.unwrap();
                client.shutdown().await.unwrap();
                let mut reply = Vec::new();
                client.read_to_end(&mut reply).await.unwrap();
                reply
            });
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.unwrap();
            assert!(got == data, "the bytes arrived changed or short");
            upstream.write_all(b"done").await.unwrap();
            upstream.shutdown().await.unwrap();
            assert_eq!(writer.await.unwrap(), b"done");
            let t = relay.await.unwrap();
            assert_eq!((t.up, t.down, t.error), (8 << 20, 4, None));
        });
    }
}
