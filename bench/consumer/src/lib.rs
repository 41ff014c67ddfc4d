//! `consumer-bench`: acknowledges every event.

use berth_sdk::events::{Error, Event};

fn handle(_event: Event) -> Result<(), Error> {
    Ok(())
}

berth_sdk::event_handler!(handle);
