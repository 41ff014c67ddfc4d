//! `berth deploy`: upload components and deploy revisions to a host.
//!
//! - `berth deploy NAME --component FILE [--route R]... [--memory ..]`:
//!   one service. Without `--route`, an existing service keeps the routes
//!   (and limits) of its active revision: that is an upgrade.
//! - `berth deploy MANIFEST [--build]`: every service of a manifest, in
//!   order; each one is its own deploy (a failure stops there, and the
//!   services already deployed stay deployed).

use super::client::{Client, ClientError};
use super::{ClientArgs, output};
use crate::control::admin::api::{ArtifactView, DeployRequest, RevisionView, ServiceView};
use crate::values::capabilities::{EnvValue, FileMount, GuestPath, Mode, OutboundRule, SecretName};
use crate::values::event::Subscription;
use crate::values::limits::Limits;
use crate::values::manifest::Manifest;
use crate::values::route::Route;
use crate::values::service::{ServiceConfig, ServiceName};
use crate::values::topic::TopicPattern;
use crate::values::units::{ByteSize, parse_duration};
use clap::Args;
use http::Method;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// A service name (with --component), or a manifest whose services to
    /// deploy.
    target: String,

    /// The component to deploy as service NAME.
    #[arg(long)]
    component: Option<PathBuf>,

    /// A route of the service (repeat for several). Without `--route` and
    /// `--subscribe`, an existing service keeps the triggers of its active
    /// revision.
    #[arg(long = "route", value_parser = parse_route)]
    routes: Vec<Route>,

    /// A topic pattern the service receives events from (repeat for
    /// several), with the default retry policy.
    #[arg(long = "subscribe", value_parser = parse_pattern)]
    subscribe: Vec<TopicPattern>,

    /// A topic pattern the service may publish on (repeat for several).
    #[arg(long = "publish", value_parser = parse_pattern)]
    publish: Vec<TopicPattern>,

    /// Linear memory per instance, e.g. 64MiB.
    #[arg(long)]
    memory: Option<ByteSize>,

    /// Fuel budget per invocation.
    #[arg(long)]
    fuel: Option<u64>,

    /// Wall-clock deadline per invocation, e.g. 10s.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// Instances in flight at once.
    #[arg(long)]
    concurrency: Option<u32>,

    /// Requests that may wait for an instance.
    #[arg(long)]
    queue: Option<u32>,

    /// How long a request may wait for an instance, e.g. 5s.
    #[arg(long, value_parser = parse_duration)]
    queue_timeout: Option<Duration>,

    /// Largest request body, e.g. 1MiB.
    #[arg(long)]
    request_body: Option<ByteSize>,

    /// Idle time after which the service's compiled code is unloaded
    /// (scale to zero), e.g. 5m.
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,

    /// An environment variable, NAME=VALUE (repeat for several). Given
    /// any of --env/--secret, the service's environment is exactly these.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// An environment variable holding a secret, NAME=SECRET (repeat for
    /// several): only the secret's name is sent and stored.
    #[arg(long = "secret", value_parser = parse_env)]
    secrets: Vec<(String, String)>,

    /// A host directory for the guest, HOST:GUEST[:ro|rw] (repeat for
    /// several; read-only by default). Given any, they replace the
    /// service's mounts.
    #[arg(long = "file", value_parser = parse_mount)]
    files: Vec<FileMount>,

    /// An origin the guest may send HTTP requests to, e.g.
    /// https://api.example.com or http://users.svc (repeat for several).
    /// Given any, they replace the service's list.
    #[arg(long = "allow-outbound", value_parser = OutboundRule::parse)]
    allow_outbound: Vec<OutboundRule>,

    /// With a manifest: run each service's build command first.
    #[arg(long)]
    build: bool,

    #[command(flatten)]
    client: ClientArgs,
}

fn parse_route(s: &str) -> Result<Route, String> {
    Route::parse(s).map_err(|e| e.to_string())
}

