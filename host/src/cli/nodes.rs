//! `berth nodes`: the nodes of a cluster (a standalone host shows itself).

use super::{ClientArgs, output};
use crate::control::admin::api::NodeView;
use clap::Args;

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: NodesArgs) -> anyhow::Result<()> {
    let nodes: Vec<NodeView> = args.client.client()?.get("/v1/nodes").await?;
    if args.client.json {
        return output::json(&nodes);
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.public.clone().unwrap_or_else(|| "-".into()),
                n.admin.clone().unwrap_or_else(|| "-".into()),
                n.version.clone(),
                crate::values::units::format_duration(std::time::Duration::from_secs(
                    n.uptime_secs,
                )),
                match &n.unready {
                    None => "ready".into(),
                    Some(why) => format!("not ready: {why}"),
                },
                format!(
                    "{} ({} loaded{})",
                    n.services,
                    n.services_loaded,
                    if n.services_failed > 0 {
                        format!(", {} failed", n.services_failed)
                    } else {
                        String::new()
                    }
                ),
                n.in_flight.to_string(),
                n.last_heartbeat.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "NODE",
            "PUBLIC",
            "ADMIN",
            "VERSION",
            "UPTIME",
            "STATUS",
            "SERVICES",
            "IN FLIGHT",
            "HEARTBEAT",
        ],
        &rows,
    );
    Ok(())
}
