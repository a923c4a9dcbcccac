mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vwap_one_shard_matches_batch() {
    let ddl = format!("{TRADES_DDL}; CREATE STREAM vwap AS SELECT symbol, SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap, COUNT(*) AS trades FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)");
    let rows = trades(1, 5000, 10, 1000);
    let (got, metrics) = run_stream(&ddl, "trades", "vwap", random_batches(&rows, 2, 300), 1).await;
    println!("{metrics:?}");
    let query = "SELECT symbol, SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap, COUNT(*) AS trades FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)";
    let want = run_batch(query, "trades", vec![trades_batch(&rows)], trades_schema()).await;
    assert_same_rows(&got, &want);
}
