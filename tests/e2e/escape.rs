//! The escape suite (issue 17, growing): guests that try to get out of
//! their sandbox through the loopholes an allow-list leaves, or to make the
//! host hold what it should not (resources, tables, instances). Each
//! attempt fails inside the guest, and the host keeps serving.

use crate::support::*;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// An upstream on `listener` that answers every request with `status`,
/// `body` and, if given, a `location`; how many connections it took.
fn upstream(
    listener: tokio::net::TcpListener,
    status: u16,
    location: Option<String>,
    body: &'static [u8],
) -> Arc<AtomicUsize> {
    use hyper::service::service_fn;
    let hits = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let hits = hits.clone();
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
                let location = location.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                        let mut response = http::Response::builder().status(status);
                        if let Some(location) = &location {
                            response = response.header("location", location);
                        }
                        let response = response
                            .body(http_body_util::Full::new(Bytes::from_static(body)))
                            .unwrap();
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    hits
}

/// An upstream on loopback that answers every request with a redirect to
/// `location`; its port.
async fn redirector(location: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    upstream(listener, 302, Some(location), b"moved");
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

/// A stand-in for a cloud's metadata service on `listener`: answers
/// every request with `credentials`; how many connections it took.
fn metadata_service(listener: std::net::TcpListener) -> Arc<AtomicUsize> {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    upstream(listener, 200, None, b"credentials")
}

/// Metadata services (where a cloud machine's credentials are served) are
/// out of a guest's reach by every name and spelling its allow-list lets
/// by — a name that resolves to one, a wildcard, the address as a decimal,
/// hexadecimal or octal number — and reached only when the allow-list
/// names the address itself. The host runs in a network namespace of the
/// test's, where the metadata addresses are stand-ins of the test's own
/// and the names resolve through the namespace's `/etc/hosts`.
#[tokio::test]
async fn metadata_addresses_are_out_of_reach_unless_the_allow_list_names_them() {
    use crate::netns::{Block, Netns, Veth};
    let block = Block::take();
    let ns = Netns::new("escape");
    let link = Veth::new(&block, 0, None, Some(&ns));
    for cidr in [
        "169.254.169.254/32",
        "100.100.100.200/32",
        "fd00:ec2::254/128",
    ] {
        ns.add_address(cidr);
    }
    ns.hosts(
        "127.0.0.1 localhost\n\
         169.254.169.254 metadata.google.internal metadata.test\n\
         100.100.100.200 aliyun.test\n\
         fd00:ec2::254 imds.test\n",
    );
    let services = [
        "169.254.169.254:80",
        "100.100.100.200:80",
        "[fd00:ec2::254]:80",
    ]
    .map(|addr| metadata_service(ns.bind(addr)));
    let attempts = [
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://metadata.test/latest/meta-data/",
        "http://aliyun.test/latest/meta-data/",
        "http://imds.test/latest/api/token",
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/latest/meta-data/",
        "http://0xa9fea9fe/latest/meta-data/",
        "http://0251.0376.0251.0376/latest/meta-data/",
    ];
    let allowed = [
        "http://metadata.google.internal",
        "http://*.test",
        "http://*.254",
        "http://2852039166",
        "http://0xa9fea9fe",
        "http://0251.0376.0251.0376",
    ];
    let list = |rules: &[&str]| {
        rules
            .iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let host = crate::host::Host::start_in(&ns, &link.two(), &[]);
    host.deploy_manifest(&format!(
        "[service.sneaky]\ncomponent = {:?}\nroute = \"/sneaky/...\"\nallowed_outbound = [{}]\n\
         [service.operator]\ncomponent = {:?}\nroute = \"/operator/...\"\n\
         allowed_outbound = [\"http://169.254.169.254\", \"http://[fd00:ec2::254]\", \"http://imds.test\"]\n\
         [service.bystander]\ncomponent = {:?}\nroute = \"/hello/...\"\n",
        programs::CAPS,
        list(&allowed),
        programs::CAPS,
        programs::HELLO,
    ));
    for url in attempts {
        let reply = get(&host.berth, &format!("/sneaky/fetch?url={url}")).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (502, "error=ErrorCode::HttpRequestDenied"),
            "{url}"
        );
    }
    // Each refused as a metadata address, not by the allow-list.
    host.berth.wait_for_count(
        "it would reach a link-local or cloud metadata address",
        attempts.len(),
    );
    assert_eq!(
        services.each_ref().map(|h| h.load(Ordering::SeqCst)),
        [0, 0, 0],
        "a metadata service was reached"
    );

    // Named by its address, it is the operator's choice: reached.
    for (url, i) in [
        ("http://169.254.169.254/latest/meta-data/", 0),
        ("http://[fd00:ec2::254]/latest/api/token", 2),
    ] {
        let reply = get(&host.berth, &format!("/operator/fetch?url={url}")).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "status=200\ncredentials"),
            "{url}"
        );
        assert_eq!(services[i].load(Ordering::SeqCst), 1, "{url}");
    }
    // Not by a name for it, even then: the request must be to the
    // address as the allow-list writes it.
    let reply = get(
        &host.berth,
        "/operator/fetch?url=http://imds.test/latest/api/token",
    )
    .await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (502, "error=ErrorCode::HttpRequestDenied")
    );
    host.berth.wait_for_count(
        "it would reach a link-local or cloud metadata address",
        attempts.len() + 1,
    );
    assert_eq!(
        services.each_ref().map(|h| h.load(Ordering::SeqCst)),
        [1, 0, 1]
    );
    let reply = get(&host.berth, "/hello/still-here").await;
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