fn parse_pattern(s: &str) -> Result<TopicPattern, String> {
    TopicPattern::parse(s).map_err(|e| e.to_string())
}

impl DeployArgs {
    fn apply_limits(&self, limits: &mut Limits) {
        if let Some(v) = self.memory {
            limits.memory = v;
        }
        if let Some(v) = self.fuel {
            limits.fuel = v;
        }
        if let Some(v) = self.timeout {
            limits.timeout = v;
        }
        if let Some(v) = self.concurrency {
            limits.concurrency = v;
        }
        if let Some(v) = self.queue {
            limits.queue = v;
        }
        if let Some(v) = self.queue_timeout {
            limits.queue_timeout = v;
        }
        if let Some(v) = self.request_body {
            limits.request_body = v;
        }
        if let Some(v) = self.idle_timeout {
            limits.idle_timeout = v;
        }
    }
}

pub async fn run(args: DeployArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    match &args.component {
        Some(component) => {
            let name = ServiceName::parse(&args.target)?;
            let revision = deploy_one(&client, &args, &name, component).await?;
            if args.client.json {
                output::json(&revision)
            } else {
                Ok(())
            }
        }
        None => {
            let path = Path::new(&args.target);
            if !path.is_file() {
                anyhow::bail!(
                    "{} is not a manifest file; to deploy a single service, give its component: berth deploy {} --component FILE --route ROUTE",
                    args.target,
                    args.target
                );
            }
            let manifest = Manifest::load(path)?;
            if args.build {
                super::up::build(&manifest)?;
            }
            manifest.check_components()?;
            // Every component in hand before any is deployed.
            let components = super::oci::manifest_components(&manifest).await?;
            let mut revisions = Vec::new();
            for (entry, bytes) in manifest.services.iter().zip(components) {
                let artifact = upload(&client, &entry.component, bytes, args.client.json).await?;
                let config = entry.spec.config.clone();
                let request = DeployRequest::new(artifact.digest, config);
                revisions.push(put(&client, &entry.spec.name, &request, args.client.json).await?);
            }
            if args.client.json {
                output::json(&revisions)
            } else {
                Ok(())
            }
        }
    }
}

async fn deploy_one(
    client: &Client,
    args: &DeployArgs,
    name: &ServiceName,
    component: &Path,
) -> anyhow::Result<RevisionView> {
    let current = match client
        .get::<ServiceView>(&format!("/v1/services/{name}"))
        .await
    {
        Ok(current) => Some(current),
        Err(e) if e.code() == Some("not_found") => None,
        Err(e) => return Err(e.into()),
    };
    let new_triggers = !args.routes.is_empty() || !args.subscribe.is_empty();
    let mut config = match (&current, new_triggers) {
        (Some(current), false) => current.config.clone(),
        (current, true) => {
            // New triggers; everything else as it is (or the defaults).
            let mut config = current.as_ref().map_or_else(
                || ServiceConfig::http(Vec::new(), Limits::default()),
                |c| c.config.clone(),
            );
            config.routes = args.routes.clone();
            config.subscriptions = args
                .subscribe
                .iter()
                .cloned()
                .map(Subscription::to)
                .collect();
            config
        }
        (None, false) => anyhow::bail!(
            "service `{name}` does not exist yet: give its triggers with --route or --subscribe"
        ),
    };
    if !args.publish.is_empty() {
        config.publish = args.publish.clone();
    }
    if !args.env.is_empty() || !args.secrets.is_empty() {
        let mut env = BTreeMap::new();
        for (name, value) in &args.env {
            env.insert(name.clone(), EnvValue::Value(value.clone()));
        }
        for (name, secret) in &args.secrets {
            let secret = SecretName::parse(secret).map_err(anyhow::Error::msg)?;
            env.insert(name.clone(), EnvValue::Secret(secret));
        }
        config.env = env;
    }
    if !args.files.is_empty() {
        config.files = args.files.clone();
    }
    if !args.allow_outbound.is_empty() {
        config.allowed_outbound = args.allow_outbound.clone();
    }
    args.apply_limits(&mut config.limits);
    let oci = component
        .to_str()
        .and_then(|c| c.strip_prefix(super::oci::OCI_SCHEME));
    let bytes = super::oci::component_bytes(component, oci).await?;
    let artifact = upload(client, component, bytes, args.client.json)
        .await?
        .digest;
    let request = DeployRequest::new(artifact, config);
    Ok(put(client, name, &request, args.client.json).await?)
}

