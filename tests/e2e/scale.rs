//! Serverless behaviour: scale to zero and cold starts, fairness between
//! services, the usage ledger, `/metrics`, and trace context.

use crate::support::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// One scrape of `/metrics`, checked line by line as Prometheus text.
struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses `text`, panicking at the first line that is not valid
    /// Prometheus text format (or breaks Berth's rules: `berth_` names).
    fn parse(text: &str) -> Scrape {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kind, name) = (parts.next().unwrap(), parts.next().expect(line));
                assert!(valid_name(name), "bad metric name: {line}");
                if kind == "TYPE" {
                    let ty = parts.next().expect(line);
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_owned(), ty.to_owned()).is_none(),
                        "TYPE given twice: {line}"
                    );
                } else {
                    assert_eq!(kind, "HELP", "{line}");
                }
                continue;
            }
            let (name, labels, rest) = match line.find('{') {
                Some(open) => {
                    let close = line.rfind('}').expect(line);
                    (
                        &line[..open],
                        parse_labels(&line[open + 1..close], line),
                        &line[close + 1..],
                    )
                }
                None => {
                    let space = line.find(' ').expect(line);
                    (&line[..space], BTreeMap::new(), &line[space..])
                }
            };
            assert!(valid_name(name), "bad metric name: {line}");
            assert!(name.starts_with("berth_"), "not a berth_ metric: {line}");
            let value = rest.trim().split(' ').next().expect(line);
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(
                types.contains_key(family),
                "sample before (or without) its TYPE: {line}"
            );
            samples.push((name.to_owned(), labels, value));
        }
        let scrape = Scrape { samples };
        scrape.check_histograms(&types);
        scrape
    }

    /// Buckets are cumulative and end with `+Inf`, equal to `_count`.
    fn check_histograms(&self, types: &HashMap<String, String>) {
        for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
            let bucket = format!("{family}_bucket");
            let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for (name, labels, value) in &self.samples {
                if *name == bucket {
                    let mut key = labels.clone();
                    let le = key.remove("le").expect("a bucket has `le`");
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    series.entry(key).or_default().push((le, *value));
                }
            }
            for (labels, buckets) in series {
                assert!(
                    buckets
                        .windows(2)
                        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                    "{family}{labels:?}: buckets not cumulative: {buckets:?}"
                );
                let (le, inf) = *buckets.last().unwrap();
                assert_eq!(le, f64::INFINITY, "{family}{labels:?} has no +Inf bucket");
                let pairs: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(
                    self.get(&format!("{family}_count"), &pairs),
                    Some(inf),
                    "{family}{labels:?}: +Inf bucket != count"
                );
            }
        }
    }

    /// The value of the sample `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    /// Like [`Scrape::get`], 0 when the sample is absent (a counter not
    /// yet incremented).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_labels(s: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest.find('=').expect(line);
        let name = &rest[..eq];
        assert!(valid_name(name), "bad label name in {line}");
        let mut value = String::new();
        let mut chars = rest[eq + 1..].char_indices();
        assert_eq!(chars.next().map(|c| c.1), Some('"'), "{line}");
        let end = loop {
            match chars.next().expect(line) {
                (_, '\\') => match chars.next().expect(line).1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c} in {line}"),
                },
                (i, '"') => break eq + 1 + i + 1,
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        rest = rest[end..].strip_prefix(',').unwrap_or(&rest[end..]);
    }
    labels
}

async fn scrape(berth: &Berth) -> Scrape {
    let reply = berth.admin_get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        reply.header("content-type")
    );
    Scrape::parse(&reply.text())
}

