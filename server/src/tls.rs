//! TLS with client authentication, terminated by tetherd itself with rustls
//! (tonic's TLS options cannot carry CRLs or a handshake cap).
//!
//! A connection's identity comes from its client certificate, never from a
//! message, by one rule ([`identity`]): the certificate must give exactly one
//! name, read from its DNS subject alternative name (`san`, the default) or
//! its common name (`cn`); every other name it gives in either place must be
//! that same name. A certificate that gives none, or several, identifies no
//! one: it may still carry a bearer token for the app API, but it opens no
//! vehicle session and is no service. The identity travels to the services
//! as a request extension ([`PeerIdentity`]) on every TLS connection.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::sync::watch;

mod tickets;

use tickets::Tickets;

/// Which part of the client certificate must name the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityFrom {
    /// A DNS subject alternative name (exactly one).
    San,
    /// The subject's common name (exactly one).
    Cn,
}

/// Why a verified client certificate identifies no one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoIdentity {
    /// The place the rule reads holds no name.
    #[error("it has no {0} (the identity rule is --vehicle-identity {1})")]
    Missing(&'static str, &'static str),
    /// The certificate gives more than one name.
    #[error("it gives several names ({}); it must give exactly one, in its DNS subject alternative name and its common name alike", .0.join(", "))]
    Ambiguous(Vec<String>),
    /// A name that is not text.
    #[error("its {0} is not a UTF-8 string")]
    NotText(&'static str),
}

/// Who is on the other end of a TLS connection, from its verified client
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The one name the certificate gives (a vehicle id, or a service's
    /// name), or why it gives none.
    pub name: Result<String, NoIdentity>,
    /// When the certificate expires: a session ends then.
    pub not_after: SystemTime,
    /// The certificate's serial number (big-endian bytes): a session ends
    /// when a reloaded CRL revokes it.
    pub serial: Vec<u8>,
}

/// Serial numbers revoked by the loaded CRLs.
pub type Revoked = Arc<HashSet<Vec<u8>>>;

/// Why TLS could not be set up. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Files that make up the server's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA that issues client certificates (PEM).
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM), if any.
    pub crls: Vec<PathBuf>,
}

/// Builds the server config (client certificates from `client_ca` required)
/// and the set of revoked serials.
fn build(files: &TlsFiles, tickets: Option<&Arc<Tickets>>) -> Result<(Arc<rustls::ServerConfig>, Revoked), TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&files.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(&files.cert, "no certificate found (expected PEM)"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.client_ca).map_err(|e| file_error(&files.client_ca, e))? {
        let ca = ca.map_err(|e| file_error(&files.client_ca, e))?;
        roots.add(ca).map_err(|e| file_error(&files.client_ca, e))?;
    }
    if roots.is_empty() {
        return Err(file_error(&files.client_ca, "no CA certificate found (expected PEM)"));
    }
    let mut crls = Vec::new();
    let mut revoked = HashSet::new();
    for path in &files.crls {
        for crl in CertificateRevocationListDer::pem_file_iter(path).map_err(|e| file_error(path, e))? {
            let crl = crl.map_err(|e| file_error(path, e))?;
            let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref()).map_err(|e| file_error(path, e))?;
            revoked.extend(parsed.iter_revoked_certificates().map(|r| r.raw_serial().to_vec()));
            crls.push(crl);
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .with_crls(crls)
    .build()
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // gRPC over HTTP/2; HTTP/1.1 for gRPC-Web from browsers.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Some(tickets) = tickets {
        config.ticketer = tickets.clone();
        // A vehicle holds one connection: one ticket per handshake is enough
        // to resume the next (rustls sends two by default).
        config.send_tls13_tickets = 1;
    }
    Ok((Arc::new(config), Arc::new(revoked)))
}

