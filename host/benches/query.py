#!/usr/bin/env python3
"""Query benchmark (`make bench-query`), release builds on loopback:

1. GET /v1/metrics over 24 h of per-minute points of 1 000 series (raw, and
   rolled up to 1 h): latency p50/p99 of whole answers.
2. Ingest throughput of the default pipeline with the store on against off,
   alternated in one run (saturation, 100-event posts).
3. 1 000 WebSocket clients subscribed to everything while 50 000 events/s
   are posted: events processed per second and server CPU per event against
   no clients, alternated.
4. Latency from the request that completes a failed-login burst to the
   `alert` message at a WebSocket client, p50/p99.

The 1 000 clients are benches/ws_clients.rs (Rust, built here), so they take
little of the 2 cores the server is measured on; the alert-latency client is
the `websockets` package (PyPI), installed in a virtual environment under
target/bench-venv on first use.
5. Ten open dashboards (GET / in headless Chromium, benches/dashboards.mjs)
   while 50 000 events/s are posted: throughput and server CPU per event
   against none, alternated.

`--only queries,store,clients,dashboards,alerts` runs a subset.
"""
import argparse, asyncio, json, os, statistics, subprocess, sys, time, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import load  # noqa: E402  (the load benchmark's helpers)

ROOT = load.ROOT
BIN = load.BIN
VENV = os.path.join(ROOT, "target", "bench-venv")
MINUTE = 60_000
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def ensure_websockets():
    try:
        import websockets  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python3")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "websockets==13.1"], check=True)
    # Run again inside the virtual environment.
    os.execv(py, [py] + sys.argv)


def quantiles(xs):
    xs = sorted(xs)
    return {"p50_ms": round(statistics.median(xs), 2), "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 2)}


def post(port, body, content_type="application/x-ndjson"):
    while True:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/events", data=body, headers={"Content-Type": content_type})
        try:
            urllib.request.urlopen(req).read()
            return
        except urllib.error.HTTPError as e:
            if e.code != 429:
                raise
            time.sleep(0.05)


def wait_processed(port):
    for _ in range(6000):
        m = load.metrics(port)
        if load.scalar(m, "nexuspipe_events_processed_total") >= load.scalar(m, "nexuspipe_events_accepted_total"):
            return
        time.sleep(0.05)


def bench_queries(requests):
    """1 000 paths viewed once a minute for 24 h: page_views has 1 000 series of 1 440 points."""
    server, port, _ = load.start_server("query", config='idle_timeout = "1h"\n')
    try:
        lines = []
        for minute in range(24 * 60 + 2):
            ts = START + minute * MINUTE
            for p in range(1000):
                lines.append(f'{{"event_type":"page_view","timestamp":{ts + p},"properties":{{"path":"/p{p}"}}}}')
            if len(lines) >= 8_000:  # under http.max_body (1 MiB)
                post(port, "\n".join(lines).encode())
                lines = []
        if lines:
            post(port, "\n".join(lines).encode())
        wait_processed(port)
        for _ in range(600):
            m = load.metrics(port)
            if load.scalar(m, "nexuspipe_store_points_total") >= load.scalar(m, "nexuspipe_points_written_total"):
                break
            time.sleep(0.05)
        end = START + 24 * 60 * MINUTE
        cases = {
            "raw": f"/v1/metrics?metric=page_views&start_time={START}&end_time={end}",
            "1h_sum": f"/v1/metrics?metric=page_views&start_time={START}&end_time={end}&window=1h&agg=sum",
            "1h_sum_group_by_path": f"/v1/metrics?metric=page_views&group_by=path&start_time={START}&end_time={end}&window=1h&agg=sum",
        }
        out = {}
        for name, path in cases.items():
            url = f"http://127.0.0.1:{port}{path}"
            v = json.loads(urllib.request.urlopen(url).read())
            series = len(v["series"])
            points = sum(len(s["timestamps"]) for s in v["series"])
            # curl times the whole answer (connect to last byte) without
            # the cost of a Python client reading 23 MB.
            times, size = [], 0
            for _ in range(requests):
                r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url],
                                   capture_output=True, text=True, check=True)
                t, size = r.stdout.split()
                times.append(float(t) * 1000)
            out[name] = {**quantiles(times), "answer_bytes": int(size), "series": series, "points": points}
        return out
    finally:
        server.terminate()
        server.wait()


def saturation(store, duration):
    config = "" if store else "[store]\nenabled = false\n"
    server, port, _ = load.start_server("store", config=config)
    try:
        gen = subprocess.run([BIN, "gen", "--target", f"http://127.0.0.1:{port}", "--rate", "0", "--duration", duration,
                              "--batch", "100", "--connections", "4", "--seed", "7"], capture_output=True, text=True)
        report = json.loads(gen.stdout[gen.stdout.index("{"):])
        return report["accepted_per_second"]
    finally:
        server.terminate()
        server.wait()


