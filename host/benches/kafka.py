#!/usr/bin/env python3
"""Kafka benchmark, against a real broker (tansu, scripts/tansu.sh) and
InfluxDB 1.x (scripts/influxdb.sh), release builds on loopback:

- collector: `nexuspipe gen` posting to `nexuspipe run --role collector`;
  every 202 waits for the broker's acks=all. Baseline: the same generator
  producing straight to the topic (`gen --target kafka://`), which is the
  most the broker takes from one client.
- processor: `nexuspipe run --role processor` (default pipeline) consuming a
  topic filled beforehand (1 000 000 events), until every event went through
  every stage (the throughput), and on until the points are in InfluxDB
  (`drain_seconds`); then two processors in one group on the same topic. Baseline: the embedded engine (`nexuspipe run`)
  on the same generator, batches of 100 (host/benches/load.py).

Each case runs --repeat times; the report gives medians, ratios and CPU
seconds per process (the broker shares the 2 cores with NexusPipe).

Usage: make bench-kafka   (or python3 host/benches/kafka.py [--repeat 3])
"""
import argparse, json, re, socket, statistics, subprocess, sys, tempfile, time, urllib.request

from load import BIN, ROOT, free_port, metrics, process_cpu, run_case, scalar, start_server, thread_cpu


def labelled_sum(text, name):
    """Sum of a metric over all its label sets."""
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))


