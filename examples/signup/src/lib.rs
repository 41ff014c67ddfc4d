//! An HTTP API that publishes an event: `POST /signup` with
//! `{"email": ..., "name": ...}` publishes `user.signed-up` on the topic
//! `users.signed-up` and answers 202 with the event's id.
//!
//! Run this example with (from the repository root):
//!
//! ```text
//! cargo run --release -- up --build examples/berth.toml
//! curl -d '{"email": "ada@example.com", "name": "Ada"}' http://127.0.0.1:3000/signup
//! ```

use berth_sdk::events;
use berth_sdk::http::{Request, Response, Router};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize)]
struct SignUp {
    email: String,
    name: String,
}

fn sign_up(req: Request) -> Response {
    let user: SignUp = match req.json() {
        Ok(user) => user,
        Err(e) => {
            return Response::text(format!("expected {{\"email\", \"name\"}}: {e}\n"))
                .with_status(400);
        }
    };
    if !user.email.contains('@') {
        return Response::text("that is not an email address\n").with_status(422);
    }
    match events::publish_json("users.signed-up", "user.signed-up", &user) {
        Ok(id) => {
            Response::json(&serde_json::json!({"welcome": user.name, "event": id})).with_status(202)
        }
        Err(e) => Response::text(format!("{e}\n")).with_status(503),
    }
}

fn handle(req: Request) -> Response {
    Router::new()
        .post("/signup", sign_up)
        .get("/signup", |_| {
            Response::text("POST {\"email\": ..., \"name\": ...} here to sign up\n")
        })
        .handle(req)
}

berth_sdk::http_handler!(handle);
