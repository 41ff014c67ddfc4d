//! The admin API's endpoints (routed by [`super::router`]).

use super::api::{
    ArtifactView, CountView, CreateKeyRequest, CreatedKeyView, DeadLetterView, DeployRequest,
    EventsView, KeyView, NodeView, PublishedEvent, PublishedView, ReplayRequest, RevisionView,
    RollbackRequest, ServiceView,
};
use super::{
    ApiError, ApiResult, Param, json, query_param, read_json, read_json_or_default, read_limited,
};
use crate::control::cluster::logs::{Gathered, Remote, RemoteMarks};
use crate::control::ledger::Ledger;
use crate::control::{ControlError, ControlPlane};
use crate::runtime::logs::{Level, LogFilter, LogLine};
use crate::triggers::events::bus::{BusError, Replay};
use crate::triggers::http::body::{BoxError, ResponseBody};
use crate::values::digest::Digest;
use crate::values::key::KeyName;
use crate::values::service::ServiceName;
use crate::values::topic::Topic;
use crate::values::units::{parse_duration, parse_time};
use crate::values::usage::{Period, Query};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use std::sync::Arc;

/// The admin API's state: the control plane.
type Control = State<Arc<ControlPlane>>;

/// Records listed when no `limit` is given, and the most one page holds.
const DEFAULT_RECORDS: usize = 1000;
const MAX_RECORDS: usize = 100_000;

pub(super) async fn list_artifacts(State(control): Control) -> ApiResult {
    let all = control.artifacts().await?;
    json(
        StatusCode::OK,
        &all.iter().map(ArtifactView::from).collect::<Vec<_>>(),
    )
}

pub(super) async fn upload(State(control): Control, headers: HeaderMap, body: Body) -> ApiResult {
    let limit = control.max_upload();
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit.bytes()) {
        return Err(ControlError::TooLarge(limit).into());
    }
    let body = read_limited(body, limit.bytes() as usize, Some(limit), "the upload").await?;
    let (record, created) = control.upload(body.to_vec()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, &ArtifactView::from(&record))
}

pub(super) async fn artifact(State(control): Control, Param(digest): Param) -> ApiResult {
    let digest: Digest = digest
        .parse()
        .map_err(|e: crate::values::digest::InvalidDigest| ApiError::bad_request(e.to_string()))?;
    let all = control.artifacts().await?;
    let found = all
        .iter()
        .find(|a| a.digest == digest)
        .ok_or_else(|| ApiError::not_found(format!("artifact {digest} is not uploaded")))?;
    json(StatusCode::OK, &ArtifactView::from(found))
}

pub(super) async fn nodes(State(control): Control) -> ApiResult {
    let all = control.nodes().await?;
    json(
        StatusCode::OK,
        &all.iter().map(NodeView::from).collect::<Vec<_>>(),
    )
}

pub(super) async fn list_keys(State(control): Control) -> ApiResult {
    let all = control.keys().await?;
    json(
        StatusCode::OK,
        &all.iter().map(KeyView::from).collect::<Vec<_>>(),
    )
}

pub(super) async fn create_key(State(control): Control, body: Body) -> ApiResult {
    let req: CreateKeyRequest = read_json(body).await?;
    let name: KeyName = req
        .name
        .parse()
        .map_err(|e: crate::values::key::InvalidKeyName| ApiError::bad_request(e.to_string()))?;
    let services = req
        .services
        .iter()
        .map(|s| ServiceName::parse(s).map_err(|e| ApiError::bad_request(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let valid_for = req
        .expires_in
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("expires_in: {e}")))?;
    if valid_for.is_some_and(|d| d.is_zero()) {
        return Err(ApiError::bad_request("expires_in: must be more than 0"));
    }
    let (record, key) = control.create_key(name, services, valid_for).await?;
    json(
        StatusCode::CREATED,
        &CreatedKeyView {
            key,
            view: KeyView::from(&record),
        },
    )
}

pub(super) async fn revoke_key(State(control): Control, Param(name): Param) -> ApiResult {
    let name: KeyName = name
        .parse()
        .map_err(|e: crate::values::key::InvalidKeyName| ApiError::not_found(e.to_string()))?;
    let record = control.revoke_key(&name).await?;
    json(StatusCode::OK, &KeyView::from(&record))
}

pub(super) async fn list_services(State(control): Control) -> ApiResult {
    let all = control.services().await?;
    json(
        StatusCode::OK,
        &all.iter().map(ServiceView::from).collect::<Vec<_>>(),
    )
}

pub(super) async fn service(State(control): Control, Param(name): Param) -> ApiResult {
    let status = control.service(service_name(&name)?).await?;
    json(StatusCode::OK, &ServiceView::from(&status))
}

pub(super) async fn deploy(State(control): Control, Param(name): Param, body: Body) -> ApiResult {
    let name = service_name(&name)?;
    let request: DeployRequest = read_json(body).await?;
    let artifact =
        request
            .artifact
            .parse()
            .map_err(|e: crate::values::digest::InvalidDigest| {
                ApiError::bad_request(format!("artifact: {e}"))
            })?;
    let record = control
        .deploy(name, artifact, request.into_config())
        .await?;
    // Revision 1 is a new service.
    let status = if record.number == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, &RevisionView::new(&record, true))
}

