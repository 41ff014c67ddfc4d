//! `berth rm NAME`: remove a service.

use super::{ClientArgs, output};
use clap::Args;

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The service.
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: RmArgs) -> anyhow::Result<()> {
    let path = format!("/v1/services/{}", args.name);
    args.client
        .client()?
        .delete::<serde_json::Value>(&path)
        .await?;
    if args.client.json {
        return output::json(&serde_json::json!({ "removed": args.name }));
    }
    println!("removed {}", args.name);
    Ok(())
}
