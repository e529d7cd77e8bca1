#!/usr/bin/env python3
"""Load benchmark: `nexuspipe gen` against `nexuspipe run` (release builds,
default pipeline, loopback). Reports accepted events/s, request latency, the
ingest-to-output latency histogram from /metrics, and where the CPU time went
(per thread of the server, per plugin, and the generator).

Usage: make bench-load   (or python3 host/benches/load.py [--duration 20s] [--runs 3])
       python3 host/benches/load.py --dedupe   (the duplicate check on and off, alternated, at saturation)
       python3 host/benches/load.py --durability   (only the write-ahead log against memory, at saturation)
       python3 host/benches/load.py --previous BIN   (only this build's server against BIN's, say main's,
                                                      at saturation with 100-event and 1-event posts)

Every run also compares, at saturation and with runs alternated, `durability =
"memory"` with the write-ahead log at its default fsync interval and at
`fsync = "always"`.
"""
import argparse, json, os, re, shutil, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "nexuspipe")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def metrics(port):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()


def histogram_quantiles(text, name, labels=""):
    buckets = []
    for line in text.splitlines():
        m = re.match(rf'{name}_bucket\{{{labels}{"," if labels else ""}le="([^"]+)"\}} (\d+)', line)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), int(m.group(2))))
    total = buckets[-1][1] if buckets else 0
    out = {}
    for q in (0.5, 0.99):
        target = total * q
        out[f"p{int(q * 100)}_le_ms"] = next((b * 1000 for b, c in buckets if c >= target), None)
    return out