/// GETs `path` over a raw connection and returns whatever arrived before
/// the connection ended, however it ended (a guest stopped mid-body
/// aborts its response).
fn raw_get(berth: &Berth, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(berth.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        berth.addr
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

/// The last `made=N` a guest of `exhaust` wrote.
fn made(raw: &str) -> usize {
    raw.split("made=")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .last()
        .unwrap_or(0)
}

#[tokio::test]
async fn what_a_guest_makes_the_host_hold_is_bounded_by_its_limits() {
    let (sink_port, accepted) = silent_upstream().await;
    let manifest = format!(
        "[service.greedy]\ncomponent = {:?}\nroute = \"/x/...\"\n\
         allowed_outbound = [\"http://127.0.0.1:{sink_port}\"]\n\
         [service.greedy.limits]\nmemory = \"64MiB\"\ntimeout = \"20s\"\n\
         [service.bystander]\ncomponent = {:?}\nroute = \"/hello/...\"\n",
        programs::EXHAUST,
        programs::HELLO,
    );
    let berth = Berth::up(&manifest);
    assert_eq!(get(&berth, "/hello/warm").await.status, 200);
    let pid = berth.pid();
    let peak_before = proc_status_kib(pid, "VmHWM");
    let fds_before = open_fds(pid);
    // 64 MiB of memory cap: 1024 handles (the floor; one per 128 KiB of
    // cap above 128 MiB).
    let handles = 1024;

    // Header maps of 60 KiB each, kept: the guest is stopped at its
    // handle limit, having made the host hold at most 128 MiB (without
    // the limit it went on to the deadline: 1.3 GB in 30 s).
    let raw = raw_get(&berth, "/x/fields?kib=60");
    let n = made(&raw);
    assert!((512..handles).contains(&n), "made {n} header maps:\n{raw}");
    assert!(!raw.contains("stopped"), "{raw}");
    berth.wait_for_logs(&["store handle limit exceeded"]);

    // One header map larger than wasi:http's limit: refused at once.
    let raw = raw_get(&berth, "/x/fields?kib=130");
    assert_eq!(made(&raw), 0, "{raw}");
    berth.wait_for_logs(&["total size of fields exceeds limit"]);

    // Handles that hold little: the same limit.
    let n = made(&raw_get(&berth, "/x/pollables"));
    assert!((512..handles).contains(&n), "made {n} pollables");

    // 150 requests at once to an upstream that never answers: 100 are in
    // flight, the guest is told no for the others, and nothing more
    // reaches the upstream.
    let reply = get(
        &berth,
        &format!("/x/requests?url=127.0.0.1:{sink_port}&n=150"),
    )
    .await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (
            200,
            "in flight=100 refused=50: ErrorCode::ConnectionLimitReached"
        )
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(accepted.load(Ordering::SeqCst) <= 100);

    // A body written before anyone reads it: the host takes two writes
    // of 32 KiB and then no more (wasi:http's default took 2 MiB).
    let reply = get(&berth, "/x/body?mib=1024").await;
    assert_eq!(reply.status, 200);
    let sent = reply.body.as_ref().map(|b| b.len()).unwrap_or(0);
    assert!(sent > 0 && sent <= 64 << 10, "the host took {sent} bytes");

    // Responses never sent, each holding as much body as the host takes:
    // the same handle limit (2 MiB each before, 2 GB in all).
    let n = made(&raw_get(&berth, "/x/bodies"));
    assert!((256..handles).contains(&n), "made {n} unsent responses");

    // Headers past wasi:http's limit: refused.
    let raw = raw_get(&berth, "/x/headers?n=100000&kib=1");
    assert!(!raw.starts_with("HTTP/1.1 200"), "{raw}");

    // The host is unharmed: every connection the guest opened is closed,
    // its memory grew by far less than one guest could have made it hold
    // (header maps and bodies as many as its handles), and the bystander
    // serves.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_fds(pid) > fds_before + 8 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        open_fds(pid) <= fds_before + 8,
        "{} files open, {fds_before} before",
        open_fds(pid)
    );
    let grown_mib = (proc_status_kib(pid, "VmHWM") - peak_before) / 1024;
    assert!(
        grown_mib < 512,
        "the host's peak memory grew by {grown_mib} MiB"
    );
    let reply = get(&berth, "/hello/still-here").await;
    assert_eq!(reply.status, 200);
}

/// Tables and instances: a guest that grows its table without end is
/// refused inside the guest at the host's limit (with pooled and with
/// on-demand instances alike); a component of a thousand core instances,
/// each with a memory and a table, which would hold half the host's
/// instance pool, is refused at deploy with the limit named (without the
/// pool, its instantiation fails at the same limits).
#[tokio::test]
async fn tables_and_core_instances_are_bounded() {
    for extra in [&[][..], &["--no-pooling"][..]] {
        let pooled = extra.is_empty();
        let many = if pooled {
            String::new()
        } else {
            service("many", programs::WAT_INSTANCES, "/many", "")
        };
        let dir = manifest_dir(&format!(
            "{}{}{many}",
            service("table", programs::WAT_TABLE, "/table", "timeout = \"10s\""),
            service("bystander", programs::HELLO, "/hello/...", "")
        ));
        let berth = Berth::up_with(dir, extra);
        let table: Vec<_> = (0..4).map(|_| spawn_get(&berth, "/table")).collect();
        for i in 0..10 {
            assert_eq!(get(&berth, &format!("/hello/{i}")).await.status, 200);
        }
        for t in table {
            // 500, not the deadline's 504: the growth was refused.
            assert_eq!(t.await.unwrap().status, 500);
        }
        let line = berth.log_line("WARN", "table limit: the guest asked for a table of");
        assert!(
            line.contains("over the limit of 100000") && line.contains("outcome=\"memory\""),
            "{line}"
        );
        if !pooled {
            assert_eq!(get(&berth, "/many").await.status, 500);
            let line = berth.log_line("WARN", "resource limit exceeded");
            assert!(line.contains("count too high"), "{line}");
        }
        assert_eq!(get(&berth, "/hello/after").await.status, 200);
    }

    // In a manifest, the host refuses to start, naming the file and the
    // limit; through the admin API, the deploy is refused and the host
    // serves on.
    let out = std::process::Command::new(berth_bin())
        .args(["up", "berth.toml", "--listen", "127.0.0.1:0"])
        .current_dir(manifest_dir(&service("many", programs::WAT_INSTANCES, "/many", "")).path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("berth.toml")
            && stderr.contains("991 core module instances")
            && stderr.contains("maximum of 64"),
        "{stderr}"
    );
    let host = crate::host::Host::start(&[]);
    let refused = host.cli(&[
        "deploy",
        "many",
        "--component",
        programs::WAT_INSTANCES,
        "--route",
        "/many",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("maximum of 64"), "{stderr}");
    host.cli_ok(&[
        "deploy",
        "hello",
        "--component",
        programs::HELLO,
        "--route",
        "/hello/...",
    ]);
    assert_eq!(get(&host.berth, "/hello/x").await.status, 200);
}
