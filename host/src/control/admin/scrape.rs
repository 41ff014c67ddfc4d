//! `GET /metrics`: the runtime's counters and histograms, with the gauges
//! read at scrape time — instances, queues, loaded services, revisions,
//! the host's slots and memory, and the event queues.

use crate::control::ControlPlane;
use crate::runtime::Runtime;
use crate::runtime::metrics::{Gauge, label};
use crate::runtime::registry::Service;
use crate::triggers::events::bus::SubscriptionStats;

/// The metrics, with the gauges read now.
pub(super) async fn scrape(control: &ControlPlane) -> String {
    let runtime = control.runtime();
    let mut gauges = service_gauges(&runtime.registry().services());
    gauges.extend(host_gauges(runtime));
    match control.bus().stats().await {
        Ok(stats) => gauges.extend(event_gauges(&stats)),
        Err(e) => tracing::warn!(error = %e, "reading the event queues for /metrics failed"),
    }
    if let Some(ledger) = control.ledger() {
        gauges.push((
            "berth_ledger_pending_records",
            "Usage records queued and not yet committed to the ledger: how far it lags.",
            String::new(),
            ledger.pending() as f64,
        ));
    }
    let mut text = runtime.metrics().render(&gauges);
    render_output(&mut text, control);
    match control.node_label() {
        Some(node) => with_node(&text, node),
        None => text,
    }
}

/// What was dropped of guests' output and of the services' kept lines,
/// and the followers of the logs.
fn render_output(out: &mut String, control: &ControlPlane) {
    use std::fmt::Write;
    let dropped = control.runtime().ports().output.dropped();
    out.push_str(
        "# HELP berth_guest_output_dropped_bytes_total Guest output dropped, by service and why: past an invocation's --guest-output-limit, or past the service's --guest-output-rate.\n\
         # TYPE berth_guest_output_dropped_bytes_total counter\n",
    );
    for (service, cut, rate) in &dropped {
        let service = label(service.as_str());
        let _ = writeln!(
            out,
            "berth_guest_output_dropped_bytes_total{{service=\"{service}\",reason=\"invocation_limit\"}} {cut}\n\
             berth_guest_output_dropped_bytes_total{{service=\"{service}\",reason=\"rate\"}} {rate}"
        );
    }
    let Some(logs) = control.logs() else { return };
    out.push_str(
        "# HELP berth_log_lines_dropped_total Lines pushed out of a service's kept log lines (--service-log-size) to make room.\n\
         # TYPE berth_log_lines_dropped_total counter\n",
    );
    for (service, dropped) in logs.dropped() {
        let _ = writeln!(
            out,
            "berth_log_lines_dropped_total{{service=\"{}\"}} {dropped}",
            label(&service)
        );
    }
    let _ = writeln!(
        out,
        "# HELP berth_log_followers Clients following the logs now.\n# TYPE berth_log_followers gauge\nberth_log_followers {}",
        logs.followers()
    );
}

