//! `berth ls`: the services of a host.

use super::{ClientArgs, output};
use crate::control::admin::api::ServiceView;
use clap::Args;

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: LsArgs) -> anyhow::Result<()> {
    let services: Vec<ServiceView> = args.client.client()?.get("/v1/services").await?;
    if args.client.json {
        return output::json(&services);
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.revision.to_string(),
                output::routes(&s.config.routes),
                output::short_digest(&s.artifact),
                s.status.clone(),
                s.in_flight.to_string(),
                s.updated_at.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "REVISION",
            "ROUTES",
            "ARTIFACT",
            "STATUS",
            "IN FLIGHT",
            "UPDATED",
        ],
        &rows,
    );
    Ok(())
}
