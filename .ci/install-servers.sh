#!/usr/bin/env bash
# Installs the servers the sink tests run against, from Debian's packages,
# skipping what is there: InfluxDB 1.x (`influxd`) and VictoriaMetrics (which
# speaks the InfluxDB v2 write API). Only the binaries are used: the tests
# start them as plain processes through scripts/influxdb.sh and
# scripts/victoria-metrics.sh, never as system services.
set -euo pipefail

missing=()
command -v influxd >/dev/null || missing+=(influxdb)
command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)
if [ ${#missing[@]} -eq 0 ]; then
    echo "servers: influxd and victoria-metrics present"
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "servers: installing ${missing[*]}"
$sudo apt-get update -qq
# The packages' postinst scripts try to start a service; without systemd that
# is a no-op, and the tests never rely on it.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
