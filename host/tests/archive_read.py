"""Reads the event archive as an analyst would, with nothing but its path:
pyarrow (hive partitions found by itself) and DuckDB (a glob). Prints what
the archive test compares with what it posted, as JSON.

Usage: archive_read.py <archive dir | s3://bucket/prefix (endpoint in $S3_ENDPOINT)>
"""
import json
import sys

import duckdb
import pyarrow.parquet as pq

path = sys.argv[1]
if path.startswith("s3://"):
    # Object storage (the test's moto server): pyarrow only, DuckDB would
    # need its httpfs extension from the network.
    import os
    from collections import Counter

    import pyarrow.fs
    s3 = pyarrow.fs.S3FileSystem(
        access_key="test", secret_key="test", region="us-east-1", scheme="http",
        endpoint_override=os.environ["S3_ENDPOINT"].removeprefix("http://"))
    where = path.removeprefix("s3://")
    if s3.get_file_info(where).type == pyarrow.fs.FileType.NotFound:
        # Nothing put yet.
        print(json.dumps({"rows": 0, "ids": [], "events": {}}))
        sys.exit(0)
    table = pq.read_table(where, filesystem=s3)
    rows = table.to_pylist()
    by_type = dict(Counter(r["event_type"] for r in rows))
    duck_rows = sample = None
else:
    table = pq.read_table(path)
    rows = table.to_pylist()
    con = duckdb.connect()
    by_type = dict(con.execute(
        f"SELECT event_type, count(*) FROM '{path}/**/*.parquet' GROUP BY event_type").fetchall())
    duck_rows = con.execute(f"SELECT count(*) FROM '{path}/**/*.parquet'").fetchone()[0]
    # One row as DuckDB sees it: a property from the map, a timestamp.
    sample = con.execute(
        f"SELECT event_id, epoch_ms(timestamp), properties['amount'].float "
        f"FROM '{path}/**/*.parquet' WHERE event_type = 'purchase' ORDER BY event_id LIMIT 1").fetchone()


def value(v):
    for k in ("string", "int", "float", "bool"):
        if v[k] is not None:
            return v[k]
    return None


print(json.dumps({
    "columns": table.column_names,
    "rows": len(rows),
    "duckdb_rows": duck_rows,
    "ids": [r["event_id"] for r in rows],
    "by_type": by_type,
    "partitions": sorted({f"date={r['date']}/hour={r['hour']:02d}" for r in rows}),
    "events": {r["event_id"]: {
        "event_type": r["event_type"],
        "timestamp": int(r["timestamp"].timestamp() * 1000),
        "user_id": r["user_id"],
        "properties": {k: value(v) for k, v in r["properties"]},
    } for r in rows},
    "duckdb_purchase": [sample[0], sample[1], sample[2]] if sample else None,
}, default=str))