/// The server's TLS, reloadable: certificate, key, CA and CRLs are read again
/// when their contents change (polled) or on SIGHUP, without dropping any
/// connection; a bad file keeps the previous configuration.
pub struct TlsState {
    files: TlsFiles,
    config: RwLock<(Arc<rustls::ServerConfig>, u64)>,
    revoked: watch::Sender<Revoked>,
    /// Session tickets (`None`: every connect is a full handshake).
    tickets: Option<Arc<Tickets>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState").field("files", &self.files).finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads the files; fails with a message naming the file. With
    /// `tickets` (the data directory and a lifetime), clients may resume
    /// their sessions with a ticket, across restarts.
    pub fn load(files: TlsFiles, tickets: Option<(&Path, Duration)>) -> Result<Self, TlsError> {
        let fingerprint = fingerprint(&files)?;
        let tickets = tickets.map(|(dir, lifetime)| Arc::new(Tickets::open(dir, lifetime, fingerprint)));
        let (config, revoked) = build(&files, tickets.as_ref())?;
        Ok(TlsState { files, config: RwLock::new((config, fingerprint)), revoked: watch::channel(revoked).0, tickets })
    }

    /// Whether a reloaded CRL revokes the certificate with `serial`. A
    /// resumed session skips rustls's verifier, so the accept loop asks this.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.borrow().contains(serial)
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// The revoked serials, updated at every reload.
    pub fn revoked(&self) -> watch::Receiver<Revoked> {
        self.revoked.subscribe()
    }

    /// Reloads when a file's contents changed (or always, with `force`).
    /// Returns whether a new configuration is in use.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let fingerprint = fingerprint(&self.files)?;
        if !force && self.config.read().unwrap_or_else(|p| p.into_inner()).1 == fingerprint {
            return Ok(false);
        }
        let (config, revoked) = build(&self.files, self.tickets.as_ref())?;
        // No ticket from before the reload resumes: it may carry a
        // certificate of a CA that is no longer trusted.
        if let Some(tickets) = &self.tickets {
            tickets.reset(fingerprint);
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = (config, fingerprint);
        self.revoked.send_replace(revoked);
        Ok(true)
    }
}

/// A hash of every TLS file's contents (FNV-1a: cheap, stable).
fn fingerprint(files: &TlsFiles) -> Result<u64, TlsError> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for path in [&files.cert, &files.key, &files.client_ca].into_iter().chain(&files.crls) {
        let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
        for b in bytes.iter().chain(path.as_os_str().as_encoded_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(h)
}

impl PeerIdentity {
    /// The name, when the certificate gives exactly one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref().ok()
    }
}

/// A client certificate that could not be parsed (rustls verified it, so
/// this is an X.509 feature the parser does not take).
#[derive(Debug, thiserror::Error)]
#[error("the client certificate could not be parsed: {0}")]
pub struct Unparsable(String);

