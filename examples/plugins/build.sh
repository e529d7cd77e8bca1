#!/usr/bin/env bash
# Builds the example plugins into target/examples/<dir-name>.wasm:
#
#   python-bot-filter   componentize-py          (world enricher)
#   js-scroll-depth     jco + componentize-js    (world aggregator)
#   c-error-spike       clang + wasi-libc, wit-bindgen c, wasm-tools component new
#   rust-*              cargo, nexuspipe-sdk     (the same logic in Rust, for comparison)
#
# Usage: examples/plugins/build.sh [name...]   (default: all of them)
#
# Every component is built against the repo's wit/ directly. A component is
# rebuilt only when one of its inputs (sources, wit/, this script, the
# toolchain) is newer than it; cargo does its own up-to-date check. The
# toolchains come from .ci/install-plugin-toolchains.sh; a missing one is an
# error, never a skip.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/examples/plugins"
out="$root/target/examples"
tools="$root/.tools"
wit="$root/wit"
export PATH="$tools/bin:$HOME/.cargo/bin:$PATH"

ALL=(python-bot-filter js-scroll-depth c-error-spike rust-bot-filter rust-scroll-depth rust-error-spike)
if [ $# -gt 0 ]; then names=("$@"); else names=("${ALL[@]}"); fi

die() {
  echo "build.sh: $*" >&2
  echo "build.sh: install the plugin toolchains with .ci/install-plugin-toolchains.sh" >&2
  exit 1
}

# Runs a command, showing its output only if it fails.
quiet() {
  local log
  log="$("$@" 2>&1)" || { printf '%s\n' "$log" >&2; return 1; }
}

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH"; }

# stale OUT INPUT...: true when OUT is missing or older than any input file
# (sources only: READMEs and caches such as __pycache__ do not count).
stale() {
  local target="$1"
  shift
  [ -e "$target" ] || return 0
  [ -n "$(find "$@" -newer "$target" -type f -print -quit 2>/dev/null)" ]
}

mkdir -p "$out"

build_python() { # python-bot-filter
  local name=$1 src="$here/$1" dst="$out/$1.wasm"
  local cpy="$tools/componentize-py"
  [ -d "$cpy/componentize_py" ] || die "componentize-py not installed in $cpy"
  stale "$dst" "$src"/*.py "$wit" "$0" "$cpy/componentize_py" || { echo "$name: up to date"; return; }
  echo "$name: componentize-py"
  PYTHONPATH="$cpy" python3 -c \
    'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' \
    --quiet -d "$wit" -w enricher componentize -p "$src" app -o "$dst.tmp"
  mv "$dst.tmp" "$dst"
}

build_js() { # js-scroll-depth
  local name=$1 src="$here/$1" dst="$out/$1.wasm"
  local jco="$src/node_modules/.bin/jco"
  need node
  [ -x "$jco" ] || die "jco not installed in $src/node_modules (npm install)"
  stale "$dst" "$src/src" "$src/package-lock.json" "$wit" "$0" || { echo "$name: up to date"; return; }
  echo "$name: jco componentize"
  # Absolute paths: jco resolves --wit from the source's directory.
  # --disable all: no WASI clocks, random, stdio or http imports.
  quiet "$jco" componentize "$src/src/scroll-depth.js" --wit "$wit" --world-name aggregator \
    --disable all -o "$dst.tmp"
  mv "$dst.tmp" "$dst"
}

build_c() { # c-error-spike
  local name=$1 src="$here/$1" dst="$out/$1.wasm"
  local gen="$root/target/examples/gen/$1"
  local adapter="$tools/wasi_snapshot_preview1.reactor.wasm"
  need clang
  need wasm-ld
  need wit-bindgen
  need wasm-tools
  [ -f "$adapter" ] || die "WASI preview1 adapter not found at $adapter"
  stale "$dst" "$src"/*.c "$wit" "$0" "$adapter" "$(command -v wit-bindgen)" "$(command -v wasm-tools)" ||
    { echo "$name: up to date"; return; }
  echo "$name: wit-bindgen c, clang, wasm-tools component new"
  rm -rf "$gen"
  mkdir -p "$gen"
  # Bindings for the alerter world: alerter.{c,h} and alerter_component_type.o
  # (the world's type information, which `component new` reads).
  quiet wit-bindgen c --world alerter --out-dir "$gen" "$wit"
  # A reactor module (no main; exports called by the host) against wasi-libc.
  clang --target=wasm32-wasi -mexec-model=reactor -O2 -std=gnu11 \
    -Wall -Wextra -Werror -Wno-unused-parameter \
    -I "$gen" -o "$gen/$name.core.wasm" \
    "$src/error_spike.c" "$gen/alerter.c" "$gen/alerter_component_type.o"
  # wasi-libc speaks WASI preview 1; the adapter maps it onto preview 2.
  wasm-tools component new "$gen/$name.core.wasm" \
    --adapt "wasi_snapshot_preview1=$adapter" -o "$dst.tmp"
  wasm-tools validate --features component-model "$dst.tmp"
  mv "$dst.tmp" "$dst"
}

rust_names=()
for n in "${names[@]}"; do
  case "$n" in
    python-*) build_python "$n" ;;
    js-*) build_js "$n" ;;
    c-*) build_c "$n" ;;
    rust-*) rust_names+=("$n") ;;
    *) echo "build.sh: unknown example $n (known: ${ALL[*]})" >&2; exit 2 ;;
  esac
done

if [ ${#rust_names[@]} -gt 0 ]; then
  # Same profile, target and target dir as `make plugins`: incremental, and
  # never waits on the host's build.
  echo "${rust_names[*]}: cargo build"
  args=()
  for n in "${rust_names[@]}"; do args+=(-p "$n"); done
  (cd "$root" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS "${CARGO:-cargo}" build --quiet \
    --profile plugin --target wasm32-wasip2 --target-dir target/wasm "${args[@]}")
  for n in "${rust_names[@]}"; do
    cp "$root/target/wasm/wasm32-wasip2/plugin/${n//-/_}.wasm" "$out/$n.wasm"
  done
fi

for n in "${names[@]}"; do
  printf '%-20s %9d bytes  %s\n' "$n" "$(stat -c %s "$out/$n.wasm")" "target/examples/$n.wasm"
done
