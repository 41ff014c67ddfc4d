#!/usr/bin/env python3
"""Runs the set-ups of bench/gateway.sh one after the other, loads each with
wrk (HTTP/1.1, HTTPS) or h2load (HTTP/2), and writes a results table into
docs/benchmarks.md."""

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
from load_http import machine, start, stop, to_ms  # noqa: E402


def start_berth(cmd):
    """Starts `berth up` and returns (process, public 'host:port', admin
    'host:port') once it has printed both."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    public = admin = None
    deadline = time.time() + 120
    while time.time() < deadline and (public is None or admin is None):
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r" on https?://([0-9.]+:[0-9]+)", line)
        if m and "admin API" in line:
            admin = m.group(1)
        elif m:
            public = m.group(1)
    if public is None or admin is None:
        proc.kill()
        sys.exit(f"berth did not start: {cmd}")
    # Keep draining stderr so the server never blocks on it.
    subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
    return proc, public, admin

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- gateway-results:begin -->"
END = "<!-- gateway-results:end -->"
# High enough never to refuse the load, so that the limit's cost is measured.
RATE = "1000000/s"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def certificate(work):
    """A self-signed certificate for 127.0.0.1 and localhost."""
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def wrk(url, duration, connections, warmup, headers):
    extra = [a for h in headers for a in ("-H", h)]
    if warmup:
        subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{warmup}s", *extra, url],
                       check=True, capture_output=True)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", *extra, url],
        check=True, capture_output=True, text=True,
    ).stdout
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out) or "Socket errors" in out:
        sys.exit(f"wrk saw errors against {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    return rps, p50, p99


def h2load(url, duration, connections, warmup, headers):
    extra = [a for h in headers for a in ("-H", h)]
    base = ["h2load", "-t1", f"-c{connections}", "-m1", *extra]
    if warmup:
        subprocess.run([*base, "-D", str(warmup), url], check=True, capture_output=True)
    out = subprocess.run([*base, "-D", str(duration), url],
                         check=True, capture_output=True, text=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not done or int(done.group(3)) > 0 or "status codes: " in out and not re.search(r"status codes: \d+ 2xx, 0 3xx, 0 4xx, 0 5xx", out):
        sys.exit(f"h2load saw errors against {url}:\n{out}")
    rps = float(re.search(r"finished in [0-9.]+\w+, ([0-9.]+) req/s", out).group(1))
    # h2load's "time for request" line: min max mean sd; report the mean as
    # p50's stand-in is wrong, so percentiles are left out for HTTP/2.
    return rps, None, None


def nginx_conf(work, port, upstream, cert, key, api_key):
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    map_hash_bucket_size 128;
    limit_req_zone $binary_remote_addr zone=api:10m rate=1000000r/s;
    map $http_x_api_key $unknown_key {{ default 1; "{api_key}" 0; }}
    upstream wasm {{ server {upstream}; keepalive 32; }}
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            if ($unknown_key) {{ return 401; }}
            limit_req zone=api burst=1000000 nodelay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://wasm;
        }}
    }}
}}
""")
    return conf


