//! `events-api`: a component that exports both triggers. Over HTTP,
//! `POST /api/signup` publishes the body as a `user.signed-up` event on
//! `users.signed-up` (`GET /api/signup/NAME` the user NAME: what a service
//! call, a GET, can ask), and `POST /api/publish/TOPIC` tries to publish on any
//! topic (answering 403 with the host's reason when it is not allowed). As
//! an event handler, it logs what it receives.

use berth_sdk::events::{self, Error, Event, NewEvent, PublishError};
use berth_sdk::http::{Request, Response, Router};

fn http(req: Request) -> Response {
    Router::new()
        .post("/api/signup", |req| {
            let user: serde_json::Value = match req.json() {
                Ok(user) => user,
                Err(e) => return Response::text(format!("bad user: {e}\n")).with_status(400),
            };
            match events::publish_json("users.signed-up", "user.signed-up", &user) {
                Ok(id) => Response::json(&serde_json::json!({"event": id})).with_status(202),
                Err(e) => Response::text(format!("{e}\n")).with_status(500),
            }
        })
        .get("/api/signup/:name", |req| {
            let user = serde_json::json!({ "name": req.param("name").unwrap_or_default() });
            match events::publish_json("users.signed-up", "user.signed-up", &user) {
                Ok(id) => Response::json(&serde_json::json!({"event": id})).with_status(202),
                Err(e) => Response::text(format!("{e}\n")).with_status(500),
            }
        })
        .post("/api/publish/:topic", |req| {
            let topic = req.param("topic").unwrap_or_default().to_owned();
            let event = NewEvent::new("test.event").with_data("text/plain", req.body().to_vec());
            match events::publish(&topic, event) {
                Ok(id) => Response::text(format!("published {id}\n")).with_status(202),
                Err(e @ PublishError::Denied(_)) => {
                    Response::text(format!("{e}\n")).with_status(403)
                }
                Err(e) => Response::text(format!("{e}\n")).with_status(500),
            }
        })
        .handle(req)
}

fn on_event(event: Event) -> Result<(), Error> {
    println!("events-api got {} {}", event.topic(), event.id());
    Ok(())
}

berth_sdk::http_handler!(http);
berth_sdk::event_handler!(on_event);
