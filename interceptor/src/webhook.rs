//! Announces pending approvals to a webhook (Slack-compatible JSON
//! `{"text": ...}`), retried with backoff, off the request path.
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

pub struct Webhook {
    url: http::Uri,
    tls: Arc<rustls::ClientConfig>,
}

const ATTEMPTS: u32 = 4;

impl Webhook {
    pub fn new(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Webhook> {
        let url: http::Uri = url
            .parse()
            .with_context(|| format!("approval_webhook {url:?}"))?;
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Webhook {
            url,
            tls: Arc::new(tls),
        })
    }

    /// Fire and forget: up to 4 attempts, 1 s, 2 s, 4 s apart.
    pub fn announce(self: &Arc<Self>, text: String) {
        let me = self.clone();
        tokio::spawn(async move {
            let body = serde_json::json!({ "text": text }).to_string();
            for attempt in 1..=ATTEMPTS {
                match tokio::time::timeout(Duration::from_secs(10), me.post(&body)).await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => {
                        tracing::warn!(attempt, error = %format!("{e:#}"), "approval webhook failed")
                    }
                    Err(_) => tracing::warn!(attempt, "approval webhook timed out"),
                }
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            tracing::error!("approval webhook gave up after {ATTEMPTS} attempts");
        });
    }

    async fn post(&self, body: &str) -> Result<()> {
        let host = self
            .url
            .host()
            .context("webhook URL has no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let https = self.url.scheme_str() == Some("https");
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let path = self
            .url
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let req = http::Request::post(path)
            .header(
                http::header::HOST,
                self.url.authority().map(|a| a.as_str()).unwrap_or(&host),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let status = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await?;
            let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            s.send_request(req).await?.status()
        } else {
            let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            s.send_request(req).await?.status()
        };
        if !status.is_success() {
            bail!("webhook answered {status}");
        }
        Ok(())
    }
}
