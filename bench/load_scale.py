#!/usr/bin/env python3
"""Serverless benchmarks of bench/scale.sh, on `berth serve` (and `berth up`
for metering): cold starts, density, noisy neighbours, metering overhead.
Writes a results section into docs/benchmarks.md."""

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_http  # noqa: E402  (start, stop, wrk, machine)

BEGIN = "<!-- scale-results:begin -->"
END = "<!-- scale-results:end -->"


def request(addr, method, path, body=None, headers=None, timeout=120):
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, data


def timed_get(addr, path):
    t0 = time.perf_counter()
    status, _ = request(addr, "GET", path)
    elapsed = time.perf_counter() - t0
    if status != 200:
        sys.exit(f"GET {path}: {status}")
    return elapsed


class Serve:
    """A `berth serve` on a state directory."""

    def __init__(self, berth, state, extra=()):
        self.cmd = [berth, "serve", "--state", str(state), "--listen", "127.0.0.1:0",
                    "--admin-listen", "127.0.0.1:0", *extra]
        self.start()

    def start(self):
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
        addrs = {}
        while len(addrs) < 2:
            line = self.proc.stderr.readline()
            if not line:
                sys.exit("berth serve did not start")
            m = re.search(r"http://([0-9.]+:[0-9]+)", line)
            if m:
                addrs["admin" if "admin" in line else "public"] = m.group(1)
        subprocess.Popen(["cat"], stdin=self.proc.stderr, stdout=subprocess.DEVNULL)
        self.public, self.admin = addrs["public"], addrs["admin"]
        self.started_at = t0

    def stop(self):
        load_http.stop(self.proc)

    def rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def upload(self, path):
        status, body = request(self.admin, "POST", "/v1/artifacts", Path(path).read_bytes())
        if status not in (200, 201):
            sys.exit(f"upload failed: {status} {body!r}")
        return json.loads(body)["digest"]

    def deploy(self, name, digest, route, limits):
        body = json.dumps({"artifact": digest, "routes": [route], "limits": limits})
        status, data = request(self.admin, "PUT", f"/v1/services/{name}", body,
                               {"content-type": "application/json"})
        if status not in (200, 201):
            sys.exit(f"deploy {name} failed: {status} {data!r}")

    def metrics(self):
        _, body = request(self.admin, "GET", "/metrics")
        samples = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                samples[key] = float(value)
        return samples

    def total(self, name):
        return sum(v for k, v in self.metrics().items() if k.split("{")[0] == name)

    def wait_unloaded(self, timeout=120):
        deadline = time.time() + timeout
        while self.total("berth_service_loaded") > 0:
            if time.time() > deadline:
                sys.exit("services were never unloaded")
            time.sleep(0.2)


def deploy_many(serve, digest, count, limits, threads=4):
    """Deploys s0..s{count-1}, `threads` at a time; returns seconds taken."""
    t0 = time.perf_counter()
    names = iter(range(count))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(names, None)
            if i is None:
                return
            serve.deploy(f"s{i}", digest, f"/s{i}", limits)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def cold_start(args, work):
    n = args.cold_services
    serve = Serve(args.berth, work / "cold")
    try:
        digest = serve.upload(args.hello)
        deploy_many(serve, digest, n, {"idle_timeout": "1s"})
        # Warm: each service once to load it, then the measured request.
        for i in range(n):
            timed_get(serve.public, f"/s{i}")
        warm = [timed_get(serve.public, f"/s{i}") for i in range(n)]
        serve.wait_unloaded()
        cold_before = serve.total("berth_cold_starts_total")
        cold = [timed_get(serve.public, f"/s{i}") for i in range(n)]
        counted = serve.total("berth_cold_starts_total") - cold_before
        if counted != n:
            sys.exit(f"expected {n} cold starts, the host counted {counted}")
        load = serve.metrics()
        load_sum = sum(v for k, v in load.items() if k.startswith("berth_cold_start_duration_seconds_sum"))
        load_count = sum(v for k, v in load.items() if k.startswith("berth_cold_start_duration_seconds_count"))
    finally:
        serve.stop()
    ms = lambda s: s * 1000  # noqa: E731
    return [
        f"### Cold start ({n} services)",
        "",
        f"{n} hello services (`idle_timeout = \"1s\"`), each requested once warm, then, "
        "once every one of them was unloaded, once cold (its compiled code reloaded from "
        "the on-disk code cache). Client-side time to a full response, one request at a "
        "time, over a fresh connection each.",
        "",
        "| request | p50 | p99 | max |",
        "|---|---|---|---|",
        f"| warm | {ms(pct(warm, 50)):.2f} ms | {ms(pct(warm, 99)):.2f} ms | {ms(max(warm)):.2f} ms |",
        f"| cold | {ms(pct(cold, 50)):.2f} ms | {ms(pct(cold, 99)):.2f} ms | {ms(max(cold)):.2f} ms |",
        "",
        f"- Loading the component on a cold start (`berth_cold_start_duration_seconds`): "
        f"mean **{ms(load_sum / max(load_count, 1)):.2f} ms** over {int(load_count)} cold starts.",
        "",
    ]


