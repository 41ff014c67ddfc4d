//! `events-consumer`: an event handler written with `berth-sdk`. It logs
//! every event it handles (`handled TOPIC ID attempt=N data=...`) and
//! misbehaves on request, by event type:
//!
//! - `fail`: returns a retryable error, every time;
//! - `fail-until-3`: fails on attempts 1 and 2, succeeds on the third;
//! - `reject`: rejects the event (no retries);
//! - `trap`: panics;
//! - `sleep`: spins past its deadline;
//! - anything else: succeeds.

use berth_sdk::events::{Error, Event};

fn handle(event: Event) -> Result<(), Error> {
    let attempt = event.attempt();
    match event.event_type() {
        "fail" => {
            return Err(Error::retry(format!(
                "failing on purpose (attempt {attempt})"
            )));
        }
        "fail-until-3" if attempt < 3 => {
            return Err(Error::retry(format!("not yet (attempt {attempt})")));
        }
        "reject" => return Err(Error::reject("rejected on purpose")),
        "trap" => panic!("the consumer panicked on purpose"),
        "sleep" => loop {
            core::hint::spin_loop();
        },
        _ => {}
    }
    println!(
        "handled {} {} attempt={} data={}",
        event.topic(),
        event.id(),
        attempt,
        event.text().unwrap_or("<binary>")
    );
    Ok(())
}

berth_sdk::event_handler!(handle);
