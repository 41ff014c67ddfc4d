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
    // A cluster's services say how many nodes serve their revision.
    let clustered = services.iter().any(|s| !s.nodes.is_empty());
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let mut row = vec![
                s.name.clone(),
                s.revision.to_string(),
                output::routes(&s.config.routes),
                output::short_digest(&s.artifact),
                s.status.clone(),
                s.in_flight.to_string(),
            ];
            if clustered {
                row.push(nodes(s));
            }
            row.push(s.updated_at.clone());
            row
        })
        .collect();
    let mut header = vec![
        "NAME",
        "REVISION",
        "ROUTES",
        "ARTIFACT",
        "STATUS",
        "IN FLIGHT",
    ];
    if clustered {
        header.push("NODES");
    }
    header.push("UPDATED");
    output::table(&header, &rows);
    Ok(())
}

/// `2/3 serving, 1 failed`: how many nodes serve the active revision.
fn nodes(s: &ServiceView) -> String {
    let count = |status: &str| s.nodes.iter().filter(|n| n.status == status).count();
    let mut text = format!("{}/{} serving", count("serving"), s.nodes.len());
    for status in ["failed", "converging"] {
        let n = count(status);
        if n > 0 {
            text.push_str(&format!(", {n} {status}"));
        }
    }
    text
}
