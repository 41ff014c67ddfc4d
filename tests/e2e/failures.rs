//! Guests that fail: traps of every kind, no response, error responses.
//! Each failure gets the right status and a log line naming the service,
//! the invocation and the cause — and the other services keep answering.

use crate::support::*;

fn manifest() -> String {
    [
        service("panic", programs::PANIC, "/panic/...", ""),
        service("nothing", programs::NO_RESPONSE, "/nothing/...", ""),
        service("hello", programs::HELLO, "/hello", ""),
    ]
    .concat()
}

#[tokio::test]
async fn traps_are_500_and_logged_with_service_invocation_and_trap() {
    let berth = Berth::up(&manifest());
    for (path, trap) in [
        ("/panic", "wasm `unreachable` instruction executed"),
        (
            "/panic/unreachable",
            "wasm `unreachable` instruction executed",
        ),
        ("/panic/overflow", "call stack exhausted"),
    ] {
        let reply = get(&berth, path).await;
        assert_eq!(reply.status, 500, "{path}");
        assert_eq!(
            reply.text(),
            "the service failed\n",
            "no internals reach the client"
        );
        let id = reply.invocation();
        let line = berth.log_line(&id, "guest trapped");
        assert!(line.contains("service=panic"), "{line}");
        assert!(line.contains("outcome=\"trap\""), "{line}");
        berth.wait_for_logs(&[trap]);
        // The bystander is unaffected.
        assert_eq!(get(&berth, "/hello").await.status, 200);
    }
    // The panic message itself reaches the logs through the guest's stderr.
    berth.wait_for_logs(&["the panic fixture panicked on purpose"]);
}

#[tokio::test]
async fn no_response_and_error_response_are_502() {
    let berth = Berth::up(&manifest());
    let reply = get(&berth, "/nothing").await;
    assert_eq!(reply.status, 502);
    berth.log_line(&reply.invocation(), "returned without setting a response");

    let reply = get(&berth, "/nothing/error").await;
    assert_eq!(reply.status, 502);
    let line = berth.log_line(&reply.invocation(), "answered with an error");
    assert!(line.contains("the guest gave up"), "{line}");
    assert_eq!(get(&berth, "/hello").await.status, 200);
}
