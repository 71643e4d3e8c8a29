//! `tether certs`: writes a development PKI and says how to use it.

use std::path::PathBuf;

use crate::output::Output;

/// Arguments of `tether certs`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Directory to write the files into (created if missing).
    #[arg(long, default_value = "tether-certs")]
    out: PathBuf,
    /// Vehicle ids to issue client certificates for.
    #[arg(long, value_delimiter = ',', default_value = "sim-0000,sim-0001")]
    vehicles: Vec<String>,
    /// Service names to issue client certificates for (apps using mTLS).
    #[arg(long, value_delimiter = ',', default_value = "app")]
    services: Vec<String>,
    /// Days the server and client certificates stay valid.
    #[arg(long, default_value_t = 30)]
    days: u32,
}

pub(crate) fn run(output: Output, args: Args) -> anyhow::Result<()> {
    let written = crate::pki::write_dev_pki(&args.out, &args.vehicles, &args.services, args.days)?;
    if output.is_json() {
        let files: Vec<String> = written.files.iter().map(|p| p.display().to_string()).collect();
        println!("{}", serde_json::json!({ "dir": args.out.display().to_string(), "files": files }));
        return Ok(());
    }
    let dir = args.out.display();
    println!("wrote a development PKI to {dir}/ (not for production: keys are unencrypted)");
    for file in &written.files {
        println!("  {}", file.display());
    }
    println!();
    println!("serve with TLS, client certificates and app tokens:");
    println!("  tetherd --tls-cert {dir}/server.pem --tls-key {dir}/server.key --client-ca {dir}/ca.pem \\");
    println!(
        "    --jwks {dir}/jwks.json --jwt-issuer {} --jwt-audience {}",
        crate::pki::DEV_ISSUER,
        crate::pki::DEV_AUDIENCE
    );
    println!("mint an app token:");
    println!("  tether tokens --key {dir}/jwt-signing.key --scope \"vehicles:read vehicles:control\"");
    Ok(())
}
