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

    /// A client certificate of any shape an operator's CA could issue: the
    /// common name (or none), DNS, IP and URI subject alternative names, as
    /// given. For testing how a server reads identities; [`DevCa::client`]
    /// is the shape tetherd expects.
    pub fn client_with_names(&self, names: &ClientNames<'_>, valid_for: Duration) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        // rcgen's default subject has a common name of its own.
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = names.common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        for dns in names.dns {
            params.subject_alt_names.push(SanType::DnsName((*dns).try_into()?));
        }
        params.subject_alt_names.extend(names.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        for uri in names.uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        self.sign(params, now - Duration::from_secs(60), now + valid_for)
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

/// The names of a client certificate made by [`DevCa::client_with_names`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientNames<'a> {
    /// The subject's common name (none: an empty subject).
    pub common_name: Option<&'a str>,
    /// DNS subject alternative names.
    pub dns: &'a [&'a str],
    /// IP address subject alternative names.
    pub ips: &'a [IpAddr],
    /// URI subject alternative names.
    pub uris: &'a [&'a str],
}

/// The issuer of development tokens.
pub const DEV_ISSUER: &str = "tether-dev";
/// The audience of development tokens.
pub const DEV_AUDIENCE: &str = "tetherd";

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
    // App tokens: a signing key and the JWKS tetherd verifies them with.
    let signer = DevSigner::new("dev-1", DEV_ISSUER, DEV_AUDIENCE)?;
    for (name, body) in [("jwks.json", &signer.jwks), ("jwt-signing.key", &signer.key_pem)] {
        let path = dir.join(name);
        std::fs::write(&path, body)?;
        files.push(path);
    }
    Ok(Written { files })
}

/// A development token signer: an ES256 key, its JWKS for tetherd's
/// `--jwks`, and tokens minted with it.
pub struct DevSigner {
    key: jsonwebtoken::EncodingKey,
    /// The key id, in every token's header and in the JWKS.
    pub kid: String,
    /// The issuer tokens name (`--jwt-issuer`).
    pub issuer: String,
    /// The audience tokens name (`--jwt-audience`).
    pub audience: String,
    /// The JWKS (JSON) holding the public key.
    pub jwks: String,
    /// The private key (PKCS#8 PEM), to mint more tokens later.
    pub key_pem: String,
}

impl std::fmt::Debug for DevSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevSigner").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// The claims of a development token.
#[derive(Debug, serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    scope: &'a str,
}

impl DevSigner {
    /// A new ES256 signer with key id `kid`.
    pub fn new(kid: &str, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let pair = KeyPair::generate()?;
        Self::from_key_pem(&pair.serialize_pem(), kid, issuer, audience)
    }

    /// A signer from a PKCS#8 PEM P-256 key.
    pub fn from_key_pem(key_pem: &str, kid: &str, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        use base64::Engine as _;
        let pair = KeyPair::from_pem(key_pem)?;
        // Uncompressed point: 0x04 || X || Y.
        let raw = pair.public_key_raw();
        anyhow::ensure!(raw.len() == 65 && raw[0] == 4, "not a P-256 key");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwks = serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..]),
        }]});
        Ok(DevSigner {
            key: jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes())?,
            kid: kid.to_string(),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            jwks: serde_json::to_string_pretty(&jwks)?,
            key_pem: key_pem.to_string(),
        })
    }

    /// A token for `subject` with `scope` (space-separated), valid `ttl` from
    /// now (a zero or negative-looking TTL is expressed by `expires_at`).
    pub fn token(&self, subject: &str, scope: &str, ttl: Duration) -> anyhow::Result<String> {
        self.token_until(subject, scope, SystemTime::now() + ttl, &self.audience)
    }

    /// A token expiring at `expires_at`, for audience `audience`.
    pub fn token_until(
        &self,
        subject: &str,
        scope: &str,
        expires_at: SystemTime,
        audience: &str,
    ) -> anyhow::Result<String> {
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: subject,
            iss: &self.issuer,
            aud: audience,
            exp: secs(expires_at),
            iat: secs(SystemTime::now()),
            scope,
        };
        self.sign(&claims)
    }

    /// A token with the standard claims (`sub`, `iss`, `aud`, `scope`, `iat`
    /// now, `exp` an hour from now) changed by `claims` (e.g. an `nbf`, or
    /// an `iat` in the future), to test how a server checks them.
    pub fn token_with_claims(&self, subject: &str, scope: &str, claims: serde_json::Value) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut all = serde_json::json!({
            "sub": subject, "iss": self.issuer, "aud": self.audience, "scope": scope,
            "iat": now, "exp": now + 3600,
        });
        if let (Some(all), serde_json::Value::Object(more)) = (all.as_object_mut(), claims) {
            all.extend(more);
        }
        self.sign(&all)
    }

    fn sign(&self, claims: &impl serde::Serialize) -> anyhow::Result<String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }
}
