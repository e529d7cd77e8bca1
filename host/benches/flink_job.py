"""The Flink side of `make bench-flink` (run by host/benches/flink.py in its
virtual environment, with PyFlink from PyPI): one SQL statement set per job
over an NDJSON file of `nexuspipe gen --output` events, read with Flink's
JSON format and a 5-second watermark, writing CSV.

    python flink_job.py --job light|analytics --input events.ndjson \
        --output DIR --parallelism N

- light: events per minute by type (1-minute tumbling windows), and more
  than 5 `login_failed` per IP within 1 minute (MATCH_RECOGNIZE).
- analytics: NexusPipe's default windowed measurements without enrichment
  (events, page_views, unique_users as an exact distinct count, revenue,
  top_products over 5 minutes sliding by 1 as a window Top-N) and the same
  burst rule.

Window starts are written as UTC timestamps (`yyyy-MM-dd HH:mm:ss[.SSS]`).
"""

import argparse
import time

from pyflink.table import EnvironmentSettings, TableEnvironment

SOURCE = """
CREATE TABLE events (
  event_type STRING,
  user_id STRING,
  `timestamp` BIGINT,
  properties ROW<`path` STRING, product_id STRING, amount DOUBLE, currency STRING>,
  metadata ROW<ip_address STRING>,
  ts AS TO_TIMESTAMP_LTZ(`timestamp`, 3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH ('connector' = 'filesystem', 'path' = 'file://{input}', 'format' = 'json')
"""


def sink(name, columns, output):
    return (
        f"CREATE TABLE {name} ({columns}) WITH ('connector' = 'filesystem', "
        f"'path' = 'file://{output}/{name}', 'format' = 'csv')"
    )


def tumble(where=""):
    return (
        "TABLE(TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '1' MINUTES))"
        + (f" WHERE {where}" if where else "")
    )


EVENTS = (
    "INSERT INTO events_per_type SELECT CAST(window_start AS STRING), event_type, COUNT(*) "
    f"FROM {tumble()} GROUP BY window_start, window_end, event_type"
)

# More than 5 failed logins from one IP within a minute: each match is six
# in a row (per IP, in event time) whose first and last are less than a
# minute apart.
BURSTS = """
INSERT INTO bursts
SELECT ip, CAST(first_ts AS STRING), CAST(last_ts AS STRING)
FROM (SELECT metadata.ip_address AS ip, ts FROM events WHERE event_type = 'login_failed')
MATCH_RECOGNIZE (
  PARTITION BY ip
  ORDER BY ts
  MEASURES FIRST(A.ts) AS first_ts, LAST(A.ts) AS last_ts
  ONE ROW PER MATCH
  AFTER MATCH SKIP PAST LAST ROW
  PATTERN (A{6}) WITHIN INTERVAL '1' MINUTE
  DEFINE A AS TRUE
)
"""

PAGE_VIEWS = (
    "INSERT INTO page_views SELECT CAST(window_start AS STRING), properties.`path`, COUNT(*) "
    + "FROM " + tumble("event_type = 'page_view'") + " "
    "GROUP BY window_start, window_end, properties.`path`"
)

UNIQUE_USERS = (
    "INSERT INTO unique_users SELECT CAST(window_start AS STRING), COUNT(DISTINCT user_id) "
    f"FROM {tumble('user_id IS NOT NULL')} GROUP BY window_start, window_end"
)

REVENUE = (
    "INSERT INTO revenue SELECT CAST(window_start AS STRING), properties.currency, "
    "COUNT(*), SUM(properties.amount), AVG(properties.amount) "
    + "FROM " + tumble("event_type IN ('purchase', 'purchase_completed')") + " "
    "GROUP BY window_start, window_end, properties.currency"
)

TOP_PRODUCTS = """
INSERT INTO top_products
SELECT CAST(window_start AS STRING), product_id, view_count, rn FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end
                               ORDER BY view_count DESC, product_id ASC) AS rn
  FROM (
    SELECT window_start, window_end, properties.product_id AS product_id, COUNT(*) AS view_count
    FROM TABLE(HOP(TABLE events, DESCRIPTOR(ts), INTERVAL '1' MINUTES, INTERVAL '5' MINUTES))
    WHERE event_type = 'product_view'
    GROUP BY window_start, window_end, properties.product_id
  )
) WHERE rn <= 10
"""

JOBS = {
    "light": [
        ("events_per_type", "window_start STRING, event_type STRING, cnt BIGINT", EVENTS),
        ("bursts", "ip STRING, first_ts STRING, last_ts STRING", BURSTS),
    ],
    "analytics": [
        ("events_per_type", "window_start STRING, event_type STRING, cnt BIGINT", EVENTS),
        ("page_views", "window_start STRING, `path` STRING, cnt BIGINT", PAGE_VIEWS),
        ("unique_users", "window_start STRING, users BIGINT", UNIQUE_USERS),
        (
            "revenue",
            "window_start STRING, currency STRING, orders BIGINT, total DOUBLE, avg_amount DOUBLE",
            REVENUE,
        ),
        (
            "top_products",
            "window_start STRING, product_id STRING, view_count BIGINT, `rank` BIGINT",
            TOP_PRODUCTS,
        ),
        ("bursts", "ip STRING, first_ts STRING, last_ts STRING", BURSTS),
    ],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", choices=sorted(JOBS), required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--parallelism", type=int, default=1)
    a = ap.parse_args()
    started = time.monotonic()
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("parallelism.default", str(a.parallelism))
    conf.set("table.local-time-zone", "UTC")
    # The filesystem sink commits its files at checkpoints; the last one
    # is taken when the bounded input ends.
    conf.set("execution.checkpointing.interval", "10 s")
    env.execute_sql(SOURCE.format(input=a.input))
    statements = env.create_statement_set()
    for name, columns, insert in JOBS[a.job]:
        env.execute_sql(sink(name, columns, a.output))
        statements.add_insert_sql(insert)
    result = statements.execute()
    submitted = time.monotonic()
    result.wait()
    done = time.monotonic()
    print(f"submitted {submitted - started:.3f} s, finished {done - started:.3f} s", flush=True)


if __name__ == "__main__":
    main()
