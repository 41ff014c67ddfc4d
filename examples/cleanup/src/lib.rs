//! A scheduled job: Berth invokes it on the schedule in `berth.toml`, with
//! an event saying which schedule fired and when it was due.
//!
//! Run this example with (from the repository root):
//!
//! ```text
//! cargo run --release -- up --build examples/berth.toml
//! ```

use berth_sdk::events::{Error, Event};

fn cleanup(event: Event) -> Result<(), Error> {
    let firing: serde_json::Value = event.json()?;
    println!(
        "cleanup run by schedule {} (due {})",
        firing["schedule"], firing["due"]
    );
    Ok(())
}

berth_sdk::event_handler!(cleanup);
