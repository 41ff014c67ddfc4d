//! `berth publish TOPIC`: publish one CloudEvent (binary mode) through the
//! admin API.

use super::{ClientArgs, output};
use crate::control::admin::api::PublishedView;
use crate::values::id::InvocationId;
use anyhow::Context;
use bytes::Bytes;
use clap::Args;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic, such as `users.signed-up`.
    topic: String,

    /// The data: text, or `@FILE` to read a file.
    #[arg(long)]
    data: Option<String>,

    /// The event type.
    #[arg(long = "type", default_value = "berth.cli")]
    ty: String,

    /// The event source.
    #[arg(long, default_value = "/berth/cli")]
    source: String,

    /// The event subject.
    #[arg(long)]
    subject: Option<String>,

    /// The event id (default: a new unique one).
    #[arg(long)]
    id: Option<String>,

    /// The data's media type (default: application/json if the data is
    /// JSON, text/plain otherwise).
    #[arg(long)]
    content_type: Option<String>,

    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let data: Bytes = match args.data.as_deref() {
        Some(spec) => match spec.strip_prefix('@') {
            Some(path) => std::fs::read(path)
                .with_context(|| format!("reading {path}"))?
                .into(),
            None => Bytes::from(spec.to_owned()),
        },
        None => Bytes::new(),
    };
    let content_type = args.content_type.clone().unwrap_or_else(|| {
        if serde_json::from_slice::<serde_json::Value>(&data).is_ok() {
            "application/json".into()
        } else {
            "text/plain; charset=utf-8".into()
        }
    });
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| InvocationId::new().to_string());
    let mut headers = vec![
        ("ce-specversion".to_owned(), "1.0".to_owned()),
        ("ce-id".to_owned(), id),
        ("ce-source".to_owned(), args.source.clone()),
        ("ce-type".to_owned(), args.ty.clone()),
    ];
    if let Some(subject) = &args.subject {
        headers.push(("ce-subject".to_owned(), subject.clone()));
    }
    let path = format!("/v1/events/{}", args.topic);
    let published: PublishedView = args
        .client
        .client()?
        .post_raw(&path, data, &content_type, &headers)
        .await?;
    if args.client.json {
        return output::json(&published);
    }
    for event in &published.published {
        println!(
            "published {} on {}: {} deliver{}",
            event.id,
            args.topic,
            event.deliveries,
            if event.deliveries == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}
