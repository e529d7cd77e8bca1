#!/usr/bin/env python3
"""Soak: `nexuspipe run` (release, default pipeline, write-ahead log on)
under `nexuspipe gen` at half its saturation rate, for 30 minutes by
default. Every 10 s it records RSS, CPU, events/s processed, the
ingest-to-output p99 of that interval, open file descriptors and errors to
a CSV, then plots them (PNG) and says whether each stayed flat after
warm-up.

Usage: make soak   (SOAK_DURATION=30m by default)
       python3 host/benches/soak.py [--duration 30m] [--rate N] [--out docs/soak]
"""
import argparse, csv, json, os, re, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import (BIN, ROOT, errors, metrics, process_cpu, rss_mb, run_case, scalar,  # noqa: E402
                  start_server, stop_server)

INTERVAL = 10
WARMUP = 60
EVENT_RATE = 10_000


def buckets(text, name):
    out = []
    for line in text.splitlines():
        m = re.match(rf'{name}_bucket\{{le="([^"]+)"\}} (\d+)', line)
        if m:
            out.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), int(m.group(2))))
    return out


def p99_between(before, after):
    """The p99 upper bound (ms) of what the histogram took between two scrapes."""
    delta = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = delta[-1][1] if delta else 0
    if total == 0:
        return None
    return next(le * 1000 for le, c in delta if c >= 0.99 * total)


def parse_duration(s):
    units = {"s": 1, "m": 60, "h": 3600}
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


def plot(rows, png):
    """One panel per figure, with matplotlib from a virtualenv under target/."""
    venv = os.path.join(ROOT, "target", "venv-soak")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    if subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode != 0:
        subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True)
    script = r"""
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
t = [float(r["seconds"]) / 60 for r in rows]
panels = [("rss_mb", "RSS (MB)"), ("cpu_percent", "CPU (% of one core)"), ("events_per_second", "events/s processed"),
          ("ingest_to_output_p99_ms", "ingest to output p99 (ms, upper bound)"), ("open_fds", "open file descriptors"),
          ("errors", "errors (total)")]
fig, axes = plt.subplots(len(panels), 1, figsize=(9, 13), sharex=True)
for ax, (key, label) in zip(axes, panels):
    ys = [float(r[key]) if r[key] not in ("", "None") else float("nan") for r in rows]
    ax.plot(t, ys, lw=1.2)
    ax.set_ylabel(label, fontsize=8)
    ax.set_ylim(bottom=0, top=max([y for y in ys if y == y] + [1]) * 1.15)
    ax.grid(alpha=0.3)
axes[-1].set_xlabel("minutes")
fig.suptitle(sys.argv[3])
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
"""
    csv_path = png[:-4] + ".csv"
    title = f"nexuspipe soak: default pipeline, write-ahead log, {rows[0]['rate']} events/s offered"
    subprocess.run([py, "-c", script, csv_path, png, title], check=True)


def flat(rows, key, tolerance):
    """After warm-up: the last quarter's median within `tolerance` (relative)
    of the second quarter's."""
    vals = [float(r[key]) for r in rows if r["seconds"] >= WARMUP and r[key] is not None]
    if len(vals) < 8:
        return None
    q = len(vals) // 4
    early, late = statistics.median(vals[q:2 * q]), statistics.median(vals[-q:])
    return {"early": round(early, 2), "late": round(late, 2),
            "flat": abs(late - early) <= tolerance * max(early, 1e-9)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default=os.environ.get("SOAK_DURATION", "30m"))
    ap.add_argument("--rate", type=int, default=0, help="events/s (default: half the measured saturation rate)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "soak"), help="writes OUT.csv and OUT.png")
    args = ap.parse_args()
    subprocess.run(["make", "-C", ROOT, "plugins"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cargo", "build", "--release", "-p", "nexuspipe"], cwd=ROOT, check=True)
    saturation = None
    if not args.rate:
        saturation = run_case(100, "15s", 0, 4)["generator"]["accepted_per_second"]
    rate = args.rate or int(saturation / 2)
    seconds = parse_duration(args.duration)
    server, port, data = start_server("soak")
    rows = []
    try:
        gen = subprocess.Popen(
            # Event time as in the saturation run (gen's nominal 10 000 events
            # per second of event time), so half its rate is half the load. It
            # runs faster than the clock, so it starts as far in the past as
            # the run will carry it (never past max_future ahead of now).
            [BIN, "gen", "--target", f"http://127.0.0.1:{port}", "--rate", str(rate), "--event-rate", str(EVENT_RATE),
             "--start-ms", str(int(time.time() * 1000) - seconds * rate * 1000 // EVENT_RATE - 60_000),
             "--duration", f"{seconds}s", "--batch", "100", "--connections", "4", "--seed", "7"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        m = metrics(port)
        prev = (t0, process_cpu(server.pid), scalar(m, "nexuspipe_events_processed_total"),
                buckets(m, "nexuspipe_ingest_to_output_seconds"))
        while gen.poll() is None:
            time.sleep(INTERVAL - (time.time() - t0) % INTERVAL)
            now = time.time()
            m = metrics(port)
            cpu = process_cpu(server.pid)
            processed = scalar(m, "nexuspipe_events_processed_total")
            hist = buckets(m, "nexuspipe_ingest_to_output_seconds")
            dt = now - prev[0]
            rows.append({
                "seconds": round(now - t0),
                "rate": rate,
                "rss_mb": round(rss_mb(server.pid), 1),
                "cpu_percent": round((cpu - prev[1]) * 100 / dt, 1),
                "events_per_second": round((processed - prev[2]) / dt),
                "ingest_to_output_p99_ms": p99_between(prev[3], hist),
                "open_fds": len(os.listdir(f"/proc/{server.pid}/fd")),
                "errors": errors(m),
            })
            prev = (now, cpu, processed, hist)
            print(json.dumps(rows[-1]), flush=True)
        out, err = gen.communicate()
        report = json.loads(out[out.index("{"):]) if "{" in out else {"stderr": err}
    finally:
        stop_server(server, data)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out + ".png")
    steady = [r for r in rows if r["seconds"] >= WARMUP]
    summary = {
        "duration_s": seconds,
        "saturation_events_per_second": saturation,
        "rate": rate,
        "generator": report,
        "rss_mb": flat(rows, "rss_mb", 0.10),
        "cpu_percent": flat(rows, "cpu_percent", 0.15),
        "events_per_second": flat(rows, "events_per_second", 0.05),
        "open_fds": flat(rows, "open_fds", 0.0),
        "ingest_to_output_p99_ms_max": max((r["ingest_to_output_p99_ms"] or 0) for r in steady) if steady else None,
        "ingest_to_output_p99_ms_median": statistics.median(
            [r["ingest_to_output_p99_ms"] or 0 for r in steady]) if steady else None,
        "errors": rows[-1]["errors"] + report.get("events_failed", 0),
        "csv": args.out + ".csv",
        "png": args.out + ".png",
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
