#!/usr/bin/env bash
# Readers of the event archive for its tests: pyarrow and DuckDB (PyPI), in
# target/venv-readers. Skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-readers
if "$venv/bin/python" -c 'import pyarrow, duckdb' 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'pyarrow>=15' 'duckdb>=1'
"$venv/bin/python" -c 'import pyarrow, duckdb; print("archive readers: pyarrow", pyarrow.__version__, "duckdb", duckdb.__version__)'
