#!/usr/bin/env bash
# Runs InfluxDB 1.x (Debian's `influxdb` package) in the foreground as a plain
# process, with its config, data and WAL under <dir>, on loopback.
#   scripts/influxdb.sh <dir> <http-port> <rpc-port>
# The HTTP API (v1 `/write`, `/query`) listens on <http-port>; <rpc-port> is
# InfluxDB's backup/restore service, which always binds. Stop it with SIGTERM.
# Run again on the same <dir>, it keeps its data (the tests restart it so).
set -euo pipefail
if [ $# -ne 3 ]; then
    echo "usage: $0 <dir> <http-port> <rpc-port>" >&2
    exit 2
fi
dir=$(realpath -m "$1") http=$2 rpc=$3
command -v influxd >/dev/null || { echo "influxd not found: apt-get install influxdb" >&2; exit 127; }
mkdir -p "$dir"
cat >"$dir/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$rpc"
[meta]
  dir = "$dir/meta"
  logging-enabled = false
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:$http"
  log-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
CONF
exec influxd run -config "$dir/influxdb.conf"
