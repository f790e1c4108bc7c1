//! Upstream HTTP connections, reused across requests: HTTP/2 connections
//! are shared (multiplexed), idle HTTP/1.1 connections are pooled. The
//! upstream is always the workload's original destination address; TLS
//! verifies the server name the workload asked for.
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

pub use crate::BoxError;
pub type ReqBody = BoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per upstream.
const IDLE_PER_KEY: usize = 32;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    pub addr: SocketAddr,
    /// `Some(name)`: TLS, verified for `name`.
    pub tls_name: Option<String>,
    /// Carries an injected credential: never over a connection to a
    /// workload's own socket, and never shared with uncredentialed requests.
    pub credentialed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("TLS to {0} failed: {1}")]
    Tls(String, String),
    #[error("{0}")]
    Http(String),
    #[error(
        "{0} is a socket of a workload (cgroup id {1}), not the upstream: credentials are never sent to a workload"
    )]
    WorkloadPeer(SocketAddr, u64),
}

enum Conn {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

pub struct Pool {
    tls: Arc<rustls::ClientConfig>,
    /// ALPN http/1.1 only, for upgrades.
    tls_h1: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    /// SO_MARK of the proxy's sockets (see `Proxy::mark`).
    mark: u32,
    /// Tells whether a new connection landed on a workload's socket.
    hooks: Arc<dyn super::Redirects>,
    h1_idle: Mutex<HashMap<Key, Vec<http1::SendRequest<ReqBody>>>>,
    h2: Mutex<HashMap<Key, http2::SendRequest<ReqBody>>>,
}

impl Pool {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        mark: u32,
        hooks: Arc<dyn super::Redirects>,
    ) -> Self {
        let mut h1 = (*tls).clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls_h1: Arc::new(h1),
            tls,
            connect_timeout,
            mark,
            hooks,
            h1_idle: Mutex::default(),
            h2: Mutex::default(),
        }
    }

    /// Sends one request. `req`'s URI must be origin-form (`/path?query`);
    /// it is completed for HTTP/2, which needs scheme and authority.
    pub async fn send(
        &self,
        key: &Key,
        mut req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let conn = match self.reuse(key) {
            Some(c) => c,
            None => self.connect(key).await?,
        };
        match conn {
            Conn::H2(mut s) => {
                let authority = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        key.tls_name.clone().unwrap_or_else(|| key.addr.to_string())
                    });
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .to_string();
                *req.uri_mut() = http::Uri::builder()
                    .scheme("https")
                    .authority(authority)
                    .path_and_query(pq)
                    .build()
                    .map_err(|e| UpstreamError::Http(e.to_string()))?;
                req.headers_mut().remove(http::header::HOST);
                s.send_request(req)
                    .await
                    .map_err(|e| UpstreamError::Http(e.to_string()))
            }
            Conn::H1(mut s) => {
                let resp = s
                    .send_request(req)
                    .await
                    .map_err(|e| UpstreamError::Http(e.to_string()));
                // Ready again once this response's body is read; `reuse`
                // skips it until then.
                let mut idle = self.h1_idle.lock().unwrap();
                let list = idle.entry(key.clone()).or_default();
                if list.len() < IDLE_PER_KEY && !s.is_closed() {
                    list.push(s);
                }
                resp
            }
        }
    }

    fn reuse(&self, key: &Key) -> Option<Conn> {
        if let Some(s) = self.h2.lock().unwrap().get(key)
            && !s.is_closed()
            && s.is_ready()
        {
            return Some(Conn::H2(s.clone()));
        }
        let mut idle = self.h1_idle.lock().unwrap();
        let list = idle.get_mut(key)?;
        list.retain(|s| !s.is_closed());
        let i = list.iter().position(|s| s.is_ready())?;
        Some(Conn::H1(list.swap_remove(i)))
    }

    /// A request that asks for a protocol switch, on a fresh HTTP/1.1
    /// connection that hyper hands over after a 101.
    pub async fn send_upgrade(
        &self,
        key: &Key,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let tcp = self.tcp(key).await?;
        let http = |e: hyper::Error| UpstreamError::Http(e.to_string());
        let mut s = match &key.tls_name {
            None => {
                let (s, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(http)?;
                tokio::spawn(conn.with_upgrades());
                s
            }
            Some(name) => {
                let tls = self.tls(name, tcp, self.tls_h1.clone()).await?;
                let (s, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(http)?;
                tokio::spawn(conn.with_upgrades());
                s
            }
        };
        s.send_request(req).await.map_err(http)
    }

    async fn tcp(&self, key: &Key) -> Result<TcpStream, UpstreamError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            super::connect_marked(key.addr, self.mark),
        )
        .await
        .map_err(|_| UpstreamError::Connect(key.addr, "timed out".into()))?
        .map_err(|e| UpstreamError::Connect(key.addr, e.to_string()))?;
        // The proxy's connects may reach a workload's own server (they carry
        // its mark); a credential must not. The kernel noted the SYN's
        // arrival before the SYN-ACK, so before connect() returned.
        let workload = tcp
            .local_addr()
            .ok()
            .and_then(|l| self.hooks.upstream_is_workload(l));
        if let Some(cgroup_id) = workload
            && key.credentialed
        {
            return Err(UpstreamError::WorkloadPeer(key.addr, cgroup_id));
        }
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn tls(
        &self,
        name: &str,
        tcp: TcpStream,
        cfg: Arc<rustls::ClientConfig>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|e| UpstreamError::Tls(name.to_string(), e.to_string()))?;
        tokio_rustls::TlsConnector::from(cfg)
            .connect(server_name, tcp)
            .await
            .map_err(|e| UpstreamError::Tls(name.to_string(), e.to_string()))
    }

    async fn connect(&self, key: &Key) -> Result<Conn, UpstreamError> {
        let tcp = self.tcp(key).await?;
        let Some(name) = &key.tls_name else {
            let (s, conn) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| UpstreamError::Http(e.to_string()))?;
            tokio::spawn(conn);
            return Ok(Conn::H1(s));
        };
        let tls = self.tls(name, tcp, self.tls.clone()).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (s, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| UpstreamError::Http(e.to_string()))?;
            tokio::spawn(conn);
            self.h2.lock().unwrap().insert(key.clone(), s.clone());
            Ok(Conn::H2(s))
        } else {
            let (s, conn) = http1::handshake(io)
                .await
                .map_err(|e| UpstreamError::Http(e.to_string()))?;
            tokio::spawn(conn);
            Ok(Conn::H1(s))
        }
    }
}
