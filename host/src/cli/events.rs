//! `berth events`: what the event queues hold, and the dead letters.
//!
//! - `berth events`: per subscription, depth, in flight, retries, dead
//!   letters, lag;
//! - `berth events dead [--topic T]`: the dead letters;
//! - `berth events replay (ID | --all)`: deliver dead letters again;
//! - `berth events purge [--topic T]`: delete dead letters.

use super::{ClientArgs, output};
use crate::control::admin::api::{CountView, DeadLetterView, EventsView, ReplayRequest};
use clap::{Args, Subcommand};
use http::Method;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EventsArgs {
    #[command(subcommand)]
    command: Option<EventsCommand>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// List the dead letters.
    Dead {
        /// Only those of this topic.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deliver dead letters again, from their first attempt.
    Replay {
        /// The CloudEvents id of the event to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete dead letters.
    Purge {
        /// Only those of this topic.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    match args.command {
        None => stats(&args.client).await,
        Some(EventsCommand::Dead { topic, client }) => dead(&client, topic).await,
        Some(EventsCommand::Replay { id, all, client }) => {
            let request = ReplayRequest { id, all };
            let (_, count): (_, CountView) = client
                .client()?
                .send_json(Method::POST, "/v1/events/dead/replay", &request)
                .await?;
            if client.json {
                return output::json(&count);
            }
            println!(
                "replayed {} dead letter{}",
                count.count,
                plural(count.count)
            );
            Ok(())
        }
        Some(EventsCommand::Purge { topic, client }) => {
            let path = match &topic {
                Some(t) => format!("/v1/events/dead?topic={t}"),
                None => "/v1/events/dead".to_owned(),
            };
            let count: CountView = client
                .client()?
                .delete(&path)
                .await?
                .unwrap_or(CountView { count: 0 });
            if client.json {
                return output::json(&count);
            }
            println!("purged {} dead letter{}", count.count, plural(count.count));
            Ok(())
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

async fn stats(client: &ClientArgs) -> anyhow::Result<()> {
    let view: EventsView = client.client()?.get("/v1/events").await?;
    if client.json {
        return output::json(&view);
    }
    let rows: Vec<Vec<String>> = view
        .subscriptions
        .iter()
        .map(|s| {
            vec![
                s.service.clone(),
                s.topic.clone(),
                s.depth.to_string(),
                s.in_flight.to_string(),
                s.retrying.to_string(),
                s.dead_letters.to_string(),
                format!("{:.1}s", s.lag_ms as f64 / 1000.0),
                if s.active { "" } else { "(no subscriber)" }.to_owned(),
            ]
        })
        .collect();
    output::table(
        &[
            "SERVICE",
            "TOPIC",
            "DEPTH",
            "IN FLIGHT",
            "RETRYING",
            "DEAD",
            "LAG",
            "",
        ],
        &rows,
    );
    let unrouted: Vec<_> = view.topics.iter().filter(|t| t.unrouted > 0).collect();
    if !unrouted.is_empty() {
        println!();
        for t in unrouted {
            println!(
                "{}: {} of {} events had no subscriber (accepted and dropped)",
                t.topic, t.unrouted, t.published
            );
        }
    }
    Ok(())
}

async fn dead(client: &ClientArgs, topic: Option<String>) -> anyhow::Result<()> {
    let path = match &topic {
        Some(t) => format!("/v1/events/dead?topic={t}"),
        None => "/v1/events/dead".to_owned(),
    };
    let dead: Vec<DeadLetterView> = client.client()?.get(&path).await?;
    if client.json {
        return output::json(&dead);
    }
    let rows: Vec<Vec<String>> = dead
        .iter()
        .map(|d| {
            vec![
                d.event["id"].as_str().unwrap_or("").to_owned(),
                d.topic.clone(),
                d.subscription.clone(),
                d.attempts.to_string(),
                d.dead_at.clone(),
                d.error.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "EVENT",
            "TOPIC",
            "SUBSCRIPTION",
            "ATTEMPTS",
            "DEAD AT",
            "ERROR",
        ],
        &rows,
    );
    Ok(())
}
