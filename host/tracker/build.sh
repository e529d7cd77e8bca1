#!/usr/bin/env bash
# Builds tracker.min.js (what `GET /tracker.js` serves, embedded in the
# binary) from src/ with esbuild. `--check` builds aside and fails if the
# committed file is not what the sources give.
set -euo pipefail
cd "$(dirname "$0")"
[ -x node_modules/.bin/esbuild ] || npm ci --no-audit --no-fund
out=tracker.min.js
[ "${1:-}" = --check ] && out=$(mktemp --suffix=.js)
node_modules/.bin/esbuild src/snippet.js --bundle --minify --format=iife \
  --target=es2020 --legal-comments=none --log-level=warning --outfile="$out"
if [ "${1:-}" = --check ]; then
  if ! cmp -s "$out" tracker.min.js; then
    echo "host/tracker/tracker.min.js is not what src/ builds to: run host/tracker/build.sh and commit it" >&2
    rm -f "$out"
    exit 1
  fi
  rm -f "$out"
fi
