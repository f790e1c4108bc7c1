//! TLS on both sides of the proxy.
//!
//! - A local CA (created on first start in the state directory, key 0600)
//!   mints a leaf certificate per server name, cached; skills trust the CA
//!   (`interceptor ca export`).
//! - Upstream TLS is verified against the system roots plus configured
//!   extra CAs; a bad certificate is an error, never a downgrade.
use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
/// Leaves are cheap to mint; the cache only avoids doing it per connection.
const LEAF_CACHE_MAX: usize = 10_000;
/// Client TLS sessions kept for resumption (a few hundred bytes each).
const RESUMABLE_SESSIONS: usize = 8192;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub struct Tls {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// One key for every leaf of this daemon run.
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
    /// TLS sessions clients may resume, shared by every leaf's config (a
    /// cache per config would be 256 sessions a name, lost with the leaf).
    /// Stateful: no ticket key to keep secret or rotate.
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
    /// For upstreams: ALPN h2 and http/1.1.
    pub client: Arc<ClientConfig>,
}

/// The CA's subject, identical on every load: leaves name it as issuer.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "interceptor");
    dn.push(DnType::CommonName, "interceptor local CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Tls {
    /// Loads the CA from `state_dir`, creating it on first start.
    pub fn load_or_create(state_dir: &Path, extra_cas: &[PathBuf]) -> Result<Tls> {
        let (cert_path, key_path) = (state_dir.join(CA_CERT), state_dir.join(CA_KEY));
        let (ca_pem, key) = if cert_path.exists() && key_path.exists() {
            let mode = std::fs::metadata(&key_path)?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable by others (mode {:o}); chmod 600 it",
                    key_path.display(),
                    mode & 0o777
                );
            }
            let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)
                .with_context(|| format!("reading the CA key {}", key_path.display()))?;
            (std::fs::read_to_string(&cert_path)?, key)
        } else {
            let key = KeyPair::generate().context("generating the CA key")?;
            let mut p = ca_params();
            p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
            p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
            let cert = p.self_signed(&key).context("creating the CA certificate")?;
            std::fs::create_dir_all(state_dir)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .with_context(|| format!("creating {}", key_path.display()))?;
            std::io::Write::write_all(&mut f, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, cert.pem())?;
            tracing::info!(cert = %cert_path.display(), "created the local CA");
            (cert.pem(), key)
        };
        let ca_der = rustls_pemfile::certs(&mut ca_pem.as_bytes())
            .next()
            .context("the CA file holds no certificate")??;
        Ok(Tls {
            ca_pem,
            ca_der,
            issuer: Issuer::new(ca_params(), key),
            leaf_key: KeyPair::generate()?,
            leaves: Mutex::new(HashMap::new()),
            sessions: rustls::server::ServerSessionMemoryCache::new(RESUMABLE_SESSIONS),
            client: Arc::new(client_config(extra_cas)?),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server config presenting a leaf for `name` (DNS name or IP).
    pub fn server_config(&self, name: &str) -> Result<Arc<ServerConfig>> {
        if let Some(c) = self.leaves.lock().unwrap().get(name) {
            return Ok(c.clone());
        }
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.try_into()
                    .with_context(|| format!("{name:?} is not a DNS name"))?,
            ),
        }];
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(7);
        let leaf = p.signed_by(&self.leaf_key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.ca_der.clone()], key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.session_storage = self.sessions.clone();
        let cfg = Arc::new(cfg);
        let mut leaves = self.leaves.lock().unwrap();
        if leaves.len() >= LEAF_CACHE_MAX {
            leaves.clear();
        }
        leaves.insert(name.to_string(), cfg.clone());
        Ok(cfg)
    }
}

