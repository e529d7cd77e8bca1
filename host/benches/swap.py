#!/usr/bin/env python3
"""Swap benchmark: uploads new versions of the default pipeline's stateful
plugins (`PUT /v1/plugins/{name}`) to a release `nexuspipe run` while
`nexuspipe gen` keeps a steady load on it, and reports:

- the swap pause (events held back by the engine: snapshot of the old
  instance, restore into the new one, dropping the old), p50/p99;
- upload-to-active (request received to version running: compile or cache
  lookup, instantiate, init, swap), p50/p99, and the client's round trip;
- the state handed over per swap (bytes).

Each upload alternates between the bundled component and a copy with one
extra custom section, so every swap is a real change of version.

Usage: make bench-swap   (or python3 host/benches/swap.py [--swaps 50] [--rate 20000])
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time, urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import BIN, ROOT, start_server  # noqa: E402

TOKEN = "bench-token"


def custom_section(name, payload):
    """A Wasm custom section (id 0): valid anywhere at a component's top level."""
    def leb(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    body = leb(len(name)) + name.encode() + payload
    return b"\x00" + leb(len(body)) + body


def put(port, name, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/plugins/{name}",
        data=body,
        method="PUT",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/wasm"},
    )
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as e:
        sys.exit(f"PUT {name}: {e.code}: {e.read().decode()}")
    return answer, (time.perf_counter() - t) * 1000


def quantiles(xs):
    xs = sorted(xs)
    return {
        "p50": round(statistics.median(xs), 3),
        "p99": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 3),
        "max": round(xs[-1], 3),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=50, help="uploads per plugin")
    ap.add_argument("--rate", type=int, default=20000, help="events/s of background load")
    args = ap.parse_args()
    data_cache = tempfile.mkdtemp(prefix="nexuspipe-swap-cache-")
    env = dict(os.environ, NEXUSPIPE_CACHE_DIR=data_cache)
    server, port, data = start_server("swap", f'admin_token = "{TOKEN}"\n', env)
    gen = None
    try:
        duration = max(10, args.swaps // 2)
        gen = subprocess.Popen(
            [BIN, "gen", "--rate", str(args.rate), "--duration", f"{duration + 30}s", "--target", f"http://127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(2)  # let windows and state build up
        report = {"background_rate": args.rate, "swaps_per_plugin": args.swaps, "plugins": {}}
        for name in ("funnel", "alerts"):
            original = open(os.path.join(ROOT, "target", "plugins", f"{name}.wasm"), "rb").read()
            versions = [original, original + custom_section("nexuspipe-bench", b"v2")]
            # First upload of each version compiles it; the rest hit the cache.
            cold = [put(port, name, v) for v in versions]
            pauses, active, round_trip, state = [], [], [], []
            for i in range(args.swaps):
                answer, rt = put(port, name, versions[i % 2])
                assert answer["state"] == "kept", answer
                pauses.append(answer["swap_pause_us"] / 1000)
                active.append(answer["upload_to_active_ms"])
                round_trip.append(rt)
                state.append(answer["state_bytes"])
                time.sleep(0.05)
            report["plugins"][name] = {
                "component_bytes": len(original),
                "state_bytes_median": statistics.median(state),
                "swap_pause_ms": quantiles(pauses),
                "upload_to_active_ms_cached": quantiles(active),
                "upload_to_active_ms_first_compile": round(cold[1][0]["upload_to_active_ms"], 1),
                "client_round_trip_ms": quantiles(round_trip),
            }
        report["server_log"] = os.path.join(data, "server.log")
        print(json.dumps(report, indent=2))
    finally:
        if gen:
            gen.kill()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
