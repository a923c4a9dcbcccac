"""Flink SQL (PyFlink, local mini-cluster) as a peer of the comparison.

    peer.py run <filter|vwap|ohlc|session|join> <events> <batch_rows> [expect_rows]

Prints one JSON line like the other engines' binaries (see
../src/workload.rs). The rows are the same as theirs, computed by Flink
from a `datagen` sequence (`id` 0..events-1) with the generator's
formulas, so no time goes to moving data from Python. The timed part is
the job: submit, run to the end of the bounded input, results into a
`blackhole` sink (the mini-cluster is started before, by a one-row job). The result's row count is checked by a second, untimed
job that counts it.

Environment: PEERS_FLINK_PARALLELISM (default 1), PEERS_FLINK_OBJECT_REUSE
(true/false, default true). `batch_rows` has no meaning for Flink's
datagen and is only echoed. The report adds `jvm_cpu_seconds`, the CPU
time the JVM used during the job (it uses more than one core at
parallelism 1).
"""

import json
import os
import sys
import time

EPOCH_MS = 1_767_225_600_000
SYMBOLS = 100


def source_ddl(name, events, seed, bursty):
    """A bounded datagen table with the generator's columns."""
    ts = "id + (id / 1000) * 1000" if bursty else "id"
    return f"""
    CREATE TABLE {name} (
      id BIGINT,
      symbol AS CONCAT('SYM', LPAD(CAST(MOD(id * 7919 + {seed * 13}, {SYMBOLS}) AS STRING), 4, '0')),
      price AS 100.0 + CAST(MOD(id * 31 + {seed * 7}, 1000) AS DOUBLE) / 100.0,
      volume AS CAST(1 + MOD(id + {seed}, 500) AS BIGINT),
      ts AS TO_TIMESTAMP_LTZ({EPOCH_MS} + {ts}, 3),
      WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
    ) WITH (
      'connector' = 'datagen',
      'number-of-rows' = '{events}',
      'rows-per-second' = '1000000000',
      'fields.id.kind' = 'sequence',
      'fields.id.start' = '0',
      'fields.id.end' = '{events - 1}'
    )"""


QUERIES = {
    "filter": "SELECT symbol, price, volume, ts FROM trades WHERE price > 105",
    "vwap": """SELECT symbol, window_start,
        SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
        COUNT(*) AS trades
      FROM TABLE(TUMBLE(TABLE trades, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
      GROUP BY symbol, window_start, window_end""",
    "ohlc": """SELECT symbol, window_start,
        FIRST_VALUE(price) AS open_price, MAX(price) AS high, MIN(price) AS low,
        LAST_VALUE(price) AS close_price, SUM(volume) AS volume
      FROM TABLE(TUMBLE(TABLE trades, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
      GROUP BY symbol, window_start, window_end""",
    "session": """SELECT symbol, window_start, COUNT(*) AS n, SUM(volume) AS volume
      FROM TABLE(SESSION(TABLE trades PARTITION BY symbol, DESCRIPTOR(ts), INTERVAL '0.5' SECOND))
      GROUP BY symbol, window_start, window_end""",
    "join": """SELECT o.symbol, o.price AS order_price, t.price AS trade_price
      FROM orders o JOIN trades t ON o.symbol = t.symbol
       AND t.ts BETWEEN o.ts - INTERVAL '0.05' SECOND AND o.ts + INTERVAL '0.05' SECOND""",
}


def jvm_cpu_seconds():
    """CPU seconds (user + system) used so far by this process's java
    children (the PyFlink gateway that runs the mini-cluster)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[1] is the parent pid; [11], [12] user and system ticks.
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def main(argv):
    usage = "usage: peer.py run <filter|vwap|ohlc|session|join> <events> <batch_rows> [expect_rows]"
    if len(argv) not in (4, 5) or argv[0] != "run" or argv[1] not in QUERIES:
        print(usage, file=sys.stderr)
        return 2
    workload, events, batch_rows = argv[1], int(argv[2]), int(argv[3])
    parallelism = os.environ.get("PEERS_FLINK_PARALLELISM", "1")
    reuse = os.environ.get("PEERS_FLINK_OBJECT_REUSE", "true")
    engine = f"Flink 2.3 P={parallelism} reuse={reuse}"
    report = {"engine": engine, "workload": workload, "events": events, "batch_rows": batch_rows}

    from pyflink.table import EnvironmentSettings, TableDescriptor, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = t_env.get_config()
    config.set("parallelism.default", parallelism)
    config.set("table.local-time-zone", "UTC")
    config.set("pipeline.object-reuse", reuse)
    bursty = workload == "session"
    t_env.execute_sql(source_ddl("trades", events, 0, bursty))
    if workload == "join":
        t_env.execute_sql(source_ddl("orders", events, 1, bursty))
    query = QUERIES[workload]
    try:
        # The sink takes the result's schema.
        sink = TableDescriptor.for_connector("blackhole").build()
        # Start the mini-cluster before timing: a job of one row.
        t_env.execute_sql(
            "CREATE TABLE warmup (x INT) WITH ('connector' = 'blackhole')"
        )
        t_env.execute_sql("INSERT INTO warmup SELECT 1").wait()
        cpu_before = jvm_cpu_seconds()
        started = time.monotonic()
        t_env.sql_query(query).execute_insert(sink).wait()
        seconds = time.monotonic() - started
        cpu = jvm_cpu_seconds() - cpu_before
        # The count is a changelog of every update: mini-batches fold them,
        # or Python would read one row per input row.
        config.set("table.exec.mini-batch.enabled", "true")
        config.set("table.exec.mini-batch.allow-latency", "1 s")
        config.set("table.exec.mini-batch.size", "1000000")
        with t_env.execute_sql(f"SELECT COUNT(*) FROM ({query})").collect() as rows:
            counts = [row[0] for row in rows]
    except Exception as e:  # the engine's error, reported, not raised
        report["unsupported"] = str(e).splitlines()[0][:300]
        print(json.dumps(report))
        return 0
    inputs = 2 if workload == "join" else 1
    report.update(
        seconds=round(seconds, 6),
        rows_out=counts[-1] if counts else 0,
        events_per_s=round(events * inputs / seconds),
        jvm_cpu_seconds=round(cpu, 3),
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
