//! The escape suite (issue 17, growing): guests that try to get out of
//! their sandbox through the loopholes an allow-list leaves. Each attempt
//! fails inside the guest, and the host keeps serving.

use crate::support::*;
use bytes::Bytes;
use std::time::Duration;

/// A raw TCP port that records whether anything ever connected to it.
struct Tripwire(std::net::TcpListener);

impl Tripwire {
    fn new() -> Tripwire {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Tripwire(listener)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    fn untouched(&self) -> bool {
        matches!(self.0.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// An upstream that answers every request with a redirect to `location`.
async fn redirector(location: String) -> u16 {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let response = http::Response::builder()
                        .status(302)
                        .header("location", location.clone())
                        .body(http_body_util::Full::new(Bytes::from_static(b"moved")))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn no_spelling_of_this_host_reaches_its_admin_api_and_redirects_are_not_followed() {
    // Every way of writing "this machine" that a resolver takes, each
    // allowed on every port: the allow-list lets them by, the egress
    // check resolves them and refuses the host's own listeners.
    let spellings = [
        "127.0.0.1",
        "localhost",
        "localhost.",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ];
    let allowed: Vec<String> = spellings
        .iter()
        .map(|h| format!("\"http://{h}:*\""))
        .collect();
    let trip = Tripwire::new();
    let redirect = redirector(format!("http://127.0.0.1:{}/v1/services", trip.port())).await;
    let manifest = format!(
        "[service.sneaky]\ncomponent = {:?}\nroute = \"/...\"\nallowed_outbound = [{}]\n\
         [service.bystander]\ncomponent = {:?}\nroute = \"/hello/...\"\n",
        programs::CAPS,
        allowed.join(", "),
        programs::HELLO,
    );
    let berth = Berth::up_admin(&manifest, &[]);
    let admin = berth.admin.unwrap().port();
    let public = berth.addr.port();
    for host in spellings {
        for (port, what) in [
            (admin, "/v1/services"),
            (admin, "/metrics"),
            (public, "/hello/x"),
        ] {
            let url = format!("http://{host}:{port}{what}");
            let reply = get(&berth, &format!("/fetch?url={url}")).await;
            let text = reply.text();
            // A resolver may not take the absolute form at all (no DNS
            // here): then it fails as unresolvable, still in the guest.
            let refused = text == "error=ErrorCode::HttpRequestDenied"
                || (host == "localhost." && text == "error=ErrorCode::DestinationNotFound");
            assert!(
                reply.status == 502 && refused,
                "{url}: {} {text}",
                reply.status
            );
        }
    }
    berth.wait_for_logs(&["it would reach this host's own listener"]);

    // A redirect is the guest's to follow, and it is not: wasi:http hands
    // the 302 back; the place it points to is never contacted by the host.
    let reply = get(&berth, &format!("/fetch?url=http://127.0.0.1:{redirect}/")).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "status=302\nmoved")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(trip.untouched(), "the redirect's target was contacted");

    // The bystander served throughout.
    let reply = get(&berth, "/hello/still-here").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from berth: /hello/still-here\n");
}

#[tokio::test]
async fn path_tricks_through_links_loops_and_odd_spellings_stay_inside_the_mount() {
    // Beyond the plain tricks (capabilities.rs): chains of links, a link
    // to a folder above, loops, `.` and `//`, names that only look like
    // `..`, and a path longer than any the host takes.
    let dir = manifest_dir(&format!(
        "[service.site]\ncomponent = {:?}\nroute = \"/...\"\n\
         files = [{{ host = \"./static\", guest = \"/static\" }}]\n",
        programs::CAPS
    ));
    let root = dir.path().to_path_buf();
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, root.join("static").join(name)).unwrap()
    };
    std::fs::create_dir_all(root.join("static/sub")).unwrap();
    std::fs::write(root.join("static/hello.txt"), "hello file").unwrap();
    std::fs::write(root.join("outside.txt"), "outside the preopen").unwrap();
    link("chain-2", "chain-1");
    link("../outside.txt", "chain-2");
    link("..", "up");
    link("sub/../..", "up-through-sub");
    link("loop-b", "loop-a");
    link("loop-a", "loop-b");
    link("/", "root");
    let berth = Berth::up_with(dir, &["--cache-dir", shared_cache().to_str().unwrap()]);

    // Longer than PATH_MAX, and it would end above the mount.
    let long = format!("/static/{}../outside.txt", "sub/../".repeat(640));
    let attacks = [
        "/read?p=/static/chain-1".to_owned(),
        "/read?p=/static/up/outside.txt".to_owned(),
        "/read?p=/static/up-through-sub/outside.txt".to_owned(),
        "/read?p=/static/root/etc/passwd".to_owned(),
        "/list?p=/static/up".to_owned(),
        "/list?p=/static/root".to_owned(),
        "/read?p=/static/loop-a".to_owned(),
        "/read?p=/static/sub/../../outside.txt".to_owned(),
        "/read?p=/static/./../outside.txt".to_owned(),
        "/read?p=/static//../outside.txt".to_owned(),
        "/read?p=/static/hello.txt/../../outside.txt".to_owned(),
        "/read?p=/static/%2e%2e/outside.txt".to_owned(),
        "/read?p=/static/.../outside.txt".to_owned(),
        "/read?p=//outside.txt".to_owned(),
        format!("/read?p={long}"),
    ];
    for attack in &attacks {
        let reply = get(&berth, attack).await;
        let text = reply.text();
        assert!(
            !text.contains("outside the preopen") && !text.contains("root:"),
            "{attack} escaped: {text}"
        );
        assert_eq!(reply.status, 422, "{attack}: {text}");
        assert!(text.starts_with("error: "), "{attack}: {text}");
    }
    // What stays inside still works, and the host serves on.
    let reply = get(&berth, "/read?p=/static/sub/../hello.txt").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "hello file"));
}