/// Usage records, once `n` of them are stored (they are committed just
/// after their invocation ends).
pub(crate) async fn records(berth: &Berth, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = berth.admin_get("/v1/usage/records?limit=100000").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let records: Vec<serde_json::Value> = serde_json::from_str(&reply.text()).unwrap();
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} usage records after 30s",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_idle_service_is_unloaded_and_its_cold_start_serves_and_is_counted() {
    let berth = Berth::up_admin(
        &[
            service(
                "idle",
                programs::HELLO,
                "/idle/...",
                "idle_timeout = \"1s\"",
            ),
            service("busy", programs::HELLO, "/busy/...", ""),
        ]
        .concat(),
        &[],
    );
    let loaded = |s: &Scrape, name: &str| s.get("berth_service_loaded", &[("service", name)]);
    assert_eq!(
        get(&berth, "/idle/a").await.text(),
        "hello from berth: /idle/a\n"
    );
    let before = scrape(&berth).await;
    assert_eq!(loaded(&before, "idle"), Some(1.0));
    let cold_before = before.count("berth_cold_starts_total", &[("service", "idle")]);

    // Idle for its idle_timeout: unloaded. The other service is not.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let s = scrape(&berth).await;
        if loaded(&s, "idle") == Some(0.0) {
            break s;
        }
        assert!(Instant::now() < deadline, "`idle` was never unloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(loaded(&after, "busy"), Some(1.0));

    // The next request loads it again from the code cache and is served.
    let reply = get(&berth, "/idle/again").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from berth: /idle/again\n");
    let line = berth.log_line("service=idle", "cold start");
    assert!(line.contains("code=cache hit"), "{line}");
    let s = scrape(&berth).await;
    assert_eq!(loaded(&s, "idle"), Some(1.0));
    assert_eq!(
        s.count("berth_cold_starts_total", &[("service", "idle")]),
        cold_before + 1.0
    );
    assert_eq!(
        s.count(
            "berth_cold_start_duration_seconds_count",
            &[("service", "idle")]
        ),
        cold_before + 1.0
    );
    assert!(s.count("berth_code_cache_total", &[("result", "hit")]) >= 1.0);

    // Its usage record says it was a cold start.
    let records = records(&berth, 2).await;
    let id = reply.invocation();
    let record = records
        .iter()
        .find(|r| r["invocation"] == id.as_str())
        .unwrap();
    assert_eq!(record["cold"], true, "{record:#}");
    assert!(records.iter().any(|r| r["cold"] == false));
}

