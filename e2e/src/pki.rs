//! Throwaway X.509 material for tests: a CA, leaf certificates it issues, and
//! bare key pairs (e.g. a ServiceAccount token signing key).
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, which kube-apiserver, etcd, Go's TLS
//! stack and rustls all accept. Certificates are valid from 1975 to 4096 (the
//! rcgen defaults) so that clock skew and long test runs never matter.
//!
//! Everything panics on failure: the inputs are under the caller's control and
//! the only errors rcgen can return here come from malformed names.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// X.520 organizationName. rcgen's `DistinguishedName` keeps one value per
/// attribute type, but Kubernetes reads one group per `O` attribute; spelling
/// the second one as a custom type with the same OID gets a second attribute.
const ORGANIZATION_NAME_OID: &[u64] = &[2, 5, 4, 10];

/// Which extended key usages a leaf certificate carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (`serverAuth`).
    Server,
    /// TLS client (`clientAuth`).
    Client,
    /// Both, for peers that dial and accept with the same identity.
    Both,
}

/// A self-signed certificate authority that issues leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Paths of a certificate (or public key) and private key written to disk.
#[derive(Clone, Debug)]
pub struct PemFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A bare key pair, both halves PEM: PKCS#8 private key and SPKI public key.
#[derive(Clone, Debug)]
pub struct KeyPairPem {
    pub private_pem: String,
    pub public_pem: String,
}

impl Ca {
    /// Creates a CA whose subject is `CN=<common_name>`.
    pub fn new(common_name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA certificate");
        let key_pem = key.serialize_pem();
        Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            key_pem,
        }
    }

    /// The CA certificate, PEM: what peers put in their trust bundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM, for tools that sign on their own.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate with subject `CN=<common_name>, O=<org>...`.
    ///
    /// `sans` entries that parse as IP addresses become IP SANs, entries with
    /// `://` become URI SANs (e.g. SPIFFE IDs), the rest DNS names.
    /// Kubernetes maps CN to the user name and each O to a group.
    ///
    /// # Panics
    ///
    /// With more than two organizations (an rcgen limitation, see
    /// [`ORGANIZATION_NAME_OID`]) or a SAN that is not ASCII.
    pub fn issue(&self, common_name: &str, organizations: &[&str], sans: &[&str], usage: Usage) -> Issued {
        assert!(
            organizations.len() <= 2,
            "pki: at most two organizations per certificate are supported, got {organizations:?}"
        );
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        for (i, org) in organizations.iter().enumerate() {
            let ty = if i == 0 {
                DnType::OrganizationName
            } else {
                DnType::CustomDnType(ORGANIZATION_NAME_OID.to_vec())
            };
            params.distinguished_name.push(ty, *org);
        }
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("pki: sign certificate for {common_name:?}: {e}"));
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `<stem>.crt` and `<stem>.key` (mode 0600) into `dir`.
    pub fn write_to(&self, dir: &Path, stem: &str) -> io::Result<PemFiles> {
        write_pair(dir, stem, "crt", &self.cert_pem, &self.key_pem)
    }
}

impl Issued {
    /// Writes `<stem>.crt` and `<stem>.key` (mode 0600) into `dir`.
    pub fn write_to(&self, dir: &Path, stem: &str) -> io::Result<PemFiles> {
        write_pair(dir, stem, "crt", &self.cert_pem, &self.key_pem)
    }
}

impl KeyPairPem {
    /// Generates an ECDSA P-256 key pair.
    pub fn generate() -> KeyPairPem {
        let key = KeyPair::generate().expect("generate key pair");
        KeyPairPem {
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        }
    }

    /// Writes `<stem>.pub` and `<stem>.key` (mode 0600) into `dir`; the
    /// returned `cert` field is the public key's path.
    pub fn write_to(&self, dir: &Path, stem: &str) -> io::Result<PemFiles> {
        write_pair(dir, stem, "pub", &self.public_pem, &self.private_pem)
    }
}

fn san(s: &str) -> SanType {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return SanType::IpAddress(ip);
    }
    let ia5 = s.try_into().unwrap_or_else(|e| panic!("pki: invalid SAN {s:?}: {e}"));
    if s.contains("://") {
        SanType::URI(ia5)
    } else {
        SanType::DnsName(ia5)
    }
}

fn write_pair(dir: &Path, stem: &str, public_ext: &str, public: &str, private: &str) -> io::Result<PemFiles> {
    let cert = dir.join(format!("{stem}.{public_ext}"));
    let key = dir.join(format!("{stem}.key"));
    fs::write(&cert, public)?;
    write_private(&key, private)?;
    Ok(PemFiles { cert, key })
}

/// Created 0600 rather than chmod-ed afterwards so the key is never readable
/// by others, even briefly; some consumers also refuse group-readable keys.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_material() {
        let ca = Ca::new("test-ca");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let leaf = ca.issue(
            "admin",
            &["system:masters", "other"],
            &["127.0.0.1", "localhost"],
            Usage::Both,
        );
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let kp = KeyPairPem::generate();
        assert!(kp.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));

        let dir = tempfile::tempdir().unwrap();
        let files = leaf.write_to(dir.path(), "admin").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&files.cert).unwrap(), leaf.cert_pem);
    }
}
