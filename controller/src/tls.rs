//! TLS for the gRPC config stream. Mutual TLS is the default: the controller
//! presents its certificate and accepts only dataplanes whose client
//! certificate chains to the configured CA, because the stream carries
//! bytecode the dataplane will run (LuaJIT does not verify bytecode).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::error::{Error, Result};

/// Where the server certificate, its key and the client CA come from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
        client_ca: PathBuf,
    },
    /// A `kubernetes.io/tls` Secret with `tls.crt`, `tls.key` and `ca.crt`.
    Secret { namespace: String, name: String },
    /// Plaintext, only with `--insecure`.
    Insecure,
}

struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Vec<u8>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Tls(format!("reading the {what} {}: {e}", path.display())))
}

async fn load(client: &Client, source: &TlsSource) -> Result<Option<Material>> {
    Ok(Some(match source {
        TlsSource::Insecure => return Ok(None),
        TlsSource::Files { cert, key, client_ca } => Material {
            cert: read(cert, "certificate")?,
            key: read(key, "private key")?,
            client_ca: read(client_ca, "client CA")?,
        },
        TlsSource::Secret { namespace, name } => {
            let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| Error::Tls(format!("reading Secret {namespace}/{name}: {e}")))?;
            let data = secret.data.unwrap_or_default();
            let field = |k: &str| {
                data.get(k)
                    .map(|b| b.0.clone())
                    .ok_or_else(|| Error::Tls(format!("Secret {namespace}/{name} has no {k:?}")))
            };
            Material {
                cert: field("tls.crt")?,
                key: field("tls.key")?,
                client_ca: field("ca.crt")?,
            }
        }
    }))
}

/// The server's TLS settings, or `None` for plaintext.
pub async fn server_config(client: &Client, source: &TlsSource) -> Result<Option<ServerTlsConfig>> {
    let Some(m) = load(client, source).await? else {
        tracing::warn!("gRPC is plaintext (--insecure): dataplanes are not authenticated");
        return Ok(None);
    };
    for (what, pem) in [
        ("certificate", &m.cert),
        ("private key", &m.key),
        ("client CA", &m.client_ca),
    ] {
        if !String::from_utf8_lossy(pem).contains("-----BEGIN") {
            return Err(Error::Tls(format!("the {what} is not PEM")));
        }
    }
    Ok(Some(
        ServerTlsConfig::new()
            .identity(Identity::from_pem(m.cert, m.key))
            .client_ca_root(Certificate::from_pem(m.client_ca)),
    ))
}
