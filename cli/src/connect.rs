//! [`Server`]: where tetherd is and how to prove who we are — TLS with the
//! fleet CA (and a service certificate), and a bearer token.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use tether_sdk::{Client, Tls};

/// How the CLI authenticates (all optional: the loopback default needs none).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Credentials {
    /// The CA that signed tetherd's certificate (PEM); connects over TLS
    /// (the server URL must then be `https://…`, and tetherd requires a
    /// client certificate: --client-cert and --client-key).
    #[arg(long, global = true, env = "TETHER_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The client certificate to present over TLS (PEM; with --client-key):
    /// a service's certificate authorizes by itself; with --token the token
    /// decides.
    #[arg(long, global = true, env = "TETHER_CLIENT_CERT", value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM; with --client-cert).
    #[arg(long, global = true, env = "TETHER_CLIENT_KEY", value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// The name tetherd's certificate must carry (default: the URL's host).
    #[arg(long, global = true, env = "TETHER_TLS_DOMAIN", value_name = "NAME")]
    tls_domain: Option<String>,
    /// A bearer token sent with every call (e.g. from `tether tokens`).
    #[arg(long, global = true, env = "TETHER_TOKEN", value_name = "JWT", hide_env_values = true)]
    token: Option<String>,
}

/// Where tetherd is. Commands connect only once their arguments are checked,
/// so a typo is reported as such even with no server running.
pub(crate) struct Server {
    url: String,
    tls: Option<Tls>,
    token: Option<String>,
}

impl Server {
    /// Checks the URL against the credentials and reads the certificate files.
    pub(crate) fn new(url: String, credentials: Credentials) -> anyhow::Result<Server> {
        let https = url.starts_with("https://");
        let tls = match (&credentials.ca, https) {
            (Some(_), false) => bail!("--ca connects over TLS: use an https:// server URL (got {url})"),
            (None, true) => bail!("an https:// server needs --ca, the CA that signed tetherd's certificate"),
            (None, false) => {
                if credentials.client_cert.is_some() {
                    bail!("--client-cert needs TLS: pass --ca and an https:// server URL");
                }
                None
            }
            (Some(ca), true) => {
                let (Some(cert), Some(key)) = (&credentials.client_cert, &credentials.client_key) else {
                    bail!(
                        "over TLS tetherd requires a client certificate from its CA: pass --client-cert and \
                         --client-key (a --token, if given, then decides what you may do)"
                    );
                };
                let mut tls = Tls::from_ca_file(ca)?.identity_files(cert, key)?;
                if let Some(domain) = credentials.tls_domain {
                    tls = tls.domain(domain);
                }
                Some(tls)
            }
        };
        Ok(Server { url, tls, token: credentials.token })
    }

    /// Connects (within the SDK's connect timeout).
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        let client = match &self.tls {
            Some(tls) => Client::connect_tls(self.url.clone(), tls).await,
            None => Client::connect(self.url.clone()).await,
        };
        let client = client.with_context(|| format!("cannot connect to tetherd at {}", self.url))?;
        Ok(match self.token.clone() {
            Some(token) => client.with_token_source(move || token.clone()),
            None => client,
        })
    }
}