/// `text` with `node="NAME"` on every sample: a cluster node's metrics say
/// which node they are of.
fn with_node(text: &str, node: &str) -> String {
    let label = format!("node=\"{}\"", label(node));
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else if let Some(i) = line.find('{') {
            out.push_str(&line[..=i]);
            out.push_str(&label);
            if !line[i + 1..].starts_with('}') {
                out.push(',');
            }
            out.push_str(&line[i + 1..]);
        } else if let Some((name, value)) = line.split_once(' ') {
            out.push_str(&format!("{name}{{{label}}} {value}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// A gauge family read from each service: name, help, value.
type ServiceFamily = (&'static str, &'static str, fn(&Service) -> f64);

/// Per service: instances in flight, queue depth, loaded, revision.
fn service_gauges(services: &[std::sync::Arc<Service>]) -> Vec<Gauge> {
    let families: [ServiceFamily; 4] = [
        (
            "berth_instances_in_flight",
            "Instances of the service running now.",
            |s| s.admission.in_flight(s.limits().concurrency) as f64,
        ),
        (
            "berth_queue_depth",
            "Invocations of the service waiting for a slot.",
            |s| s.admission.queued() as f64,
        ),
        (
            "berth_service_loaded",
            "Whether the service's component is in memory (1) or unloaded while idle (0).",
            |s| if s.is_loaded() { 1.0 } else { 0.0 },
        ),
        (
            "berth_service_revision",
            "The revision the service runs.",
            |s| s.revision as f64,
        ),
    ];
    let mut gauges = Vec::with_capacity(families.len() * services.len());
    for (name, help, value) in families {
        for s in services {
            let labels = format!("service=\"{}\"", label(s.name().as_str()));
            gauges.push((name, help, labels, value(s)));
        }
    }
    gauges
}

/// Host-wide: instances in flight and the most there may be, services,
/// resident memory.
fn host_gauges(runtime: &Runtime) -> Vec<Gauge> {
    let max = runtime.engine().max_instances() as f64;
    let mut gauges: Vec<Gauge> = vec![
        (
            "berth_host_instances_in_flight",
            "Instances running now, all services.",
            String::new(),
            max - runtime.host_slots().available_permits() as f64,
        ),
        (
            "berth_host_instances_max",
            "Instances that may run at once, all services (the pooling allocator's slots).",
            String::new(),
            max,
        ),
        (
            "berth_services",
            "Services deployed.",
            String::new(),
            runtime.registry().services().len() as f64,
        ),
    ];
    if let Some(rss) = resident_memory() {
        gauges.push((
            "berth_resident_memory_bytes",
            "The host process's resident memory.",
            String::new(),
            rss as f64,
        ));
    }
    let memory = runtime.engine().memory();
    gauges.push((
        "berth_guest_memory_bytes",
        "Linear memory the host's instances hold now, all services.",
        String::new(),
        memory.used() as f64,
    ));
    if memory.limit() != usize::MAX {
        gauges.push((
            "berth_guest_memory_budget_bytes",
            "Linear memory the host's instances may hold together (--guest-memory).",
            String::new(),
            memory.limit() as f64,
        ));
    }
    gauges
}

/// A gauge family read from subscription stats: name, help, value.
type StatFamily = (&'static str, &'static str, fn(&SubscriptionStats) -> f64);

/// Per subscription: depth, in flight, retrying, dead letters, lag.
fn event_gauges(stats: &[SubscriptionStats]) -> Vec<Gauge> {
    let families: [StatFamily; 5] = [
        (
            "berth_event_queue_depth",
            "Deliveries waiting, retries included.",
            |s| s.depth as f64,
        ),
        (
            "berth_event_in_flight",
            "Deliveries being handled now.",
            |s| s.in_flight as f64,
        ),
        (
            "berth_event_retrying",
            "Deliveries waiting for a retry.",
            |s| s.retrying as f64,
        ),
        ("berth_event_dead_letters", "Dead letters kept.", |s| {
            s.dead_letters as f64
        }),
        (
            "berth_event_lag_seconds",
            "How long the most overdue waiting delivery has been due (0: none is).",
            |s| s.lag_ms as f64 / 1000.0,
        ),
    ];
    let mut gauges = Vec::new();
    for (name, help, value) in families {
        for s in stats {
            let labels = format!(
                "service=\"{}\",subscription=\"{}\"",
                label(&s.service),
                label(&s.subscription)
            );
            gauges.push((name, help, labels, value(s)));
        }
    }
    gauges
}

/// This process's resident set size, from `/proc/self/statm`.
fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_sample_gets_the_node_label() {
        let text = "# HELP a A.\n# TYPE a counter\na 1\nb{service=\"x\"} 2\n";
        assert_eq!(
            super::with_node(text, "n1"),
            "# HELP a A.\n# TYPE a counter\na{node=\"n1\"} 1\nb{node=\"n1\",service=\"x\"} 2\n"
        );
    }
}