pub(super) async fn remove(State(control): Control, Param(name): Param) -> ApiResult {
    control.remove(service_name(&name)?).await?;
    let mut response = Response::new(ResponseBody::Full(None));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

pub(super) async fn revisions(State(control): Control, Param(name): Param) -> ApiResult {
    let (active, revisions) = control.revisions(service_name(&name)?).await?;
    let views: Vec<_> = revisions
        .iter()
        .map(|r| RevisionView::new(r, r.number == active))
        .collect();
    json(StatusCode::OK, &views)
}

pub(super) async fn rollback(State(control): Control, Param(name): Param, body: Body) -> ApiResult {
    let name = service_name(&name)?;
    let request: RollbackRequest = read_json_or_default(body).await?;
    let record = control.rollback(name, request.to).await?;
    json(StatusCode::OK, &RevisionView::new(&record, true))
}

pub(super) async fn events(State(control): Control) -> ApiResult {
    let bus = control.bus();
    let view = EventsView {
        subscriptions: bus.stats().await.map_err(bus_error)?,
        topics: bus.topics().await.map_err(bus_error)?,
    };
    json(StatusCode::OK, &view)
}

pub(super) async fn dead_letters(State(control): Control, RawQuery(query): RawQuery) -> ApiResult {
    let topic = query_param(query.as_deref(), "topic");
    let dead = control
        .bus()
        .dead_letters(topic.as_deref())
        .await
        .map_err(bus_error)?;
    json(
        StatusCode::OK,
        &dead.iter().map(DeadLetterView::from).collect::<Vec<_>>(),
    )
}

pub(super) async fn purge(State(control): Control, RawQuery(query): RawQuery) -> ApiResult {
    let topic = query_param(query.as_deref(), "topic");
    let count = control
        .bus()
        .purge(topic.as_deref())
        .await
        .map_err(bus_error)?;
    json(StatusCode::OK, &CountView { count })
}

pub(super) async fn replay(State(control): Control, body: Body) -> ApiResult {
    let request: ReplayRequest = read_json(body).await?;
    let which = match (request.id, request.all) {
        (Some(id), false) => Replay::Id(id),
        (None, true) => Replay::All,
        _ => {
            return Err(ApiError::bad_request(
                "give either an `id` or `\"all\": true`",
            ));
        }
    };
    let by_id = matches!(which, Replay::Id(_));
    let count = control.bus().replay(which).await.map_err(bus_error)?;
    if by_id && count == 0 {
        return Err(ApiError::not_found("no dead letter has that event id"));
    }
    json(StatusCode::OK, &CountView { count })
}

pub(super) async fn publish(
    State(control): Control,
    Param(topic): Param,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    publish_on(&control, &topic, &headers, body).await
}

/// `POST /v1/events/dead`: publishing on the topic `dead`.
pub(super) async fn publish_on_dead(
    State(control): Control,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    publish_on(&control, "dead", &headers, body).await
}

async fn publish_on(
    control: &ControlPlane,
    topic: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let topic = Topic::parse(topic).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let batch = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/cloudevents-batch+json")
        });
    let max_event = control.max_event_size();
    // A batch may hold many events, each within the limit.
    let limit = if batch {
        (max_event.bytes() * 64).min(32 << 20)
    } else {
        // Binary mode: the body is the data; headers are bounded by hyper.
        max_event.bytes() + 4096
    };
    let body = read_limited(body, limit as usize, Some(max_event), "the events").await?;
    let events = crate::triggers::events::cloudevents::from_request(&topic, headers, body)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ids: Vec<String> = events.iter().map(|e| e.attributes.id.clone()).collect();
    let counts = control.publish(events).await?;
    let view = PublishedView {
        published: ids
            .into_iter()
            .zip(counts)
            .map(|(id, deliveries)| PublishedEvent { id, deliveries })
            .collect(),
    };
    json(StatusCode::ACCEPTED, &view)
}

pub(super) async fn usage(State(control): Control, RawQuery(query): RawQuery) -> ApiResult {
    let (ledger, query) = usage_query(&control, query.as_deref())?;
    let report = ledger.report(&query).map_err(storage_error)?;
    json(StatusCode::OK, &report)
}