def ws_clients_binary():
    """The Rust client of benches/ws_clients.rs, built in release."""
    out = subprocess.run(["cargo", "build", "--release", "-q", "-p", "nexuspipe", "--bench", "ws_clients",
                          "--message-format=json"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "ws_clients" and msg.get("executable"):
            return msg["executable"]
    raise SystemExit("ws_clients: no executable built")


def clients_run(port, n, duration, rate, dashboards=False):
    clients = None
    if n:
        # The browser runs at the lowest priority: it stands for the
        # viewers' own machines, so it takes only what the server leaves.
        cmd = (["nice", "-n", "19", "node", os.path.join(HERE, "dashboards.mjs"), f"http://127.0.0.1:{port}", str(n)] if dashboards
               else [WS_CLIENTS[0], f"ws://127.0.0.1:{port}/v1/stream", str(n)])
        clients = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert clients.stdout.readline().strip() == "ready"  # connected and subscribed
    t0 = time.time()
    before_cpu = load.process_cpu(SERVER_PID[0])
    m0 = load.scalar(load.metrics(port), "nexuspipe_events_processed_total")
    subprocess.run([BIN, "gen", "--target", f"http://127.0.0.1:{port}", "--rate", str(rate), "--duration", duration,
                    "--batch", "100", "--connections", "4", "--seed", "7"], capture_output=True, text=True, check=True)
    wall = time.time() - t0
    m1 = load.scalar(load.metrics(port), "nexuspipe_events_processed_total")
    cpu = load.process_cpu(SERVER_PID[0]) - before_cpu
    received = 0
    if clients:
        out, _ = clients.communicate("")
        got = json.loads(out)
        received = got["sampled_per_page"] if dashboards else got["messages_per_client"]
    processed = m1 - m0
    return {"processed_per_second": round(processed / wall), "server_cpu_us_per_event": round(cpu * 1e6 / max(processed, 1), 2),
            ("events_sampled_per_page" if dashboards else "messages_per_client"): received}


WS_CLIENTS = [None]
SERVER_PID = [0]


def with_clients(n, duration, rate, dashboards=False):
    server, port, _ = load.start_server("clients", config="[stream]\nmax_clients = 2000\n")
    SERVER_PID[0] = server.pid
    try:
        return clients_run(port, n, duration, rate, dashboards)
    finally:
        server.terminate()
        server.wait()


async def alert_latency(port, bursts):
    import websockets
    lat = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
        await ws.send(json.dumps({"subscribe": ["alerts"]}))
        await ws.recv()  # subscribed
        loop = asyncio.get_running_loop()
        t = START + 1000
        for b in range(bursts):
            ip = f"198.51.100.{b % 250 + 1}"
            t += 120_000  # past the rule's window and cooldown of the last burst for this ip? distinct ips anyway
            first = "\n".join(json.dumps({"event_type": "login_failed", "timestamp": t + i, "metadata": {"ip_address": ip}}) for i in range(5))
            await loop.run_in_executor(None, post, port, first.encode())
            last = json.dumps({"event_type": "login_failed", "timestamp": t + 5, "metadata": {"ip_address": ip}}).encode()
            t0 = time.perf_counter()
            await loop.run_in_executor(None, post, port, last)
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("type") == "alert" and msg.get("key") == ip and msg.get("status") == "firing":
                    lat.append((time.perf_counter() - t0) * 1000)
                    break
    return quantiles(lat)


def bench_alerts(bursts):
    # Events in order (bound 0): the burst's sixth event is decided at once.
    server, port, _ = load.start_server("alerts", config='out_of_orderness = "0s"\nidle_timeout = "1h"\n')
    try:
        return asyncio.run(alert_latency(port, bursts))
    finally:
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--bursts", type=int, default=200)
    ap.add_argument("--dashboards", type=int, default=10)
    ap.add_argument("--only", default="queries,store,clients,dashboards,alerts")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "alerts" in only:
        ensure_websockets()
    subprocess.run(["make", "-C", ROOT, "plugins"], check=True, stdout=subprocess.DEVNULL)
    if "dashboards" in only:  # Debian's Chromium and playwright-core, as the browser tests use them
        subprocess.run([os.path.join(ROOT, ".ci", "install-browser.sh")], check=True, stdout=subprocess.DEVNULL)
    # The binary and the bench clients in one build: built apart, cargo would
    # rebuild the host for the dev-dependencies' features each time.
    subprocess.run(["cargo", "build", "--release", "-p", "nexuspipe", "--bins", "--bench", "ws_clients"], cwd=ROOT, check=True)
    results = {}
    if "queries" in only:
        results["queries"] = bench_queries(args.requests)
    if "store" in only:
        on, off = [], []
        for _ in range(args.runs):
            off.append(saturation(False, args.duration))
            on.append(saturation(True, args.duration))
        results["store_on_vs_off"] = {"on_per_second": on, "off_per_second": off,
                                      "ratio_of_medians": round(statistics.median(on) / statistics.median(off), 3)}
    if "clients" in only:
        WS_CLIENTS[0] = ws_clients_binary()
        none, many = [], []
        for _ in range(args.runs):
            none.append(with_clients(0, args.duration, 50_000))
            many.append(with_clients(args.clients, args.duration, 50_000))
        results["websocket_clients"] = {"clients": args.clients, "none": none, "with_clients": many,
                                        "throughput_ratio_of_medians": round(
                                            statistics.median(r["processed_per_second"] for r in many)
                                            / statistics.median(r["processed_per_second"] for r in none), 3)}
    if "dashboards" in only:
        # The pages render on the same 2 cores as the server, at nice 19
        # (what a viewer's own machine would do): the server's CPU per event
        # is the dashboards' cost to the engine; the throughput ratio also
        # pays for what the browser still takes.
        none, some = [], []
        for _ in range(args.runs):
            none.append(with_clients(0, args.duration, 50_000))
            some.append(with_clients(args.dashboards, args.duration, 50_000, dashboards=True))
        med = lambda rs, k: statistics.median(r[k] for r in rs)
        results["dashboards"] = {"pages": args.dashboards, "none": none, "with_dashboards": some,
                                 "throughput_ratio_of_medians": round(med(some, "processed_per_second") / med(none, "processed_per_second"), 3),
                                 "server_cpu_per_event_ratio_of_medians": round(med(some, "server_cpu_us_per_event") / med(none, "server_cpu_us_per_event"), 3)}
    if "alerts" in only:
        results["alert_latency"] = bench_alerts(args.bursts)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
