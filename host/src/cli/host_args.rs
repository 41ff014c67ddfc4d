//! The flags `up` and `serve` share: the host's settings, how its
//! listeners speak to clients, and who may use its admin API.

use crate::control::admin::{Auth, TokenRequired};
use crate::control::traces::{OtlpProtocol, TraceOptions};
use crate::host::HostOptions;
use crate::triggers::http::Listener;
use crate::triggers::http::limits::ListenerLimits;
use crate::triggers::http::tls::{CertFiles, Tls};
use crate::values::units::ByteSize;
use crate::wasm::engine::EngineOptions;
use crate::wasm::instance::output::OutputLimits;
use crate::wasm::secrets::{DEFAULT_SECRET_PREFIX, Secrets};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;

/// The settings of a host that `up` and `serve` share.
#[derive(clap::Args, Debug, Clone)]
pub struct HostArgs {
    /// Largest event accepted (attributes and data).
    #[arg(long, default_value = "256KiB")]
    pub max_event_size: ByteSize,

    /// Instances that may run at once across all services.
    #[arg(long, default_value_t = EngineOptions::default().max_instances)]
    pub max_instances: u32,

    /// Linear memory all instances may hold together (e.g. 2GiB); a
    /// growth past it fails inside the guest. Default: what the machine's
    /// memory, the memory cgroup and `ulimit -v` leave, with room kept
    /// for the host.
    #[arg(long)]
    pub guest_memory: Option<ByteSize>,

    /// CPU-bound invocations of one service that may run at once (default:
    /// the machine's cores but one, at least 1).
    #[arg(long)]
    pub cpu_turns: Option<usize>,

    /// How long usage records are kept (e.g. 30d, 12h).
    #[arg(long, default_value = "30d", value_parser = crate::values::units::parse_duration)]
    pub usage_retention: std::time::Duration,

    /// Keep no usage ledger (to measure what it costs).
    #[arg(long, hide = true)]
    pub no_usage: bool,

    /// A directory of secrets: one file per secret, named after it, that
    /// only its owner may read (mode 0600). Read at each invocation, so an
    /// updated file takes effect at once.
    #[arg(long, env = "BERTH_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,

    /// Host environment variables holding secrets start with this
    /// (`db-password` is then `BERTH_SECRET_DB_PASSWORD`); a file in
    /// --secrets-dir wins over a variable.
    #[arg(long, default_value = DEFAULT_SECRET_PREFIX)]
    pub secret_env_prefix: String,

    /// Output a guest may write to stdout and stderr in one invocation;
    /// past it, one line says it was truncated and the rest is dropped.
    #[arg(long, default_value = "1MiB")]
    pub guest_output_limit: ByteSize,

    /// Output a service's guests may write per second, all together (and
    /// at once); past it, lines are dropped and a line a second says how
    /// many.
    #[arg(long, default_value = "1MiB")]
    pub guest_output_rate: ByteSize,

    /// Recent log lines kept in memory per service, for `berth logs`; the
    /// oldest go first.
    #[arg(long, default_value = "1MiB")]
    pub service_log_size: ByteSize,

    #[command(flatten)]
    pub traces: TraceArgs,
}

/// Where traces go: OpenTelemetry's standard variables, or these flags.
/// Off unless an endpoint is given.
#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    /// Export traces over OTLP to this collector (a base URL: HTTP/protobuf
    /// posts to URL/v1/traces).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// The full URL of the collector's traces endpoint (wins over
    /// --otlp-endpoint).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_name = "URL")]
    pub otlp_traces_endpoint: Option<String>,

    /// The OTLP protocol: grpc or http/protobuf (default).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// How long one export may take, in milliseconds (default 10000).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", value_name = "MS")]
    pub otlp_timeout: Option<String>,

    /// Which traces are exported: always_on, always_off, traceidratio,
    /// parentbased_always_on, parentbased_always_off,
    /// parentbased_traceidratio.
    #[arg(
        long,
        env = "OTEL_TRACES_SAMPLER",
        default_value = "parentbased_always_on"
    )]
    pub trace_sampler: String,

    /// The sampler's ratio (0 to 1), for the traceidratio samplers.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub trace_sampler_arg: Option<String>,

    /// The traces' `service.name` (default: from OTEL_RESOURCE_ATTRIBUTES,
    /// else `berth`).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,

    /// Spans that may wait for export (default 2048); past it spans are
    /// dropped, and counted in `berth_trace_spans_dropped_total`.
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", value_name = "SPANS")]
    pub trace_queue: Option<String>,

    /// Spans sent in one export at most (default 512).
    #[arg(long, env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", value_name = "SPANS")]
    pub trace_batch: Option<String>,

    /// How long spans wait for a batch to fill, in milliseconds (default
    /// 5000).
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", value_name = "MS")]
    pub trace_delay: Option<String>,
}