/// System roots plus extra CA files (PEM).
pub fn client_config(extra_cas: &[PathBuf]) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "could not load some system root certificates");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    for f in extra_cas {
        let pem =
            std::fs::read(f).with_context(|| format!("reading extra CA file {}", f.display()))?;
        let mut n = 0;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c.with_context(|| format!("parsing {}", f.display()))?)?;
            n += 1;
        }
        if n == 0 {
            bail!("extra CA file {} holds no certificate", f.display());
        }
    }
    tracing::debug!(
        system_roots = added,
        extra = extra_cas.len(),
        "upstream trust store"
    );
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Fresh connections to an upstream resume its TLS session (the pool
    // reopens connections under churn).
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(RESUMABLE_SESSIONS);
    Ok(cfg)
}

/// Reads the ClientHello without consuming it (MSG_PEEK) and returns the
/// server name, so the decision (intercept, pass through, deny) comes
/// before the handshake. Parsed by rustls, not by hand.
pub async fn peek_server_name(
    conn: &tokio::net::TcpStream,
    timeout: std::time::Duration,
) -> Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 16 * 1024];
    let mut last = 0;
    loop {
        let n = tokio::time::timeout_at(deadline, conn.peek(&mut buf))
            .await
            .context("timed out reading the TLS ClientHello")??;
        if n == 0 {
            bail!("the client closed before its ClientHello");
        }
        if n != last {
            last = n;
            let mut acceptor = rustls::server::Acceptor::default();
            acceptor.read_tls(&mut &buf[..n])?;
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    return Ok(accepted.client_hello().server_name().map(str::to_string));
                }
                Ok(None) => {}
                Err((e, _)) => bail!("malformed TLS ClientHello: {e}"),
            }
            if n == buf.len() {
                bail!("TLS ClientHello larger than {} bytes", buf.len());
            }
        }
        // More of the hello is on its way; peek returns what is there at once.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out reading the TLS ClientHello");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    /// Runs a TLS handshake in memory (and reads the session tickets the
    /// server sends after it); returns how the client's went.
    fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> rustls::HandshakeKind {
        let mut s = rustls::ServerConnection::new(server).unwrap();
        let mut c =
            rustls::ClientConnection::new(client, name.to_string().try_into().unwrap()).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        c.handshake_kind().unwrap()
    }

    /// A client's second connection resumes its TLS session (no new key
    /// exchange and certificate check), also when its name's leaf was
    /// minted again (the cache full) in between.
    #[test]
    fn clients_resume_their_tls_sessions() {
        let dir = std::env::temp_dir().join(format!("icpt-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tls = Tls::load_or_create(&dir, &[]).unwrap();
        let ca = dir.join(CA_CERT);
        let client = Arc::new(client_config(&[ca]).unwrap());
        let server = tls.server_config("api.example.com").unwrap();
        assert_eq!(
            handshake(server.clone(), client.clone(), "api.example.com"),
            rustls::HandshakeKind::Full
        );
        drop(server);
        tls.leaves.lock().unwrap().clear();
        let server = tls.server_config("api.example.com").unwrap();
        assert_eq!(
            handshake(server, client.clone(), "api.example.com"),
            rustls::HandshakeKind::Resumed
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_ca_survives_a_restart_and_signs_verifiable_leaves() {
        let dir = std::env::temp_dir().join(format!("icpt-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Tls::load_or_create(&dir, &[]).unwrap();
        let mode = std::fs::metadata(dir.join(CA_KEY))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let b = Tls::load_or_create(&dir, &[]).unwrap();
        assert_eq!(a.ca_pem(), b.ca_pem());
        // A leaf of the reloaded CA verifies against the CA as first written.
        b.server_config("api.example.com").unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(a.ca_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let leaf = {
            let mut p = CertificateParams::new(vec!["api.example.com".to_string()]).unwrap();
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.signed_by(&b.leaf_key, &b.issuer).unwrap()
        };
        let name = rustls::pki_types::ServerName::try_from("api.example.com").unwrap();
        verifier
            .verify_server_cert(
                leaf.der(),
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        let other = rustls::pki_types::ServerName::try_from("evil.example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    leaf.der(),
                    &[],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
        std::fs::set_permissions(dir.join(CA_KEY), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            Tls::load_or_create(&dir, &[])
                .err()
                .unwrap()
                .to_string()
                .contains("chmod 600")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
