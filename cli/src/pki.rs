//! A development PKI (rcgen): a CA, a server certificate for loopback, and
//! client certificates naming vehicles or services, so a newcomer can run the
//! secure setup in minutes. Not for production: keys are written unencrypted.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PEM, unencrypted).
    pub key_pem: String,
    /// The certificate's serial number (big-endian bytes), to revoke it.
    pub serial: Vec<u8>,
}

/// A development certificate authority.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM): what tetherd's `--client-ca` and clients trust.
    pub cert_pem: String,
    /// The CA's key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

fn when(t: SystemTime) -> OffsetDateTime {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl DevCa {
    /// A new CA named `name`, valid for ten years.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = when(now - Duration::from_secs(3600));
        params.not_after = when(now + Duration::from_secs(10 * 365 * 86_400));
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(DevCa { cert_pem: cert.pem(), key_pem, issuer: Issuer::new(params, key) })
    }

    /// A certificate revocation list revoking `serials`, signed by this CA (PEM).
    pub fn crl(&self, serials: &[&[u8]]) -> Result<String, rcgen::Error> {
        let now = SystemTime::now();
        let params = CertificateRevocationListParams {
            this_update: when(now - Duration::from_secs(60)),
            next_update: when(now + Duration::from_secs(86_400)),
            crl_number: SerialNumber::from(
                u64::try_from(now.duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_nanos())).unwrap_or(1),
            ),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: when(now - Duration::from_secs(1)),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str], valid_for: Duration) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into()?),
            });
        }
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("tetherd"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, SystemTime::now() - Duration::from_secs(60), SystemTime::now() + valid_for)
    }

    /// A client certificate naming `name` (a vehicle id or a service) in its
    /// first DNS subject alternative name and its common name, valid between
    /// `not_before` and `not_after`.
    pub fn client(&self, name: &str, not_before: SystemTime, not_after: SystemTime) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, not_before, not_after)
    }

    fn sign(&self, mut params: CertificateParams, from: SystemTime, until: SystemTime) -> Result<Issued, rcgen::Error> {
        params.not_before = when(from);
        params.not_after = when(until);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // A positive 8-byte serial (top bit clear: no sign padding in DER).
        let mut serial: [u8; 8] = rand::random();
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), serial: serial.to_vec() })
    }
}

/// What [`write_dev_pki`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// Every file, in the order written.
    pub files: Vec<PathBuf>,
}

/// Writes a development PKI into `dir`: `ca.pem`/`ca.key`, `server.pem`/
/// `server.key` (for localhost and 127.0.0.1), and `<name>.pem`/`<name>.key`
/// for each vehicle and service, valid `days` days.
pub fn write_dev_pki(dir: &Path, vehicles: &[String], services: &[String], days: u32) -> anyhow::Result<Written> {
    std::fs::create_dir_all(dir)?;
    let valid = Duration::from_secs(u64::from(days) * 86_400);
    let now = SystemTime::now();
    let ca = DevCa::new("tether development CA")?;
    let mut files = Vec::new();
    let mut put = |name: &str, issued: &Issued| -> anyhow::Result<()> {
        for (ext, body) in [("pem", &issued.cert_pem), ("key", &issued.key_pem)] {
            let path = dir.join(format!("{name}.{ext}"));
            std::fs::write(&path, body)?;
            files.push(path);
        }
        Ok(())
    };
    put("ca", &Issued { cert_pem: ca.cert_pem.clone(), key_pem: ca.key_pem.clone(), serial: Vec::new() })?;
    put("server", &ca.server(&["localhost", "127.0.0.1", "::1"], valid)?)?;
    for name in vehicles.iter().chain(services) {
        put(name, &ca.client(name, now - Duration::from_secs(60), now + valid)?)?;
    }
    Ok(Written { files })
}
