//! `berth rollback NAME [--to REV]`: switch a service back to an older
//! revision (by default the one before the active one).

use super::{ClientArgs, output};
use crate::control::admin::api::{RevisionView, RollbackRequest};
use clap::Args;
use http::Method;

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The service.
    name: String,
    /// The revision to switch to.
    #[arg(long)]
    to: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: RollbackArgs) -> anyhow::Result<()> {
    let path = format!("/v1/services/{}/rollback", args.name);
    let (_, revision): (_, RevisionView) = args
        .client
        .client()?
        .send_json(Method::POST, &path, &RollbackRequest { to: args.to })
        .await?;
    if args.client.json {
        return output::json(&revision);
    }
    println!(
        "{} now serves revision {} (artifact {})",
        revision.service,
        revision.revision,
        output::short_digest(&revision.artifact)
    );
    Ok(())
}