def wait_port(port):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--wasmtime", required=True)
    ap.add_argument("--nginx", required=True)
    ap.add_argument("--component", required=True)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 3)))
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", 6)))
    ap.add_argument("--connections", type=int, default=int(os.environ.get("CONNECTIONS", 16)))
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("WARMUP", 2)))
    ap.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    ap.add_argument("--only", help="comma-separated prefixes of set-up names, for a quick check")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="berth-gateway-bench-"))
    component = Path(args.component).resolve()
    cert, key = certificate(work)
    plain = work / "plain.toml"
    plain.write_text(f'[service.hello]\ncomponent = "{component}"\nroute = "/..."\n')
    guarded = work / "guarded.toml"
    guarded.write_text(
        f'[service.hello]\ncomponent = "{component}"\nroute = "/..."\n'
        f'[service.hello.auth]\napi_keys = true\n'
        f'[service.hello.rate_limit]\nrate = "{RATE}"\nburst = 1000000\nby = "key"\n'
    )
    cache = work / "cache"
    state = work / "state"
    token = "bench-token"

    def berth(manifest, tls):
        cmd = [args.berth, "up", str(manifest), "--listen", "127.0.0.1:0", "--cache-dir", str(cache),
               "--state", str(state), "--admin-listen", "127.0.0.1:0", "--admin-token", token]
        if tls:
            cmd += ["--tls-cert", str(cert), "--tls-key", str(key)]
        return cmd

    # One API key, kept in the state directory for every guarded run (and
    # the code cache warmed).
    proc, _, admin = start_berth(berth(guarded, False))
    api_key = subprocess.run(
        [args.berth, "keys", "create", "bench", "--service", "hello", "--host", f"http://{admin}",
         "--token", token], check=True, capture_output=True, text=True,
    ).stdout.strip()
    stop(proc)
    key_header = [f"X-API-Key: {api_key}"]

    # (name, how to start, scheme, client, headers)
    setups = [
        ("berth, HTTP/1.1", berth(plain, False), "http", wrk, []),
        ("berth, HTTPS (HTTP/1.1, keep-alive)", berth(plain, True), "https", wrk, []),
        ("berth, HTTP/2 h2c", berth(plain, False), "http", h2load, []),
        ("berth, HTTP/2 over TLS", berth(plain, True), "https", h2load, []),
        ("berth, HTTP/1.1 + API key + rate limit", berth(guarded, False), "http", wrk, key_header),
        ("berth, HTTPS + API key + rate limit", berth(guarded, True), "https", wrk, key_header),
        ("wasmtime serve, HTTP/1.1 (no edge)", "wasmtime", "http", wrk, []),
        ("nginx (TLS, key check, limit_req) → wasmtime serve", "nginx", "https", wrk, key_header),
    ]
    if args.only:
        prefixes = args.only.split(",")
        setups = [s for s in setups if any(s[0].startswith(p) for p in prefixes)]
    results = {name: [] for name, *_ in setups}
    for round_ in range(args.rounds):
        for name, how, scheme, client, headers in setups:
            procs = []
            if how in ("wasmtime", "nginx"):
                w, waddr = start([args.wasmtime, "serve", "-S", "cli", "--addr", "127.0.0.1:0", str(component)])
                procs.append(w)
                addr = waddr
                if how == "nginx":
                    port = free_port()
                    conf = nginx_conf(work, port, waddr, cert, key, api_key)
                    n = subprocess.Popen([args.nginx, "-c", str(conf), "-p", str(work)],
                                         stdout=subprocess.DEVNULL, stderr=open(work / "nginx.out", "w"))
                    procs.append(n)
                    wait_port(port)
                    addr = f"127.0.0.1:{port}"
            else:
                p, addr, _ = start_berth(how)
                procs.append(p)
            try:
                r = client(f"{scheme}://{addr}/", args.duration, args.connections, args.warmup, headers)
            finally:
                for p in reversed(procs):
                    stop(p)
            results[name].append(r)
            p50 = f", p50 {r[1]:.3f} ms, p99 {r[2]:.3f} ms" if r[1] is not None else ""
            print(f"round {round_ + 1} {name}: {r[0]:.0f} req/s{p50}", flush=True)

    def med(name, i):
        values = [r[i] for r in results[name] if r[i] is not None]
        return statistics.median(values) if values else None

    if args.only:
        for name, *_ in setups:
            print(f"{name}: {med(name, 0):,.0f} req/s")
        return
    base = med("berth, HTTP/1.1", 0)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; the bench hello component, "
        f"{args.connections} connections, {args.duration} s after a {args.warmup} s warm-up "
        f"(`wrk -t1 --latency` for HTTP/1.1, `h2load -t1 -m1` for HTTP/2), load generator and "
        f"servers sharing the machine, median of {args.rounds} rounds, `RUST_BACKTRACE` unset "
        f"for every server. Rate limits at {RATE} (never refusing: their cost, not their effect). "
        f"Command: `bench/gateway.sh`.",
        "",
        "| set-up | req/s | vs Berth HTTP/1.1 | p50 | p99 |",
        "|---|---|---|---|---|",
    ]
    for name, *_ in setups:
        rps, p50, p99 = med(name, 0), med(name, 1), med(name, 2)
        lat = (f"{p50:.3f} ms | {p99:.3f} ms" if p50 is not None else "– | –")
        lines.append(f"| {name} | {rps:,.0f} | {rps / base:.2f}× | {lat} |")
    guarded_tls = med("berth, HTTPS + API key + rate limit", 0)
    pair = med("nginx (TLS, key check, limit_req) → wasmtime serve", 0)
    lines += ["", f"Berth with TLS, an API key check and a rate limit serves "
                  f"{guarded_tls / pair:.1f}× the requests of nginx doing the same in front of "
                  f"`wasmtime serve`, in one process instead of two."]
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return
    text = DOC.read_text()
    new = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: new, text, flags=re.S)
    else:
        text += f"\n## The edge: TLS, HTTP/2, auth and rate limits\n\n{new}\n"
    DOC.write_text(text)


if __name__ == "__main__":
    main()
