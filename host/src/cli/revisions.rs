//! `berth revisions NAME`: a service's revisions, newest first.

use super::{ClientArgs, output};
use crate::control::admin::api::RevisionView;
use clap::Args;

#[derive(Debug, Args)]
pub struct RevisionsArgs {
    /// The service.
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: RevisionsArgs) -> anyhow::Result<()> {
    let path = format!("/v1/services/{}/revisions", args.name);
    let revisions: Vec<RevisionView> = args.client.client()?.get(&path).await?;
    if args.client.json {
        return output::json(&revisions);
    }
    let rows: Vec<Vec<String>> = revisions
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                if r.active { "*".into() } else { String::new() },
                output::short_digest(&r.artifact),
                output::routes(&r.config.routes),
                r.created_at.clone(),
            ]
        })
        .collect();
    output::table(
        &["REVISION", "ACTIVE", "ARTIFACT", "ROUTES", "CREATED"],
        &rows,
    );
    Ok(())
}
