#!/usr/bin/env python3
"""`make bench-flink`: the same jobs on the same NDJSON file in NexusPipe
(`nexuspipe replay --close`) and in Apache Flink (PyFlink's local
mini-cluster, SQL: host/benches/flink_job.py), in one run, wall time
including start-up; then both outputs compared window by window.

- light: events per minute by type (1-minute tumbling windows), and more
  than 5 `login_failed` per IP within 1 minute.
- analytics: events, page_views, unique_users (exact distinct in Flink),
  revenue, top_products (5 minutes sliding by 1, top 10) and the same burst
  rule; no enrichment.

Flink (`apache-flink` from PyPI) is installed into target/venv-flink on the
first run, and runs on the machine's Java (17). The events come from
`nexuspipe gen --output` (4 million by default, 2 000 per second of event
time: 33 minutes of traffic), written once to target/bench-flink/.

Start-up is the wall time of the same job over a one-event file. Peak RSS is
the largest sum over the process tree (Flink: Python driver and JVM),
sampled every 50 ms. Medians over --runs.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target" / "bench-flink"
VENV = ROOT / "target" / "venv-flink"
FLINK = "apache-flink==2.2.1"
BIN = ROOT / "target" / "release" / "nexuspipe"
START_MS = 1767225600000  # 2026-01-01T00:00:00Z

EVENTS_METRIC = {
    "measurement": "events",
    "window": {"type": "tumbling", "size": "1m"},
    "group_by": [{"tag": "event_type", "from": "event_type"}],
    "aggregates": [{"fn": "count", "as": "count"}],
}
ANALYTICS_METRICS = [
    EVENTS_METRIC,
    {
        "measurement": "page_views",
        "filter": {"event_type": "page_view"},
        "window": {"type": "tumbling", "size": "1m"},
        "group_by": [{"tag": "path", "from": "properties.path"}],
        "aggregates": [{"fn": "count", "as": "count"}],
    },
    {
        "measurement": "unique_users",
        "filter": {"where": [{"field": "user_id", "op": "exists"}]},
        "window": {"type": "tumbling", "size": "1m"},
        "aggregates": [{"fn": "unique", "field": "user_id", "as": "users"}],
    },
    {
        "measurement": "revenue",
        "filter": {"event_type": ["purchase", "purchase_completed"]},
        "window": {"type": "tumbling", "size": "1m"},
        "group_by": [{"tag": "currency", "from": "properties.currency"}],
        "aggregates": [
            {"fn": "count", "as": "orders"},
            {"fn": "sum", "field": "amount", "as": "total"},
            {"fn": "avg", "field": "amount", "as": "avg"},
        ],
    },
    {
        "measurement": "top_products",
        "filter": {"event_type": "product_view"},
        "window": {"type": "sliding", "size": "5m", "slide": "1m"},
        "top": {"field": "properties.product_id", "n": 10, "as": "product_id", "count_as": "views"},
    },
]
BURST_RULE = {
    "id": "failed_login_burst",
    "type": "threshold",
    "severity": "warning",
    "summary": "{count} failed logins from {key} within {window}",
    "key": "metadata.ip_address",
    "filter": {"event_type": "login_failed"},
    "window": "1m",
    "above": 5,
}
JOBS = {
    "light": {"metrics": [EVENTS_METRIC]},
    "analytics": {"metrics": ANALYTICS_METRICS},
}


def nexuspipe_config(job):
    plugins = ROOT / "target" / "plugins"
    funnel = json.dumps(JOBS[job])
    alerts = json.dumps({"rules": [BURST_RULE]})
    return (
        '[engine]\nout_of_orderness = "5s"\n\n'
        f'[[plugins]]\nname = "funnel"\npath = "{plugins / "funnel.wasm"}"\n'
        f"config = '''{funnel}'''\n\n"
        f'[[plugins]]\nname = "alerts"\npath = "{plugins / "alerts.wasm"}"\n'
        f"config = '''{alerts}'''\n"
    )


def ensure_flink():
    python = VENV / "bin" / "python"
    ok = subprocess.run(
        [str(python), "-c", "import pyflink"], capture_output=True
    ).returncode == 0 if python.exists() else False
    if not ok:
        print(f"installing {FLINK} into {VENV} (once; about 800 MB)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", FLINK],
            check=True,
        )
    return python


def events_file(n, rate):
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"events-{n}-{rate}.ndjson"
    if not path.exists():
        seconds = n // rate
        tmp = path.with_suffix(".tmp")
        subprocess.run(
            [str(BIN), "gen", "--output", str(tmp), "--rate", str(rate),
             "--duration", f"{seconds}s", "--seed", "1", "--start-ms", str(START_MS)],
            check=True, stdout=subprocess.DEVNULL,
        )
        tmp.rename(path)
    one = OUT / "one-event.ndjson"
    with open(path) as f, open(one, "w") as o:
        o.write(f.readline())
    return path, one


def tree_rss(pid):
    """RSS of pid and its descendants, in bytes."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def measure(cmd):
    """Runs cmd; returns (wall seconds, peak tree RSS in bytes, stdout)."""
    started = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while p.poll() is None:
            peak[0] = max(peak[0], tree_rss(p.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = p.communicate()
    wall = time.monotonic() - started
    t.join()
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{err[-4000:]}")
    return wall, peak[0], out


def run_nexuspipe(job, path, work):
    cfg = work / f"{job}.toml"
    cfg.write_text(nexuspipe_config(job))
    data = Path(tempfile.mkdtemp(dir=work, prefix=f"np-{job}-"))
    wall, rss, out = measure(
        [BIN, "replay", "--from", path, "--config", cfg, "--data-dir", data, "--close"]
    )
    summary = json.loads(out.strip().splitlines()[-1])
    return wall, rss, data, summary


def run_flink(python, job, path, parallelism, work):
    data = Path(tempfile.mkdtemp(dir=work, prefix=f"flink-{job}-p{parallelism}-"))
    wall, rss, _ = measure(
        [python, ROOT / "host" / "benches" / "flink_job.py", "--job", job,
         "--input", path, "--output", data / "out", "--parallelism", str(parallelism)]
    )
    return wall, rss, data / "out"


# ---- outputs -------------------------------------------------------------

def utc_ms(s):
    s = s.strip('"')
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in s else "%Y-%m-%d %H:%M:%S"
    d = datetime.datetime.strptime(s, fmt).replace(tzinfo=datetime.timezone.utc)
    return round(d.timestamp() * 1000)


def line_protocol(path):
    """measurement -> {(tags..., ts): fields}, the last point of a series and time winning."""
    out = {}
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        head, fields, ts = line.rsplit(" ", 2) if line.count(" ") >= 2 else (None, None, None)
        parts = head.split(",")
        tags = dict(p.split("=", 1) for p in parts[1:])
        vals = {}
        for kv in fields.split(","):
            k, v = kv.split("=", 1)
            if v.endswith("i"):
                vals[k] = int(v[:-1])
            elif v.startswith('"'):
                vals[k] = v.strip('"')
            else:
                vals[k] = float(v)
        key = (tuple(sorted(tags.items())), int(ts))
        out.setdefault(parts[0], {})[key] = vals
    return out


def csv_rows(folder):
    rows = []
    for f in sorted(Path(folder).glob("part-*")):
        for line in open(f):
            line = line.strip()
            if line:
                rows.append(next(iter(__import__("csv").reader([line]))))
    return rows


def nexuspipe_outputs(data, job):
    lp = line_protocol(data / "metrics.lp")
    r = {"events": {}, "page_views": {}, "unique_users": {}, "revenue": {}, "top_products": {}}
    for (tags, ts), f in lp.get("events", {}).items():
        r["events"][(ts, dict(tags)["event_type"])] = f["count"]
    for (tags, ts), f in lp.get("page_views", {}).items():
        r["page_views"][(ts, dict(tags).get("path"))] = f["count"]
    for (tags, ts), f in lp.get("unique_users", {}).items():
        r["unique_users"][ts] = f["users"]
    for (tags, ts), f in lp.get("revenue", {}).items():
        r["revenue"][(ts, dict(tags).get("currency"))] = (f["orders"], f["total"], f["avg"])
    for (tags, ts), f in lp.get("top_products", {}).items():
        r["top_products"][(ts, int(dict(tags)["rank"]))] = (f["product_id"], f["views"])
    first = {}
    matches = 0
    for line in open(data / "alerts.jsonl"):
        a = json.loads(line)
        if a["rule_id"] == BURST_RULE["id"] and a["status"] == "firing":
            matches += 1
            t = a["starts_at"]
            t = t if isinstance(t, int) else round(
                datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000)
            first[a["key"]] = min(first.get(a["key"], t), t)
    r["bursts"] = first
    r["burst_count"] = matches
    if job == "light":
        r = {k: r[k] for k in ("events", "bursts", "burst_count")}
    return r


def flink_outputs(out, job):
    r = {"events": {}, "page_views": {}, "unique_users": {}, "revenue": {}, "top_products": {}}
    for w, t, n in csv_rows(out / "events_per_type"):
        r["events"][(utc_ms(w), t)] = int(n)
    first = {}
    rows = csv_rows(out / "bursts")
    for ip, _first, last in rows:
        first[ip] = min(first.get(ip, utc_ms(last)), utc_ms(last))
    r["bursts"] = first
    r["burst_count"] = len(rows)
    if job == "analytics":
        for w, path, n in csv_rows(out / "page_views"):
            r["page_views"][(utc_ms(w), path or None)] = int(n)
        for w, n in csv_rows(out / "unique_users"):
            r["unique_users"][utc_ms(w)] = int(n)
        for w, cur, orders, total, avg in csv_rows(out / "revenue"):
            r["revenue"][(utc_ms(w), cur or None)] = (int(orders), float(total), float(avg))
        for w, product, views, rank in csv_rows(out / "top_products"):
            r["top_products"][(utc_ms(w), int(rank))] = (product, int(views))
    else:
        r = {k: r[k] for k in ("events", "bursts", "burst_count")}
    return r


def close(a, b):
    if isinstance(a, tuple):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0)
    return a == b


def compare(np_out, fl_out):
    """Lines saying what is equal and by how much what differs."""
    lines, equal = [], True
    for name in np_out:
        if name == "burst_count":
            continue
        a, b = np_out[name], fl_out[name]
        same = [k for k in a if k in b and close(a[k], b[k])]
        only_np = [k for k in a if k not in b]
        only_fl = [k for k in b if k not in a]
        differ = [k for k in a if k in b and not close(a[k], b[k])]
        if name == "unique_users" and differ:
            # Exact up to 10 000 distinct values per window, then HyperLogLog.
            errs = [abs(a[k] - b[k]) / b[k] for k in differ]
            exact = max((b[k] for k in same), default=0)
            lines.append(
                f"  unique_users: {len(same)} of {len(b)} windows equal (up to {exact} users); "
                f"{len(differ)} approximate (HyperLogLog above 10 000; {min(b[k] for k in differ)} "
                f"to {max(b[k] for k in differ)} users), {statistics.mean(errs):.2%} off on "
                f"average, at most {max(errs):.2%}"
            )
            equal &= not only_np and not only_fl
            continue
        ok = not (only_np or only_fl or differ)
        equal &= ok
        what = "first firing per IP" if name == "bursts" else "windows"
        lines.append(
            f"  {name}: {len(same)} of {len(b)} {what} equal"
            + ("" if ok else f"; only NexusPipe {sorted(only_np)[:3]} ({len(only_np)}), "
               f"only Flink {sorted(only_fl)[:3]} ({len(only_fl)}), "
               f"different {[(k, a[k], b[k]) for k in sorted(differ)[:3]]} ({len(differ)})")
        )
    lines.append(
        f"  burst alerts: NexusPipe fired {np_out['burst_count']} times (once per episode above 5), "
        f"Flink matched {fl_out['burst_count']} times (every six in a row)"
    )
    return equal, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=4_000_000)
    ap.add_argument("--rate", type=int, default=2000, help="events per second of event time")
    ap.add_argument("--runs", type=int, default=3, help="runs of each engine and job (median)")
    ap.add_argument("--jobs", default="light,analytics")
    ap.add_argument("--parallelism", default="1,2", help="Flink's, comma-separated")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: cargo build --release -p nexuspipe")
    python = ensure_flink()
    path, one = events_file(a.events, a.rate)
    n = sum(1 for _ in open(path))
    print(f"{n} events in {path.relative_to(ROOT)}; {a.runs} runs each, medians", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-flink-"))
    rows, results, all_equal = [], [], True
    for job in a.jobs.split(","):
        # Start-up: the job over a one-event file.
        np_start = run_nexuspipe(job, one, work)[0]
        fl_start = run_flink(python, job, one, 1, work)[0]
        engines = [("NexusPipe", None)] + [("Flink", int(p)) for p in a.parallelism.split(",")]
        walls = {e: [] for e in engines}
        rss = {e: [] for e in engines}
        outputs = {}
        # Alternated, so a noisy minute hits every engine alike.
        for _ in range(a.runs):
            for e in engines:
                if e[1] is None:
                    w, r, data, summary = run_nexuspipe(job, path, work)
                    assert summary["events"] == n, summary
                    outputs[e] = lambda data=data: nexuspipe_outputs(data, job)
                else:
                    w, r, out = run_flink(python, job, path, e[1], work)
                    outputs[e] = lambda out=out: flink_outputs(out, job)
                walls[e].append(w)
                rss[e].append(r)
                print(f"  {job} {e[0]}{'' if e[1] is None else f' p{e[1]}'}: {w:.2f} s", flush=True)
        np_wall = statistics.median(walls[engines[0]])
        for e in engines:
            wall = statistics.median(walls[e])
            start = np_start if e[1] is None else fl_start
            row = {
                "job": job,
                "engine": e[0] + ("" if e[1] is None else f" (parallelism {e[1]})"),
                "events_per_second": round(n / wall),
                "wall_s": round(wall, 2),
                "walls": [round(w, 2) for w in walls[e]],
                "startup_s": round(start, 2) if e[1] in (None, 1) else None,
                "peak_rss_mib": round(max(rss[e]) / 2**20),
                "nexuspipe_faster": round(wall / np_wall, 1),
            }
            rows.append(row)
            results.append(row)
        np_out = outputs[engines[0]]()
        for e in engines[1:]:
            equal, lines = compare(np_out, outputs[e]())
            all_equal &= equal
            print(f"{job}: NexusPipe against Flink p{e[1]}: {'equal' if equal else 'DIFFERENT'}")
            print("\n".join(lines))
    print()
    print("| job | engine | events/s | wall (runs) | start-up | peak RSS | NexusPipe faster |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        start = "" if r["startup_s"] is None else f"{r['startup_s']} s"
        print(
            f"| {r['job']} | {r['engine']} | {r['events_per_second']:,} | {r['wall_s']} s "
            f"({', '.join(map(str, r['walls']))}) | {start} | {r['peak_rss_mib']} MiB | "
            f"{r['nexuspipe_faster']}× |"
        )
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    subprocess.run(["rm", "-rf", str(work)])
    if not all_equal:
        sys.exit("the outputs differ (see above)")


if __name__ == "__main__":
    main()
