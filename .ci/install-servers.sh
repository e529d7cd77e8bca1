#!/usr/bin/env bash
# Installs the servers the sink and Kafka tests run against, skipping what is
# there: the Kafka-compatible broker tansu (from crates.io, about 14 minutes
# on 2 cores, once per machine), then from Debian's packages InfluxDB 1.x
# (`influxd`) and VictoriaMetrics (which speaks the InfluxDB v2 write API). Only the binaries are used: the tests
# start them as plain processes through scripts/influxdb.sh and
# scripts/victoria-metrics.sh, never as system services.
set -euo pipefail

if command -v tansu >/dev/null || [ -x "$HOME/.cargo/bin/tansu" ]; then
    echo "servers: tansu present"
else
    echo "servers: installing tansu (cargo install, about 14 minutes on 2 cores)"
    cargo install tansu --version 0.6.0 --features dynostore,libsql
fi

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
