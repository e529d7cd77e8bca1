#!/usr/bin/env bash
# Runs VictoriaMetrics (Debian's `victoria-metrics` package) in the foreground
# as a plain process, data under <dir>, on loopback. It accepts the InfluxDB
# v2 write API (`/api/v2/write`) and answers `/api/v1/export`.
#   scripts/victoria-metrics.sh <dir> <http-port>
# The retention is 100 years so that tests may write old timestamps.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 <dir> <http-port>" >&2
    exit 2
fi
dir=$(realpath -m "$1") http=$2
command -v victoria-metrics >/dev/null || { echo "victoria-metrics not found: apt-get install victoria-metrics" >&2; exit 127; }
mkdir -p "$dir"
exec victoria-metrics -storageDataPath="$dir" -httpListenAddr="127.0.0.1:$http" \
    -retentionPeriod=100y -search.latencyOffset=0s -loggerLevel=WARN
