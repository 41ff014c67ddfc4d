//! The console's pages, written with `maud` (every value escaped).

use super::charts::{self, Line};
use super::{Visitor, html};
use crate::control::ControlPlane;
use crate::control::admin::api::{DeadLetterView, NodeView, RevisionView, ServiceView};
use crate::runtime::logs::{LogFilter, LogLine};
use crate::runtime::metrics::Counts;
use crate::runtime::traffic::Summary;
use crate::values::id::InvocationId;
use crate::values::service::{ServiceConfig, ServiceName};
use crate::values::units::{now_ms, rfc3339};
use crate::values::usage::{Period, Query, Record};
use axum::response::Response;
use http::StatusCode;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Seconds between a page's refreshes.
const REFRESH_SECS: u32 = 5;

/// The limits the services page shows (a service's page shows all).
const SHOWN_LIMITS: &[&str] = &["memory", "timeout", "fuel", "concurrency"];

/// Log lines a service's page shows.
const SERVICE_LOG_LINES: usize = 50;

/// Dead letters the events page lists.
const DEAD_LETTERS_SHOWN: usize = 200;

const CSS: &str = r#"
:root { --fg: #1d2330; --muted: #647087; --line: #dde2ea; --accent: #1f5fbf; --bad: #b42318; --good: #067647; --warn: #b54708; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: #f6f7f9; }
header { background: #17202f; color: #fff; }
header nav { display: flex; gap: 4px; align-items: center; padding: 0 16px; flex-wrap: wrap; }
header a { color: #c9d3e3; text-decoration: none; padding: 12px 10px; display: inline-block; }
header a.active, header a:hover { color: #fff; background: #26324a; }
header .brand { font-weight: 700; color: #fff; margin-right: 12px; }
header form { margin: 0 0 0 auto; display: flex; gap: 6px; }
form.find input { padding: 6px 8px; width: 320px; font: inherit; }
main { padding: 16px 24px 32px; max-width: 1400px; }
h1 { font-size: 22px; margin: 8px 0 16px; }
h2 { font-size: 17px; margin: 24px 0 8px; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
pre.logs { background: #101623; color: #dbe4f3; padding: 10px; overflow-x: auto; max-height: 480px; }
pre.logs a { color: #84caff; }
pre.logs .warn { color: #fdb022; } pre.logs .error { color: #f97066; } pre.logs .debug { color: #98a2b3; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 10px; font-size: 12px; background: #e4e7ec; margin: 1px 2px 1px 0; }
.badge.serving, .badge.ok, .badge.ready { background: #d1fadf; color: var(--good); }
.badge.failed, .badge.bad { background: #fee4e2; color: var(--bad); }
.badge.converging, .badge.warn { background: #fef0c7; color: var(--warn); }
.muted { color: var(--muted); }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin-bottom: 8px; }
.kv { display: inline-block; white-space: nowrap; margin-right: 8px; }
.card { background: #fff; border: 1px solid var(--line); padding: 10px 14px; min-width: 130px; }
.card b { display: block; font-size: 20px; }
.charts { display: flex; gap: 12px; flex-wrap: wrap; }
.charts svg { background: #fff; border: 1px solid var(--line); max-width: 100%; height: auto; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; background: #fff; border: 1px solid var(--line); padding: 10px 14px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; }
form.inline { display: inline; }
button { font: inherit; padding: 4px 10px; border: 1px solid #98a2b3; background: #fff; border-radius: 4px; cursor: pointer; }
button.danger { border-color: var(--bad); color: var(--bad); }
.notice { background: #d1fadf; border: 1px solid #6ce9a6; padding: 8px 12px; margin-bottom: 12px; }
.error { background: #fee4e2; border: 1px solid #fda29b; padding: 8px 12px; margin-bottom: 12px; }
.login { max-width: 380px; margin: 12vh auto; background: #fff; border: 1px solid var(--line); padding: 24px; }
.login input { width: 100%; padding: 8px; margin: 8px 0 12px; font: inherit; }
footer { color: var(--muted); padding: 0 24px 24px; font-size: 12px; }
"#;

/// Which section a page is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Services,
    Usage,
    Events,
    Nodes,
    Invocation,
}

/// A page of the console, answered with `status`: its navigation, its
/// title and `body`; it refreshes itself when `refresh`.
fn layout(
    status: StatusCode,
    control: &ControlPlane,
    visitor: &Visitor,
    section: Section,
    title: &str,
    refresh: bool,
    body: Markup,
) -> Response {
    let link = |href: &'static str, name: &'static str, of: Section| {
        html! { a href=(href) class=[(section == of).then_some("active")] { (name) } }
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh {
                    meta http-equiv="refresh" content=(REFRESH_SECS);
                }
                title { (title) " · Berth console" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    nav {
                        a.brand href="/console" { "Berth" }
                        (link("/console", "Services", Section::Services))
                        (link("/console/usage", "Usage", Section::Usage))
                        (link("/console/events", "Events", Section::Events))
                        (link("/console/nodes", "Nodes", Section::Nodes))
                        (link("/console/invocations", "Invocations", Section::Invocation))
                        @if let Visitor::Session { .. } = visitor {
                            form method="post" action="/console/logout" {
                                input type="hidden" name="csrf" value=(visitor.csrf());
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                footer {
                    "Node " (control.node_name()) " · " (rfc3339(now_ms()))
                    @if refresh { " · refreshes every " (REFRESH_SECS) " s" }
                }
            }
        }
    };
    html(status, page)
}

/// The sign-in page.
pub(super) fn login(error: Option<&str>, next: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Sign in · Berth console" }
                style { (PreEscaped(CSS)) }
            }
            body {
                form.login method="post" action="/console/login" {
                    h1 { "Berth console" }
                    @if let Some(error) = error {
                        p.error role="alert" { (error) }
                    }
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    input type="hidden" name="next" value=(next);
                    button type="submit" { "Sign in" }
                    p.muted { "The token the admin API takes (" code { "--admin-token" } ", " code { "BERTH_TOKEN" } ")." }
                }
            }
        }
    }
}

/// A bare page saying why a request was refused.
pub(super) fn message(status: StatusCode, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (status) } style { (PreEscaped(CSS)) } }
            body { main { h1 { (status) } p { (text) } p { a href="/console" { "Back to the console" } } } }
        }
    }
}

/// A page of the console saying something is not there.
pub(super) fn not_found(control: &ControlPlane, visitor: &Visitor, text: &str) -> Response {
    let body = html! { p.error { (text) } };
    layout(
        StatusCode::NOT_FOUND,
        control,
        visitor,
        Section::Services,
        "Not found",
        false,
        body,
    )
}

/// A page that could not be made: what failed.
fn failed(control: &ControlPlane, visitor: &Visitor, section: Section, what: &str) -> Response {
    let body = html! { p.error { (what) } };
    layout(
        StatusCode::SERVICE_UNAVAILABLE,
        control,
        visitor,
        section,
        "Unavailable",
        true,
        body,
    )
}

fn ms(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) => format!("{:.1} ms", s * 1000.0),
        None => "–".into(),
    }
}

fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

/// Every service's counters now, by name.
fn counts(control: &ControlPlane) -> HashMap<String, Counts> {
    control.runtime().metrics().counts().into_iter().collect()
}

/// A service's last-minute figures.
fn summary(
    control: &ControlPlane,
    counts: &HashMap<String, Counts>,
    name: &str,
) -> Option<Summary> {
    control.traffic().summary(name, counts.get(name)?, now_ms())
}

/// The status badges of a service: one per node in a cluster.
fn badges(view: &ServiceView) -> Markup {
    html! {
        @if view.nodes.is_empty() {
            span.badge.(view.status) title=[view.error.as_deref()] { (view.status) }
        } @else {
            @for node in &view.nodes {
                span.badge.(node.status) title=[node.error.as_deref()] {
                    (node.node) ": " (node.status)
                    @if let Some(r) = node.revision { " r" (r) }
                }
            }
        }
    }
}

/// A value as short JSON text.
fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The fields of a serializable value, as (name, short text).
fn fields(value: &impl serde::Serialize) -> Vec<(String, String)> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => {
            map.iter().map(|(k, v)| (k.clone(), compact(v))).collect()
        }
        _ => Vec::new(),
    }
}

/// What a service's guest is given beyond its routes and limits: its
/// capabilities and triggers (secrets by name only).
fn capabilities(config: &ServiceConfig) -> Vec<(String, String)> {
    let mut all = fields(config);
    all.retain(|(name, _)| name != "routes" && name != "limits");
    all
}

/// `GET /console`: every service.
pub(super) async fn services(control: &ControlPlane, visitor: &Visitor) -> Response {
    let all = match control.services().await {
        Ok(all) => all,
        Err(e) => return failed(control, visitor, Section::Services, &e.to_string()),
    };
    let counts = counts(control);
    let views: Vec<ServiceView> = all.iter().map(ServiceView::from).collect();
    let body = html! {
        @if views.is_empty() {
            p.muted { "No services are deployed. " code { "berth deploy" } " one, or start with " code { "berth up" } "." }
        } @else {
            table {
                thead {
                    tr {
                        th { "Service" } th { "Revision" } th { "Status" } th { "Routes" }
                        th.num title="Instances running / requests waiting" { "Now" }
                        th.num title="Invocations per second, last minute" { "Req/s" }
                        th.num title="Share not ok, last minute" { "Errors" }
                        th.num title="Execution time, last minute" { "p50" }
                        th.num { "p99" }
                        th.num title="Share of cold starts, last minute" { "Cold" }
                        th { "Limits" } th { "Capabilities" }
                    }
                }
                tbody {
                    @for view in &views {
                        @let figures = summary(control, &counts, &view.name);
                        tr {
                            td { a href={ "/console/services/" (view.name) } { (view.name) } }
                            td {
                                "r" (view.revision)
                                @if view.latest_revision != view.revision {
                                    span.muted { " (latest r" (view.latest_revision) ")" }
                                }
                            }
                            td { (badges(view)) }
                            td {
                                @for route in &view.config.routes { code { (route) } br; }
                            }
                            td.num {
                                (view.in_flight) " / " (view.queued)
                                br;
                                span.muted { @if view.loaded { "loaded" } @else { "scaled to zero" } }
                            }
                            @match &figures {
                                Some(f) => {
                                    td.num { (charts::short(f.rate)) }
                                    td.num { (percent(f.error_ratio)) }
                                    td.num { (ms(f.p50)) }
                                    td.num { (ms(f.p99)) }
                                    td.num { (percent(f.cold_ratio)) }
                                }
                                None => {
                                    td.num.muted { "0" } td.num.muted { "–" } td.num.muted { "–" } td.num.muted { "–" } td.num.muted { "–" }
                                }
                            }
                            td {
                                @for (name, value) in fields(&view.config.limits) {
                                    @if SHOWN_LIMITS.contains(&name.as_str()) {
                                        span.kv { span.muted { (name) } " " (value) } " "
                                    }
                                }
                            }
                            td {
                                @let granted = capabilities(&view.config);
                                @if granted.is_empty() {
                                    span.muted { "none (deny by default)" }
                                }
                                @for (name, value) in granted {
                                    span.muted { (name) } " " code { (value) } br;
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(
        StatusCode::OK,
        control,
        visitor,
        Section::Services,
        "Services",
        true,
        body,
    )
}

/// A log line as the console shows it.
fn log_line(line: &LogLine) -> Markup {
    let level = format!("{:?}", line.level).to_ascii_lowercase();
    html! {
        span class=(level) {
            (rfc3339(line.time_ms as i64)) " " (line.node) " " (line.stream) " "
            @if let Some(id) = &line.invocation {
                a href={ "/console/invocations/" (id) } { (id) } " "
            }
            (line.text)
        }
        "\n"
    }
}

/// `GET /console/services/{name}`.
pub(super) async fn service(control: &ControlPlane, visitor: &Visitor, name: &str) -> Response {
    let Ok(service_name) = ServiceName::parse(name) else {
        return not_found(
            control,
            visitor,
            &format!("{name:?} is not a service name."),
        );
    };
    let status = match control.service(service_name.clone()).await {
        Ok(status) => status,
        Err(crate::control::ControlError::NotFound(_)) => {
            return not_found(control, visitor, &format!("There is no service {name}."));
        }
        Err(e) => return failed(control, visitor, Section::Services, &e.to_string()),
    };
    let view = ServiceView::from(&status);
    let revisions: Vec<RevisionView> = match control.revisions(service_name).await {
        Ok((active, all)) => all
            .iter()
            .rev()
            .map(|r| RevisionView::new(r, r.number == active))
            .collect(),
        Err(_) => Vec::new(),
    };
    let counts = counts(control);
    let figures = summary(control, &counts, name);
    let now = now_ms();
    let [rate, latency] = charts::traffic(&control.traffic().points(name), now);
    let lines = control.logs().map(|book| {
        book.query(
            &LogFilter {
                service: Some(name.to_owned()),
                ..LogFilter::default()
            },
            Some(SERVICE_LOG_LINES),
        )
    });
    let body = html! {
        p {
            (badges(&view)) " revision " b { (view.revision) } " of " (view.latest_revision)
            " · artifact " code { (view.artifact) }
            " · updated " (view.updated_at)
        }
        @if let Some(error) = &view.error { p.error { (error) } }
        div.cards {
            div.card { span.muted { "Running / waiting" } b { (view.in_flight) " / " (view.queued) } }
            div.card { span.muted { "Code" } b { @if view.loaded { "loaded" } @else { "scaled to zero" } } }
            @if let Some(f) = figures {
                div.card { span.muted { "Req/s (1 min)" } b { (charts::short(f.rate)) } }
                div.card { span.muted { "Errors" } b { (percent(f.error_ratio)) } }
                div.card { span.muted { "p50 / p99" } b { (ms(f.p50)) " / " (ms(f.p99)) } }
                div.card { span.muted { "Cold starts" } b { (percent(f.cold_ratio)) } }
            }
        }
        h2 { "Traffic, last hour" }
        div.charts {
            @for chart in [rate, latency].into_iter().flatten() { (PreEscaped(chart)) }
        }
        @if !view.nodes.is_empty() {
            h2 { "Nodes" }
            table {
                thead { tr { th { "Node" } th { "Revision" } th { "Status" } th { "Error" } } }
                tbody {
                    @for node in &view.nodes {
                        tr {
                            td { (node.node) }
                            td { @if let Some(r) = node.revision { "r" (r) } @else { "–" } }
                            td { span.badge.(node.status) { (node.status) } }
                            td { (node.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        h2 { "Routes" }
        @if view.config.routes.is_empty() {
            p.muted { "No HTTP routes: invoked by events, schedules or calls only." }
        } @else {
            p { @for route in &view.config.routes { code { (route) } " " } }
        }
        h2 { "Limits" }
        dl { @for (name, value) in fields(&view.config.limits) { dt { (name) } dd { (value) } } }
        h2 { "Capabilities and triggers" }
        @let granted = capabilities(&view.config);
        @if granted.is_empty() {
            p.muted { "None: no files, environment, outbound network or topics (deny by default)." }
        } @else {
            dl { @for (name, value) in granted { dt { (name) } dd { code { (value) } } } }
        }
        h2 { "Revisions" }
        table {
            thead { tr { th { "Revision" } th { "Artifact" } th { "Created" } th { "" } } }
            tbody {
                @for r in &revisions {
                    tr {
                        td { "r" (r.revision) }
                        td { code { (r.artifact) } }
                        td { (r.created_at) }
                        td { @if r.active { span.badge.serving { "active" } } }
                    }
                }
            }
        }
        h2 { "Recent log lines" }
        @match &lines {
            None => p.muted { "This host keeps no log lines (" code { "--service-log-size 0" } ")." },
            Some(lines) if lines.is_empty() => p.muted { "None yet." },
            Some(lines) => pre.logs { @for line in lines { (log_line(line)) } },
        }
    };
    layout(
        StatusCode::OK,
        control,
        visitor,
        Section::Services,
        &format!("Service {name}"),
        true,
        body,
    )
}

const DAY_MS: i64 = 86_400_000;

/// Reads the ledger off the async threads; an error says what failed.
async fn read_ledger<T: Send + 'static>(
    ledger: Arc<crate::control::ledger::Ledger>,
    read: impl FnOnce(&crate::control::ledger::Ledger) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(move || read(&ledger)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("reading the ledger failed: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `GET /console/usage`: per service and day, the last `days` days.
pub(super) async fn usage(control: &ControlPlane, visitor: &Visitor, days: u32) -> Response {
    let Some(ledger) = control.ledger().cloned() else {
        let body = html! { p.muted { "This host keeps no usage ledger." } };
        return layout(
            StatusCode::OK,
            control,
            visitor,
            Section::Usage,
            "Usage",
            false,
            body,
        );
    };
    let first_day = (now_ms() / DAY_MS - (days as i64 - 1)) * DAY_MS;
    let query = Query {
        since_ms: Some(first_day),
        by: Some(Period::Day),
        ..Query::default()
    };
    let totals = Query {
        since_ms: Some(first_day),
        ..Query::default()
    };
    let read = read_ledger(ledger, move |ledger| {
        Ok((ledger.report(&query)?, ledger.report(&totals)?))
    });
    let (by_day, totals) = match read.await {
        Ok(reports) => reports,
        Err(e) => return failed(control, visitor, Section::Usage, &e),
    };
    let day_of: HashMap<String, f64> = (0..days as i64)
        .map(|d| (rfc3339(first_day + d * DAY_MS), d as f64))
        .collect();
    let label = move |d: &f64| {
        let day = rfc3339(first_day + d.round() as i64 * DAY_MS);
        day.get(5..10).unwrap_or(&day).to_owned()
    };
    // Per service, a value per day (zero for days without any).
    let per_service = |value: &dyn Fn(&crate::values::usage::Totals) -> f64| -> Vec<Line> {
        let mut lines: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for row in &by_day.rows {
            let (Some(service), Some(period)) = (&row.service, &row.period) else {
                continue;
            };
            let Some(day) = day_of.get(period) else {
                continue;
            };
            let points = lines
                .entry(service.as_str())
                .or_insert_with(|| (0..days).map(|d| (d as f64, 0.0)).collect());
            points[*day as usize].1 = value(row);
        }
        lines
            .into_iter()
            .map(|(name, points)| Line {
                name: name.to_owned(),
                points,
            })
            .collect()
    };
    let x = 0.0..(days.max(2) - 1) as f64;
    let charts = [
        charts::lines(
            "Invocations per day",
            "invocations",
            x.clone(),
            &label,
            &per_service(&|t| t.invocations as f64),
        ),
        charts::lines(
            "GB-seconds per day",
            "GB-s",
            x.clone(),
            &label,
            &per_service(&|t| t.gb_seconds),
        ),
        charts::lines(
            "CPU time per day",
            "CPU ms",
            x,
            &label,
            &per_service(&|t| t.cpu_ms),
        ),
    ];
    let body = html! {
        p.muted {
            "From the usage ledger, since " (rfc3339(first_day)) " (UTC days). "
            @for d in [1u32, 7, 14, 30, 90] {
                a href={ "/console/usage?days=" (d) } { (d) " d" } " "
            }
        }
        @if totals.rows.is_empty() {
            p.muted { "No invocations in this period." }
        }
        div.charts { @for chart in charts.into_iter().flatten() { (PreEscaped(chart)) } }
        h2 { "Totals" }
        table {
            thead {
                tr {
                    th { "Service" } th.num { "Invocations" } th.num { "Ok" } th.num { "Failed" } th.num { "Rejected" }
                    th.num { "Cold" } th.num { "GB-s" } th.num { "CPU ms" } th.num { "Wall ms" } th.num { "Bytes in" } th.num { "Bytes out" }
                }
            }
            tbody {
                @for row in totals.rows.iter().chain(std::iter::once(&totals.total)) {
                    tr {
                        td { @match &row.service { Some(s) => a href={ "/console/services/" (s) } { (s) }, None => b { "All" } } }
                        td.num { (row.invocations) } td.num { (row.ok) } td.num { (row.failed) } td.num { (row.rejected) }
                        td.num { (row.cold_starts) } td.num { (format!("{:.4}", row.gb_seconds)) } td.num { (format!("{:.1}", row.cpu_ms)) }
                        td.num { (format!("{:.1}", row.wall_ms)) } td.num { (row.bytes_in) } td.num { (row.bytes_out) }
                    }
                }
            }
        }
    };
    layout(
        StatusCode::OK,
        control,
        visitor,
        Section::Usage,
        "Usage",
        true,
        body,
    )
}

/// `GET /console/events`: queues, topics and dead letters.
pub(super) async fn events(
    control: &ControlPlane,
    visitor: &Visitor,
    done: Option<&str>,
) -> Response {
    let bus = control.bus();
    let read = async {
        Ok::<_, crate::triggers::events::bus::BusError>((
            bus.stats().await?,
            bus.topics().await?,
            bus.dead_letters(None).await?,
        ))
    };
    let (subscriptions, topics, dead) = match read.await {
        Ok(all) => all,
        Err(e) => return failed(control, visitor, Section::Events, &e.to_string()),
    };
    let dead_count = dead.len();
    let dead: Vec<DeadLetterView> = dead
        .iter()
        .take(DEAD_LETTERS_SHOWN)
        .map(DeadLetterView::from)
        .collect();
    let csrf = visitor.csrf();
    let body = html! {
        @if let Some(done) = done { p.notice role="status" { "Done: " (done) "." } }
        h2 { "Subscriptions" }
        @if subscriptions.is_empty() {
            p.muted { "No service subscribes to a topic." }
        } @else {
            table {
                thead { tr { th { "Subscription" } th { "Service" } th { "Topic" } th.num { "Waiting" } th.num { "In flight" } th.num { "Retrying" } th.num { "Dead letters" } th.num title="How long the most overdue waiting delivery has been due" { "Lag" } th { "" } } }
                tbody {
                    @for s in &subscriptions {
                        tr {
                            td { code { (s.subscription) } }
                            td { a href={ "/console/services/" (s.service) } { (s.service) } }
                            td { code { (s.topic) } }
                            td.num { (s.depth) } td.num { (s.in_flight) } td.num { (s.retrying) }
                            td.num { @if s.dead_letters > 0 { span.badge.bad { (s.dead_letters) } } @else { "0" } }
                            td.num { (format!("{:.1} s", s.lag_ms as f64 / 1000.0)) }
                            td { @if !s.active { span.badge.warn title="No service holds it now; its backlog is kept" { "inactive" } } }
                        }
                    }
                }
            }
        }
        h2 { "Topics" }
        @if topics.is_empty() {
            p.muted { "Nothing published yet." }
        } @else {
            table {
                thead { tr { th { "Topic" } th.num { "Published" } th.num { "Unrouted" } } }
                tbody { @for t in &topics { tr { td { code { (t.topic) } } td.num { (t.published) } td.num { (t.unrouted) } } } }
            }
        }
        h2 { "Dead letters (" (dead_count) ")" }
        @if dead.is_empty() {
            p.muted { "None." }
        } @else {
            p {
                form.inline method="post" action="/console/events/replay" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="all" value="1";
                    button type="submit" { "Replay all" }
                }
                " "
                form.inline method="post" action="/console/events/purge" {
                    input type="hidden" name="csrf" value=(csrf);
                    button.danger type="submit" { "Purge all" }
                }
                @if dead_count > dead.len() { span.muted { " The oldest " (dead.len()) " are listed." } }
            }
            table {
                thead { tr { th { "Event" } th { "Topic" } th { "Subscription" } th.num { "Attempts" } th { "Last error" } th { "Dead since" } th { "" } } }
                tbody {
                    @for d in &dead {
                        @let id = d.event.get("id").and_then(|v| v.as_str()).unwrap_or("");
                        tr {
                            td { code { (id) } }
                            td { code { (d.topic) } }
                            td { code { (d.subscription) } }
                            td.num { (d.attempts) }
                            td { (d.error) }
                            td { (d.dead_at) }
                            td {
                                form.inline method="post" action="/console/events/replay" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    input type="hidden" name="id" value=(id);
                                    button type="submit" { "Replay" }
                                }
                                " "
                                form.inline method="post" action="/console/events/purge" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    input type="hidden" name="topic" value=(d.topic);
                                    button.danger type="submit" title="Purge this topic's dead letters" { "Purge topic" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(
        StatusCode::OK,
        control,
        visitor,
        Section::Events,
        "Events",
        true,
        body,
    )
}

/// `GET /console/nodes`.
pub(super) async fn nodes(control: &ControlPlane, visitor: &Visitor) -> Response {
    let nodes: Vec<NodeView> = match control.nodes().await {
        Ok(all) => all.iter().map(NodeView::from).collect(),
        Err(e) => return failed(control, visitor, Section::Nodes, &e.to_string()),
    };
    let body = html! {
        table {
            thead {
                tr {
                    th { "Node" } th { "Ready" } th { "Public" } th { "Admin" } th { "Version" } th { "Up since" }
                    th.num { "Services" } th.num { "Loaded" } th.num { "Failed" } th.num { "In flight" } th { "Last heartbeat" }
                }
            }
            tbody {
                @for n in &nodes {
                    tr {
                        td { b { (n.name) } }
                        td {
                            @if n.ready { span.badge.ready { "ready" } }
                            @else { span.badge.warn title=[n.unready.as_deref()] { "not ready" } }
                        }
                        td { code { (n.public.as_deref().unwrap_or("–")) } }
                        td { code { (n.admin.as_deref().unwrap_or("–")) } }
                        td { (n.version) }
                        td { (n.started_at) }
                        td.num { (n.services) } td.num { (n.services_loaded) }
                        td.num { @if n.services_failed > 0 { span.badge.bad { (n.services_failed) } } @else { "0" } }
                        td.num { (n.in_flight) }
                        td { (n.last_heartbeat) }
                    }
                }
            }
        }
    };
    layout(
        StatusCode::OK,
        control,
        visitor,
        Section::Nodes,
        "Nodes",
        true,
        body,
    )
}

/// `GET /console/invocations`: the form that finds one (a page that does
/// not refresh itself, so that nothing typed is lost).
pub(super) fn find_invocation(control: &ControlPlane, visitor: &Visitor) -> Response {
    let body = html! {
        form.find method="get" action="/console/invocations" {
            input type="search" name="id" placeholder="01M8X5HT5RX2QFHCMZB1N47E2V" aria-label="Invocation id" required autofocus;
            " "
            button type="submit" { "Find" }
        }
        p.muted {
            "An invocation's id is in its response's " code { "berth-invocation-id" } " header, its log lines and its usage record."
        }
    };
    layout(
        StatusCode::OK,
        control,
        visitor,
        Section::Invocation,
        "Find an invocation",
        false,
        body,
    )
}

/// `GET /console/invocations/{id}`: its usage record and its log lines.
pub(super) async fn invocation(control: &ControlPlane, visitor: &Visitor, id: &str) -> Response {
    let Ok(parsed) = id.parse::<InvocationId>() else {
        return not_found(
            control,
            visitor,
            &format!(
                "{id:?} is not an invocation id (a ULID, as the berth-invocation-id header and the logs show)."
            ),
        );
    };
    let record: Option<Record> = match control.ledger().cloned() {
        Some(ledger) => match read_ledger(ledger, move |l| l.invocation(&parsed)).await {
            Ok(record) => record,
            Err(e) => return failed(control, visitor, Section::Invocation, &e),
        },
        None => None,
    };
    let lines: Vec<Arc<LogLine>> = control
        .logs()
        .map(|book| {
            book.query(
                &LogFilter {
                    invocation: Some(parsed.to_string()),
                    ..LogFilter::default()
                },
                None,
            )
        })
        .unwrap_or_default();
    if record.is_none() && lines.is_empty() {
        return not_found(
            control,
            visitor,
            &format!(
                "No record or log line of invocation {parsed} is kept here (records are written within a second of its end)."
            ),
        );
    }
    let body = html! {
        h2 { "Record" }
        @match &record {
            None => p.muted { "Not in the usage ledger (yet, or not kept)." },
            Some(r) => dl {
                dt { "Service" } dd { a href={ "/console/services/" (r.service) } { (r.service) } " r" (r.revision) }
                dt { "Trigger" } dd { (r.trigger) }
                dt { "Outcome" } dd { span.badge.(if r.outcome == crate::values::usage::OutcomeKind::Ok { "ok" } else { "bad" }) { (r.outcome) } }
                dt { "Status" } dd { @if let Some(s) = r.status { (s) } @else { "–" } }
                dt { "Started" } dd { (rfc3339(r.started_ms)) }
                dt { "Execution" } dd { (format!("{:.3} ms", r.wall_us as f64 / 1000.0)) }
                dt { "Waited for admission" } dd { (format!("{:.3} ms", r.queue_us as f64 / 1000.0)) }
                dt { "Cold start" } dd { @if r.cold { "yes, loaded in " (format!("{:.3} ms", r.load_us as f64 / 1000.0)) } @else { "no" } }
                dt { "CPU" } dd { (format!("{:.3} ms", r.cpu_us as f64 / 1000.0)) }
                dt { "Fuel" } dd { (r.fuel) }
                dt { "Peak memory" } dd { (r.peak_memory) " bytes" }
                dt { "Bytes in / out" } dd { (r.bytes_in) " / " (r.bytes_out) }
                @if let Some(instance) = &r.instance { dt { "Instance" } dd { code { (instance) } } }
            },
        }
        h2 { "Log lines" }
        @if lines.is_empty() {
            p.muted { "None kept." }
        } @else {
            pre.logs { @for line in &lines { (log_line(line)) } }
        }
    };
    layout(
        StatusCode::OK,
        control,
        visitor,
        Section::Invocation,
        &format!("Invocation {parsed}"),
        false,
        body,
    )
}
