//! [`BenchPki`]: the benchmark's own PKI, made in memory with rcgen (ECDSA
//! P-256, as `tether certs` does): a CA, a server certificate for loopback, a
//! client certificate for the stats client (declared to tetherd as a
//! service), and one client certificate per vehicle naming it in its first
//! DNS subject alternative name and its common name.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// The name the server certificate is verified against.
pub const SERVER_NAME: &str = "localhost";
/// The stats client's certificate name, declared with `--service`.
pub const STATS_SERVICE: &str = "tether-bench-stats";

/// How long the certificates are valid (the benchmark needs minutes).
const VALID_FOR: time::Duration = time::Duration::days(2);
/// How long before now they are valid from.
const VALID_BEFORE: time::Duration = time::Duration::hours(1);

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// Everything the mTLS scenario needs.
pub struct BenchPki {
    /// The CA certificate (PEM): tetherd's `--client-ca`, the clients' trust.
    pub ca_pem: String,
    /// The server's certificate (localhost, 127.0.0.1).
    pub server: Issued,
    /// The stats client's certificate ([`STATS_SERVICE`]).
    pub stats: Issued,
    /// One certificate per vehicle, in the order of the ids given.
    pub vehicles: Vec<Issued>,
    /// How long generating all of it took (wall clock).
    pub generation: Duration,
}

impl fmt::Debug for BenchPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BenchPki")
            .field("vehicles", &self.vehicles.len())
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Where [`BenchPki::write_server_files`] put tetherd's files.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// `--tls-cert`.
    pub cert: PathBuf,
    /// `--tls-key`.
    pub key: PathBuf,
    /// `--client-ca`.
    pub client_ca: PathBuf,
}

impl ServerFiles {
    /// tetherd's arguments for mutual TLS with these files, and the bench's
    /// stats service (its certificate reads, controls and reads the node's
    /// statistics).
    pub fn tetherd_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--tls-cert".into(),
            path(&self.cert),
            "--tls-key".into(),
            path(&self.key),
            "--client-ca".into(),
            path(&self.client_ca),
            "--service".into(),
            format!("{STATS_SERVICE}=vehicles:read vehicles:control admin:read"),
        ]
    }
}

impl BenchPki {
    /// A fresh CA and every certificate, one per id in `vehicle_ids`,
    /// generated on `threads` threads.
    pub fn generate(vehicle_ids: &[String], threads: usize) -> anyhow::Result<BenchPki> {
        let started = Instant::now();
        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "tether-bench CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params);
        let ca_pem = params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(params, ca_key);

        let server = sign(
            &issuer,
            vec![SERVER_NAME.to_string(), "127.0.0.1".to_string()],
            SERVER_NAME,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let stats = client(&issuer, STATS_SERVICE)?;

        let chunk = vehicle_ids.len().div_ceil(threads.max(1)).max(1);
        let vehicles = std::thread::scope(|scope| {
            let workers: Vec<_> = vehicle_ids
                .chunks(chunk)
                .map(|ids| {
                    let issuer = &issuer;
                    scope.spawn(move || ids.iter().map(|id| client(issuer, id)).collect::<anyhow::Result<Vec<_>>>())
                })
                .collect();
            let mut all = Vec::with_capacity(vehicle_ids.len());
            for worker in workers {
                let issued = worker.join().map_err(|_| anyhow::anyhow!("a certificate thread panicked"))??;
                all.extend(issued);
            }
            anyhow::Ok(all)
        })?;
        Ok(BenchPki { ca_pem, server, stats, vehicles, generation: started.elapsed() })
    }

    /// Writes the CA certificate and the server's certificate and key into
    /// `dir` for tetherd's flags.
    pub fn write_server_files(&self, dir: &Path) -> anyhow::Result<ServerFiles> {
        let files =
            ServerFiles { cert: dir.join("server.pem"), key: dir.join("server.key"), client_ca: dir.join("ca.pem") };
        for (path, body) in
            [(&files.cert, &self.server.cert_pem), (&files.key, &self.server.key_pem), (&files.client_ca, &self.ca_pem)]
        {
            std::fs::write(path, body).with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(files)
    }
}

/// A client certificate naming `name` (first DNS SAN and CN).
fn client(issuer: &Issuer<'_, KeyPair>, name: &str) -> anyhow::Result<Issued> {
    sign(issuer, vec![name.to_string()], name, ExtendedKeyUsagePurpose::ClientAuth)
        .with_context(|| format!("cannot issue a certificate for {name}"))
}

fn sign(
    issuer: &Issuer<'_, KeyPair>,
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<Issued> {
    // `new` makes an IP address SAN of a name that parses as one.
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn set_validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - VALID_BEFORE;
    params.not_after = now + VALID_FOR;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_one_certificate_per_vehicle() {
        let ids: Vec<String> = (0..5).map(|i| format!("v-{i}")).collect();
        let pki = BenchPki::generate(&ids, 2).unwrap();
        assert_eq!(pki.vehicles.len(), 5);
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.vehicles.iter().all(|v| v.key_pem.contains("PRIVATE KEY")));
        let dir = tempfile::tempdir().unwrap();
        let files = pki.write_server_files(dir.path()).unwrap();
        assert!(std::fs::read_to_string(files.key).unwrap().contains("PRIVATE KEY"));
    }
}
