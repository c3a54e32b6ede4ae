//! TLS to upstreams, on rustls: a client config per upstream, built once when
//! the config loads (roots, client certificate, ALPN), and the handshake.
//!
//! Verification is on by default, against the system roots or the route's CA;
//! the name verified (and sent as SNI) is the route's `serverName`, else the
//! upstream's host. An IP address is verified against the certificate's IP
//! SANs and sends no SNI, as rustls does.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use moongate_proto::v1 as pb;

pub struct TlsSettings {
    connector: TlsConnector,
    /// The name to verify; `None`: the peer's host.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's roots, read once per process.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!("loading the system's CA certificates: {e}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            tracing::debug!("{added} system CA certificates for upstream TLS");
            Arc::new(roots)
        })
        .clone()
}

/// The client config of cosockets' `sslhandshake`: lua-nginx-module
/// verifies only when asked (`ssl_verify`), against the system roots (there
/// is no `lua_ssl_trusted_certificate` here). Built once per process each.
pub fn cosocket_config(verify: bool) -> Arc<ClientConfig> {
    static CONFIGS: OnceLock<[Arc<ClientConfig>; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let build = |verify: bool| {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions");
            let builder = if verify {
                builder.with_root_certificates(system_roots())
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            };
            Arc::new(builder.with_no_client_auth())
        };
        [build(false), build(true)]
    });
    configs[verify as usize].clone()
}

impl TlsSettings {
    /// `default_name` is the upstream's host when it has one host (a URL).
    pub fn new(t: &pb::UpstreamTls, default_name: &str, protocol: pb::UpstreamProtocol) -> Result<TlsSettings, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("upstream TLS: {e}"))?;
        let builder = if t.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
        } else if t.ca_pem.is_empty() {
            builder.with_root_certificates(system_roots())
        } else {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&t.ca_pem) {
                let cert = cert.map_err(|e| format!("upstream TLS CA: {e}"))?;
                roots.add(cert).map_err(|e| format!("upstream TLS CA: {e}"))?;
            }
            if roots.is_empty() {
                return Err("upstream TLS CA: no certificate in the PEM".into());
            }
            builder.with_root_certificates(roots)
        };
        let mut config = if t.client_cert_pem.is_empty() {
            builder.with_no_client_auth()
        } else {
            let chain = CertificateDer::pem_slice_iter(&t.client_cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("upstream TLS client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&t.client_key_pem)
                .map_err(|e| format!("upstream TLS client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("upstream TLS client certificate: {e}"))?
        };
        config.alpn_protocols = match protocol {
            pb::UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
            pb::UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        let name = if t.server_name.is_empty() {
            default_name
        } else {
            &t.server_name
        };
        let server_name = if name.is_empty() {
            None
        } else {
            Some(
                ServerName::try_from(name.to_string())
                    .map_err(|_| format!("upstream TLS: bad server name {name:?}"))?,
            )
        };
        Ok(TlsSettings {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The TLS handshake over `tcp` with a peer reached as `host`.
    pub async fn connect(&self, host: &str, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_string()).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("bad TLS server name {host:?}"),
                )
            })?,
        };
        self.connector.connect(name, tcp).await
    }
}

/// `insecureSkipVerify`: accepts any certificate, still checking signatures
/// so the handshake itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