/// Reads who a verified client certificate names, by the one rule:
/// - the names it gives are its DNS subject alternative names and its
///   subject's common names (IP, URI and e-mail alternative names are not
///   names of a vehicle or a service, and are ignored);
/// - the place `from` says must hold at least one of them;
/// - all of them, in both places, must be one and the same name.
///
/// So a certificate with a common name but no DNS name identifies no one
/// under `san`, and one whose DNS name and common name disagree identifies no
/// one under either rule. Expiry and serial are read whatever the name.
pub fn identity(cert: &CertificateDer<'_>, from: IdentityFrom) -> Result<PeerIdentity, Unparsable> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| Unparsable(e.to_string()))?;
    let secs = u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0);
    let serial = parsed.raw_serial().to_vec();
    let san = parsed.subject_alternative_name().map_err(|e| Unparsable(e.to_string()))?;
    let dns: Vec<&str> = san
        .iter()
        .flat_map(|san| &san.value.general_names)
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    let name = (|| {
        let cns = parsed
            .subject()
            .iter_common_name()
            .map(|cn| cn.as_str().map_err(|_| NoIdentity::NotText("common name")))
            .collect::<Result<Vec<&str>, _>>()?;
        let required = match from {
            IdentityFrom::San => (&dns, "DNS subject alternative name", "san"),
            IdentityFrom::Cn => (&cns, "common name", "cn"),
        };
        if required.0.is_empty() {
            return Err(NoIdentity::Missing(required.1, required.2));
        }
        let mut names: Vec<&str> = dns.iter().chain(&cns).copied().collect();
        names.sort_unstable();
        names.dedup();
        match names.as_slice() {
            [one] => Ok(one.to_string()),
            several => Err(NoIdentity::Ambiguous(several.iter().map(|n| format!("{n:?}")).collect())),
        }
    })();
    Ok(PeerIdentity { name, not_after: UNIX_EPOCH + Duration::from_secs(secs), serial })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate with `cn` (if any), DNS names, one IP and one URI name
    /// as asked, signed by a throwaway CA.
    fn cert(cn: Option<&str>, dns: &[&str], ip: bool, uri: bool) -> CertificateDer<'static> {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        for d in dns {
            params.subject_alt_names.push(SanType::DnsName((*d).try_into().unwrap()));
        }
        if ip {
            params.subject_alt_names.push(SanType::IpAddress([10, 0, 0, 7].into()));
        }
        if uri {
            params.subject_alt_names.push(SanType::URI("spiffe://fleet/car-1".try_into().unwrap()));
        }
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().clone()
    }

    fn name(cert: &CertificateDer<'_>, from: IdentityFrom) -> Result<String, NoIdentity> {
        identity(cert, from).unwrap().name
    }

    #[test]
    fn every_certificate_shape_gives_exactly_one_name_or_none() {
        use IdentityFrom::{Cn, San};
        let one = |n: &str| Ok(n.to_string());
        let missing_dns = Err(NoIdentity::Missing("DNS subject alternative name", "san"));
        let missing_cn = Err(NoIdentity::Missing("common name", "cn"));
        let ambiguous = |names: &[&str]| Err(NoIdentity::Ambiguous(names.iter().map(|n| format!("{n:?}")).collect()));
        // (shape, certificate, under san, under cn)
        let cases = [
            ("CN only", cert(Some("car-1"), &[], false, false), missing_dns.clone(), one("car-1")),
            ("DNS SAN only", cert(None, &["car-1"], false, false), one("car-1"), missing_cn.clone()),
            ("CN and DNS SAN agreeing", cert(Some("car-1"), &["car-1"], false, false), one("car-1"), one("car-1")),
            (
                "CN and DNS SAN disagreeing",
                cert(Some("car-2"), &["car-1"], false, false),
                ambiguous(&["car-1", "car-2"]),
                ambiguous(&["car-1", "car-2"]),
            ),
            (
                "several DNS SANs",
                cert(None, &["car-1", "car-2"], false, false),
                ambiguous(&["car-1", "car-2"]),
                missing_cn.clone(),
            ),
            ("the same DNS SAN twice", cert(None, &["car-1", "car-1"], false, false), one("car-1"), missing_cn.clone()),
            ("CN and an IP SAN", cert(Some("car-1"), &[], true, false), missing_dns.clone(), one("car-1")),
            ("CN and a URI SAN", cert(Some("car-1"), &[], false, true), missing_dns.clone(), one("car-1")),
            ("DNS SAN and IP and URI SANs", cert(None, &["car-1"], true, true), one("car-1"), missing_cn.clone()),
            ("empty subject, no names", cert(None, &[], false, false), missing_dns, missing_cn),
        ];
        for (shape, cert, san, cn) in cases {
            assert_eq!(name(&cert, San), san, "{shape} under san");
            assert_eq!(name(&cert, Cn), cn, "{shape} under cn");
            let read = identity(&cert, San).unwrap();
            assert!(!read.serial.is_empty() && read.not_after > SystemTime::now(), "{shape}: expiry and serial");
        }
    }
}
