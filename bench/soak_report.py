#!/usr/bin/env python3
"""Writes the results of a soak (bench/soak.sh) into docs/benchmarks.md,
between the soak-results markers, and plots resident memory, open files and
p99 latency over time into docs/soak.png."""

import argparse
import datetime
import json
import re
from pathlib import Path

import matplotlib
from load_http import machine  # the same machine line as the other benchmarks

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "soak.png"
BEGIN = "<!-- soak-results:begin -->"
END = "<!-- soak-results:end -->"


def plot(r):
    samples = r["samples"]
    windows = r["windows"]
    fig, (mem, lat) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    minutes = [s[0] / 60 for s in samples]
    mem.plot(minutes, [s[1] / 1024 for s in samples], color="tab:blue", label="RSS (MiB)")
    mem.set_ylabel("RSS (MiB)")
    mem.set_ylim(bottom=0)
    files = mem.twinx()
    files.plot(minutes, [s[2] for s in samples], color="tab:green", label="open files")
    files.set_ylabel("open files")
    files.set_ylim(bottom=0)
    mem.axvline(r["warmup_s"] / 60, color="grey", linestyle=":", label="end of warm-up")
    for d in r["deploys"]:
        mem.axvline(d["t"] / 60, color="tab:orange", alpha=0.15, linewidth=1)
    mem.legend(
        handles=mem.get_lines()[:1] + files.get_lines() + mem.get_lines()[1:2],
        loc="lower right",
    )
    mem.set_title(
        f"Berth soak: {r['achieved_rps']:.0f} req/s mixed ({100 * r['achieved_rps'] / r['peak_rps']:.0f} % of peak); "
        "deploys and rollbacks in orange"
    )
    t = [w["t"] / 60 for w in windows if w["t"] >= 0]
    lat.plot(t, [w["p99_ms"] for w in windows if w["t"] >= 0], color="tab:red", label="p99")
    lat.plot(t, [w["p50_ms"] for w in windows if w["t"] >= 0], color="tab:purple", label="p50")
    lat.set_ylabel("latency per 10 s (ms)")
    lat.set_xlabel("minutes")
    lat.set_ylim(bottom=0)
    lat.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)


def table(r, command):
    sent, ok, ledger, expected = r["sent"], r["ok"], r["ledger"], r["ledger_expected"]
    p99s = sorted(w["p99_ms"] for w in r["windows"] if w["t"] >= 0)
    p50s = sorted(w["p50_ms"] for w in r["windows"] if w["t"] >= 0)
    mid = lambda v: v[len(v) // 2] if v else 0.0  # noqa: E731
    deploys = r["deploys"]
    took = sorted(d["seconds"] for d in deploys)
    rows = [
        ("length", f"{r['minutes']:g} min after a {r['warmup_s']:.0f} s warm-up counted in it"),
        (f"peak (mixed, {r['workers']} connections back to back, until the events are delivered)", f"{r['peak_rps']:,.0f} req/s"),
        ("soaked at", f"{r['achieved_rps']:,.0f} req/s ({100 * r['achieved_rps'] / r['peak_rps']:.0f} % of peak)"),
        ("unexpected answers", f"{r['unexpected']}"),
        ("p50 per 10 s (median, worst)", f"{mid(p50s):.2f} ms, {p50s[-1] if p50s else 0:.2f} ms"),
        ("p99 per 10 s (median, worst)", f"{mid(p99s):.2f} ms, {p99s[-1] if p99s else 0:.2f} ms"),
        ("RSS after warm-up → end", f"{r['rss_kib']['after_warmup'] / 1024:.1f} → {r['rss_kib']['end'] / 1024:.1f} MiB ({100 * r['rss_kib']['growth']:+.1f} %)"),
        ("open files after warm-up → end", f"{r['fds']['after_warmup']} → {r['fds']['end']} ({100 * r['fds']['growth']:+.1f} %)"),
        ("ledger records = invocations sent", ", ".join(
            f"{s} {ledger.get(s, 0):,}/{n:,}" for s, n in expected.items())),
        ("events", f"{r['events_acked']:,} acknowledged, {ledger.get('consumer', 0):,} handled (consumer records); at the end "
                   + ", ".join(f"{k} {sum(s[k] for s in r['events']['subscriptions'])}" for k in ("depth", "in_flight", "retrying", "dead_letters"))),
        ("cold starts", f"{r['cold_starts']} of {sent['cold']} requests to a service idle for 3 s"),
        ("hostile guests (500 each)", f"{ok['spin']} out of fuel, {ok['alloc']} past their memory, {ok['panic']} panics"),
        ("deploys and rollbacks", f"{len(deploys)}, {took[len(took) // 2] if took else 0:.2f} s each (median, CLI start to finish)"),
        ("host log", f"{r['log']['warn']} warnings, {r['log']['error']} errors; {r['log']['not_from_hostile_guests']} not from the hostile guests' traps"),
    ]
    mix = ", ".join(f"{k} {sent[k]:,}" for k in ("hello", "echo", "chain", "roll", "events"))
    lines = [
        BEGIN,
        f"Machine: {machine()}. Run {datetime.date.today()}: `{command}`; "
        f"requests sent during the soak and its peak: {mix} (event batches of 5).",
        "",
        "| figure | result |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "![RSS, open files and latency over the soak](soak.png)", END]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--command", default="bench/soak.sh")
    args = ap.parse_args()
    r = json.loads(Path(args.results).read_text())
    plot(r)
    doc = DOC.read_text()
    block = table(r, args.command)
    doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
    DOC.write_text(doc)
    print(block)


if __name__ == "__main__":
    main()
