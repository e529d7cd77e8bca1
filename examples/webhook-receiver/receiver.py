#!/usr/bin/env python3
"""A NexusPipe webhook receiver that verifies Standard Webhooks signatures.

    WEBHOOK_SECRET=whsec_... python3 receiver.py --port 9000

Standard library only. For each request it:
  1. reads `webhook-id`, `webhook-timestamp` and `webhook-signature`;
  2. refuses timestamps more than 5 minutes away from now (replay protection);
  3. computes base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), where the
     key is the base64-decoded part after `whsec_` (or the secret's bytes if
     it has no such prefix, as NexusPipe does), and compares it in constant
     time with each `v1,<signature>` in the header (several are allowed,
     space-separated, during a secret rotation);
  4. answers 401 if nothing matches, 200 otherwise, and acts on the alert only
     the first time it sees the `webhook-id`: NexusPipe keeps the id across
     retries, so a retry after a lost answer is not a second alert.
Each accepted alert is printed as one JSON line on stdout.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 5 * 60


def secret_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def verify(key: bytes, msg_id: str, timestamp: str, body: bytes, header: str) -> bool:
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - ts) > TOLERANCE_SECONDS:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for sig in header.split():
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


def make_handler(key: bytes):
    seen = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            msg_id = self.headers.get("webhook-id", "")
            ok = verify(
                key,
                msg_id,
                self.headers.get("webhook-timestamp", ""),
                body,
                self.headers.get("webhook-signature", ""),
            )
            if not ok:
                self.send_response(401)
                self.end_headers()
                self.wfile.write(b"bad signature\n")
                return
            if msg_id not in seen:
                seen.add(msg_id)
                payload = json.loads(body)
                for alert in payload.get("alerts", []):
                    line = {
                        "verified": True,
                        "webhook_id": msg_id,
                        "status": alert["status"],
                        "alertname": alert["labels"].get("alertname"),
                        "severity": alert["labels"].get("severity"),
                        "summary": alert["annotations"].get("summary"),
                        "fingerprint": alert["fingerprint"],
                    }
                    print(json.dumps(line), flush=True)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, fmt, *args):
            sys.stderr.write("receiver: " + (fmt % args) + "\n")

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET")
    if not secret:
        sys.exit("set WEBHOOK_SECRET to the webhook's `secret`")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(secret_key(secret)))
    server.serve_forever()


if __name__ == "__main__":
    main()