/// A number setting: its value, or (malformed, as OpenTelemetry's
/// variables are then ignored) a warning and the default.
fn number(name: &str, value: Option<&str>, default: u64) -> u64 {
    match value.map(str::trim) {
        None | Some("") => default,
        Some(text) => text.parse().unwrap_or_else(|_| {
            tracing::warn!("{name}: {text:?} is not a number; {default} is used instead");
            default
        }),
    }
}

impl TraceArgs {
    /// The trace options, if traces are exported at all (an endpoint is
    /// set, and `OTEL_SDK_DISABLED` and `OTEL_TRACES_EXPORTER=none` do
    /// not say otherwise). The other settings are read only then: a
    /// variable meant for another program never stops a host that exports
    /// nothing.
    pub fn options(&self, node: &str) -> anyhow::Result<Option<TraceOptions>> {
        let set = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_ascii_lowercase())
        };
        if set("OTEL_SDK_DISABLED").as_deref() == Some("true")
            || set("OTEL_TRACES_EXPORTER").as_deref() == Some("none")
        {
            return Ok(None);
        }
        let endpoint = self.otlp_endpoint.clone().filter(|e| !e.is_empty());
        let traces_endpoint = self.otlp_traces_endpoint.clone().filter(|e| !e.is_empty());
        if endpoint.is_none() && traces_endpoint.is_none() {
            return Ok(None);
        }
        let protocol = match self.otlp_protocol.as_deref().map(str::trim) {
            None | Some("") | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            Some(other) => anyhow::bail!(
                "OTLP protocol {other:?} is not supported: grpc or http/protobuf (--otlp-protocol, OTEL_EXPORTER_OTLP_PROTOCOL)"
            ),
        };
        let queue = number("OTEL_BSP_MAX_QUEUE_SIZE", self.trace_queue.as_deref(), 2048).max(1);
        let batch = number(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            self.trace_batch.as_deref(),
            512,
        );
        let delay = number("OTEL_BSP_SCHEDULE_DELAY", self.trace_delay.as_deref(), 5000);
        let timeout = number(
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            self.otlp_timeout.as_deref(),
            10_000,
        );
        Ok(Some(TraceOptions {
            endpoint,
            traces_endpoint,
            protocol,
            sampler: self.trace_sampler.clone(),
            sampler_arg: self.trace_sampler_arg.clone(),
            service_name: self.otel_service_name.clone(),
            node: node.to_owned(),
            queue: queue as usize,
            batch: batch.clamp(1, queue) as usize,
            delay: Duration::from_millis(delay.max(1)),
            timeout: Duration::from_millis(timeout.max(1)),
        }))
    }
}

impl HostArgs {
    /// The options of a host on `state`, with these settings (the engine's
    /// instance cap among them).
    pub fn options(
        &self,
        state: PathBuf,
        cache: Option<PathBuf>,
        engine: EngineOptions,
        max_upload: ByteSize,
    ) -> anyhow::Result<HostOptions> {
        let node = crate::control::cluster::hostname();
        Ok(HostOptions {
            traces: self.traces.options(&node)?,
            state,
            cache,
            engine: EngineOptions {
                max_instances: self.max_instances,
                guest_memory: self.guest_memory,
                ..engine
            },
            max_upload,
            max_event_size: self.max_event_size,
            cpu_turns: self
                .cpu_turns
                .unwrap_or_else(crate::runtime::default_cpu_turns),
            usage_retention: (!self.no_usage).then_some(self.usage_retention),
            secrets: self.secrets()?,
            node,
            cluster: None,
            output: OutputLimits {
                per_invocation: self.guest_output_limit,
                per_second: self.guest_output_rate,
            },
            logs: Some(self.service_log_size),
        })
    }

