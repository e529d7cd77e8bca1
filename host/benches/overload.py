#!/usr/bin/env python3
"""Overload: `nexuspipe run` (release, default pipeline) offered twice its
saturation rate for 60 s by `nexuspipe gen --no-retry`.

Reports what the server took and refused (every refusal a 429 with
Retry-After), that every accepted event was processed, the p99 latency of
accepted requests, and the server's RSS each second against its plateau
(the median RSS of the run's second half), after a warm-up (20 s) in which
the queue fills and the allocator settles.

Usage: make bench-overload   (or python3 host/benches/overload.py [--duration 60s] [--saturation N])
"""
import argparse, json, os, statistics, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import (BIN, ROOT, errors, metrics, rss_mb, run_case, scalar, start_server,  # noqa: E402
                  stop_server, wait_processed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="60s")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=20, help="seconds before RSS counts against the plateau")
    ap.add_argument("--saturation", type=int, default=0,
                    help="events/s at saturation (default: measured first, 100-event posts, 15 s)")
    args = ap.parse_args()
    subprocess.run(["make", "-C", ROOT, "plugins"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cargo", "build", "--release", "-p", "nexuspipe"], cwd=ROOT, check=True)
    saturation = args.saturation or run_case(100, "15s", 0, 4)["generator"]["accepted_per_second"]
    offered = int(2 * saturation)
    server, port, data = start_server("overload")
    try:
        samples = []
        done = threading.Event()

        def sample():
            t0 = time.time()
            while not done.is_set():
                samples.append((round(time.time() - t0, 1), round(rss_mb(server.pid), 1)))
                time.sleep(1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        gen = subprocess.run(
            [BIN, "gen", "--target", f"http://127.0.0.1:{port}", "--rate", str(offered),
             "--duration", args.duration, "--batch", "100", "--connections", str(args.connections),
             "--seed", "7", "--no-retry"],
            capture_output=True, text=True)
        report = json.loads(gen.stdout[gen.stdout.index("{"):])
        wait_processed(port, tries=1200)
        done.set()
        sampler.join()
        m = metrics(port)
        rss = [r for _, r in samples]
        half = rss[len(rss) // 2:]
        plateau = statistics.median(half)
        after_warmup = rss[args.warmup:] or rss
        out = {
            "saturation_events_per_second": saturation,
            "offered_events_per_second": offered,
            "generator": report,
            "server_accepted": scalar(m, "nexuspipe_events_accepted_total"),
            "server_processed": scalar(m, "nexuspipe_events_processed_total"),
            "all_accepted_processed": scalar(m, "nexuspipe_events_processed_total")
            == scalar(m, "nexuspipe_events_accepted_total") == report["events_accepted"],
            "every_refusal_has_retry_after": report["refused_429"] == report["refused_429_with_retry_after"],
            "accepted_request_p99_ms": report["request_latency_ms"]["p99"],
            # Plugin failures, dead letters and refusals other than 429.
            "errors": errors(m, queue_full=False),
            "rss_plateau_mb": plateau,
            "warmup_s": args.warmup,
            "rss_max_after_warmup_mb": max(after_warmup),
            "rss_min_after_warmup_mb": min(after_warmup),
            "rss_max_over_plateau": round(max(after_warmup) / plateau, 3),
            "rss_within_10_percent_of_plateau": all(abs(r - plateau) <= 0.1 * plateau for r in after_warmup),
            "rss_mb_each_second": samples,
        }
        print(json.dumps(out, indent=2))
    finally:
        stop_server(server, data)


if __name__ == "__main__":
    main()