/// What each kind of request must produce: (path, body, expected status(es),
/// expected outcome for each status).
#[tokio::test]
async fn the_ledger_has_exactly_one_record_per_invocation_under_concurrent_load() {
    let berth = Berth::up_admin(
        &[
            service("hello", programs::HELLO, "/hello", ""),
            service("panic", programs::PANIC, "/panic", ""),
            service("spin", programs::SPIN, "/spin", "fuel = 50_000_000"),
            service("alloc", programs::ALLOC, "/alloc", "memory = \"32MiB\""),
            service(
                "sleep",
                programs::SLEEP,
                "/sleep",
                "timeout = \"400ms\"\nconcurrency = 2\nqueue = 0",
            ),
            service(
                "echo",
                programs::ECHO,
                "/echo/...",
                "request_body = \"1KiB\"",
            ),
        ]
        .concat(),
        &[],
    );
    let payload = "x".repeat(100);
    let too_big = "y".repeat(4096);
    let mut requests: Vec<(&str, Option<String>)> = Vec::new();
    requests.extend((0..40).map(|_| ("/hello", None)));
    requests.extend((0..5).map(|_| ("/panic", None)));
    requests.extend((0..3).map(|_| ("/spin", None)));
    requests.extend((0..3).map(|_| ("/alloc", None)));
    requests.extend((0..6).map(|_| ("/sleep?ms=2000", None)));
    requests.extend((0..5).map(|_| ("/echo/buffered", Some(payload.clone()))));
    requests.extend((0..2).map(|_| ("/echo/buffered", Some(too_big.clone()))));

    let tasks: Vec<_> = requests
        .iter()
        .map(|(path, body)| {
            let addr = berth.addr;
            let req = http::Request::builder()
                .method(if body.is_some() { "POST" } else { "GET" })
                .uri(*path)
                .header("host", addr.to_string())
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.clone().unwrap_or_default(),
                )))
                .unwrap();
            tokio::spawn(send(addr, req))
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }

    let records = records(&berth, replies.len()).await;
    // Exactly one record per invocation: no more arrive later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = records_now(&berth).await;
    assert_eq!(again.len(), replies.len(), "records: {again:#?}");
    let by_id: HashMap<&str, &serde_json::Value> = records
        .iter()
        .map(|r| (r["invocation"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_id.len(), records.len(), "duplicate invocation ids");
    let ids: HashSet<String> = replies.iter().map(|r| r.invocation()).collect();
    assert_eq!(ids.len(), replies.len());
    assert_eq!(
        ids,
        by_id.keys().map(|k| k.to_string()).collect::<HashSet<_>>()
    );

    let mut seen: HashMap<String, usize> = HashMap::new();
    for ((path, body), reply) in requests.iter().zip(&replies) {
        let r = by_id[reply.invocation().as_str()];
        let outcome = r["outcome"].as_str().unwrap();
        let service = path
            .trim_start_matches('/')
            .split(['/', '?'])
            .next()
            .unwrap();
        assert_eq!(r["service"], service, "{r:#}");
        assert_eq!(r["trigger"], "http");
        assert_eq!(r["status"], reply.status, "{r:#}");
        let expected = match (service, reply.status) {
            ("hello" | "echo", 200) => "ok",
            ("panic", 500) => "trap",
            ("spin", 500) => "fuel",
            ("alloc", 500) => "memory",
            ("sleep", 504) => "deadline",
            ("sleep", 503) | ("echo", 413) => "rejected",
            other => panic!("unexpected reply {other:?}: {}", reply.text()),
        };
        assert_eq!(outcome, expected, "{r:#}");
        *seen.entry(outcome.to_owned()).or_default() += 1;
        let fuel = r["fuel"].as_u64().unwrap();
        let memory = r["peak_memory"].as_u64().unwrap();
        let wall = r["wall_us"].as_u64().unwrap();
        if outcome == "rejected" {
            assert_eq!((fuel, memory), (0, 0), "{r:#}");
            continue;
        }
        // Plausible: the guest ran (fuel), has at least one 64 KiB page,
        // stayed under its cap.
        assert!(fuel > 1000, "{r:#}");
        assert!(memory >= 65536, "{r:#}");
        assert!(wall > 0, "{r:#}");
        match outcome {
            "fuel" => assert!(fuel >= 50_000_000, "{r:#}"),
            "memory" => assert!(memory > 16 << 20 && memory <= 32 << 20, "{r:#}"),
            "deadline" => assert!(wall >= 400_000, "{r:#}"),
            _ => assert!(memory < 16 << 20, "{r:#}"),
        }
        if service == "echo" {
            assert_eq!(
                r["bytes_in"].as_u64(),
                Some(body.as_ref().unwrap().len() as u64)
            );
            assert_eq!(r["bytes_out"].as_u64(), Some(reply.text().len() as u64));
        }
        if service == "hello" {
            assert_eq!(r["bytes_out"].as_u64(), Some(reply.text().len() as u64));
        }
    }
    for outcome in ["ok", "trap", "fuel", "memory", "deadline", "rejected"] {
        assert!(seen.contains_key(outcome), "no {outcome} among {seen:?}");
    }

    // The totals agree, per service, and so do the metrics.
    let reply = berth.admin_get("/v1/usage").await;
    let report: serde_json::Value = serde_json::from_str(&reply.text()).unwrap();
    assert_eq!(report["total"]["invocations"], replies.len());
    assert_eq!(report["total"]["rejected"], seen["rejected"]);
    assert_eq!(report["total"]["ok"], seen["ok"]);
    let fuel: u64 = records.iter().map(|r| r["fuel"].as_u64().unwrap()).sum();
    assert_eq!(report["total"]["fuel"], fuel);
    assert!(report["total"]["gb_seconds"].as_f64().unwrap() > 0.0);
    let s = scrape(&berth).await;
    let metered: f64 = s
        .samples
        .iter()
        .filter(|(n, _, _)| n == "berth_invocations_total")
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(metered, replies.len() as f64);
    assert_eq!(
        s.count(
            "berth_invocations_total",
            &[
                ("service", "sleep"),
                ("trigger", "http"),
                ("outcome", "rejected")
            ]
        ),
        replies.iter().filter(|r| r.status == 503).count() as f64
    );
}

/// `berth usage --json ARGS`, parsed.
fn usage(host: &crate::host::Host, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["usage", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&host.cli_ok(&all)).unwrap()
}

async fn records_now(berth: &Berth) -> Vec<serde_json::Value> {
    let reply = berth.admin_get("/v1/usage/records?limit=100000").await;
    serde_json::from_str(&reply.text()).unwrap()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_invocations_and_events() {
    let berth = Berth::up_admin(
        &format!(
            "{}\n[service.consumer]\ncomponent = {:?}\n[[service.consumer.subscriptions]]\ntopic = \"jobs.*\"\n",
            service("hello", programs::HELLO, "/hello", ""),
            programs::EVENTS_CONSUMER
        ),
        &[],
    );
    let before = scrape(&berth).await;
    let ok = [("service", "hello"), ("trigger", "http"), ("outcome", "ok")];
    let latency = [("service", "hello"), ("trigger", "http")];
    for _ in 0..3 {
        assert_eq!(get(&berth, "/hello").await.status, 200);
    }
    // An event, handled by the consumer.
    let req = http::Request::post("/v1/events/jobs.run")
        .header("host", "admin")
        .header("authorization", format!("Bearer {}", crate::host::TOKEN))
        .header("ce-specversion", "1.0")
        .header("ce-id", "job-1")
        .header("ce-type", "job")
        .header("ce-source", "/test")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"payload",
        )))
        .unwrap();
    assert_eq!(send(berth.admin.unwrap(), req).await.status, 202);
    berth.wait_for_logs(&["handled jobs.run job-1"]);

    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = scrape(&berth).await;
        let events = [
            ("service", "consumer"),
            ("trigger", "event"),
            ("outcome", "ok"),
        ];
        if s.count("berth_invocations_total", &events) >= 1.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "the event was never metered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        after.count("berth_invocations_total", &ok) - before.count("berth_invocations_total", &ok),
        3.0
    );
    assert_eq!(
        after.count("berth_invocation_duration_seconds_count", &latency)
            - before.count("berth_invocation_duration_seconds_count", &latency),
        3.0
    );
    assert!(after.count("berth_invocation_duration_seconds_sum", &latency) > 0.0);
    assert_eq!(
        after.count("berth_invocation_fuel_count", &[("service", "hello")]),
        3.0
    );
    for gauge in [
        "berth_instances_in_flight",
        "berth_queue_depth",
        "berth_service_loaded",
    ] {
        assert!(
            after.get(gauge, &[("service", "hello")]).is_some(),
            "{gauge} missing"
        );
    }
    assert!(after.get("berth_host_instances_max", &[]).unwrap() > 0.0);
    assert!(
        after.count(
            "berth_invocation_queue_seconds_count",
            &[("service", "hello")]
        ) >= 3.0
    );
    assert!(after.get("berth_ledger_pending_records", &[]).is_some());
    assert!(after.get("berth_resident_memory_bytes", &[]).unwrap() > 0.0);
    let queue = [("service", "consumer"), ("subscription", "consumer:jobs.*")];
    assert_eq!(after.get("berth_event_queue_depth", &queue), Some(0.0));
    assert_eq!(after.get("berth_event_dead_letters", &queue), Some(0.0));
}

