//! `berth health [URL]`: asks a host's `/healthz` (or `/readyz`) and exits
//! 0 only if it answers 200 — a container's `HEALTHCHECK` with nothing but
//! the `berth` binary in the image.

use super::client::Client;
use clap::Args;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// What to ask: a host's `/healthz` or `/readyz` (`https://` for a
    /// listener with TLS).
    #[arg(default_value = "http://127.0.0.1:3000/healthz")]
    url: String,

    /// A CA certificate (PEM) to verify an `https://` host with (default:
    /// the system's roots).
    #[arg(long, env = "BERTH_CA")]
    ca: Option<std::path::PathBuf>,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let uri: http::Uri = args
        .url
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid URL {:?}: {e}", args.url))?;
    let path = uri.path_and_query().map_or("/healthz", |p| p.as_str());
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| anyhow::anyhow!("invalid URL {:?}: no host", args.url))?;
    let scheme = uri.scheme_str().unwrap_or("http");
    let client = Client::with_ca(&format!("{scheme}://{authority}"), None, args.ca.as_deref())?;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), client.get_text(path))
        .await
        .map_err(|_| anyhow::anyhow!("{} did not answer within 5 s", args.url))?
        .map_err(|e| match e {
            super::client::ClientError::Connect(_) => {
                anyhow::anyhow!("cannot reach {}", args.url)
            }
            other => anyhow::anyhow!("{}: {other}", args.url),
        })?;
    print!("{answer}");
    Ok(())
}
