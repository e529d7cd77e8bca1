#!/usr/bin/env bash
# Installs the toolchains examples/plugins/build.sh needs on a Debian machine,
# skipping whatever is already installed (at the pinned version):
#
#   apt     clang, lld, wasi-libc, the wasm32 compiler-rt builtins   (C)
#   PyPI    componentize-py                 -> .tools/componentize-py (Python)
#   npm     jco + componentize-js           -> examples/plugins/js-scroll-depth/node_modules (JS)
#   crates  wasm-tools, wit-bindgen-cli     -> ~/.cargo/bin (C), only the features used
#   crates  wasi-preview1-component-adapter-provider -> .tools/wasi_snapshot_preview1.reactor.wasm
#
# Everything comes from a package registry (Debian, PyPI, npm, crates.io),
# pinned, with the registry's checksums. Prints what each step cost.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

COMPONENTIZE_PY_VERSION=0.25.1
WASM_TOOLS_VERSION=1.263.0
WIT_BINDGEN_VERSION=0.63.0 # the same as the workspace's wit-bindgen crate
# The adapter of the wasmtime release the host embeds (host/Cargo.toml).
ADAPTER_VERSION=48.0.8
ADAPTER_CHECKSUM=d3a1674fffec103c1d4367d4417a3bd5423cde3cfd56ff3b326b5fc72c0a8ebd
JS_DIR=examples/plugins/js-scroll-depth
TOOLS="$root/.tools"

export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p "$TOOLS"

step_start=0
step() {
  step_start=$SECONDS
  printf '== %s\n' "$1"
}
done_step() { printf '   %s (%ss)\n' "$1" "$((SECONDS - step_start))"; }

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
apt_updated=""
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 1
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

step "apt: clang, lld, wasi-libc"
if apt_install clang lld wasi-libc; then done_step installed; else done_step "already installed"; fi
# clang looks for libclang_rt.builtins-wasm32.a of its own major version.
clang_major="$(clang -dumpversion | cut -d. -f1)"
step "apt: libclang-rt-$clang_major-dev-wasm32"
if apt_install "libclang-rt-$clang_major-dev-wasm32"; then done_step installed; else done_step "already installed"; fi

step "PyPI: componentize-py $COMPONENTIZE_PY_VERSION"
if [ -d "$TOOLS/componentize-py/componentize_py-$COMPONENTIZE_PY_VERSION.dist-info" ]; then
  done_step "already installed"
else
  if ! python3 -m pip --version >/dev/null 2>&1; then apt_install python3-pip || true; fi
  rm -rf "$TOOLS/componentize-py"
  # --target: a private directory, no virtualenv needed, and allowed on
  # Debian's externally managed Python.
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$TOOLS/componentize-py" "componentize-py==$COMPONENTIZE_PY_VERSION"
  done_step installed
fi

step "npm: jco + componentize-js ($JS_DIR/package-lock.json)"
if ! command -v npm >/dev/null; then apt_install nodejs npm || true; fi
if [ -f "$JS_DIR/node_modules/.package-lock.json" ] &&
  [ "$JS_DIR/node_modules/.package-lock.json" -nt "$JS_DIR/package-lock.json" ]; then
  done_step "already installed"
else
  # `npm install` with the lock, not `npm ci`: npm 11 finds its own lock (with
  # optional per-platform packages) "out of sync" on a clean install.
  (cd "$JS_DIR" && npm install --no-save --no-audit --no-fund --loglevel=error >/dev/null)
  done_step installed
fi

# cargo install compiles from source (2 cores: minutes). Only the features
# build.sh uses are compiled: wasm-tools' `component` (+ validate, print),
# wit-bindgen's C generator.
cargo_tool() { # binary crate version features
  local bin=$1 crate=$2 version=$3 features=$4
  step "crates.io: $crate $version"
  if command -v "$bin" >/dev/null && [ "$("$bin" --version | cut -d' ' -f2)" = "$version" ]; then
    done_step "already installed"
    return
  fi
  cargo install --quiet --locked "$crate@$version" --no-default-features --features "$features"
  done_step installed
}
cargo_tool wasm-tools wasm-tools "$WASM_TOOLS_VERSION" component,validate,print
cargo_tool wit-bindgen wit-bindgen-cli "$WIT_BINDGEN_VERSION" c

step "crates.io: wasi-preview1-component-adapter-provider $ADAPTER_VERSION"
adapter="$TOOLS/wasi_snapshot_preview1.reactor.wasm"
stamp="$TOOLS/adapter-$ADAPTER_VERSION.stamp"
if [ -f "$adapter" ] && [ -f "$stamp" ]; then
  done_step "already installed"
else
  # The crate ships the adapters as files; cargo fetches it from the
  # registry and checks it against the pinned checksum (Cargo.lock).
  fetch="$TOOLS/adapter-fetch"
  rm -rf "$fetch"
  mkdir -p "$fetch/src"
  : >"$fetch/src/lib.rs"
  cat >"$fetch/Cargo.toml" <<EOF
[package]
name = "fetch-adapter"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
wasi-preview1-component-adapter-provider = "=$ADAPTER_VERSION"

[workspace]
EOF
  cat >"$fetch/Cargo.lock" <<EOF
version = 4

[[package]]
name = "fetch-adapter"
version = "0.0.0"
dependencies = [
 "wasi-preview1-component-adapter-provider",
]

[[package]]
name = "wasi-preview1-component-adapter-provider"
version = "$ADAPTER_VERSION"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "$ADAPTER_CHECKSUM"
EOF
  (cd "$fetch" && cargo vendor --quiet --locked --versioned-dirs vendor >/dev/null)
  cp "$fetch/vendor/wasi-preview1-component-adapter-provider-$ADAPTER_VERSION/artefacts/wasi_snapshot_preview1.reactor.wasm" "$adapter"
  rm -rf "$fetch" "$TOOLS"/adapter-*.stamp
  touch "$stamp"
  done_step installed
fi

echo "== plugin toolchains ready (${SECONDS}s)"
