#!/usr/bin/env python3
"""Events benchmark: publish N events to a `berth serve` through the admin
API (CloudEvents batch mode, several clients at once) and measure how fast
they are acknowledged (durable) and delivered to a trivial handler."""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_http  # noqa: E402  (machine, publish)

BEGIN = "<!-- events-results:begin -->"
END = "<!-- events-results:end -->"
TOKEN = "bench-token"


def request(addr, method, path, body=None, headers=None):
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    h = {"authorization": f"Bearer {TOKEN}"}
    h.update(headers or {})
    conn.request(method, path, body=body, headers=h)
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, data


def wait_drained(admin):
    while True:
        _, body = request(admin, "GET", "/v1/events")
        subs = json.loads(body)["subscriptions"]
        if all(s["depth"] == 0 and s["in_flight"] == 0 for s in subs):
            return
        time.sleep(0.01)


def counted(admin, topic):
    _, body = request(admin, "GET", "/v1/events")
    stats = [t for t in json.loads(body)["topics"] if t["topic"] == topic][0]
    if stats["unrouted"] != 0:
        sys.exit(f"events on {topic} were not routed: {stats}")
    return stats["published"]


def check_counted(admin, topic, total):
    if counted(admin, topic) != total:
        sys.exit(f"expected {total} events on {topic}, the host counted {counted(admin, topic)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--component", required=True)
    ap.add_argument("--events", type=int, default=int(os.environ.get("EVENTS", 100_000)))
    ap.add_argument("--batch", type=int, default=int(os.environ.get("BATCH", 250)))
    ap.add_argument("--clients", type=int, default=int(os.environ.get("CLIENTS", 8)))
    ap.add_argument("--concurrency", type=int, default=int(os.environ.get("SUB_CONCURRENCY", 32)))
    ap.add_argument("--data-bytes", type=int, default=256)
    ap.add_argument("--single-seconds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="berth-bench-events-"))
    env = dict(os.environ, BERTH_TOKEN=TOKEN, BERTH_LOG="warn")
    env.pop("RUST_BACKTRACE", None)
    proc = subprocess.Popen(
        [args.berth, "serve", "--state", str(state / "state"), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        run(args, proc, state, env)
    finally:
        proc.kill()
        proc.wait()


def run(args, proc, state, env):
    admin = None
    while admin is None:
        line = proc.stderr.readline()
        if not line:
            sys.exit("berth serve did not start")
        m = re.search(r"admin API on http://([0-9.:]+)", line)
        if m:
            admin = m.group(1)
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()

    manifest = state / "berth.toml"
    manifest.write_text(
        f'[service.sink]\ncomponent = "{Path(args.component).resolve()}"\n\n'
        f'[[service.sink.subscriptions]]\ntopic = "bench.>"\nconcurrency = {args.concurrency}\n')
    subprocess.run([args.berth, "deploy", str(manifest)], check=True, env=dict(env, BERTH_HOST=f"http://{admin}"),
                   stdout=subprocess.DEVNULL)

    payload = "x" * args.data_bytes
    batches = []
    for b in range(args.events // args.batch):
        events = [{"specversion": "1.0", "id": f"e-{b}-{i}", "source": "/bench", "type": "bench",
                   "datacontenttype": "text/plain", "data": payload} for i in range(args.batch)]
        batches.append(json.dumps(events).encode())
    total = len(batches) * args.batch

    lock = threading.Lock()
    queue = list(range(len(batches)))
    errors = []

    def client():
        while True:
            with lock:
                if not queue:
                    return
                i = queue.pop()
            status, body = request(admin, "POST", "/v1/events/bench.load", batches[i],
                                   {"content-type": "application/cloudevents-batch+json"})
            if status != 202:
                errors.append((status, body[:200]))
                return

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = time.perf_counter() - start
    if errors:
        sys.exit(f"publishing failed: {errors[:3]}")
    wait_drained(admin)
    delivered = time.perf_counter() - start
    check_counted(admin, "bench.load", total)

    # One event per request, over keep-alive connections (wrk), binary mode.
    script = state / "publish.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = "{payload}"\n'
        f'wrk.headers["authorization"] = "Bearer {TOKEN}"\n'
        'wrk.headers["content-type"] = "text/plain"\n'
        'wrk.headers["ce-specversion"] = "1.0"\n'
        'wrk.headers["ce-id"] = "single"\n'
        'wrk.headers["ce-source"] = "/bench"\n'
        'wrk.headers["ce-type"] = "bench"\n')
    single_start = time.perf_counter()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{args.clients * 2}", f"-d{args.single_seconds}s", "-s", str(script),
         f"http://{admin}/v1/events/bench.single"],
        check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"wrk saw errors:\n{out}")
    p99 = re.search(r"Latency\s+(\S+)", out).group(1)
    wait_drained(admin)
    single_delivered = time.perf_counter() - single_start
    # Requests wrk gave up on at the end may still have been published:
    # count what the host stored.
    singles = counted(admin, "bench.single")

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {load_http.machine()}; `bench/events.sh`: "
        f"{total:,} events of {args.data_bytes} bytes published by {args.clients} clients in batches of "
        f"{args.batch} (CloudEvents batch mode, admin API), one subscription (concurrency {args.concurrency}) "
        f"to a handler that acknowledges them (`bench/consumer`), `synchronous = FULL`, "
        f"`RUST_BACKTRACE` unset.",
        "",
        "| measure | events/s |",
        "|---|---|",
        f"| published and acknowledged (durable) | {total / published:,.0f} |",
        f"| published and delivered end to end (handler returned, delivery settled) | {total / delivered:,.0f} |",
        f"| one event per request (wrk, {args.clients * 2} keep-alive connections, binary mode): published and acknowledged | {singles / args.single_seconds:,.0f} |",
        f"| one event per request: published and delivered end to end | {singles / single_delivered:,.0f} |",
        "",
        f"- Batches: all {total:,} delivered {delivered:.2f} s after the first publish "
        f"(publishing took {published:.2f} s).",
        f"- One event per request: {singles:,} events in {args.single_seconds} s, average publish latency "
        f"{p99} (each answered after its commit), all delivered {single_delivered:.2f} s after the first.",
    ]
    load_http.publish(lines, BEGIN, END, write=not args.no_write)


if __name__ == "__main__":
    main()
