//! The examples in `examples/` build and serve, as the README says.

use crate::support::*;
use std::path::Path;
use std::time::Duration;

#[tokio::test]
async fn the_examples_build_and_serve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cache = shared_cache();
    let berth = Berth::spawn(
        root,
        "examples/berth.toml",
        &["--build", "--cache-dir", cache.to_str().unwrap()],
        // The first build of an example compiles its dependencies.
        Duration::from_secs(900),
        None,
    );
    let reply = get(&berth, "/hello/world").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello, world!\n");
    let reply = get(&berth, "/hello").await;
    assert_eq!(reply.text(), "Hello, world!\n");
    let reply = get(&berth, "/hello/berth").await;
    assert_eq!(reply.text(), "Hello, berth!\n");
    berth.log_line(&reply.invocation(), "greeting berth");

    // signup publishes, welcome consumes.
    let reply = post(
        &berth,
        "/signup",
        r#"{"email": "ada@example.com", "name": "Ada"}"#,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let event = serde_json::from_slice::<serde_json::Value>(reply.body.as_ref().unwrap()).unwrap()
        ["event"]
        .as_str()
        .unwrap()
        .to_owned();
    berth.wait_for_logs(&[&format!(
        "welcome email to Ada <ada@example.com> (event {event})"
    )]);
    assert_eq!(
        post(&berth, "/signup", r#"{"email": "nope", "name": "X"}"#)
            .await
            .status,
        422
    );
}
