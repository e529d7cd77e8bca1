#!/usr/bin/env bash
# Readers of the event archive for its tests: pyarrow and DuckDB (PyPI), and
# moto's S3 server for the archive on object storage, in target/venv-readers.
# Skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-readers
if "$venv/bin/python" -c 'import pyarrow, duckdb, moto' 2>/dev/null && [ -x "$venv/bin/moto_server" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'pyarrow>=15' 'duckdb>=1' 'moto[server]>=5'
"$venv/bin/python" -c 'import pyarrow, duckdb; print("archive readers: pyarrow", pyarrow.__version__, "duckdb", duckdb.__version__)'
