//! End-to-end tests of the `laminardb` binary on real files.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn laminardb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_laminardb"))
}

fn write_trades_csv(path: &Path, rows: &[Trade]) {
    let mut text = String::from("symbol,price,volume,ts\n");
    for r in rows {
        text.push_str(&format!("{},{},{},{}\n", r.symbol, r.price, r.volume, r.ts));
    }
    std::fs::write(path, text).unwrap();
}

const SQL: &str = "
CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL, volume BIGINT NOT NULL,
    ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
-- the seed's VWAP and OHLC queries
CREATE STREAM vwap AS
SELECT symbol,
       SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
       COUNT(*) AS trades
FROM trades
GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE);
CREATE STREAM ohlc_1m AS
SELECT symbol,
       CAST(tumble(ts, INTERVAL '1' MINUTE) AS BIGINT) AS window_start,
       first_value(price) AS open, MAX(price) AS high, MIN(price) AS low,
       last_value(price) AS close, SUM(volume) AS volume
FROM trades
GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)
EMIT ON WINDOW CLOSE;
CREATE STREAM big AS SELECT symbol, price, volume FROM trades WHERE volume > 900;
-- a cascading stream and a materialized view with an end-of-input query
CREATE STREAM ohlc_5m AS
SELECT symbol, tumble(window_start, INTERVAL '5' MINUTE) AS w5, MAX(high) AS high
FROM ohlc_1m GROUP BY symbol, tumble(window_start, INTERVAL '5' MINUTE);
CREATE MATERIALIZED VIEW per_symbol AS
SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol
EMIT CHANGES;
SELECT SUM(trades) AS trades, COUNT(*) AS symbols FROM per_symbol;
";

fn read_csv_rows(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let header = lines.remove(0);
    lines.sort();
    lines.insert(0, header);
    lines
}