def density(args, work, count):
    serve = Serve(args.berth, work / f"density-{count}")
    try:
        rss_empty = serve.rss_mib()
        digest = serve.upload(args.hello)
        took = deploy_many(serve, digest, count, {"idle_timeout": "2s"})
        rss_deployed = serve.rss_mib()
        serve.wait_unloaded(timeout=300)
        time.sleep(1)
        rss_unloaded = serve.rss_mib()
        # Ten of them active.
        for _ in range(3):
            for i in range(10):
                timed_get(serve.public, f"/s{i}")
        rss_ten = serve.rss_mib()
    finally:
        serve.stop()
    # Restart: every service restored, unloaded. From exec to the first
    # response (a cold start), three times.
    restarts = []
    for _ in range(3):
        t0 = time.perf_counter()
        serve.start()
        try:
            timed_get(serve.public, "/s0")
            restarts.append(time.perf_counter() - t0)
            time.sleep(1)
            rss_restarted = serve.rss_mib()
        finally:
            serve.stop()
    return {
        "count": count,
        "deploy_s": took,
        "rss_empty": rss_empty,
        "rss_deployed": rss_deployed,
        "rss_unloaded": rss_unloaded,
        "rss_ten": rss_ten,
        "rss_restarted": rss_restarted,
        "restart_ms": statistics.median(restarts) * 1000,
    }


class Spinners:
    """Keeps `n` requests to a CPU-bound service in flight."""

    def __init__(self, addr, n):
        self.stop_flag = False
        self.threads = [threading.Thread(target=self.loop, args=(addr,)) for _ in range(n)]
        for t in self.threads:
            t.start()

    def loop(self, addr):
        while not self.stop_flag:
            try:
                request(addr, "GET", "/spin", timeout=30)
            except OSError:
                time.sleep(0.01)

    def stop(self):
        self.stop_flag = True
        for t in self.threads:
            t.join()


def noisy(args, work, extra, label):
    serve = Serve(args.berth, work / f"noisy-{label}", extra)
    try:
        serve.deploy("hello", serve.upload(args.hello), "/hello", {})
        serve.deploy("spin", serve.upload(args.spin), "/spin",
                     {"concurrency": args.spinners, "queue": 0, "timeout": "2s",
                      "fuel": 10**15})
        url_addr = serve.public
        alone = [wrk_path(url_addr, "/hello", args, c) for c in (1, args.connections)]
        spinners = Spinners(url_addr, args.spinners)
        deadline = time.time() + 30
        while serve.total("berth_instances_in_flight") < args.spinners:
            if time.time() > deadline:
                sys.exit("the spinners never reached their limit")
            time.sleep(0.05)
        try:
            busy = [wrk_path(url_addr, "/hello", args, c) for c in (1, args.connections)]
        finally:
            spinners.stop()
    finally:
        serve.stop()
    return alone, busy


def wrk_path(addr, path, args, connections):
    url = f"http://{addr}{path}"
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", url],
                   check=True, capture_output=True)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{args.duration}s", "--latency", url],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50 = load_http.to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = load_http.to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out) or "Socket errors" in out:
        sys.exit(f"wrk saw errors:\n{out}")
    return rps, p50, p99