#[tokio::test]
async fn a_cpu_bound_service_at_its_limit_does_not_starve_another() {
    // Eight guests that burn CPU until their deadline, on two cores...
    let berth = Berth::up_admin(
        &[
            service(
                "spin",
                programs::SPIN,
                "/spin",
                "timeout = \"20s\"\nfuel = 1_000_000_000_000_000\nconcurrency = 8",
            ),
            service("hello", programs::HELLO, "/hello", ""),
        ]
        .concat(),
        &[],
    );
    let spinners: Vec<_> = (0..8).map(|_| spawn_get(&berth, "/spin")).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(&berth).await;
        if s.get("berth_instances_in_flight", &[("service", "spin")]) == Some(8.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the spinners never all ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and meanwhile another service serves every one of its requests,
    // all of them while the spinners are still running.
    for i in 0..100 {
        let reply = get(&berth, &format!("/hello?{i}")).await;
        assert_eq!(reply.status, 200);
    }
    assert!(
        spinners.iter().all(|s| !s.is_finished()),
        "the spinners ended before hello was served"
    );
    assert_eq!(
        scrape(&berth)
            .await
            .get("berth_instances_in_flight", &[("service", "spin")]),
        Some(8.0)
    );
}

#[tokio::test]
async fn traceparent_is_continued_into_the_span_and_the_events_a_guest_publishes() {
    let berth = Berth::up_admin(
        &format!(
            "[service.api]\ncomponent = {:?}\nroute = \"/api/...\"\npublish = [\"users.>\"]\n\n[service.consumer]\ncomponent = {:?}\n[[service.consumer.subscriptions]]\ntopic = \"users.*\"\n",
            programs::EVENTS_API,
            programs::EVENTS_CONSUMER
        ),
        &[],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = http::Request::post("/api/signup")
        .header("host", berth.addr.to_string())
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"name":"ada"}"#,
        )))
        .unwrap();
    let reply = send(berth.addr, req).await;
    assert_eq!(reply.status, 202);
    let id = reply.invocation();
    let line = berth.log_line(&id, "berth::invocation");
    assert!(line.contains(&format!("trace_id={trace}")), "{line}");
    assert!(line.contains("route=/api/..."), "{line}");
    assert!(line.contains("status=202"), "{line}");
    assert!(line.contains("outcome=\"ok\""), "{line}");
    assert!(line.contains("fuel="), "{line}");
    assert!(line.contains("duration_ms="), "{line}");

    // The event it published carries the trace on, to the consumer.
    let event: serde_json::Value = serde_json::from_str(&reply.text()).unwrap();
    let event = event["event"].as_str().unwrap();
    let handled = berth.log_line(event, "trigger=\"event\"");
    assert!(handled.contains(&format!("trace_id={trace}")), "{handled}");

    // A malformed traceparent is ignored: a new trace.
    let req = http::Request::get("/api/other")
        .header("host", berth.addr.to_string())
        .header("traceparent", "00-not-a-trace-01")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = send(berth.addr, req).await;
    let line = berth.log_line(&reply.invocation(), "berth::invocation");
    assert!(line.contains("trace_id="), "{line}");
    assert!(!line.contains(trace), "{line}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_invocation_span() {
    let berth = Berth::up_admin(
        &service("hello", programs::HELLO, "/hello", ""),
        &["--log-format", "json"],
    );
    let reply = get(&berth, "/hello").await;
    assert_eq!(reply.status, 200);
    let id = reply.invocation();
    let line = berth.log_line(&id, "finished");
    let value: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(value["level"], "INFO");
    assert_eq!(value["target"], "berth::invocation");
    let span = &value["span"];
    assert_eq!(span["name"], "invocation");
    assert_eq!(span["service"], "hello");
    assert_eq!(span["invocation"], id.as_str());
    assert_eq!(span["trigger"], "http");
    assert_eq!(span["status"], 200);
    assert_eq!(span["outcome"], "ok");
    assert!(span["fuel"].as_u64().unwrap() > 0, "{span:#}");
    assert!(span["duration_ms"].as_f64().unwrap() > 0.0, "{span:#}");
    assert_eq!(span["trace_id"].as_str().unwrap().len(), 32);
    // Every line is JSON, the host's own included.
    for line in berth.logs().lines().filter(|l| !l.starts_with("berth: ")) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

#[tokio::test]
async fn berth_usage_reports_totals_and_records_and_they_survive_restarts_and_crashes() {
    let mut host = crate::host::Host::start(&[]);
    host.cli_ok(&[
        "deploy",
        "hello",
        "--component",
        programs::HELLO,
        "--route",
        "/hello",
        "--idle-timeout",
        "10m",
    ]);
    let inspect = host.cli_ok(&["inspect", "hello"]);
    assert!(inspect.contains("idle timeout: 10m (loaded)"), "{inspect}");
    host.deploy("panic", programs::PANIC, "/panic");
    for _ in 0..4 {
        assert_eq!(get(&host.berth, "/hello").await.status, 200);
    }
    assert_eq!(get(&host.berth, "/panic").await.status, 500);

    let deadline = Instant::now() + Duration::from_secs(30);
    while usage(&host, &[])["total"]["invocations"] != 5 {
        assert!(Instant::now() < deadline, "{:#}", usage(&host, &[]));
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = usage(&host, &[]);
    assert_eq!(report["total"]["ok"], 4);
    assert_eq!(report["total"]["failed"], 1);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["service"], "hello");
    assert_eq!(rows[0]["invocations"], 4);
    assert!(rows[0]["gb_seconds"].as_f64().unwrap() > 0.0);
    assert!(rows[0]["cpu_ms"].as_f64().unwrap() > 0.0);
    assert!(rows[0]["wall_ms"].as_f64().unwrap() >= rows[0]["cpu_ms"].as_f64().unwrap() * 0.5);

    let hello = usage(
        &host,
        &["--service", "hello", "--since", "1h", "--by", "hour"],
    );
    let rows = hello["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{hello:#}");
    assert!(rows[0]["period"].as_str().unwrap().ends_with(":00:00.000Z"));
    assert_eq!(rows[0]["invocations"], 4);
    assert_eq!(
        usage(&host, &["--until", "2000-01-01"])["total"]["invocations"],
        0
    );

    // The table, for people.
    let table = host.cli_ok(&["usage", "--by", "day"]);
    assert!(table.starts_with("SERVICE  PERIOD"), "{table}");
    assert!(table.contains("TOTAL"), "{table}");
    let records = host.cli_ok(&["usage", "--records", "--service", "panic"]);
    assert_eq!(records.lines().count(), 2, "{records}");
    assert!(records.contains(" trap "), "{records}");

    // Bad input is refused with the reason.
    let out = host.cli(&["usage", "--by", "week"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use hour or day"));
    let reply = host
        .api(
            "GET",
            "/v1/usage?since=yesterday",
            "",
            Some(crate::host::TOKEN),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("invalid time"), "{}", reply.text());

    // Durable: a clean restart keeps every record, and so does a crash
    // once a record is committed (visible).
    host.restart();
    assert_eq!(usage(&host, &[])["total"]["invocations"], 5);
    assert_eq!(usage(&host, &[])["total"]["cold_starts"], 0);
    assert_eq!(get(&host.berth, "/hello").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while usage(&host, &[])["total"]["invocations"] != 6 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    host.berth.kill9();
    host.start_again();
    let report = usage(&host, &[]);
    assert_eq!(report["total"]["invocations"], 6);
    // Services are restored unloaded: the first request after each start
    // was a cold start.
    assert_eq!(get(&host.berth, "/hello").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while usage(&host, &[])["total"]["cold_starts"] != 2 {
        assert!(Instant::now() < deadline, "{:#}", usage(&host, &[]));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn an_invocation_whose_client_goes_away_still_has_its_record() {
    let berth = Berth::up_admin(
        &service("sleep", programs::SLEEP, "/sleep", "timeout = \"1s\""),
        &[],
    );
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(berth.addr).await.unwrap();
        stream
            .write_all(b"GET /sleep HTTP/1.1\r\nhost: berth\r\n\r\n")
            .await
            .unwrap();
        // Wait until the invocation is running, then hang up.
        berth.wait_for_logs(&["trigger=\"http\""]);
    }
    let records = records(&berth, 1).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    // 504 if the host noticed only when it answered, 499 if it noticed
    // the hang-up first.
    let status = records[0]["status"].as_u64().unwrap();
    assert!([499, 504].contains(&status), "{:#}", records[0]);
    assert_eq!(records[0]["outcome"], "deadline", "{:#}", records[0]);
}
