//! `exhaust`: tries to make the host hold memory for it outside its own
//! linear memory, one way per path (its last segment), keeping every
//! handle it gets, until the host refuses. Answers `made=N` and how it
//! stopped, if the host let it answer at all.
//!
//! - `/fields?kib=K` — header maps of K KiB each (one field), answering
//!   200 at once and `made=N` lines as it goes
//! - `/pollables` — clock pollables, the same way
//! - `/requests?url=URL&n=N` — N outgoing requests to URL at once; after
//!   half a second, how many are still in flight and how the others
//!   ended
//! - `/body?mib=M` — writes M MiB of response body before sending the
//!   response (nobody reads it yet), as much at a time as the host takes
//! - `/bodies` — responses never sent, each with as much body as the host
//!   takes, like `/fields`
//! - `/headers?n=N&kib=K` — answers with N headers of K KiB each

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

/// More than any host should hold for one instance.
const MAX: usize = 10_000_000;

struct Exhaust;

impl wasip2::exports::http::incoming_handler::Guest for Exhaust {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_query.split_once('?').unwrap_or((&path_query, ""));
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.to_owned())
            })
        };
        let number = |name: &str, default: usize| {
            param(name).and_then(|v| v.parse().ok()).unwrap_or(default)
        };
        let (status, body) = match path.rsplit('/').next().unwrap_or_default() {
            "fields" => {
                let value = vec![b'x'; number("kib", 60) * 1024];
                progress(out, |kept: &mut Vec<Fields>| {
                    let fields = Fields::new();
                    fields
                        .append("x-fill", &value)
                        .map_err(|e| format!("{e:?}"))?;
                    kept.push(fields);
                    Ok(())
                });
                return;
            }
            "pollables" => {
                progress(out, |kept: &mut Vec<_>| {
                    kept.push(wasip2::clocks::monotonic_clock::subscribe_duration(
                        1_000_000_000,
                    ));
                    Ok(())
                });
                return;
            }
            "requests" => {
                let url = param("url").unwrap_or_default();
                let authority = url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned();
                let mut kept = Vec::new();
                for _ in 0..number("n", 150) {
                    let request = OutgoingRequest::new(Fields::new());
                    request.set_method(&Method::Get).unwrap();
                    request.set_scheme(Some(&Scheme::Http)).unwrap();
                    request.set_authority(Some(&authority)).unwrap();
                    request.set_path_with_query(Some("/")).unwrap();
                    match outgoing_handler::handle(request, None) {
                        Ok(future) => kept.push(future),
                        Err(code) => {
                            return util::respond(out, 502, &[], format!("{code:?}").as_bytes());
                        }
                    }
                }
                // Give every request time to connect, or to be refused.
                wasip2::clocks::monotonic_clock::subscribe_duration(500_000_000).block();
                let (mut pending, mut refused) = (0, Vec::new());
                for future in &kept {
                    // A result is taken once its pollable says it is ready.
                    if !future.subscribe().ready() {
                        pending += 1;
                        continue;
                    }
                    match future.get() {
                        None => pending += 1,
                        Some(Ok(Err(code))) => refused.push(format!("{code:?}")),
                        Some(other) => refused.push(format!("{other:?}")),
                    }
                }
                refused.dedup();
                (
                    200,
                    format!(
                        "in flight={pending} refused={}: {}",
                        kept.len() - pending,
                        refused.join(", ")
                    ),
                )
            }
            "body" => {
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().unwrap();
                let stream = body.write().unwrap();
                let chunk = vec![b'x'; 1024 * 1024];
                let want = number("mib", 1024) * 1024 * 1024;
                let mut written = 0;
                let stop = loop {
                    if written >= want {
                        break "all written".to_owned();
                    }
                    match stream.check_write() {
                        Ok(0) => break "the host takes no more".to_owned(),
                        Ok(n) => {
                            let n = (n as usize).min(chunk.len());
                            if let Err(e) = stream.write(&chunk[..n]) {
                                break format!("{e:?}");
                            }
                            written += n;
                        }
                        Err(e) => break format!("{e:?}"),
                    }
                };
                drop(stream);
                OutgoingBody::finish(body, None).ok();
                ResponseOutparam::set(out, Ok(response));
                let _ = stop;
                return;
            }
            "bodies" => {
                let chunk = vec![b'x'; 1024 * 1024];
                progress(out, |kept: &mut Vec<OutgoingResponse>| {
                    let response = OutgoingResponse::new(Fields::new());
                    let body = response.body().map_err(|()| "no body".to_owned())?;
                    let stream = body.write().map_err(|()| "no stream".to_owned())?;
                    while let Ok(n) = stream.check_write() {
                        if n == 0
                            || stream
                                .write(&chunk[..(n as usize).min(chunk.len())])
                                .is_err()
                        {
                            break;
                        }
                    }
                    drop(stream);
                    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
                    kept.push(response);
                    Ok(())
                });
                return;
            }
            "headers" => {
                let value = vec![b'x'; number("kib", 1) * 1024];
                let fields = Fields::new();
                let mut made = 0;
                for i in 0..number("n", 1000) {
                    if fields.append(&format!("x-h{i}"), &value).is_err() {
                        break;
                    }
                    made += 1;
                }
                let response = OutgoingResponse::new(fields);
                let body = response.body().unwrap();
                ResponseOutparam::set(out, Ok(response));
                let stream = body.write().unwrap();
                let _ = stream.blocking_write_and_flush(format!("made={made}").as_bytes());
                drop(stream);
                OutgoingBody::finish(body, None).ok();
                return;
            }
            _ => (404, "unknown test\n".to_owned()),
        };
        util::respond(out, status, &[], body.as_bytes());
    }
}

/// Answers 200 at once, then calls `make` until it fails (or the host
/// stops the guest), keeping what it makes and writing `made=N` lines as
/// it goes: the caller sees how far it got even when the guest is stopped.
fn progress<T>(out: ResponseOutparam, mut make: impl FnMut(&mut Vec<T>) -> Result<(), String>) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().unwrap();
    let mut kept = Vec::new();
    let stop = loop {
        if kept.len() == MAX {
            break "the limit of this guest".to_owned();
        }
        if let Err(e) = make(&mut kept) {
            break e;
        }
        if kept.len() % 64 == 0 {
            let _ = stream.blocking_write_and_flush(format!("made={}\n", kept.len()).as_bytes());
        }
    };
    let _ = stream
        .blocking_write_and_flush(format!("made={} stopped: {stop}\n", kept.len()).as_bytes());
    drop(stream);
    OutgoingBody::finish(body, None).ok();
}

wasip2::http::proxy::export!(Exhaust);