def thread_cpu(pid):
    """CPU seconds per thread name of a process."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        secs = (int(fields[11]) + int(fields[12])) / TICK
        key = re.sub(r"-\d+$", "", name)
        out[key] = round(out.get(key, 0) + secs, 2)
    return out


def process_cpu(pid):
    """CPU seconds of a whole process, threads that already exited included
    (the engine's per-round enrich threads do)."""
    stat = open(f"/proc/{pid}/stat").read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def scalar(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def start_server(name, http_extra="", env=None, config="", role="all", bin=BIN):
    """A release `nexuspipe run --role <role>` on a free port with its own data
    dir (default pipeline, plus `config` tables), once /readyz answers.
    Returns (process, port, data dir)."""
    port = free_port()
    data = tempfile.mkdtemp(prefix=f"nexuspipe-{name}-")
    cfg = os.path.join(data, "nexuspipe.toml")
    with open(cfg, "w") as f:
        f.write(f'[http]\nlisten = "127.0.0.1:{port}"\n{http_extra}[engine]\ndata_dir = "{data}/data"\n{config}')
    log = os.path.join(data, "server.log")
    server = subprocess.Popen([bin, "run", "--role", role, "--config", cfg], stderr=open(log, "w"), env=env)
    for _ in range(1200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz")
            return server, port, data
        except Exception:
            time.sleep(0.05)
    server.terminate()
    sys.exit(f"{name}: not ready after 60 s (see {log})")


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def errors(text, queue_full=True):
    """Refused or failed events (a full queue's 429s too, unless
    `queue_full` is false), plugin failures, dead letters, sink dead letters."""
    total = 0.0
    for line in text.splitlines():
        if re.match(r"nexuspipe_(events_rejected_total|events_dead_lettered_total|plugin_failures_total|"
                    r"sink_dead_lettered_total)[{ ]", line) \
                and (queue_full or 'reason="queue_full"' not in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_processed(port, tries=400):
    """Waits (50 ms a try) until the engine has processed what it accepted."""
    for _ in range(tries):
        m = metrics(port)
        if scalar(m, "nexuspipe_events_processed_total") >= scalar(m, "nexuspipe_events_accepted_total"):
            return
        time.sleep(0.05)


def stop_server(server, data):
    """Stops a server and removes its data dir (its log and write-ahead log
    run to gigabytes); KEEP_DATA=1 keeps it."""
    server.terminate()
    server.wait()
    if not os.environ.get("KEEP_DATA"):
        shutil.rmtree(data, ignore_errors=True)


def run_case(batch, duration, rate, connections, config="", bin=BIN):
    server, port, data = start_server("load", config=config, bin=bin)
    try:
        before = thread_cpu(server.pid)
        before_total = process_cpu(server.pid)
        gen_before = os.times()
        t0 = time.time()
        gen = subprocess.run(
            [BIN, "gen", "--target", f"http://127.0.0.1:{port}", "--rate", str(rate), "--duration", duration,
             "--batch", str(batch), "--connections", str(connections), "--seed", "7"],
            capture_output=True, text=True)
        if gen.returncode != 0:
            print(gen.stderr, file=sys.stderr)
        report = json.loads(gen.stdout[gen.stdout.index("{"):])
        wait_processed(port)
        wall = time.time() - t0
        after = thread_cpu(server.pid)
        server_cpu = process_cpu(server.pid) - before_total
        gen_after = os.times()
        gen_cpu = (gen_after.children_user - gen_before.children_user
                   + gen_after.children_system - gen_before.children_system)
        accepted = max(report.get("events_accepted", 0), 1)
        m = metrics(port)
        plugins = {}
        for line in m.splitlines():
            mm = re.match(r'nexuspipe_plugin_call_seconds_sum\{plugin="([^"]+)"\} (\S+)', line)
            if mm:
                plugins[mm.group(1)] = round(float(mm.group(2)), 2)
        cpu = {k: round(after.get(k, 0) - before.get(k, 0), 2) for k in after}
        return {
            "batch": batch,
            "rate": rate or "max",
            "generator": report,
            "processed": scalar(m, "nexuspipe_events_processed_total"),
            "ingest_to_output": histogram_quantiles(m, "nexuspipe_ingest_to_output_seconds"),
            "server_cpu_seconds": round(server_cpu, 2),
            "server_cpu_us_per_event": round(server_cpu * 1e6 / accepted, 2),
            "generator_cpu_us_per_event": round(gen_cpu * 1e6 / accepted, 2),
            "server_cpu_seconds_by_thread": {k: v for k, v in cpu.items() if v > 0},
            "plugin_call_seconds": plugins,
            "schema_violations": sum(float(line.rsplit(" ", 1)[1]) for line in m.splitlines()
                                     if line.startswith("nexuspipe_schema_violations_total{")),
            "wall_seconds": round(wall, 2),
        }
    finally:
        stop_server(server, data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="15s")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3, help="runs per case; the median run is reported")
    ap.add_argument("--dedupe", action="store_true",
                    help="only: saturation with the duplicate check on (default) and off, runs alternated")
    ap.add_argument("--durability", action="store_true",
                    help="only: saturation with the write-ahead log (interval, always) and in memory, runs alternated")
    ap.add_argument("--schemas", action="store_true",
                    help="only: saturation with a JSON Schema for each of gen's event types and without, runs alternated")
    ap.add_argument("--previous", metavar="BIN",
                    help="only: this build's server against BIN's (say, main's), 100-event and 1-event posts, alternated")
    args = ap.parse_args()
    subprocess.run(["make", "-C", ROOT, "plugins"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cargo", "build", "--release", "-p", "nexuspipe"], cwd=ROOT, check=True)
    if args.dedupe:
        return print(json.dumps(compare_dedupe(args), indent=2))
    if args.durability:
        return print(json.dumps(compare_durability(args), indent=2))
    if args.previous:
        return print(json.dumps(compare_previous(args), indent=2))
    if args.schemas:
        return print(json.dumps(compare_schemas(args), indent=2))
    cases = [
        # Saturation: as fast as the server accepts (429s are retried).
        (100, 0),
        (1, 0),
        # Below saturation, so ingest-to-output latency is the pipeline's, not the queue's.
        (100, 40_000),
    ]
    results = []
    for batch, rate in cases:
        runs = [run_case(batch, args.duration, rate, args.connections) for _ in range(args.runs)]
        runs.sort(key=lambda r: r["generator"]["accepted_per_second"])
        median = runs[len(runs) // 2]
        median["accepted_per_second_all_runs"] = [r["generator"]["accepted_per_second"] for r in runs]
        results.append(median)
    print(json.dumps({"cases": results, "durability": compare_durability(args)}, indent=2))


def compare(args, variants, batch=100):
    """Saturation (`batch`-event posts) under each (name, config[, server
    binary]) of `variants`, runs alternated so the machine's drift hits
    every variant alike; medians."""
    got = {v[0]: [] for v in variants}
    for _ in range(args.runs):
        for name, config, *bin in variants:
            r = run_case(batch, args.duration, 0, args.connections, config, *bin)
            got[name].append({
                "accepted_per_second": r["generator"]["accepted_per_second"],
                "server_cpu_us_per_event": r["server_cpu_us_per_event"],
                "request_p99_ms": r["generator"].get("request_latency_ms", {}).get("p99"),
                "schema_violations": r["schema_violations"],
            })
    med = lambda xs: sorted(xs)[len(xs) // 2]
    return {name: {"accepted_per_second": med([r["accepted_per_second"] for r in runs]),
                   "server_cpu_us_per_event": med([r["server_cpu_us_per_event"] for r in runs]),
                   "runs": runs} for name, runs in got.items()}


def ratio(out, a, b, key="accepted_per_second"):
    return round(out[a][key] / out[b][key], 3)


def compare_dedupe(args):
    """The cost of idempotent ingest: gen's ids (text, so hashed) at
    saturation, with `dedupe_max_ids` at its default and at 0 (off)."""
    out = compare(args, [("on", ""), ("off", "dedupe_max_ids = 0\n")])
    out["throughput_on_over_off"] = ratio(out, "on", "off")
    out["cpu_per_event_on_over_off"] = ratio(out, "on", "off", "server_cpu_us_per_event")
    return out


def compare_durability(args):
    """What `202` on disk costs: the write-ahead log at the default fsync
    interval and with `fsync = "always"`, against the in-memory queue."""
    out = compare(args, [
        ("memory", 'durability = "memory"\n'),
        ("wal_interval", 'durability = "wal"\nfsync = "interval"\n'),
        ("wal_always", 'durability = "wal"\nfsync = "always"\n'),
    ])
    out["wal_interval_over_memory"] = ratio(out, "wal_interval", "memory")
    out["wal_always_over_memory"] = ratio(out, "wal_always", "memory")
    return out


# A contract for each event type `nexuspipe gen` sends, as a team would
# write it: required properties, types, patterns, ranges, enums.
GEN_SCHEMAS = {
    "page_view": {"type": "object", "required": ["path"],
                  "properties": {"path": {"type": "string", "pattern": "^/", "maxLength": 2048}}},
    "click": {"type": "object", "required": ["path", "element"],
              "properties": {"path": {"type": "string", "pattern": "^/"},
                             "element": {"type": "string", "pattern": "^btn-[0-9]+$"}}},
    "product_view": {"type": "object", "required": ["product_id"],
                     "properties": {"product_id": {"type": "string", "pattern": "^sku-[0-9]{4}$"}}},
    "add_to_cart": {"type": "object", "required": ["product_id", "quantity"],
                    "properties": {"product_id": {"type": "string", "pattern": "^sku-[0-9]{4}$"},
                                   "quantity": {"type": "integer", "minimum": 1, "maximum": 100}}},
    "purchase": {"type": "object", "required": ["amount", "currency", "product_id"],
                 "properties": {"amount": {"type": "number", "minimum": 0},
                                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                                "product_id": {"type": "string"}}},
    "login_failed": {"type": "object", "required": ["reason"],
                     "properties": {"reason": {"enum": ["bad_password", "unknown_user", "locked"]}}},
    "login_success": {"type": "object", "maxProperties": 20},
}


def compare_schemas(args):
    """What checking every event against its type's schema costs at
    saturation: a schema for each event type gen sends (all its events
    valid, which the violation counter confirms), against none."""
    folder = tempfile.mkdtemp(prefix="nexuspipe-schemas-")
    config = "[schemas]\non_invalid = \"reject\"\n"
    for event_type, schema in GEN_SCHEMAS.items():
        path = os.path.join(folder, f"{event_type}.json")
        with open(path, "w") as f:
            json.dump(schema, f)
        config += f'[[schemas.types]]\nevent_type = "{event_type}"\nfile = "{path}"\n'
    out = compare(args, [("with", config), ("without", "")])
    refused = [r["schema_violations"] for r in out["with"]["runs"] if r["schema_violations"]]
    if refused:
        sys.exit(f"gen's events broke the bench's schemas: {refused}")
    out["with_over_without"] = ratio(out, "with", "without")
    out["cpu_per_event_with_over_without"] = ratio(out, "with", "without", "server_cpu_us_per_event")
    out["schema_types"] = len(GEN_SCHEMAS)
    return out


def compare_previous(args):
    """This build's server side by side with another build's (the same
    generator drives both): 100-event posts, then 1-event posts, where the
    cost of each request shows."""
    out = {}
    for batch in (100, 1):
        o = compare(args, [("this", "", BIN), ("previous", "", args.previous)], batch)
        o["this_over_previous"] = ratio(o, "this", "previous")
        out[f"batch_{batch}"] = o
    return out


if __name__ == "__main__":
    main()
