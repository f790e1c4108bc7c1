//! Opaque TCP forwarding with exact byte counts each way, half-close
//! included (a client that shuts down its write side still gets the reply).
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const BUF: usize = 64 * 1024;

pub struct Transfer {
    pub up: u64,
    pub down: u64,
    pub error: Option<String>,
}

/// Forwards both ways until both sides are done. An error on one direction
/// ends the other too (its peer is gone), so nothing hangs half-open.
pub async fn splice(client: TcpStream, upstream: TcpStream) -> Transfer {
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let error = {
        let up_fut = pump(cr, uw, &up);
        let down_fut = pump(ur, cw, &down);
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
    };
    Transfer {
        up: up.into_inner(),
        down: down.into_inner(),
        error,
    }
}

/// Copies until EOF, then shuts down the write side. `count` holds the bytes
/// written so far, also when the copy stops on an error or is cancelled.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
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