def metering(args, work):
    (work / "berth.toml").write_text(
        f'[service.hello]\ncomponent = "{Path(args.hello).resolve()}"\nroute = "/..."\n')
    base = [args.berth, "up", str(work / "berth.toml"), "--listen", "127.0.0.1:0",
            "--cache-dir", str(work / "code")]
    configs = [
        ("ledger on, a log line per invocation (the default)", [], {}),
        ("ledger on, no invocation log lines", [], {"BERTH_LOG": "info,berth::invocation=off"}),
        ("ledger off, no invocation log lines", ["--no-usage"],
         {"BERTH_LOG": "info,berth::invocation=off"}),
    ]
    results = {label: [] for label, _, _ in configs}
    for _ in range(args.rounds):
        for label, extra, env in configs:
            proc, addr = load_http.start(base + extra, env={**os.environ, **env})
            try:
                results[label].append(load_http.wrk(addr, args.duration, args.connections, 2))
            finally:
                load_http.stop(proc)
    return [(label, statistics.median(r[0] for r in rs), statistics.median(r[2] for r in rs))
            for label, rs in results.items()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--hello", required=True)
    ap.add_argument("--spin", required=True)
    ap.add_argument("--sections", default=os.environ.get("SECTIONS", "cold,density,noisy,metering"))
    ap.add_argument("--cold-services", type=int, default=int(os.environ.get("COLD_SERVICES", 200)))
    ap.add_argument("--density", default=os.environ.get("DENSITY", "1000,10000"))
    ap.add_argument("--spinners", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 3)))
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", 6)))
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sections = args.sections.split(",")
    work = Path(tempfile.mkdtemp(prefix="berth-scale-"))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {load_http.machine()}, release build, "
        "`RUST_BACKTRACE` unset, load generator and host sharing the machine. "
        "Command: `bench/scale.sh`.",
        "",
    ]
    try:
        if "cold" in sections:
            lines += cold_start(args, work)
            print("\n".join(lines), flush=True)
        if "density" in sections:
            rows = []
            for count in [int(c) for c in args.density.split(",")]:
                d = density(args, work, count)
                print(d, flush=True)
                rows.append(d)
            lines += [
                "### Density",
                "",
                "N hello services deployed to one `berth serve` (one artifact, so one "
                "compilation; each service loads its own copy of the compiled code), "
                "`idle_timeout = \"2s\"`. RSS of the host process (VmRSS).",
                "",
                "| services | deploy all | RSS, none deployed | RSS after deploying all "
                "| RSS, all unloaded | RSS, 10 active | restart → first response | RSS after restart |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for d in rows:
                lines.append(
                    f"| {d['count']:,} | {d['deploy_s']:.1f} s | {d['rss_empty']:.0f} MiB "
                    f"| {d['rss_deployed']:.0f} MiB | {d['rss_unloaded']:.0f} MiB "
                    f"| {d['rss_ten']:.0f} MiB | {d['restart_ms']:.0f} ms "
                    f"| {d['rss_restarted']:.0f} MiB |")
            lines.append("")
        if "noisy" in sections:
            gated = noisy(args, work, [], "gated")
            ungated = noisy(args, work, ["--cpu-turns", "1000"], "ungated")
            lines += [
                "### Noisy neighbour",
                "",
                "`hello` measured with wrk, alone, then while a `spin` service burns CPU at "
                f"its concurrency limit ({args.spinners} invocations in flight at all times, "
                "each spinning until its 2 s deadline). Light load: one connection, one "
                f"request after the other; saturated: `wrk -t1 -c{args.connections}` "
                "(on 2 cores shared with wrk, the spinners' CPU share shows as lost "
                f"throughput). {args.duration} s each.",
                "",
                "| host | load | hello alone: req/s, p50, p99 | with the spinners: req/s, p50, p99 | p99 factor |",
                "|---|---|---|---|---|",
            ]
            for label, (alone, busy) in [("default (CPU turns: cores − 1 per service)", gated),
                                         ("`--cpu-turns 1000` (no fairness gate)", ungated)]:
                for load, a, b in [("light", alone[0], busy[0]),
                                   (f"saturated (c{args.connections})", alone[1], busy[1])]:
                    lines.append(
                        f"| {label} | {load} | {a[0]:,.0f}, {a[1]:.2f} ms, {a[2]:.2f} ms "
                        f"| {b[0]:,.0f}, {b[1]:.2f} ms, {b[2]:.2f} ms | **{b[2] / a[2]:.1f}×** |")
            lines.append("")
            print("\n".join(lines[-8:]), flush=True)
        if "metering" in sections:
            rows = metering(args, work)
            lines += [
                "### Metering overhead",
                "",
                f"`berth up` serving hello, `wrk -t1 -c{args.connections} -d{args.duration}s`, "
                f"median of {args.rounds} rounds.",
                "",
                "| configuration | req/s | p99 |",
                "|---|---|---|",
            ]
            for label, rps, p99 in rows:
                lines.append(f"| {label} | {rps:,.0f} | {p99:.2f} ms |")
            lines += ["", f"- Ledger cost: **{(1 - rows[1][1] / rows[2][1]) * 100:.0f}%** of "
                      f"throughput; invocation log line: **{(1 - rows[0][1] / rows[1][1]) * 100:.0f}%**.", ""]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_http.publish(lines, BEGIN, END, write=not args.no_write)


if __name__ == "__main__":
    main()