def wait_until(what, ok, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ok():
                return
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def listening(port):
    def ok():
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    return ok


class Servers:
    """tansu and InfluxDB 1.x, each a plain process under one temp dir."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="nexuspipe-bench-kafka-")
        self.kafka = free_port()
        self.influx = free_port()
        self.procs = []
        self.tansu = self.spawn("tansu", [f"{ROOT}/scripts/tansu.sh", str(self.kafka)])
        self.spawn("influxdb", [f"{ROOT}/scripts/influxdb.sh", f"{self.dir}/influx", str(self.influx), str(free_port())])
        wait_until("tansu", listening(self.kafka))
        wait_until("influxdb", lambda: urllib.request.urlopen(f"http://127.0.0.1:{self.influx}/ping"))
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{self.influx}/query", data=b"q=CREATE DATABASE np"))

    def spawn(self, name, cmd):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/{name}.log", "w"))
        self.procs.append(p)
        return p

    def kafka_config(self, topic, group="bench"):
        # tansu 0.6 answers a fetch from inside a record batch with the next
        # batch: `scan` reads a partition from its start instead, skipping
        # what was processed (README, "resume").
        return (f'[kafka]\nbrokers = "127.0.0.1:{self.kafka}"\ntopic = "{topic}"\ngroup = "{group}"\n'
                'resume = "scan"\n')

    def stop(self):
        for p in self.procs:
            p.terminate()
            p.wait()


def gen(target, batch, duration, rate=0, connections=4, extra=()):
    out = subprocess.run([BIN, "gen", "--target", target, "--rate", str(rate), "--duration", duration,
                          "--batch", str(batch), "--connections", str(connections), "--seed", "7", *extra],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"gen {target}: {out.stderr}")
    return json.loads(out.stdout[out.stdout.index("{"):])


def collector_case(servers, i, batch, duration, connections):
    p, port, _ = start_server(f"collector-{batch}-{i}", config=servers.kafka_config(f"col-{batch}-{i}"),
                              role="collector")
    try:
        cpu0, broker0 = process_cpu(p.pid), process_cpu(servers.tansu.pid)
        report = gen(f"http://127.0.0.1:{port}", batch, duration, connections=connections)
        report["cpu_seconds"] = {"collector": round(process_cpu(p.pid) - cpu0, 2),
                                 "broker": round(process_cpu(servers.tansu.pid) - broker0, 2)}
        return report
    finally:
        p.terminate()
        p.wait()


def processor_case(servers, i, topic, events, processors=1, bin=BIN):
    """Consumes `topic` (holding `events` events) with a new group of
    `processors` processes. Throughput: events over the seconds from the
    first event read to the last one through every stage; `drain_seconds`
    goes on to the last point delivered to InfluxDB (the sink flushes every
    second, so a short run's tail weighs on it)."""
    config = (servers.kafka_config(topic, f"bench-{i}-{processors}-{'this' if bin == BIN else 'previous'}")
              + f'[influxdb]\nurl = "http://127.0.0.1:{servers.influx}"\napi = "v1"\ndatabase = "np"\n')
    started_procs = [start_server(f"processor-{i}-{processors}-{n}", config=config, role="processor", bin=bin)
                     for n in range(processors)]
    try:
        cpu0 = [process_cpu(p.pid) for p, _, _ in started_procs]
        broker0 = process_cpu(servers.tansu.pid)
        started = time.time()
        first = last = processed_at = None
        seen = None
        while True:
            ms = [metrics(port) for _, port, _ in started_procs]
            now = time.time()
            state = tuple(sum(f(m) for m in ms) for f in (
                lambda m: scalar(m, "nexuspipe_events_received_total"),
                lambda m: scalar(m, "nexuspipe_events_processed_total"),
                lambda m: labelled_sum(m, "nexuspipe_sink_delivered_total"),
                lambda m: labelled_sum(m, "nexuspipe_sink_backlog")))
            if first is None and state[0] > 0:
                first = now
            if seen is None or state[1] != seen[1]:
                processed_at = now
            if state != seen:
                seen, last = state, now
            # Done: (nearly) every event read, and nothing moved for 3 s with
            # an empty sink backlog. `events_read` tells if some were not.
            if state[0] >= events * 0.99 and state[3] == 0 and now - last > 3:
                break
            if first is None and now - started > 120:
                sys.exit(f"processor-{i} read nothing in 120 s (see the data dirs)")
            if now - started > 600:
                sys.exit(f"processor-{i} ({processors} processes) did not finish in 600 s: {state}")
            time.sleep(0.05)
        seconds = processed_at - first
        return {
            "events": events,
            "events_read": seen[0],
            "processors": processors,
            "seconds": round(seconds, 2),
            "drain_seconds": round(last - first, 2),
            "events_per_second": round(events / seconds),
            "stage_events_processed": seen[1],
            "points_delivered": seen[2],
            "cpu_seconds": {"processors": round(sum(process_cpu(p.pid) for p, _, _ in started_procs) - sum(cpu0), 2),
                            "broker": round(process_cpu(servers.tansu.pid) - broker0, 2)},
        }
    finally:
        for p, _, _ in started_procs:
            p.terminate()
            p.wait()


def median(xs):
    return round(statistics.median(xs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="10s", help="of each collector run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16,
                    help="clients at once in the second collector and producer case (the first has 4)")
    ap.add_argument("--events", type=int, default=1_000_000, help="in the processor's input topic")
    ap.add_argument("--only", choices=["collector", "processor"], help="run one side (and its baseline)")
    ap.add_argument("--two-processors", action="store_true",
                    help="also two processors in one group on the same machine")
    ap.add_argument("--previous", metavar="BIN",
                    help="also a processor of this build (say, main's), side by side with this one")
    args = ap.parse_args()
    subprocess.run(["make", "-C", ROOT, "plugins"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cargo", "build", "--release", "-p", "nexuspipe"], cwd=ROOT, check=True)
    servers = Servers()
    try:
        runs = {"collector_batch_100": [], "collector_batch_100_many_clients": [], "collector_single": [],
                "producer_baseline_many_clients": [], "producer_baseline_batch_100": [],
                "processor": [], "processor_previous": [], "two_processors": [], "embedded_batch_100": []}
        for i in range(args.repeat if args.only != "processor" else 0):
            runs["collector_batch_100"].append(collector_case(servers, i, 100, args.duration, 4))
            # Each post waits for its acks (about 2 ms), so 4 clients
            # measure that wait as much as the collector; --connections
            # clients keep it busy, as many trackers and services do.
            runs["collector_batch_100_many_clients"].append(
                collector_case(servers, i, 100, args.duration, args.connections))
            # Each single-event post waits for its ack (a few ms): throughput
            # comes from many clients at once, as with browser trackers.
            runs["collector_single"].append(collector_case(servers, i, 1, args.duration, 64))
            runs["producer_baseline_batch_100"].append(
                gen(f"kafka://127.0.0.1:{servers.kafka}/raw-{i}", 100, args.duration))
            runs["producer_baseline_many_clients"].append(
                gen(f"kafka://127.0.0.1:{servers.kafka}/raw-many-{i}", 100, args.duration,
                    connections=args.connections))
        # The processor's input: --events events, produced once (gen creates
        # the topic), spanning minutes of event time so windows close and
        # points flow to InfluxDB while it runs.
        seconds = max(1, args.events // 100_000) if args.only != "collector" else 0
        filled = seconds and gen(f"kafka://127.0.0.1:{servers.kafka}/input", 100, f"{seconds}s",
                                 rate=args.events // seconds, extra=("--event-rate", "1000"))
        for i in range(args.repeat if args.only != "collector" else 0):
            runs["processor"].append(processor_case(servers, i, "input", filled["events_accepted"]))
            if args.previous:
                runs["processor_previous"].append(
                    processor_case(servers, i, "input", filled["events_accepted"], bin=args.previous))
            if args.two_processors:
                runs["two_processors"].append(
                    processor_case(servers, i, "input", filled["events_accepted"], 2))
            runs["embedded_batch_100"].append(run_case(100, args.duration, 0, 4))
    finally:
        servers.stop()

    def rate(case, key):
        xs = [r[key] if key in r else r["generator"][key] for r in runs[case]]
        return median(xs) if xs else None

    def ratio(a, b):
        return round(a / b, 2) if a and b else None

    summary = {
        "collector_batch_100_events_per_second": rate("collector_batch_100", "accepted_per_second"),
        "collector_batch_100_p50_p99_ms": [
            statistics.median(r["request_latency_ms"][q] for r in runs["collector_batch_100"])
            for q in ("p50", "p99")] if runs["collector_batch_100"] else None,
        "clients_in_second_case": args.connections,
        "collector_batch_100_many_clients_events_per_second": rate("collector_batch_100_many_clients",
                                                                  "accepted_per_second"),
        "producer_baseline_many_clients_events_per_second": rate("producer_baseline_many_clients",
                                                                 "accepted_per_second"),
        "collector_single_64_clients_events_per_second": rate("collector_single", "accepted_per_second"),
        "producer_baseline_events_per_second": rate("producer_baseline_batch_100", "accepted_per_second"),
        "processor_events_per_second": rate("processor", "events_per_second"),
        "processor_drain_seconds": statistics.median(r["drain_seconds"] for r in runs["processor"])
        if runs["processor"] else None,
        "processor_previous_events_per_second": rate("processor_previous", "events_per_second"),
        "two_processors_events_per_second": rate("two_processors", "events_per_second"),
        "embedded_events_per_second": rate("embedded_batch_100", "accepted_per_second"),
    }
    summary["collector_vs_producer"] = ratio(
        summary["collector_batch_100_events_per_second"], summary["producer_baseline_events_per_second"])
    summary["collector_vs_producer_many_clients"] = ratio(
        summary["collector_batch_100_many_clients_events_per_second"],
        summary["producer_baseline_many_clients_events_per_second"])
    summary["processor_vs_embedded"] = ratio(
        summary["processor_events_per_second"], summary["embedded_events_per_second"])
    summary["processor_vs_previous"] = ratio(
        summary["processor_events_per_second"], summary["processor_previous_events_per_second"])
    summary["two_processors_vs_one"] = ratio(
        summary["two_processors_events_per_second"], summary["processor_events_per_second"])
    print(json.dumps({"runs": runs, "median": summary}, indent=2))


if __name__ == "__main__":
    main()