    /// The secrets source these arguments describe.
    fn secrets(&self) -> anyhow::Result<Secrets> {
        if let Some(dir) = &self.secrets_dir {
            let meta = std::fs::metadata(dir)
                .with_context(|| format!("the secrets directory {}", dir.display()))?;
            anyhow::ensure!(
                meta.is_dir(),
                "the secrets directory {} is not a directory",
                dir.display()
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        "the secrets directory is open to group or others (mode {mode:03o}); make it 0700"
                    );
                }
            }
        }
        Ok(Secrets::new(
            self.secrets_dir.clone(),
            self.secret_env_prefix.clone(),
        ))
    }
}

/// Who may use the admin API: the same flags, and the same rule, for `up`
/// and `serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// Bearer token the admin API requires. Without one (and
    /// --admin-token-file), a loopback admin API uses the token in
    /// STATE/admin.token, made on first start; off loopback one must be
    /// given.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A file holding the admin token (its first line).
    #[arg(long, conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token given by flag, `BERTH_TOKEN` or file, if any.
    fn given(&self) -> anyhow::Result<Option<String>> {
        let token = match &self.admin_token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the admin token from {}", path.display()))?;
                Some(super::admin_token::first_line(&text))
            }
            None => self.admin_token.clone(),
        };
        Ok(token.filter(|t| !t.is_empty()))
    }

    /// Checks, before anything starts, that an admin API on `addr` will
    /// have a token: off loopback, one must be given (see
    /// [`Auth::for_listener`]).
    pub fn check(&self, addr: SocketAddr) -> anyhow::Result<()> {
        if !addr.ip().is_loopback() {
            Auth::for_listener(addr, self.given()?)?;
        }
        Ok(())
    }

    /// The admin API's auth on `addr`: the token given; else, on loopback,
    /// the one in `STATE/admin.token`, made on first start — then also its
    /// file, for the CLI to find (see [`super::admin_token`]).
    pub fn auth(&self, addr: SocketAddr, state: &Path) -> anyhow::Result<(Auth, Option<PathBuf>)> {
        match self.given()? {
            Some(token) => Ok((Auth::token(token), None)),
            None if addr.ip().is_loopback() => {
                let (token, file) = super::admin_token::ensure(state)?;
                Ok((Auth::token(token), Some(file)))
            }
            None => Err(TokenRequired(addr).into()),
        }
    }
}

/// How the listeners of `up` and `serve` speak to clients: TLS, and the
/// limits they put on them (see `docs/gateway.md`).
#[derive(clap::Args, Debug, Clone)]
pub struct ListenArgs {
    /// Serve the public listener over TLS with this certificate chain
    /// (PEM, the server's certificate first). Repeat with --tls-key for
    /// several certificates, chosen by the client's SNI name (the first
    /// one otherwise). Reloaded when the files change, and on SIGHUP.
    #[arg(long = "tls-cert", value_name = "FILE", requires = "tls_key")]
    tls_cert: Vec<PathBuf>,

    /// The private key (PEM) of each --tls-cert, in the same order.
    #[arg(long = "tls-key", value_name = "FILE", requires = "tls_cert")]
    tls_key: Vec<PathBuf>,

    /// Serve the admin API over TLS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "admin_tls_key")]
    admin_tls_cert: Vec<PathBuf>,

    /// The private key (PEM) of each --admin-tls-cert.
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    admin_tls_key: Vec<PathBuf>,

    /// How long a client may take to send a request's headers (and a TLS
    /// handshake); on HTTP/1.1 also the longest wait for the next request
    /// on a kept-alive connection.
    #[arg(long, default_value = "10s", value_parser = crate::values::units::parse_duration)]
    header_read_timeout: Duration,

    /// A connection with nothing in flight and no bytes moving for this
    /// long is closed.
    #[arg(long, default_value = "60s", value_parser = crate::values::units::parse_duration)]
    idle_timeout: Duration,

    /// Connections each listener keeps open at once; beyond, new ones wait
    /// to be accepted. Lowered at start to fit the open-file limit.
    #[arg(long, default_value_t = ListenerLimits::default().max_connections)]
    max_connections: usize,

    /// The largest request head (request line and headers); at least
    /// 8KiB.
    #[arg(long, default_value = "64KiB")]
    max_header_size: ByteSize,

