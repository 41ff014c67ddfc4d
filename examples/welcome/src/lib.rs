//! A consumer of `user.signed-up` events: it "sends" the welcome email (a
//! log line here). If it fails, Berth delivers the event again after a
//! backoff, and keeps it as a dead letter after the last attempt.
//!
//! Run this example with (from the repository root):
//!
//! ```text
//! cargo run --release -- up --build examples/berth.toml
//! curl -d '{"email": "ada@example.com", "name": "Ada"}' http://127.0.0.1:3000/signup
//! ```

use berth_sdk::events::{Error, Event};
use serde::Deserialize;

#[derive(Deserialize)]
struct SignedUp {
    email: String,
    name: String,
}

fn welcome(event: Event) -> Result<(), Error> {
    let user: SignedUp = event.json()?;
    println!(
        "welcome email to {} <{}> (event {})",
        user.name,
        user.email,
        event.id()
    );
    Ok(())
}

berth_sdk::event_handler!(welcome);
