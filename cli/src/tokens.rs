//! `tether tokens`: mints a development bearer token with the key `tether
//! certs` wrote.

use std::path::PathBuf;
use std::time::Duration;

use crate::output::Output;
use crate::pki::{DEV_AUDIENCE, DEV_ISSUER, DevSigner};

/// Arguments of `tether tokens`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The signing key written by `tether certs`.
    #[arg(long, default_value = "tether-certs/jwt-signing.key")]
    key: PathBuf,
    /// The key id in the JWKS.
    #[arg(long, default_value = "dev-1")]
    kid: String,
    /// Who the token is for.
    #[arg(long, default_value = "dev-app")]
    subject: String,
    /// Space-separated scopes, e.g. "vehicles:read control:climate fleet:sim-".
    #[arg(long, default_value = "vehicles:read vehicles:control admin:read")]
    scope: String,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

pub(crate) fn run(output: Output, args: Args) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(&args.key)
        .map_err(|e| anyhow::anyhow!("{}: {e} (create it with `tether certs`)", args.key.display()))?;
    let signer = DevSigner::from_key_pem(&pem, &args.kid, DEV_ISSUER, DEV_AUDIENCE)?;
    let token = signer.token(&args.subject, &args.scope, args.ttl)?;
    if output.is_json() {
        println!("{}", serde_json::json!({ "token": token, "subject": args.subject, "scope": args.scope }));
    } else {
        println!("{token}");
    }
    Ok(())
}