pub(super) async fn usage_records(State(control): Control, RawQuery(raw): RawQuery) -> ApiResult {
    let (ledger, query) = usage_query(&control, raw.as_deref())?;
    let limit = match query_param(raw.as_deref(), "limit") {
        None => DEFAULT_RECORDS,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_RECORDS).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid limit {n:?}: a number from 1 to {MAX_RECORDS}"
                ))
            })?,
    };
    let records = ledger.records(&query, limit).map_err(storage_error)?;
    json(StatusCode::OK, &records)
}

pub(super) async fn metrics(State(control): Control) -> ApiResult {
    let text = super::scrape::scrape(&control).await;
    let mut response = Response::new(ResponseBody::full(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// The ledger and the query of a `/v1/usage` request.
fn usage_query(
    control: &ControlPlane,
    raw: Option<&str>,
) -> Result<(Arc<Ledger>, Query), ApiError> {
    let ledger = control
        .ledger()
        .cloned()
        .ok_or_else(|| ApiError::not_found("this host keeps no usage ledger"))?;
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        query_param(raw, name)
            .map(|t| parse_time(&t).map_err(|e| ApiError::bad_request(format!("`{name}`: {e}"))))
            .transpose()
    };
    let query = Query {
        service: query_param(raw, "service"),
        since_ms: time("since")?,
        until_ms: time("until")?,
        by: query_param(raw, "by")
            .map(|b| {
                b.parse::<Period>()
                    .map_err(|e| ApiError::bad_request(format!("`by`: {e}")))
            })
            .transpose()?,
    };
    Ok((ledger, query))
}

fn service_name(s: &str) -> Result<ServiceName, ApiError> {
    ServiceName::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn storage_error(e: rusqlite::Error) -> ApiError {
    ApiError::from(ControlError::Storage(e.to_string()))
}

fn bus_error(e: BusError) -> ApiError {
    ApiError::from(ControlError::from(e))
}

/// Most lines one answer gives before it follows.
const MAX_LINES: usize = 100_000;

/// How often a quiet follow stream sends a blank line, so that a client
/// gone is noticed (and its stream dropped).
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /v1/logs`: the lines the host keeps (a service's, or every
/// service's), one JSON object per line; with `follow=1`, then every new
/// one as it comes, until the client goes or the host shuts down.
pub(super) async fn logs(State(control): Control, RawQuery(raw): RawQuery) -> ApiResult {
    let book = control
        .logs()
        .cloned()
        .ok_or_else(|| ApiError::not_found("this host keeps no logs"))?;
    let raw = raw.as_deref();
    let filter = LogFilter {
        service: query_param(raw, "service"),
        since_ms: query_param(raw, "since")
            .map(|t| {
                parse_time(&t)
                    .map(|ms| ms.max(0) as u64)
                    .map_err(|e| ApiError::bad_request(format!("`since`: {e}")))
            })
            .transpose()?,
        invocation: query_param(raw, "invocation"),
        level: query_param(raw, "level")
            .map(|l| {
                Level::parse(&l).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`level`: {l:?} is not one of debug, info, warn, error"
                    ))
                })
            })
            .transpose()?,
    };
    let tail = query_param(raw, "tail")
        .map(|n| {
            n.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("`tail`: {n:?} is not a number")))
        })
        .transpose()?;
    let follow = matches!(
        query_param(raw, "follow").as_deref(),
        Some("1" | "true" | "yes")
    );
    // A follower listens before reading what is kept: no line falls in
    // between (one in both is sent once).
    if let Some(service) = &filter.service
        && !book.knows(service)
        && service
            .parse::<ServiceName>()
            .ok()
            .and_then(|name| control.runtime().registry().service(&name))
            .is_none()
    {
        return Err(ApiError::not_found(format!(
            "there is no service `{service}`"
        )));
    }
    let live = follow.then(|| book.follow());
    let cluster = control.cluster_logs();
    let remote_live = match cluster {
        Some(cluster) if follow => Some(cluster.follow().await),
        _ => None,
    };
    // Without a tail, at most MAX_LINES (the newest).
    let limit = tail.unwrap_or(MAX_LINES).min(MAX_LINES);
    let (kept, marks) = book.snapshot(&filter, Some(limit));
    let gathered = match cluster {
        Some(cluster) => {
            let others = control
                .nodes()
                .await
                .map(|nodes| {
                    nodes
                        .into_iter()
                        .map(|n| n.name)
                        .filter(|n| n != control.node_name())
                        .collect()
                })
                .unwrap_or_default();
            cluster.gather(&filter, limit, follow, others).await
        }
        None => Gathered::default(),
    };
    let text = merge(&kept, &gathered, limit);
    let body = match live {
        None => ResponseBody::full(text),
        Some((live, closed)) => ResponseBody::Boxed(follow_body(
            text,
            live,
            closed,
            filter,
            marks,
            remote_live.map(|r| (r, gathered.marks)),
        )),
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// This node's lines and the other nodes', by time, the newest `limit`
/// of them, as NDJSON; then which nodes did not answer, if any did not.
fn merge(kept: &[Arc<LogLine>], gathered: &Gathered, limit: usize) -> Vec<u8> {
    let mut all: Vec<(u64, Bytes)> = Vec::with_capacity(kept.len() + gathered.lines.len());
    for line in kept {
        let mut json = Vec::with_capacity(192);
        ndjson(&mut json, &**line);
        all.push((line.time_ms, Bytes::from(json)));
    }
    for line in &gathered.lines {
        let mut json = Vec::with_capacity(line.json.len() + 1);
        json.extend_from_slice(&line.json);
        json.push(b'\n');
        all.push((line.time_ms, Bytes::from(json)));
    }
    // Stable: each node's lines keep their order within a millisecond.
    all.sort_by_key(|(time, _)| *time);
    let skip = all.len().saturating_sub(limit);
    let mut text = Vec::with_capacity(all.iter().skip(skip).map(|(_, j)| j.len()).sum());
    for (_, json) in all.into_iter().skip(skip) {
        text.extend_from_slice(&json);
    }
    if !gathered.missing.is_empty() {
        ndjson(
            &mut text,
            &serde_json::json!({ "unanswered": gathered.missing }),
        );
    }
    text
}

/// Appends `value` as one line of JSON.
fn ndjson(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}

/// A follower's body: `first`, then each new line `filter` wants (past
/// its service's mark in `marks`: the lines `first` was read from), a
/// blank line after [`KEEPALIVE`] without one sent, and `{"skipped":N}`
/// when it fell behind; it ends when the host closes the book.
fn follow_body(
    first: Vec<u8>,
    live: tokio::sync::broadcast::Receiver<Arc<LogLine>>,
    closed: tokio_util::sync::CancellationToken,
    filter: LogFilter,
    marks: std::collections::HashMap<Arc<str>, u64>,
    remote: Option<(tokio::sync::broadcast::Receiver<Arc<Remote>>, RemoteMarks)>,
) -> http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError> {
    use futures_util::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    let first = futures_util::stream::once(std::future::ready(Ok::<_, BoxError>(
        http_body::Frame::data(Bytes::from(first)),
    )));
    let rest = futures_util::stream::unfold(
        (live, closed, filter, marks, remote),
        move |(mut live, closed, filter, marks, mut remote)| async move {
            // Lines the filter skips do not count as sent.
            let quiet = tokio::time::Instant::now() + KEEPALIVE;
            loop {
                let from_others = async {
                    match &mut remote {
                        Some((others, _)) => others.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let next = tokio::select! {
                    () = closed.cancelled() => return None,
                    other = from_others => match other {
                        Ok(other) => {
                            let out = match &*other {
                                Remote::Line(line) => {
                                    let answered = remote
                                        .as_ref()
                                        .is_some_and(|(_, marks)| line.answered(marks));
                                    if answered || !line.wanted_by(&filter) {
                                        continue;
                                    }
                                    let mut out = Vec::with_capacity(line.json.len() + 1);
                                    out.extend_from_slice(&line.json);
                                    out.push(b'\n');
                                    out
                                }
                                Remote::Skipped { node, count } => {
                                    let mut out = Vec::new();
                                    ndjson(&mut out, &serde_json::json!({"skipped": count, "node": node}));
                                    out
                                }
                            };
                            return Some((
                                Ok(http_body::Frame::data(Bytes::from(out))),
                                (live, closed, filter, marks, remote),
                            ));
                        }
                        Err(RecvError::Lagged(n)) => {
                            return Some((
                                Ok(http_body::Frame::data(Bytes::from(format!("{{\"skipped\":{n}}}\n")))),
                                (live, closed, filter, marks, remote),
                            ));
                        }
                        Err(RecvError::Closed) => return None,
                    },
                    next = tokio::time::timeout_at(quiet, live.recv()) => next,
                };
                let data = match next {
                    Err(_quiet) => Bytes::from_static(b"\n"),
                    Ok(Ok(line))
                        if marks
                            .get(&line.service)
                            .is_some_and(|mark| line.seq <= *mark)
                            || !filter.matches(&line) =>
                    {
                        continue;
                    }
                    Ok(Ok(line)) => {
                        let mut out = Vec::with_capacity(256);
                        ndjson(&mut out, &*line);
                        Bytes::from(out)
                    }
                    Ok(Err(RecvError::Lagged(n))) => Bytes::from(format!("{{\"skipped\":{n}}}\n")),
                    Ok(Err(RecvError::Closed)) => return None,
                };
                return Some((
                    Ok(http_body::Frame::data(data)),
                    (live, closed, filter, marks, remote),
                ));
            }
        },
    );
    http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(first.chain(rest)))
}
