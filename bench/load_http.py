#!/usr/bin/env python3
"""Runs the servers of bench/http.sh one after the other, loads each with wrk,
and writes a results table into docs/benchmarks.md."""

import argparse
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- http-results:begin -->"
END = "<!-- http-results:end -->"


def start(cmd, env=None):
    """Starts a server and returns (process, 'host:port') once it prints its URL."""
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"http://([0-9.]+:[0-9]+)", line)
        if m:
            # Keep draining stderr so the server never blocks on it.
            subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
            return proc, m.group(1)
    proc.kill()
    sys.exit(f"server {cmd[0]} did not start")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def to_ms(text):
    m = re.match(r"([0-9.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(addr, duration, connections, warmup):
    url = f"http://{addr}/"
    if warmup:
        subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{warmup}s", url],
            check=True, capture_output=True,
        )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        sys.exit(f"wrk saw errors against {addr}:\n{out}")
    return rps, p50, p99


def get_ok(addr):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.startswith(b"HTTP/1.1 200")


def time_to_first_response(cmd):
    """Seconds from exec to the first 200 response."""
    t0 = time.perf_counter()
    proc, addr = start(cmd)
    while not get_ok(addr):
        time.sleep(0.0005)
    elapsed = time.perf_counter() - t0
    stop(proc)
    return elapsed


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Linux {platform.release()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--baseline",
                    help="another berth binary (an earlier commit) to measure in the same run, "
                         "as 'berth (baseline)'")
    ap.add_argument("--wasmtime", required=True)
    ap.add_argument("--native", required=True)
    ap.add_argument("--component", required=True)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 3)))
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", 6)))
    ap.add_argument("--connections", type=int, default=int(os.environ.get("CONNECTIONS", 16)))
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("WARMUP", 2)))
    ap.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    ap.add_argument("--only", help="comma-separated subset of server names")
    ap.add_argument("--otlp", action="store_true",
                    help="also Berth exporting a span set per invocation over OTLP "
                         "(HTTP/protobuf) to a local receiver, as 'berth (OTLP on)'")
    ap.add_argument("--berth-arg", action="append", default=[],
                    help="extra argument for berth up (repeatable), for tuning runs")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    component = Path(args.component).resolve()
    (work / "berth.toml").write_text(
        f'[service.hello]\ncomponent = "{component}"\nroute = "/..."\n'
    )
    cache = work / "cache"
    berth_cmd = [args.berth, "up", str(work / "berth.toml"), "--listen", "127.0.0.1:0",
                 "--cache-dir", str(cache)] + args.berth_arg
    servers = {
        "berth": berth_cmd,
        "wasmtime serve -S cli": [args.wasmtime, "serve", "-S", "cli",
                                  "--addr", "127.0.0.1:0", str(component)],
        "native hyper": [args.native, "127.0.0.1:0"],
    }
    # Variants of Berth run right after it in every round, so that both see
    # the same machine.
    variants = {}
    if args.baseline:
        # Its own code cache, as another build may compile to another
        # engine key.
        variants["berth (baseline)"] = [
            args.baseline, "up", str(work / "berth.toml"), "--listen",
            "127.0.0.1:0", "--cache-dir", str(work / "cache-baseline")]
    receiver = None
    if args.otlp:
        receiver = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/e2e/otlp_receiver.py"), "-", "--count"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = receiver.stdout.readline()
        http_port = ready.split("http=")[1].strip()
        variants["berth (OTLP on)"] = berth_cmd + [
            "--otlp-endpoint", f"http://127.0.0.1:{http_port}",
            "--otlp-protocol", "http/protobuf"]
    ordered = {}
    for name, cmd in servers.items():
        ordered[name] = cmd
        if name == "berth":
            ordered.update(variants)
    servers = ordered
    if args.only:
        wanted = args.only.split(",")
        servers = {k: v for k, v in servers.items() if k.split()[0] in wanted}

    # Warm Berth's code cache(s) once.
    for name, cmd in servers.items():
        if name.startswith("berth"):
            proc, _ = start(cmd)
            stop(proc)

    results = {name: [] for name in servers}
    for round_ in range(args.rounds):
        order = list(servers.items())
        if round_ % 2 == 1 and variants:
            # Every other round the baseline goes first, so that neither
            # build always follows the same server.
            order[0], order[1] = order[1], order[0]
        for name, cmd in order:
            proc, addr = start(cmd)
            try:
                r = wrk(addr, args.duration, args.connections, args.warmup)
            finally:
                stop(proc)
            results[name].append(r)
            print(f"round {round_ + 1} {name}: {r[0]:.0f} req/s, "
                  f"p50 {r[1]:.3f} ms, p99 {r[2]:.3f} ms", flush=True)

    spans = None
    if receiver is not None:
        receiver.stdin.close()
        spans = int(receiver.stdout.readline().split("=")[1])
        receiver.wait()
    startup = sorted(time_to_first_response(berth_cmd) for _ in range(10)) if "berth" in servers else []

    def med(name, i):
        return statistics.median(r[i] for r in results[name])

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; "
        f"`wrk -t1 -c{args.connections} -d{args.duration}s --latency` after a "
        f"{args.warmup} s warm-up, load generator and server sharing the machine, "
        f"median of {args.rounds} rounds, `RUST_BACKTRACE` unset for every server. "
        f"Command: `{'ROUNDS=' + str(args.rounds) + ' ' if args.rounds != 3 else ''}bench/http.sh"
        f"{' --baseline BERTH_BUILT_AT_AN_EARLIER_COMMIT' if args.baseline else ''}"
        f"{' --otlp' if args.otlp else ''}`.",
        "",
        "| server | req/s | p50 latency | p99 latency |",
        "|---|---|---|---|",
    ]
    for name in servers:
        lines.append(f"| {name} | {med(name, 0):,.0f} | {med(name, 1):.3f} ms | {med(name, 2):.3f} ms |")
    lines.append("")
    if "berth" in results and "wasmtime serve -S cli" in results:
        lines.append(f"- Berth / `wasmtime serve`: **{med('berth', 0) / med('wasmtime serve -S cli', 0):.2f}×** the throughput.")
    if "berth" in results and "berth (baseline)" in results:
        lines.append(f"- Berth / the baseline build: **{med('berth', 0) / med('berth (baseline)', 0):.2f}×** "
                     "the throughput (same run, one after the other in every round, "
                     "in alternating order).")
    if "berth" in results and "berth (OTLP on)" in results:
        lines.append(f"- Tracing every invocation (OTLP over HTTP/protobuf to a local receiver, "
                     f"`tests/e2e/otlp_receiver.py --count`, which decoded {spans:,} spans): "
                     f"**{med('berth (OTLP on)', 0) / med('berth', 0):.2f}×** the throughput of "
                     "Berth without it (same run, one after the other in every round).")
    if "berth" in results and "native hyper" in results:
        lines.append(f"- Berth / native hyper: **{med('berth', 0) / med('native hyper', 0):.2f}×** "
                     "(the cost of a fresh sandboxed instance per request).")
    if startup:
        lines.append(
            f"- `berth up` to first response, warm code cache: median "
            f"**{statistics.median(startup) * 1000:.1f} ms**, "
            f"max {startup[-1] * 1000:.1f} ms over {len(startup)} starts."
        )
    publish(lines, BEGIN, END, write=not args.no_write)


def publish(lines, begin, end, write=True):
    """Prints the results and, with `write`, puts them in docs/benchmarks.md
    between the `begin` and `end` markers."""
    table = "\n".join(lines)
    print()
    print(table)
    if write:
        doc = DOC.read_text()
        start_i, end_i = doc.index(begin) + len(begin), doc.index(end)
        DOC.write_text(doc[:start_i] + "\n" + table + "\n" + doc[end_i:])
        print(f"\nwrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
