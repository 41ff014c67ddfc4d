//! A cluster of Berth nodes on NATS JetStream (`berth serve --cluster`).
//!
//! The nodes share no disk and talk to no one but NATS:
//!
//! - **Deployments** are records in the KV bucket `berth_services`, one
//!   entry per service holding its revisions and which one is active.
//!   Every change is a compare-and-swap on that entry, so two deploys of
//!   one service through two nodes get consecutive revision numbers.
//! - **Artifacts** are objects in the object store `berth_artifacts`, named
//!   by digest, checked against it on every fetch.
//! - Every node **watches** the services bucket and converges: fetches the
//!   artifact into its local store, compiles it into its local code cache,
//!   and switches routing as a standalone host does ([`catalog`]).
//! - **Nodes** report themselves in the KV bucket `berth_nodes` every
//!   [`HEARTBEAT`]; an entry older than [`NODE_TIMEOUT`] is a node gone
//!   ([`nodes`]).
//! - **API keys** are records in the KV bucket `berth_keys`, followed by
//!   every node into its gateway ([`keys`]).
//! - **Logs** stay in each node's memory; `berth logs` on any node asks
//!   the others over NATS core messaging, and follows their lines only
//!   while someone follows ([`logs`]).
//!
//! When NATS cannot be reached, the node keeps serving what it has:
//! changes fail at once with [`ControlError::Unavailable`], and the node
//! converges again by itself once NATS is back.

pub mod bus;
pub mod catalog;
pub mod firings;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod keys;
pub mod logs;
pub mod nodes;
pub mod usage;

pub use catalog::ClusterCatalog;

use crate::control::deploy::ControlError;
use anyhow::Context;
use async_nats::jetstream;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// The services bucket.
pub const SERVICES_BUCKET: &str = "berth_services";
/// The nodes bucket.
pub const NODES_BUCKET: &str = "berth_nodes";
/// The schedules bucket.
pub const SCHEDULES_BUCKET: &str = "berth_schedules";
/// The API keys bucket.
pub const KEYS_BUCKET: &str = "berth_keys";
/// The artifacts object store.
pub const ARTIFACTS_BUCKET: &str = "berth_artifacts";

/// How often a node reports itself.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not heard from for this long has left the cluster.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(8);

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// NATS server URLs (`nats://`, `tls://`; `user:password@` or
    /// `token@` in the URL authenticate).
    pub urls: Vec<String>,
    /// This node's name in the cluster.
    pub node: String,
    /// A NATS `.creds` file (user JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// A CA certificate (PEM) for `tls://` servers.
    pub ca: Option<PathBuf>,
    /// Replicas of the buckets and streams Berth creates; default: as many
    /// servers as the cluster has, at most 3.
    pub replicas: Option<usize>,
}

impl ClusterOptions {
    /// The URLs with any password or token replaced by `***`, for messages.
    pub fn display_urls(&self) -> String {
        self.urls
            .iter()
            .map(|u| redact(u))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `url` with the user information's secret part replaced by `***` (with
/// or without a scheme).
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}{name}:***@{host}"),
            None => format!("{scheme}***@{host}"),
        },
        None => url.to_owned(),
    }
}

/// Whether `name` can name a node: a KV key of letters, digits, `-` and
/// `_` (a host name's characters).
fn check_node_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "the node name {name:?} is not valid: use 1 to 63 letters, digits, '-' or '_'"
    );
    Ok(())
}

/// Whether the node is connected to NATS now, and how often it has
/// (re)connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Connected now.
    pub up: bool,
    /// Connections made so far (1 after the first).
    pub connects: u64,
}

/// A connection to the cluster: the NATS client, JetStream, and Berth's
/// buckets.
#[derive(Clone)]
pub struct Cluster {
    /// This node's name.
    pub node: String,
    /// What the URLs look like in messages (no secrets).
    pub display: String,
    client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
    /// The services bucket.
    pub services: jetstream::kv::Store,
    /// The nodes bucket.
    pub nodes: jetstream::kv::Store,
    /// The schedules bucket.
    pub schedules: jetstream::kv::Store,
    /// The API keys bucket.
    pub keys: jetstream::kv::Store,
    /// The artifacts.
    pub artifacts: jetstream::object_store::ObjectStore,
    link: watch::Receiver<Link>,
    replicas: usize,
}

