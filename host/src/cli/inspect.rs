//! `berth inspect NAME`: one service in full.

use super::{ClientArgs, output};
use crate::api::ServiceView;
use crate::units::format_duration;
use clap::Args;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The service.
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let path = format!("/v1/services/{}", args.name);
    let s: ServiceView = args.client.client()?.get(&path).await?;
    if args.client.json {
        return output::json(&s);
    }
    let l = &s.limits;
    let rows = [
        ("name", s.name.clone()),
        (
            "revision",
            format!("{} (latest {})", s.revision, s.latest_revision),
        ),
        ("artifact", s.artifact.clone()),
        ("routes", output::routes(&s.routes)),
        (
            "status",
            match &s.error {
                Some(e) => format!("{}: {e}", s.status),
                None => s.status.clone(),
            },
        ),
        (
            "in flight",
            format!("{} (queued {})", s.in_flight, s.queued),
        ),
        ("memory", l.memory.to_string()),
        ("fuel", l.fuel.to_string()),
        ("timeout", format_duration(l.timeout)),
        ("concurrency", l.concurrency.to_string()),
        (
            "queue",
            format!("{} (timeout {})", l.queue, format_duration(l.queue_timeout)),
        ),
        ("request body", l.request_body.to_string()),
        (
            "idle timeout",
            format!(
                "{} ({})",
                format_duration(l.idle_timeout),
                if s.loaded { "loaded" } else { "unloaded" }
            ),
        ),
        ("created", s.created_at.clone()),
        ("updated", s.updated_at.clone()),
    ];
    for (key, value) in rows {
        println!("{:<14}{value}", format!("{key}:"));
    }
    Ok(())
}
