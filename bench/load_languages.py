#!/usr/bin/env python3
"""Runs the servers of bench/languages.sh one after the other for each hello
component, loads each with wrk while `perf stat` counts the server's page
faults, and writes a results table into docs/benchmarks.md."""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_http import machine, publish, start, stop, to_ms  # noqa: E402

BEGIN = "<!-- languages-results:begin -->"
END = "<!-- languages-results:end -->"

COMPONENTS = {
    "rust-p2": "Rust, WASI 0.2 (`wasip2`)",
    "rust-p3": "Rust, WASI 0.3 (`wasip3`)",
    "python-p2": "Python, WASI 0.2 (componentize-py)",
    "python-p3": "Python, WASI 0.3 (componentize-py)",
    "js": "JavaScript, WASI 0.2 (ComponentizeJS)",
}

REUSE = 'reuse = { max_requests = 1000000, idle = "10s" }\n'
# WASI 0.3 instances may also serve requests concurrently (as
# `wasmtime serve` does with them by default).
REUSE_CONCURRENT = 'reuse = { max_requests = 1000000, max_concurrent = 16, idle = "10s" }\n'

# Components whose guest cannot serve a second request in one instance:
# ComponentizeJS 0.23's engine keeps its first FetchEvent ("respondWith
# can't be called twice on the same event"), so reuse would fail every
# other request.
NOT_REUSABLE = {"js"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workerd(workerd, work):
    """workerd on a free port, serving bench/js/hello.js."""
    port = free_port()
    js = Path(__file__).resolve().parent / "js"
    config = (js / "workerd.capnp").read_text().replace("PORT", str(port))
    (work / "workerd.capnp").write_text(config)
    (work / "hello.js").write_text((js / "hello.js").read_text())
    proc = subprocess.Popen([workerd, "serve", str(work / "workerd.capnp")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("workerd did not start")


def measure(proc, addr, duration, connections, warmup):
    """wrk against addr, with the server's page faults counted meanwhile:
    (req/s, p50 ms, p99 ms, faults per request)."""
    url = f"http://{addr}/"
    if warmup:
        subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{warmup}s", url],
                       check=True, capture_output=True)
    stat = tempfile.NamedTemporaryFile(suffix=".perf", delete=False).name
    perf = subprocess.Popen(
        ["perf", "stat", "-e", "page-faults", "-x", ",", "-o", stat, "-p", str(proc.pid),
         "--", "sleep", str(duration)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
        check=True, capture_output=True, text=True,
    ).stdout
    perf.wait()
    if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
        sys.exit(f"wrk saw errors against {addr}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    faults = None
    for line in Path(stat).read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] == "page-faults" and fields[0].isdigit():
            faults = int(fields[0]) / max(requests, 1)
    os.unlink(stat)
    return rps, p50, p99, faults


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--wasmtime", required=True)
    ap.add_argument("--workerd", required=True)
    ap.add_argument("--components", required=True, help="folder of NAME.wasm")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 3)))
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", 6)))
    ap.add_argument("--connections", type=int, default=int(os.environ.get("CONNECTIONS", 16)))
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("WARMUP", 2)))
    ap.add_argument("--only", help="comma-separated component names")
    ap.add_argument("--berth-arg", action="append", default=[],
                    help="extra argument for berth up (repeatable), for tuning runs")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="berth-languages-"))
    cache = work / "cache"
    names = args.only.split(",") if args.only else list(COMPONENTS)
    servers = {}
    for name in names:
        component = (Path(args.components) / f"{name}.wasm").resolve()
        modes = [("fresh", ""), ("reuse", REUSE)]
        if name.endswith("-p3"):
            modes.append(("reuse, 16 at once", REUSE_CONCURRENT))
        for mode, extra in modes:
            if mode != "fresh" and name in NOT_REUSABLE:
                continue
            manifest = work / f"{name}-{mode}.toml"
            manifest.write_text(
                f'[service.hello]\ncomponent = "{component}"\nroute = "/..."\n{extra}')
            servers[(name, f"berth ({mode})")] = [
                args.berth, "up", str(manifest), "--listen", "127.0.0.1:0",
                "--cache-dir", str(cache)] + args.berth_arg
        serve = [args.wasmtime, "serve", "-S", "cli"]
        if name.endswith("-p3"):
            serve += ["-W", "component-model-async"]
        servers[(name, "wasmtime serve -S cli")] = serve + [
            "--addr", "127.0.0.1:0", str(component)]
        if name == "js":
            servers[(name, "workerd")] = None

    # Compile every component into Berth's code cache once.
    for key, cmd in servers.items():
        if key[1] == "berth (fresh)":
            proc, _ = start(cmd)
            stop(proc)

    results = {key: [] for key in servers}
    for round_ in range(args.rounds):
        for key, cmd in servers.items():
            proc, addr = start_workerd(args.workerd, work) if cmd is None else start(cmd)
            try:
                r = measure(proc, addr, args.duration, args.connections, args.warmup)
            finally:
                stop(proc)
            results[key].append(r)
            faults = "-" if r[3] is None else f"{r[3]:.1f}"
            print(f"round {round_ + 1} {key[0]} / {key[1]}: {r[0]:.0f} req/s, "
                  f"p99 {r[2]:.2f} ms, {faults} faults/request", flush=True)

    def med(key, i):
        values = [r[i] for r in results[key] if r[i] is not None]
        return statistics.median(values) if values else None

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; "
        f"`wrk -t1 -c{args.connections} -d{args.duration}s --latency` after a "
        f"{args.warmup} s warm-up, load generator and server sharing the machine, "
        f"median of {args.rounds} rounds, `RUST_BACKTRACE` unset for every server; page "
        f"faults of the server process (`perf stat -e page-faults`) per request. "
        f"Command: `bench/languages.sh`.",
        "",
        "| component | server | req/s | p99 | page faults / request |",
        "|---|---|---|---|---|",
    ]
    for key in servers:
        faults = med(key, 3)
        lines.append(
            f"| {COMPONENTS[key[0]]} | {key[1]} | {med(key, 0):,.0f} | {med(key, 2):.2f} ms | "
            f"{'-' if faults is None else f'{faults:.1f}'} |")
    lines.append("")
    for name in names:
        fresh = med((name, "berth (fresh)"), 0)
        serve = med((name, "wasmtime serve -S cli"), 0)
        line = f"- {COMPONENTS[name]}: Berth fresh / serve **{fresh / serve:.2f}×**"
        if (name, "berth (reuse)") in results:
            reuse = med((name, "berth (reuse)"), 0)
            line += f", Berth with reuse / serve **{reuse / serve:.2f}×**"
            if (name, "berth (reuse, 16 at once)") in results:
                shared = med((name, "berth (reuse, 16 at once)"), 0)
                line += f", 16 at once / serve **{shared / serve:.2f}×**"
        else:
            line += " (no reuse: its engine serves one request per instance)"
        if (name, "workerd") in results:
            line += f", Berth fresh / workerd **{fresh / med((name, 'workerd'), 0):.2f}×**"
        lines.append(line + ".")
    publish(lines, BEGIN, END, write=not args.no_write)


if __name__ == "__main__":
    main()