/// Uploads with progress on stderr (unless `quiet`), then waits while the
/// host checks and compiles it.
async fn upload(
    client: &Client,
    path: &Path,
    bytes: Vec<u8>,
    quiet: bool,
) -> Result<ArtifactView, ClientError> {
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let total = bytes.len() as u64;
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let label_for_progress = label.clone();
    let mut shown = 0u64;
    let progress = move |sent: u64, total: u64| {
        if quiet {
            return;
        }
        let percent = (sent * 100).checked_div(total).unwrap_or(100);
        // On a terminal, redraw one line; elsewhere, a line per quarter.
        if tty {
            eprint!(
                "\ruploading {label_for_progress}: {percent:>3}% ({} of {})",
                output::size(sent),
                output::size(total)
            );
        } else if percent >= shown + 25 || sent == total {
            shown = percent - percent % 25;
            eprintln!(
                "uploading {label_for_progress}: {percent}% of {}",
                output::size(total)
            );
        }
        if sent == total {
            if tty {
                eprintln!();
            }
            eprintln!("checking and compiling {label_for_progress}...");
        }
        let _ = std::io::stderr().flush();
    };
    let (artifact, created) = client.upload(bytes, progress).await?;
    if !quiet {
        eprintln!(
            "{label}: {} {} ({}, {:.1}s)",
            if created {
                "stored as"
            } else {
                "already stored as"
            },
            output::short_digest(&artifact.digest),
            output::size(total),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(artifact)
}

async fn put(
    client: &Client,
    name: &ServiceName,
    request: &DeployRequest,
    quiet: bool,
) -> Result<RevisionView, ClientError> {
    let (_, revision): (_, RevisionView) = client
        .send_json(Method::PUT, &format!("/v1/services/{name}"), request)
        .await?;
    if !quiet {
        println!(
            "deployed {} revision {} (artifact {}) on {}",
            revision.service,
            revision.revision,
            output::short_digest(&revision.artifact),
            output::routes(&revision.config.routes)
        );
    }
    Ok(revision)
}

/// `NAME=VALUE`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    let env = BTreeMap::from([(name.to_owned(), EnvValue::Value(value.to_owned()))]);
    crate::values::capabilities::validate_env(&env).map_err(|e| e.to_string())?;
    Ok((name.to_owned(), value.to_owned()))
}

/// `HOST:GUEST[:ro|rw]`; a relative host path is made absolute here, and
/// must exist on the host the service is deployed to.
fn parse_mount(s: &str) -> Result<FileMount, String> {
    let mut parts = s.split(':');
    let (Some(host), Some(guest)) = (parts.next(), parts.next()) else {
        return Err(format!("expected HOST:GUEST[:ro|rw], got {s:?}"));
    };
    let mode = match parts.next() {
        None | Some("ro") => Mode::Ro,
        Some("rw") => Mode::Rw,
        Some(other) => return Err(format!("invalid mode {other:?}: use ro or rw")),
    };
    if parts.next().is_some() {
        return Err(format!("expected HOST:GUEST[:ro|rw], got {s:?}"));
    }
    let host = std::path::absolute(host).map_err(|e| format!("{host}: {e}"))?;
    Ok(FileMount {
        host,
        guest: GuestPath::parse(guest).map_err(|e| e.to_string())?,
        mode,
    })
}
