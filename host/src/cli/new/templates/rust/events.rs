//! {{name}}: an event handler for Berth.

use berth_sdk::events::{Error, Event};

fn handle(event: Event) -> Result<(), Error> {
    // What a guest prints is a log line, tagged with the service and the
    // invocation (`berth logs {{name}}`).
    let data = event.text().unwrap_or("(binary data)");
    println!(
        "{{name}} handled {} event {} (attempt {}): {data}",
        event.event_type(),
        event.id(),
        event.attempt()
    );
    // Err(Error::retry("why")) delivers it again later;
    // Err(Error::reject("why")) dead-letters it now.
    Ok(())
}

berth_sdk::event_handler!(handle);