impl Cluster {
    /// The NATS connection (for core messaging: the logs).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Connects to the cluster and opens (or creates) Berth's buckets.
    /// Fails, naming the URLs (never a secret), when no server can be
    /// reached or the credentials are refused.
    pub async fn connect(options: &ClusterOptions) -> anyhow::Result<Cluster> {
        let display = options.display_urls();
        anyhow::ensure!(!options.urls.is_empty(), "--cluster names no NATS server");
        check_node_name(&options.node)?;
        let invalid = |url: &str, e: std::io::Error| {
            anyhow::anyhow!("the cluster URL {} is not valid: {e}", redact(url))
        };
        let mut addrs = Vec::with_capacity(options.urls.len());
        let mut userinfo = None;
        for url in &options.urls {
            let addr: async_nats::ServerAddr = url.parse().map_err(|e| invalid(url, e))?;
            if addr.has_user_pass() && userinfo.is_none() {
                userinfo = Some((
                    addr.username().unwrap_or_default().to_owned(),
                    addr.password().map(str::to_owned),
                ));
            }
            // The client gets the credentials as options, never inside an
            // address (which it logs).
            let scheme = if addr.tls_required() { "tls" } else { "nats" };
            let bare = format!("{scheme}://{}:{}", addr.host(), addr.port());
            addrs.push(
                bare.parse::<async_nats::ServerAddr>()
                    .map_err(|e| invalid(url, e))?,
            );
        }
        let mut connect = async_nats::ConnectOptions::new()
            .name(format!("berth {}", options.node))
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            // A server gone without a word (a cut cable) is noticed within
            // seconds, not minutes.
            .ping_interval(Duration::from_secs(3))
            .max_reconnects(None);
        // Credentials in a URL, the way NATS tools read them: `user:pass@`
        // or `token@`.
        if let Some((user, pass)) = userinfo {
            connect = match pass {
                Some(pass) => connect.user_and_password(user, pass),
                None => connect.token(user),
            };
        }
        if let Some(creds) = &options.creds {
            connect = connect
                .credentials_file(creds)
                .await
                .with_context(|| format!("reading the NATS credentials {}", creds.display()))?;
        }
        if let Some(ca) = &options.ca {
            anyhow::ensure!(
                ca.is_file(),
                "the NATS CA certificate {} does not exist",
                ca.display()
            );
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = connect
            .connect(addrs)
            .await
            .map_err(|e| anyhow::anyhow!("cannot join the cluster at {display}: {e}"))?;
        let (link_tx, link) = watch::channel(Link {
            up: true,
            connects: 1,
        });
        // The link follows the client's own state (its event callbacks may
        // be dropped when many come at once).
        tokio::spawn({
            let client = client.clone();
            async move {
                let mut ticks = tokio::time::interval(Duration::from_millis(100));
                loop {
                    ticks.tick().await;
                    let up = client.connection_state() == async_nats::connection::State::Connected;
                    let was = link_tx.borrow().up;
                    if up != was {
                        if up {
                            tracing::info!("connected to the cluster again");
                        } else {
                            tracing::warn!("lost the cluster; serving what is loaded");
                        }
                        link_tx.send_modify(|l| {
                            l.up = up;
                            l.connects += u64::from(up);
                        });
                    }
                    if link_tx.is_closed() {
                        return;
                    }
                }
            }
        });
        let js = jetstream::new(client.clone());
        // The server's INFO lists the cluster's client URLs, its own among
        // them.
        let replicas = options
            .replicas
            .unwrap_or_else(|| client.server_info().connect_urls.len().clamp(1, 3));
        let (services, nodes, schedules, keys, artifacts) =
            at_start(&format!("opening Berth's buckets on {display}"), || {
                open_buckets(&js, replicas)
            })
            .await?;
        Ok(Cluster {
            node: options.node.clone(),
            display,
            client,
            js,
            services,
            nodes,
            schedules,
            keys,
            artifacts,
            link,
            replicas,
        })
    }

    /// Replicas of what Berth stores in JetStream.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The connection's state, to watch.
    pub fn link(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }

    /// Fails at once, with a message naming the cluster, when NATS cannot
    /// be reached now (rather than waiting for a request to time out).
    pub fn ensure_up(&self) -> Result<(), ControlError> {
        if self.client.connection_state() == async_nats::connection::State::Connected {
            Ok(())
        } else {
            Err(self.unavailable("it cannot be reached"))
        }
    }

    /// The error of a change the cluster could not take.
    pub fn unavailable(&self, why: impl std::fmt::Display) -> ControlError {
        ControlError::Unavailable(format!("the cluster at {}: {why}", self.display))
    }

    /// Runs `read`, a request JetStream answers without changing anything,
    /// again while JetStream refuses it, for up to 15 s:
    /// a server of the cluster died and its streams are electing new
    /// leaders ("no responders", or no answer in time). Other errors, and
    /// one that lasts, are
    /// [`Cluster::unavailable`].
    pub async fn read<T, E, F>(&self, mut read: impl FnMut() -> F) -> Result<T, ControlError>
    where
        E: std::fmt::Display,
        F: std::future::Future<Output = Result<T, E>>,
    {
        let started = std::time::Instant::now();
        loop {
            match read().await {
                Ok(value) => return Ok(value),
                // A read can be asked again whatever became of it: one that
                // timed out (no leader answered in time) too.
                Err(e)
                    if (catalog::refused(&e.to_string()) || catalog::timed_out(&e.to_string()))
                        && started.elapsed() < catalog::TRANSIENT
                        && self.ensure_up().is_ok() =>
                {
                    tracing::debug!(error = %e, "the cluster refused a read; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => return Err(self.unavailable(e)),
            }
        }
    }

    /// Sends what is buffered and closes the connection.
    pub async fn close(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::debug!(error = %e, "flushing the cluster connection");
        }
    }
}

/// Opens (or creates) the services and nodes buckets and the artifact
/// store.
async fn open_buckets(
    js: &jetstream::Context,
    replicas: usize,
) -> anyhow::Result<(
    jetstream::kv::Store,
    jetstream::kv::Store,
    jetstream::kv::Store,
    jetstream::kv::Store,
    jetstream::object_store::ObjectStore,
)> {
    let services = kv_bucket(
        js,
        jetstream::kv::Config {
            bucket: SERVICES_BUCKET.into(),
            description: "Berth: services and their revisions".into(),
            history: 5,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .context("the services bucket")?;
    let nodes = kv_bucket(
        js,
        jetstream::kv::Config {
            bucket: NODES_BUCKET.into(),
            description: "Berth: the nodes' heartbeats".into(),
            history: 1,
            max_age: NODE_TIMEOUT * 4,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .context("the nodes bucket")?;
    let schedules = kv_bucket(
        js,
        jetstream::kv::Config {
            bucket: SCHEDULES_BUCKET.into(),
            description: "Berth: when each schedule last fired".into(),
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .context("the schedules bucket")?;
    let keys = kv_bucket(
        js,
        jetstream::kv::Config {
            bucket: KEYS_BUCKET.into(),
            description: "Berth: API keys (hashes, never keys)".into(),
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .context("the API keys bucket")?;
    let artifacts = match js.get_object_store(ARTIFACTS_BUCKET).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(jetstream::object_store::Config {
                bucket: ARTIFACTS_BUCKET.into(),
                description: Some("Berth: components by digest".into()),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .context("the artifact store")?,
    };
    Ok((services, nodes, schedules, keys, artifacts))
}

/// Runs `open` (making or opening something in JetStream at start) until
/// it succeeds, for up to a minute: a cluster that has just started, or is
/// busy, may still be electing its leaders.
pub async fn at_start<T, F, Fut>(what: &str, mut open: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match open().await {
            Ok(value) => return Ok(value),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %format!("{e:#}"), "{what}: JetStream is not ready yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context(what.to_owned())),
        }
    }
}

/// Opens a KV bucket, creating it when it does not exist.
async fn kv_bucket(
    js: &jetstream::Context,
    config: jetstream::kv::Config,
) -> anyhow::Result<jetstream::kv::Store> {
    match js.get_key_value(&config.bucket).await {
        Ok(store) => Ok(store),
        Err(_) => Ok(js.create_key_value(config).await?),
    }
}

/// This machine's host name (the default node name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "berth".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_urls_are_never_shown() {
        assert_eq!(redact("nats://a:4222"), "nats://a:4222");
        assert_eq!(redact("nats://u:s3cret@a:4222"), "nats://u:***@a:4222");
        assert_eq!(redact("tls://tok3n@a:4222"), "tls://***@a:4222");
        assert_eq!(redact("u:s3cret@a:4222"), "u:***@a:4222");
        assert!(check_node_name("node-1").is_ok());
        assert!(check_node_name("a b").is_err() && check_node_name("a.b").is_err());
        let options = ClusterOptions {
            urls: vec!["nats://u:pw@a:1".into(), "nats://b:2".into()],
            node: "n".into(),
            creds: None,
            ca: None,
            replicas: None,
        };
        assert_eq!(options.display_urls(), "nats://u:***@a:1,nats://b:2");
        assert!(!options.display_urls().contains("pw"));
    }
}
