//! `work`: the same work behind both triggers, so that an HTTP request and
//! an event delivery can be compared. `GET /work?ms=N&kib=K`, or an event
//! whose data is `ms=N&kib=K`: fills K KiB of fresh memory, then sleeps N
//! ms on the host's clock (waiting, not computing).

use berth_sdk::events::{Error, Event};
use berth_sdk::http::{Request, Response};

fn work(params: &str) -> String {
    let get = |key: &str| {
        params
            .split('&')
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let (ms, kib) = (get("ms="), get("kib="));
    let mut memory = vec![0u8; kib * 1024];
    for (i, byte) in memory.iter_mut().enumerate() {
        *byte = i as u8;
    }
    let sum: u64 = memory.iter().map(|b| u64::from(*b)).sum();
    std::thread::sleep(std::time::Duration::from_millis(ms as u64));
    format!("worked {ms} ms over {kib} KiB ({sum})")
}

fn http(req: Request) -> Response {
    Response::text(format!("{}\n", work(req.query().unwrap_or(""))))
}

fn on_event(event: Event) -> Result<(), Error> {
    println!("{}", work(event.text().unwrap_or("")));
    Ok(())
}

berth_sdk::http_handler!(http);
berth_sdk::event_handler!(on_event);
