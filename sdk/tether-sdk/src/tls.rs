//! [`Tls`]: how the app client and the vehicle agent reach tetherd over TLS —
//! the CA that signed tetherd's certificate and, for vehicles (always) and
//! services that authenticate by certificate, the client's own certificate.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::Error;

/// TLS settings for [`Client::connect_tls`](crate::Client::connect_tls) and
/// [`AgentBuilder::tls`](crate::AgentBuilder::tls). The endpoint's scheme
/// should then be `https://`.
#[derive(Debug, Clone)]
pub struct Tls {
    config: ClientTlsConfig,
}

impl Tls {
    /// Trusts server certificates signed by the CA in `ca_pem` (PEM), and no
    /// other (not the system roots: a fleet has its own CA).
    pub fn new(ca_pem: impl AsRef<[u8]>) -> Self {
        Tls { config: ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)) }
    }

    /// [`Tls::new`] with the CA read from a PEM file.
    pub fn from_ca_file(ca: &Path) -> Result<Self, Error> {
        Ok(Tls::new(read(ca, "CA certificate")?))
    }

    /// Presents this client certificate and key (PEM): a vehicle's names the
    /// vehicle; a service's names the service.
    pub fn identity(self, cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        Tls { config: self.config.identity(Identity::from_pem(cert_pem, key_pem)) }
    }

    /// [`Tls::identity`] read from PEM files.
    pub fn identity_files(self, cert: &Path, key: &Path) -> Result<Self, Error> {
        Ok(self.identity(read(cert, "client certificate")?, read(key, "client key")?))
    }

    /// Expects tetherd's certificate to name `domain` (default: the
    /// endpoint's host).
    pub fn domain(self, domain: impl Into<String>) -> Self {
        Tls { config: self.config.domain_name(domain) }
    }

    pub(crate) fn config(&self) -> ClientTlsConfig {
        self.config.clone()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::InvalidArgument(format!("cannot read the {what} {}: {e}", path.display())))
}
