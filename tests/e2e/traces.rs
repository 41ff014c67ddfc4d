//! Traces out over OTLP, received by a real OTLP receiver
//! (`otlp_receiver.py`: gRPC and HTTP/protobuf, decoded with the official
//! protobuf definitions from PyPI's `opentelemetry-proto`).

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running OTLP receiver, stopped when dropped.
struct Receiver {
    child: Child,
    grpc: u16,
    http: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts the receiver; `extra`: `--delay SECONDS`, `--fail`.
    fn start(extra: &[&str]) -> Receiver {
        let python = crate::tools::python_otlp();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/otlp_receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(&out)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = |name: &str| -> u16 {
            let field = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("the receiver did not start: {line:?}"));
            field.parse().unwrap()
        };
        let (grpc, http) = (port("grpc"), port("http"));
        Receiver {
            child,
            grpc,
            http,
            out,
            _dir: dir,
        }
    }

    fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits for the span of invocation `id`.
    fn span_of(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(span) = self
                .spans()
                .into_iter()
                .find(|s| s["attributes"]["berth.invocation"] == id)
            {
                return span;
            }
            assert!(Instant::now() < deadline, "no span of {id}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the spans of `trace` include one per name in `names`.
    fn wait_for_trace(&self, trace: &str, names: &[&str]) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans: Vec<_> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace)
                .collect();
            if names.iter().all(|n| spans.iter().any(|s| s["name"] == *n)) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "spans {names:?} of trace {trace} never all came; got {spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The one span of `spans` named `name`.
fn one<'a>(spans: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    let found: Vec<_> = spans.iter().filter(|s| s["name"] == name).collect();
    assert_eq!(found.len(), 1, "one span {name:?} in {spans:#?}");
    found[0]
}

/// The value of metric sample `sample` (name and labels, as written).
fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
}

