//! `berth inspect NAME`: one service in full.

use super::{ClientArgs, output};
use crate::api::ServiceView;
use crate::capabilities::{EnvValue, Mode};
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
    let l = &s.config.limits;
    let mut rows = vec![
        ("name", s.name.clone()),
        (
            "revision",
            format!("{} (latest {})", s.revision, s.latest_revision),
        ),
        ("artifact", s.artifact.clone()),
        ("routes", output::routes(&s.config.routes)),
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
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    rows.push((
        "files",
        list(
            s.config
                .files
                .iter()
                .map(|f| {
                    let mode = match f.mode {
                        Mode::Ro => "ro",
                        Mode::Rw => "rw",
                    };
                    format!("{} → {} ({mode})", f.host.display(), f.guest)
                })
                .collect(),
        ),
    ));
    rows.push((
        "env",
        list(
            s.config
                .env
                .iter()
                .map(|(name, value)| match value {
                    EnvValue::Value(v) => format!("{name}={v}"),
                    EnvValue::Secret(secret) => format!("{name}=(secret {secret})"),
                })
                .collect(),
        ),
    ));
    rows.push((
        "outbound",
        list(
            s.config
                .allowed_outbound
                .iter()
                .map(|r| r.to_string())
                .collect(),
        ),
    ));
    if !s.config.publish.is_empty() {
        rows.push((
            "publish",
            list(s.config.publish.iter().map(|p| p.to_string()).collect()),
        ));
    }
    for (key, value) in rows {
        println!("{:<14}{value}", format!("{key}:"));
    }
    Ok(())
}
