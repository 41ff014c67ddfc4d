//! `berth inspect NAME`: one service in full.

use super::{ClientArgs, output};
use crate::control::admin::api::ServiceView;
use crate::values::capabilities::{EnvValue, Mode};
use crate::values::units::format_duration;
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
    for (key, value) in overview(&s).into_iter().chain(capabilities(&s)) {
        println!("{:<14}{value}", format!("{key}:"));
    }
    for node in &s.nodes {
        let revision = node
            .revision
            .map_or_else(|| "none".to_owned(), |r| format!("revision {r}"));
        let why = node
            .error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        println!(
            "{:<14}{} ({revision}){why}",
            format!("node {}:", node.node),
            node.status
        );
    }
    Ok(())
}

/// Name, revision, routes, status, limits, times.
fn overview(s: &ServiceView) -> Vec<(&'static str, String)> {
    let l = &s.config.limits;
    vec![
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
    ]
}

/// What the guest is given: files, environment (secrets by name), outbound
/// origins, topics it may publish on.
fn capabilities(s: &ServiceView) -> Vec<(&'static str, String)> {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    let config = &s.config;
    let files = config.files.iter().map(|f| {
        let mode = match f.mode {
            Mode::Ro => "ro",
            Mode::Rw => "rw",
        };
        format!("{} → {} ({mode})", f.host.display(), f.guest)
    });
    let env = config.env.iter().map(|(name, value)| match value {
        EnvValue::Value(v) => format!("{name}={v}"),
        EnvValue::Secret(secret) => format!("{name}=(secret {secret})"),
    });
    let outbound = config.allowed_outbound.iter().map(|r| r.to_string());
    let mut rows = vec![
        ("files", list(files.collect())),
        ("env", list(env.collect())),
        ("outbound", list(outbound.collect())),
    ];
    if !config.publish.is_empty() {
        rows.push((
            "publish",
            list(config.publish.iter().map(|p| p.to_string()).collect()),
        ));
    }
    rows
}