/// Waits until metric sample `sample` reads `value`.
async fn wait_for_metric(berth: &Berth, sample: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&berth.admin_get("/metrics").await.text(), sample) != value {
        assert!(Instant::now() < deadline, "{sample} never read {value}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn chain_manifest() -> String {
    format!(
        "[service.front]\ncomponent = {:?}\nroute = \"/front/...\"\nallowed_outbound = [\"http://*.svc\"]\n\n\
         [service.api]\ncomponent = {:?}\nroute = \"/api/...\"\npublish = [\"users.>\"]\n\n\
         [service.consumer]\ncomponent = {:?}\n[[service.consumer.subscriptions]]\ntopic = \"users.*\"\n\n{}{}",
        programs::CAPS,
        programs::EVENTS_API,
        programs::EVENTS_CONSUMER,
        service("idle", programs::HELLO, "/idle", "idle_timeout = \"1s\""),
        service("one", programs::SLEEP, "/one", "concurrency = 1"),
    )
}

#[tokio::test]
async fn traces_follow_a_request_through_a_service_call_and_an_event_to_its_consumer() {
    let receiver = Receiver::start(&[]);
    let endpoint = receiver.http_url();
    let berth = Berth::up_admin(
        &chain_manifest(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "http/protobuf",
            "--trace-delay",
            "100",
        ],
    );
    let req = http::Request::get("/front/fetch?url=http://api.svc/api/signup/ada")
        .header("host", berth.addr.to_string())
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = send(berth.addr, req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let front_id = reply.invocation();

    let spans = receiver.wait_for_trace(
        TRACE,
        &[
            "invoke front",
            "call api",
            "invoke api",
            "invoke consumer",
            "run",
        ],
    );
    for span in &spans {
        assert_eq!(span["transport"], "http", "{span:#}");
        assert_eq!(span["resource"]["service.name"], "berth", "{span:#}");
        assert_eq!(span["scope"], "berth", "{span:#}");
        assert!(span["end"].as_u64() >= span["start"].as_u64(), "{span:#}");
    }
    // The request's invocation continues the client's span...
    let front = one(&spans, "invoke front");
    assert_eq!(front["parent_span_id"], PARENT);
    assert_eq!(front["kind"], "SPAN_KIND_SERVER");
    let attributes = &front["attributes"];
    assert_eq!(attributes["berth.service"], "front");
    assert_eq!(attributes["berth.invocation"], front_id.as_str());
    assert_eq!(attributes["berth.trigger"], "http");
    assert_eq!(attributes["berth.revision"], 1);
    assert_eq!(attributes["berth.outcome"], "ok");
    assert_eq!(attributes["http.route"], "/front/...");
    assert_eq!(attributes["http.request.method"], "GET");
    assert_eq!(attributes["http.response.status_code"], 200);
    assert_eq!(attributes["berth.cold"], false);
    assert!(attributes["berth.fuel"].as_i64().unwrap() > 0, "{front:#}");
    assert!(
        attributes["berth.memory.peak"].as_i64().unwrap() > 0,
        "{front:#}"
    );
    assert_eq!(front["status"], "STATUS_CODE_UNSET");

    // ...its steps are its children (admission only when it waited)...
    let front_span = front["span_id"].as_str().unwrap();
    let children = |parent: &str| -> Vec<&serde_json::Value> {
        spans
            .iter()
            .filter(|s| s["parent_span_id"] == parent)
            .collect()
    };
    let steps: Vec<&str> = children(front_span)
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for step in ["run", "call api"] {
        assert!(steps.contains(&step), "{step} under front: {steps:?}");
    }
    assert!(!steps.contains(&"admission"), "{steps:?}");
    // ...the service call is a client span whose callee is its child...
    let call = one(&spans, "call api");
    assert_eq!(call["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(call["parent_span_id"], front_span);
    assert_eq!(call["attributes"]["berth.callee"], "api");
    assert_eq!(call["attributes"]["http.response.status_code"], 202);
    let api = one(&spans, "invoke api");
    assert_eq!(api["parent_span_id"], call["span_id"]);
    assert_eq!(api["kind"], "SPAN_KIND_SERVER");
    assert_eq!(api["attributes"]["berth.trigger"], "call");
    assert_eq!(api["attributes"]["berth.caller"], front_id.as_str());
    // ...and the event it published continues its trace in the consumer.
    let consumer = one(&spans, "invoke consumer");
    assert_eq!(consumer["parent_span_id"], api["span_id"]);
    assert_eq!(consumer["kind"], "SPAN_KIND_CONSUMER");
    assert_eq!(consumer["attributes"]["berth.trigger"], "event");
    assert_eq!(
        consumer["attributes"]["messaging.destination.name"],
        "users.signed-up"
    );
    assert_eq!(consumer["attributes"]["berth.attempt"], 1);

    // A request without a traceparent starts a trace of its own; a cold
    // start's load is a step of it.
    wait_for_metric(&berth, "berth_service_loaded{service=\"idle\"}", 0.0).await;
    let reply = get(&berth, "/idle").await;
    assert_eq!(reply.status, 200);
    let id = reply.invocation();
    let own = receiver.span_of(&id);
    assert_ne!(own["trace_id"], TRACE);
    assert_eq!(own["parent_span_id"], "");
    assert_eq!(own["attributes"]["berth.cold"], true);
    let trace = own["trace_id"].as_str().unwrap();
    let spans_of_idle = receiver.wait_for_trace(trace, &["cold load", "run"]);
    assert_eq!(
        one(&spans_of_idle, "cold load")["parent_span_id"],
        own["span_id"]
    );
    // An invocation that waited for a slot has an admission step as long
    // as it waited.
    let first = spawn_get(&berth, "/one?ms=500");
    wait_for_metric(&berth, "berth_instances_in_flight{service=\"one\"}", 1.0).await;
    let second = get(&berth, "/one?ms=1").await;
    assert_eq!(second.status, 200);
    assert_eq!(first.await.unwrap().status, 200);
    let id = second.invocation();
    let waited = receiver.span_of(&id);
    let trace = waited["trace_id"].as_str().unwrap();
    let spans_of_one = receiver.wait_for_trace(trace, &["admission", "run"]);
    let admission = one(&spans_of_one, "admission");
    assert_eq!(admission["parent_span_id"], waited["span_id"]);
    let waited_ns = admission["end"].as_u64().unwrap() - admission["start"].as_u64().unwrap();
    assert!(waited_ns >= 200_000_000, "waited {waited_ns} ns");

    let metrics = berth.admin_get("/metrics").await.text();
    assert!(metric(&metrics, "berth_trace_spans_exported_total") >= spans.len() as f64);
    assert_eq!(
        metric(
            &metrics,
            "berth_trace_spans_dropped_total{reason=\"queue_full\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn traces_go_over_grpc_as_the_standard_variables_say_and_are_sampled_by_them() {
    let receiver = Receiver::start(&[]);
    let dir = manifest_dir(&service("hello", programs::HELLO, "/hello", ""));
    let mut cmd = Command::new(berth_bin());
    cmd.args(["up", "berth.toml", "--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(shared_cache())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_url())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_SERVICE_NAME", "edge-berth")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "0")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .current_dir(dir.path());
    let berth = Berth::start(cmd, Duration::from_secs(60), Some(dir), false);

    // A sampled parent: exported, as the parent decided.
    let req = http::Request::get("/hello")
        .header("host", berth.addr.to_string())
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(berth.addr, req).await.status, 200);
    let spans = receiver.wait_for_trace(TRACE, &["invoke hello", "run"]);
    let hello = one(&spans, "invoke hello");
    assert_eq!(hello["transport"], "grpc");
    assert_eq!(hello["resource"]["service.name"], "edge-berth");
    assert_eq!(hello["resource"]["deployment.environment"], "test");
    assert_eq!(hello["parent_span_id"], PARENT);

    // New traces, at ratio 0, and an unsampled parent: none exported.
    // The unsampled parent's flags pass on as they came.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let req = http::Request::get("/hello")
        .header("host", berth.addr.to_string())
        .header("traceparent", format!("00-{unsampled}-{PARENT}-00"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(berth.addr, req).await.status, 200);
    for _ in 0..20 {
        assert_eq!(get(&berth, "/hello").await.status, 200);
    }
    // One more sampled trace, sent last: once it is in, the others would
    // have been too.
    let last = "11111111111111111111111111111111";
    let req = http::Request::get("/hello")
        .header("host", berth.addr.to_string())
        .header("traceparent", format!("00-{last}-{PARENT}-01"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(berth.addr, req).await.status, 200);
    receiver.wait_for_trace(last, &["invoke hello"]);
    let traces: std::collections::BTreeSet<String> = receiver
        .spans()
        .iter()
        .map(|s| s["trace_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        traces,
        [TRACE.to_owned(), last.to_owned()].into_iter().collect(),
        "only the sampled traces are exported"
    );
}

/// Serves `n` hello requests, each answered 200.
async fn hellos(berth: &Berth, n: usize) {
    for i in 0..n {
        let reply = get(berth, &format!("/hello?{i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

/// Waits until `/metrics` shows spans dropped for `reason`.
async fn wait_for_drops(berth: &Berth, reason: &str) -> f64 {
    let sample = format!("berth_trace_spans_dropped_total{{reason=\"{reason}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dropped = metric(&berth.admin_get("/metrics").await.text(), &sample);
        if dropped > 0.0 {
            return dropped;
        }
        assert!(Instant::now() < deadline, "no spans dropped ({reason})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_dead_slow_or_failing_collector_never_holds_up_an_invocation() {
    let manifest = service("hello", programs::HELLO, "/hello", "");
    // Nothing listens: every export fails; one warning says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    for protocol in ["http/protobuf", "grpc"] {
        let berth = Berth::up_admin(
            &manifest,
            &[
                "--otlp-endpoint",
                &dead,
                "--otlp-protocol",
                protocol,
                "--trace-delay",
                "50",
                "--otlp-timeout",
                "500",
            ],
        );
        hellos(&berth, 200).await;
        assert!(wait_for_drops(&berth, "export_failed").await > 0.0);
        hellos(&berth, 50).await;
        let logs = berth.wait_for_logs(&["exporting traces failed"]);
        assert_eq!(
            logs.matches("exporting traces failed").count(),
            1,
            "warned at most once a minute ({protocol}):\n{logs}"
        );
    }

    // A collector that takes 5 s to answer each export: the queue fills
    // and spans are dropped, never waited for.
    let slow = Receiver::start(&["--delay", "5"]);
    let berth = Berth::up_admin(
        &manifest,
        &[
            "--otlp-endpoint",
            &slow.http_url(),
            "--trace-delay",
            "50",
            "--trace-queue",
            "64",
            "--trace-batch",
            "16",
        ],
    );
    hellos(&berth, 300).await;
    assert!(wait_for_drops(&berth, "queue_full").await > 0.0);

    // A collector that refuses every export (HTTP 503, gRPC UNAVAILABLE).
    let failing = Receiver::start(&["--fail"]);
    for (protocol, url) in [
        ("http/protobuf", failing.http_url()),
        ("grpc", failing.grpc_url()),
    ] {
        let berth = Berth::up_admin(
            &manifest,
            &[
                "--otlp-endpoint",
                &url,
                "--otlp-protocol",
                protocol,
                "--trace-delay",
                "50",
            ],
        );
        hellos(&berth, 100).await;
        assert!(
            wait_for_drops(&berth, "export_failed").await > 0.0,
            "{protocol}"
        );
        assert_eq!(
            metric(
                &berth.admin_get("/metrics").await.text(),
                "berth_trace_spans_exported_total"
            ),
            0.0
        );
    }
    // The refusals were received and decoded, over both transports.
    let seen: std::collections::BTreeSet<String> = failing
        .spans()
        .iter()
        .map(|s| s["transport"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn trace_settings_are_checked_only_when_traces_are_exported() {
    let dir = manifest_dir(&service("hello", programs::HELLO, "/hello", ""));
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(berth_bin());
        cmd.args(["up", "berth.toml", "--listen", "127.0.0.1:0", "--cache-dir"])
            .arg(shared_cache())
            .args(args)
            .current_dir(dir.path())
            .env_remove("RUST_BACKTRACE")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    // Without an endpoint, variables Berth cannot use are left alone.
    let odd = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
    ];
    let mut berth = Berth::start(run(&odd, &[]), Duration::from_secs(60), None, false);
    berth.kill9();
    // With one, an unusable setting stops the host at start, saying why.
    for (env, args, why) in [
        (
            &odd[..1],
            &["--otlp-endpoint", "http://127.0.0.1:4318"][..],
            "OTLP protocol \"http/json\" is not supported",
        ),
        (
            &[][..],
            &["--otlp-endpoint", "https://collector.example:4318"][..],
            "speaks plain HTTP only",
        ),
        (
            &odd[2..],
            &["--otlp-endpoint", "http://127.0.0.1:4318"][..],
            "trace sampler `jaeger_remote` is not known",
        ),
    ] {
        let mut child = run(env, args).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("berth {args:?} with {env:?} kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains(why), "{why:?} not in:\n{stderr}");
    }
}

/// `berth up` serving hello, exporting over gRPC to `endpoint` with the
/// system's roots in `roots` (as `SSL_CERT_FILE`).
fn tls_host(endpoint: &str, roots: &str) -> Berth {
    let dir = manifest_dir(&service("hello", programs::HELLO, "/hello", ""));
    let mut cmd = Command::new(berth_bin());
    cmd.args(["up", "berth.toml", "--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(shared_cache())
        .args(["--admin-listen", "127.0.0.1:0", "--otlp-endpoint", endpoint])
        .args(["--otlp-protocol", "grpc", "--trace-delay", "100"])
        .env("SSL_CERT_FILE", roots)
        .env("BERTH_TOKEN", crate::host::TOKEN)
        .current_dir(dir.path());
    Berth::start(cmd, Duration::from_secs(60), Some(dir), true)
}

#[tokio::test]
async fn traces_go_to_a_grpc_collector_over_tls_verified_against_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::tools::Pki::new(dir.path());
    let (cert, key, _) = pki.issue("localhost", "collector");
    let receiver = Receiver::start(&["--tls", &cert, &key]);
    let endpoint = format!("https://localhost:{}", receiver.grpc);
    // Trusted through the roots (SSL_CERT_FILE names them, as for any
    // program reading the system's roots): exported.
    let berth = tls_host(&endpoint, &pki.ca);
    let req = http::Request::get("/hello")
        .header("host", berth.addr.to_string())
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(berth.addr, req).await.status, 200);
    let spans = receiver.wait_for_trace(TRACE, &["invoke hello"]);
    assert_eq!(one(&spans, "invoke hello")["transport"], "grpc");
    drop(berth);

    // A certificate the host does not trust: nothing is exported, and the
    // failures are counted.
    let berth = tls_host(&endpoint, "/dev/null");
    let before = receiver.spans().len();
    hellos(&berth, 20).await;
    assert!(wait_for_drops(&berth, "export_failed").await > 0.0);
    assert_eq!(
        receiver.spans().len(),
        before,
        "a span reached an untrusted collector"
    );
}