    /// The most header fields in a request.
    #[arg(long, default_value_t = ListenerLimits::default().max_headers)]
    max_headers: usize,

    /// The longest request target (path and query).
    #[arg(long, default_value = "8KiB")]
    max_uri_length: ByteSize,

    /// Every request body has this long, plus a second per
    /// --body-min-rate bytes received, to arrive in full.
    #[arg(long, default_value = "30s", value_parser = crate::values::units::parse_duration)]
    body_timeout: Duration,

    /// The rate, per second, a request body must keep up beyond
    /// --body-timeout.
    #[arg(long, default_value = "1KiB")]
    body_min_rate: ByteSize,

    /// Streams one HTTP/2 connection may have open at once.
    #[arg(long, default_value_t = ListenerLimits::default().http2_max_streams)]
    http2_max_streams: u32,
}

impl ListenArgs {
    /// The limits of each listener (`listeners` of them share the
    /// process's descriptors).
    fn limits(&self, listeners: usize) -> ListenerLimits {
        let mut limits = ListenerLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections.max(1),
            max_header_size: self.max_header_size.bytes() as usize,
            max_headers: self.max_headers.max(1),
            max_uri_length: self.max_uri_length.bytes() as usize,
            body_timeout: self.body_timeout,
            body_min_rate: self.body_min_rate.bytes(),
            http2_max_streams: self.http2_max_streams.max(1),
        };
        limits.fit_to_open_files(listeners);
        limits
    }

    /// The public listener's and the admin listener's TLS, loaded (a file
    /// that does not load is an error naming it).
    pub fn tls(&self) -> anyhow::Result<(Option<Tls>, Option<Tls>)> {
        Ok((
            tls(&self.tls_cert, &self.tls_key, "--tls")?,
            tls(&self.admin_tls_cert, &self.admin_tls_key, "--admin-tls")?,
        ))
    }

    /// The listeners on the bound sockets, with their TLS.
    pub fn listeners(
        &self,
        public: (TcpListener, Option<Tls>),
        admin: Option<(TcpListener, Option<Tls>)>,
    ) -> (Listener, Option<Listener>) {
        let limits = self.limits(1 + admin.is_some() as usize);
        let listener = |(socket, tls)| Listener {
            socket,
            tls,
            limits: limits.clone(),
        };
        (listener(public), admin.map(listener))
    }
}

fn tls(certs: &[PathBuf], keys: &[PathBuf], flag: &str) -> anyhow::Result<Option<Tls>> {
    if certs.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        certs.len() == keys.len(),
        "{flag}-cert is given {} times and {flag}-key {} times: each certificate needs its key",
        certs.len(),
        keys.len()
    );
    let files = certs
        .iter()
        .zip(keys)
        .map(|(cert, key)| CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        })
        .collect();
    Ok(Some(Tls::load(files).with_context(|| {
        format!("loading the certificates of {flag}-cert")
    })?))
}

/// Says where the host serves `services` services, its admin API and its
/// admin token (the stable start-up lines tests and scripts read), and
/// notes the token for the CLI: the note lives as long as the value
/// returned.
pub fn announce(
    services: usize,
    public: &Listener,
    admin: Option<&Listener>,
    token_file: Option<&Path>,
) -> anyhow::Result<Option<super::admin_token::Note>> {
    super::telemetry::flush();
    eprintln!(
        "berth: serving {services} service{} on {}://{}",
        if services == 1 { "" } else { "s" },
        public.scheme(),
        public.socket.local_addr()?
    );
    let Some(admin) = admin else {
        return Ok(None);
    };
    let addr = admin.socket.local_addr()?;
    eprintln!("berth: admin API on {}://{addr}", admin.scheme());
    let Some(file) = token_file else {
        return Ok(None);
    };
    eprintln!("berth: admin token in {}", file.display());
    Ok(super::admin_token::note(addr, file))
}

/// Reloads the certificates of `listeners` on every SIGHUP, for as long as
/// the process runs.
pub fn reload_on_hangup(listeners: Vec<Tls>) {
    if listeners.is_empty() {
        return;
    }
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the TLS certificates");
            for tls in &listeners {
                let tls = tls.clone();
                let _ = tokio::task::spawn_blocking(move || tls.reload(true)).await;
            }
        }
    });
}