/// Results must not depend on batch size or shard count (only row order),
/// and must equal the batch oracle.
#[test]
fn run_is_independent_of_batch_rows_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("q.sql");
    std::fs::write(&sql, SQL).unwrap();
    // Two input files for one source, merged by event time.
    let rows = trades(11, 12_000, 40, 3_000);
    let (a, b): (Vec<Trade>, Vec<Trade>) = rows.iter().cloned().partition(|r| r.volume % 2 == 0);
    write_trades_csv(&dir.path().join("a.csv"), &a);
    write_trades_csv(&dir.path().join("b.csv"), &b);

    let mut outputs = Vec::new();
    for (shards, batch_rows) in [(1, 1024), (2, 1), (2, 333), (1, 100_000)] {
        let out = dir.path().join(format!("out-{shards}-{batch_rows}"));
        let status = laminardb()
            .args(["run", "--sql"])
            .arg(&sql)
            .arg("--input")
            .arg(format!("trades={}", dir.path().join("a.csv").display()))
            .arg("--input")
            .arg(format!("trades={}", dir.path().join("b.csv").display()))
            .arg("--output")
            .arg(&out)
            .args([
                "--batch-rows",
                &batch_rows.to_string(),
                "--shards",
                &shards.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        outputs.push(out);
    }
    for stream in ["vwap", "ohlc_1m", "big", "ohlc_5m", "query_1"] {
        let first = read_csv_rows(&outputs[0].join(format!("{stream}.csv")));
        assert!(first.len() > 1, "{stream} is empty");
        for other in &outputs[1..] {
            let rows = read_csv_rows(&other.join(format!("{stream}.csv")));
            if stream == "vwap" {
                // Float sums in another order may differ in the last digit.
                assert_eq!(rows.len(), first.len());
            } else {
                assert_eq!(rows, first, "{stream} differs for {}", other.display());
            }
        }
    }
    assert_eq!(
        read_csv_rows(&outputs[0].join("query_1.csv")),
        ["trades,symbols", "12000,40"]
    );
    let header = read_csv_rows(&outputs[0].join("ohlc_1m.csv"))[0].clone();
    assert_eq!(header, "symbol,window_start,open,high,low,close,volume");
}

#[test]
fn errors_exit_non_zero_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("q.sql");
    let csv = dir.path().join("t.csv");
    let out = dir.path().join("out");
    let run = |sql_text: &str, csv_text: &str| {
        std::fs::write(&sql, sql_text).unwrap();
        std::fs::write(&csv, csv_text).unwrap();
        let o = laminardb()
            .args(["run", "--sql"])
            .arg(&sql)
            .arg("--input")
            .arg(format!("trades={}", csv.display()))
            .arg("--output")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let good_csv = "symbol,price,volume,ts\nA,1.0,1,1000\n";
    assert!(run("CREATE SOURCE trades (", good_csv).contains("LDB-1001"));
    assert!(run(SQL, "symbol,price,volume\nA,1.0,1\n").contains("LDB-4002"));
    assert!(run(SQL, "symbol,price,volume,ts\nA,notanumber,1,5\n").contains("LDB-4002"));
    assert!(run(
        &SQL.replace("FROM trades WHERE", "FROM nope WHERE"),
        good_csv
    )
    .contains("LDB-1002"));
    let o = laminardb()
        .args(["run", "--sql", "/nonexistent.sql", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("LDB-4001"));
}

/// The demo, with a producer thread and with the trades made inside the
/// shards (`--producers 0`).
#[test]
fn demo_runs_and_reports_throughput() {
    for producers in ["1", "0"] {
        let o = laminardb()
            .args(["demo", "--duration", "2", "--symbols", "50"])
            .args(["--producers", producers, "--shards", "2"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout.contains("events/s"), "{stdout}");
        assert!(stdout.contains("window "), "no window closed: {stdout}");
        let done = stdout
            .lines()
            .find(|l| l.starts_with("done: "))
            .unwrap_or("");
        let events: u64 = done
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(events > 0, "--producers {producers}: {stdout}");
    }
}

/// JSON-lines input (by extension) gives the same results as the same rows
/// in CSV; a malformed line is LDB-4002.
#[test]
fn json_lines_input_matches_csv() {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("q.sql");
    std::fs::write(&sql, SQL).unwrap();
    let rows = trades(12, 3_000, 10, 2_000);
    write_trades_csv(&dir.path().join("t.csv"), &rows);
    let mut json = String::new();
    for r in &rows {
        json.push_str(&format!(
            "{{\"symbol\": \"{}\", \"price\": {}, \"volume\": {}, \"ts\": {}}}\n",
            r.symbol, r.price, r.volume, r.ts
        ));
    }
    std::fs::write(dir.path().join("t.jsonl"), &json).unwrap();
    let run = |input: &str, out: &str| {
        laminardb()
            .args(["run", "--sql"])
            .arg(&sql)
            .arg("--input")
            .arg(format!("trades={}", dir.path().join(input).display()))
            .arg("--output")
            .arg(dir.path().join(out))
            .output()
            .unwrap()
    };
    for (input, out) in [("t.csv", "from-csv"), ("t.jsonl", "from-json")] {
        let o = run(input, out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for stream in ["ohlc_1m", "big", "query_1"] {
        assert_eq!(
            read_csv_rows(&dir.path().join("from-csv").join(format!("{stream}.csv"))),
            read_csv_rows(&dir.path().join("from-json").join(format!("{stream}.csv"))),
            "{stream}"
        );
    }
    std::fs::write(
        dir.path().join("bad.ndjson"),
        "{\"symbol\": \"A\", \"price\": 1.0, \"volume\": 1, \"ts\": 5}\n{\"symbol\": \"A\", \"price\": \n",
    )
    .unwrap();
    let o = run("bad.ndjson", "bad");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("LDB-4002"));
}

/// Joins over two input files (and a table filled by the script): the
/// same rows whatever the batch size and shard count.
#[test]
fn run_joins_over_several_input_files() {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("joins.sql");
    std::fs::write(
        &sql,
        "CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL, volume BIGINT NOT NULL,
             ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
         CREATE SOURCE orders (order_id BIGINT NOT NULL, symbol VARCHAR NOT NULL, qty BIGINT NOT NULL,
             ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
         CREATE TABLE desks (symbol VARCHAR NOT NULL, desk VARCHAR, PRIMARY KEY (symbol));
         INSERT INTO desks VALUES ('S000', 'north'), ('S001', 'south'), ('S002', 'east');
         CREATE STREAM matched AS
         SELECT o.order_id, t.price, t.ts FROM orders o JOIN trades t
           ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 500 AND o.ts + 500;
         CREATE STREAM last_price AS
         SELECT o.order_id, t.price FROM orders o ASOF LEFT JOIN trades t
           ON o.symbol = t.symbol AND o.ts >= t.ts;
         CREATE STREAM desked AS
         SELECT o.order_id, d.desk FROM orders o JOIN desks d ON o.symbol = d.symbol;
         CREATE STREAM same_size AS
         SELECT o.order_id, t.price FROM orders o LEFT JOIN trades t ON o.qty = t.volume;
         CREATE STREAM sizes AS
         SELECT symbol, COUNT(*) AS n FROM (SELECT o.symbol, o.qty FROM orders o JOIN trades t
           ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 500 AND o.ts + 500) GROUP BY symbol
         EMIT CHANGES;",
    )
    .unwrap();
    write_trades_csv(&dir.path().join("trades.csv"), &trades(5, 4_000, 10, 3_000));
    let mut orders = String::from("order_id,symbol,qty,ts\n");
    for (i, r) in trades(6, 1_000, 10, 3_000).iter().enumerate() {
        orders.push_str(&format!("{i},{},{},{}\n", r.symbol, r.volume, r.ts + 1));
    }
    std::fs::write(dir.path().join("orders.csv"), orders).unwrap();
    let mut outputs = Vec::new();
    for (shards, batch_rows) in [(1, 100_000), (2, 1), (2, 77)] {
        let out = dir.path().join(format!("out-{shards}-{batch_rows}"));
        let status = laminardb()
            .args(["run", "--sql"])
            .arg(&sql)
            .arg("--input")
            .arg(format!(
                "trades={}",
                dir.path().join("trades.csv").display()
            ))
            .arg("--input")
            .arg(format!(
                "orders={}",
                dir.path().join("orders.csv").display()
            ))
            .arg("--output")
            .arg(&out)
            .args([
                "--batch-rows",
                &batch_rows.to_string(),
                "--shards",
                &shards.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        outputs.push(out);
    }
    // A changelog's steps depend on the batches; its net rows do not.
    let net_rows = |path: &std::path::Path| -> Vec<String> {
        let mut net = std::collections::BTreeMap::<String, i64>::new();
        for row in read_csv_rows(path).into_iter().skip(1) {
            let (values, weight) = row.rsplit_once(',').unwrap();
            *net.entry(values.to_string()).or_default() += weight.parse::<i64>().unwrap();
        }
        net.into_iter()
            .filter(|(_, w)| *w != 0)
            .map(|(row, w)| format!("{row} x{w}"))
            .collect()
    };
    for stream in ["matched", "last_price", "desked", "same_size", "sizes"] {
        let path = |out: &std::path::Path| out.join(format!("{stream}.csv"));
        let read = |out: &std::path::Path| match stream {
            "sizes" => net_rows(&path(out)),
            _ => read_csv_rows(&path(out)),
        };
        let first = read(&outputs[0]);
        assert!(first.len() >= 10, "{stream} has {} rows", first.len());
        for other in &outputs[1..] {
            assert_eq!(
                read(other),
                first,
                "{stream} differs for {}",
                other.display()
            );
        }
    }
    // Every order gets exactly one ASOF row (LEFT), whatever it matched.
    assert_eq!(
        read_csv_rows(&outputs[0].join("last_price.csv")).len(),
        1_001
    );
}

/// Parquet inputs (by extension): the same results as the same rows in
/// CSV; a file without a source column is refused with its name.
#[test]
fn run_reads_parquet_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("q.sql");
    std::fs::write(&sql, SQL).unwrap();
    let rows = trades(12, 5_000, 20, 3_000);
    write_trades_csv(&dir.path().join("t.csv"), &rows);
    let file = std::fs::File::create(dir.path().join("t.parquet")).unwrap();
    let batch = trades_batch(&rows);
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let run = |input: &str, out: &Path| {
        laminardb()
            .args(["run", "--sql"])
            .arg(&sql)
            .arg("--input")
            .arg(format!("trades={}", dir.path().join(input).display()))
            .arg("--output")
            .arg(out)
            .args(["--batch-rows", "333"])
            .output()
            .unwrap()
    };
    let (from_csv, from_parquet) = (dir.path().join("csv"), dir.path().join("parquet"));
    for (input, out) in [("t.csv", &from_csv), ("t.parquet", &from_parquet)] {
        let o = run(input, out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for stream in ["ohlc_1m", "big", "ohlc_5m", "query_1"] {
        let csv = read_csv_rows(&from_csv.join(format!("{stream}.csv")));
        assert!(csv.len() > 1, "{stream} is empty");
        assert_eq!(
            read_csv_rows(&from_parquet.join(format!("{stream}.csv"))),
            csv,
            "{stream}"
        );
    }
    // A Parquet file without the `volume` column.
    let narrow = batch.project(&[0, 1, 3]).unwrap();
    let file = std::fs::File::create(dir.path().join("narrow.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, narrow.schema(), None).unwrap();
    writer.write(&narrow).unwrap();
    writer.close().unwrap();
    let o = run("narrow.parquet", &dir.path().join("narrow"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("LDB-4002") && stderr.contains("volume"),
        "{stderr}"
    );
}
