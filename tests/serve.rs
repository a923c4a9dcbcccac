//! `laminardb serve` driven as a user would: the real binary on a loopback
//! port, `curl` for every request, SIGKILL and a restart with durability
//! on, SIGTERM to stop.

mod daemon;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use daemon::*;

const PIPELINE: &str = "
CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL, volume BIGINT NOT NULL,
    ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
CREATE MATERIALIZED VIEW per_symbol AS
SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol
EMIT CHANGES;
CREATE STREAM per_minute AS
SELECT symbol, COUNT(*) AS trades FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE);
";

fn write_config(dir: &Path, port: u16, pg_port: u16) -> PathBuf {
    std::fs::write(dir.join("market.sql"), PIPELINE).unwrap();
    let config = dir.join("laminardb.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\nshards = 2\n\n[storage]\ndir = \"state\"\ndurability = \"sync\"\n\
             checkpoint_interval_ms = 100\n\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\n\
             [pgwire]\nlisten = \"127.0.0.1:{pg_port}\"\nuser = \"laminar\"\n\
             password = \"{PG_PASSWORD}\"\n\n\
             [[pipeline]]\nname = \"market\"\nfile = \"market.sql\"\n"
        ),
    )
    .unwrap();
    config
}

/// A server with the test pipeline on fresh ports, ready (for async
/// tests): its directory, process and HTTP and PostgreSQL ports.
async fn start_ready() -> (tempfile::TempDir, Server, u16, u16) {
    let dir = tempfile::tempdir().unwrap();
    let (port, pg_port) = (free_port(), free_port());
    let config = write_config(dir.path(), port, pg_port);
    let server = start(&config, &dir.path().join("serve.log"));
    tokio::task::spawn_blocking(move || wait_ready(port))
        .await
        .unwrap();
    (dir, server, port, pg_port)
}

const ROWS: &str = r#"{"symbol":"AAPL","price":189.5,"volume":100,"ts":1700000000000}
{"symbol":"MSFT","price":411.2,"volume":50,"ts":1700000000500}
{"symbol":"AAPL","price":190.0,"volume":25,"ts":1700000001000}
"#;

#[test]
fn serve_ingests_answers_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (port, pg_port) = (free_port(), free_port());
    let config = write_config(dir.path(), port, pg_port);
    let log = dir.path().join("serve.log");
    let server = start(&config, &log);

    eventually("health", || {
        let (status, body) = curl(port, "GET", "/health", false, None);
        (status == 200).then_some(body)
    });
    // Paths in the config are relative to the config file.
    assert!(dir.path().join("state/pipelines/market/wal").is_dir());
    for (method, path) in [
        ("GET", "/ready"),
        ("GET", "/metrics"),
        ("POST", "/query"),
        ("POST", "/sources/trades"),
    ] {
        let (status, body) = curl(port, method, path, false, Some("x"));
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(body.contains("LDB-5003"), "{body}");
    }
    wait_ready(port);

    let (status, body) = curl(port, "POST", "/sources/trades", true, Some(ROWS));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), r#"{"source":"trades","rows":3}"#);

    let (status, body) = curl(port, "POST", "/sources/nope", true, Some(ROWS));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("LDB-1002"), "{body}");
    let (status, body) = curl(
        port,
        "POST",
        "/sources/trades",
        true,
        Some(r#"{"symbol":"X","price":"cheap","volume":1,"ts":1}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("LDB-4002"), "{body}");
    let (status, body) = curl(
        port,
        "POST",
        "/query",
        true,
        Some("SELECT * FROM per_symbol WHERE"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("LDB-1001"), "{body}");

    let want =
        r#"[{"symbol":"AAPL","volume":125,"trades":2},{"symbol":"MSFT","volume":50,"trades":1}]"#;
    let view = "SELECT symbol, volume, trades FROM per_symbol \
                WHERE symbol NOT LIKE 'BIG%' AND symbol <> 'TAIL' ORDER BY symbol";
    eventually("the view", || {
        let (status, body) = curl(port, "POST", "/query", true, Some(view));
        (status == 200 && body.trim() == want).then_some(body)
    });
    let (_, metrics) = curl(port, "GET", "/metrics", true, None);
    assert!(
        metrics.contains(
            "laminardb_stream_rows_in_total{pipeline=\"market\",stream=\"per_symbol\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("laminardb_source_rows_total{pipeline=\"market\",source=\"trades\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("laminardb_ready 1"), "{metrics}");
    assert!(
        metrics.contains(
            "laminardb_source_watermark_ms{pipeline=\"market\",source=\"trades\"} 1700000000000"
        ),
        "{metrics}"
    );
    let syncs: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("laminardb_wal_sync_seconds_count{pipeline=\"market\"} "))
        .and_then(|v| v.parse().ok())
        .expect("a WAL sync count");
    assert!(syncs > 0, "{metrics}");
    assert!(
        metrics.contains(&format!(
            "laminardb_wal_sync_seconds_bucket{{pipeline=\"market\",le=\"+Inf\"}} {syncs}"
        )),
        "{metrics}"
    );

    // Tailing a stream: results as JSON lines while rows arrive.
    let mut tail = Command::new("curl")
        .args(["-s", "-N", "--max-time", "20", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(format!("http://127.0.0.1:{port}/streams/per_symbol"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(tail.stdout.take().unwrap()));
    // The subscription starts when the request arrives, which the test
    // cannot see: keep pushing until a row shows up.
    let pushing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pusher = {
        let pushing = std::sync::Arc::clone(&pushing);
        std::thread::spawn(move || {
            let row = r#"{"symbol":"TAIL","price":1.0,"volume":9,"ts":1700000001500}"#;
            for _ in 0..100 {
                if !pushing.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let (status, body) = curl(port, "POST", "/sources/trades", true, Some(row));
                assert_eq!(status, 200, "{body}");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let line = lines.next().expect("a result line").unwrap();
    assert!(line.contains("\"symbol\":\"TAIL\""), "{line}");
    pushing.store(false, std::sync::atomic::Ordering::Relaxed);
    pusher.join().unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    let (status, body) = curl(port, "GET", "/streams/nope", true, None);
    assert_eq!(status, 404, "{body}");

    // psql: queries, INSERT INTO a source, errors with their codes, and
    // the password.
    let insert = "INSERT INTO trades VALUES ('IBM', 150.5, 7, 1700000002000)";
    let (ok, text) = psql(pg_port, PG_PASSWORD, insert);
    assert!(ok, "{text}");
    assert!(text.contains("INSERT 0 1"), "{text}");
    eventually("psql sees the view", || {
        let (ok, text) = psql(pg_port, PG_PASSWORD, view);
        (ok && text.contains("AAPL|125|2") && text.contains("IBM|7|1")).then_some(text)
    });
    let (ok, text) = psql(pg_port, PG_PASSWORD, "SHOW STREAMS");
    assert!(ok && text.contains("per_minute"), "{text}");
    let (ok, text) = psql(pg_port, PG_PASSWORD, "SELECT * FROM nowhere");
    assert!(!ok && text.contains("LDB-"), "{text}");
    let (ok, text) = psql(pg_port, "wrong-password", "SELECT 1");
    assert!(
        !ok && text
            .to_lowercase()
            .contains("password authentication failed"),
        "{text}"
    );

    // A body over axum's default 2 MiB limit is taken, and whole.
    let mut big = String::new();
    for i in 0..40_000i64 {
        big.push_str(&format!(
            "{{\"symbol\":\"BIG{:02}\",\"price\":1.5,\"volume\":1,\"ts\":{}}}\n",
            i % 50,
            1_700_000_003_000i64 + i
        ));
    }
    assert!(big.len() > 2 << 20);
    let big_file = dir.path().join("big.jsonl");
    std::fs::write(&big_file, &big).unwrap();
    let upload = format!("@{}", big_file.display());
    let (status, body) = curl(port, "POST", "/sources/trades", true, Some(&upload));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"rows\":40000"), "{body}");

    // A crash: everything acknowledged comes back.
    drop(server);
    let mut server = start(&config, &log);
    wait_ready(port);
    let want_after = r#"[{"symbol":"AAPL","volume":125,"trades":2},{"symbol":"IBM","volume":7,"trades":1},{"symbol":"MSFT","volume":50,"trades":1}]"#;
    eventually("the recovered view", || {
        let (status, body) = curl(port, "POST", "/query", true, Some(view));
        (status == 200 && body.trim() == want_after).then_some(body)
    });
    let big_trades = "SELECT SUM(trades) AS n FROM per_symbol WHERE symbol LIKE 'BIG%'";
    eventually("the recovered big push", || {
        let (status, body) = curl(port, "POST", "/query", true, Some(big_trades));
        (status == 200 && body.contains("40000")).then_some(body)
    });
    eventually("a checkpoint", || {
        let (_, metrics) = curl(port, "GET", "/metrics", true, None);
        let taken = metrics
            .lines()
            .find_map(|l| l.strip_prefix("laminardb_checkpoints_total{pipeline=\"market\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        (taken > 0 && metrics.contains("laminardb_checkpoint_duration_seconds")).then_some(metrics)
    });
    // Later checkpoints of the same state are patches: a shard's state,
    // a view's rows or a source's retained rows that stayed the same.
    eventually("an incremental checkpoint", || {
        let (_, metrics) = curl(port, "GET", "/metrics", true, None);
        let gauge = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}{{pipeline=\"market\"}} ")))
                .and_then(|n| n.trim().parse::<u64>().ok())
        };
        match (
            gauge("laminardb_checkpoint_patched_files"),
            gauge("laminardb_checkpoint_files"),
        ) {
            (Some(patched), Some(files)) if patched > 0 && files >= patched => Some(metrics),
            _ => None,
        }
    });

    // SIGTERM: drain and exit 0.
    signal(&server, "TERM");
    let exited = wait_exit(&mut server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(exited, "{text}");
    assert!(text.contains("stopped"), "{text}");
    assert!(text.contains("final checkpoint"), "{text}");

    // Started again from the final checkpoint: the same answers.
    let server = start(&config, &log);
    wait_ready(port);
    eventually("the view from the final checkpoint", || {
        let (status, body) = curl(port, "POST", "/query", true, Some(view));
        (status == 200 && body.trim() == want_after).then_some(body)
    });
    drop(server);
}

#[test]
fn check_config_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let config = dir.path().join("laminardb.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_laminardb"))
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let http = "[http]\nlisten = \"127.0.0.1:9\"\n";
    let (ok, text) = check(&format!(
        "{http}[[pipeline]]\nname = \"p\"\nsql = \"CREATE SOURCE s (a BIGINT)\"\n"
    ));
    assert!(ok, "{text}");
    assert!(text.contains("ok (1 pipelines; objects: p.s"), "{text}");
    // Object names are unique across pipelines; pipeline names name
    // directories.
    let (ok, text) = check(&format!(
        "{http}[[pipeline]]\nname = \"p\"\nsql = \"CREATE SOURCE s (a BIGINT)\"\n\
         [[pipeline]]\nname = \"q\"\nsql = \"CREATE SOURCE s (b BIGINT)\"\n"
    ));
    assert!(
        !ok && text.contains("LDB-1003") && text.contains("pipeline 'p'"),
        "{text}"
    );
    let (ok, text) = check(&format!(
        "{http}[[pipeline]]\nname = \"../p\"\nsql = \"CREATE SOURCE s (a BIGINT)\"\n"
    ));
    assert!(!ok && text.contains("not a pipeline name"), "{text}");
    // A server may start with no pipeline and get them through the API.
    let (ok, text) = check(http);
    assert!(ok && text.contains("ok (0 pipelines"), "{text}");
    let (ok, text) = check("[http]\nlisten = 8080\n");
    assert!(!ok && text.contains("LDB-5002"), "{text}");
    let (ok, text) = check(&format!(
        "{http}[engine]\ncpus = [99999]\n[[pipeline]]\nname = \"p\"\nsql = \"CREATE SOURCE s (a BIGINT)\"\n"
    ));
    assert!(
        !ok && text.contains("LDB-5002") && text.contains("CPU 99999"),
        "{text}"
    );
    let (ok, text) = check(&format!("{http}[engine]\nshard = 2\n"));
    assert!(
        !ok && text.contains("LDB-5002") && text.contains("shard"),
        "{text}"
    );
    let (ok, text) = check(&format!(
        "{http}[[pipeline]]\nname = \"p\"\nsql = \"CREATE SORCE s (a BIGINT)\"\n"
    ));
    assert!(!ok && text.contains("pipeline 'p'"), "{text}");
    let (ok, text) = check(&format!(
        "{http}[[pipeline]]\nname = \"p\"\nsql = \"CREATE SOURCE s (a BIGINT); INSERT INTO s VALUES (1)\"\n"
    ));
    assert!(!ok && text.contains("may only create"), "{text}");
    let (ok, text) = check(&format!(
        "{http}[[pipeline]]\nname = \"p\"\nsql = \"CREATE STREAM t AS SELECT * FROM missing\"\n"
    ));
    assert!(!ok && text.contains("missing"), "{text}");
    let (ok, text) = check(&format!("{http}[http2]\n"));
    assert!(!ok && text.contains("LDB-5002"), "{text}");
    let (ok, text) = check(&format!(
        "{http}[pgwire]\nlisten = \"127.0.0.1:9\"\nuser = \"u\"\npassword = \"long-enough-1\"\ntls_required = true\n"
    ));
    assert!(!ok && text.contains("tls_required"), "{text}");
}

/// The systemd notify protocol against a real datagram socket set as
/// `NOTIFY_SOCKET`, with a watchdog interval.
#[test]
fn serve_speaks_the_systemd_notify_protocol() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let (port, pg_port) = (free_port(), free_port());
    let config = write_config(dir.path(), port, pg_port);
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_laminardb"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 256];
    let mut wait_for = |want: &str, seen: &mut Vec<String>| {
        while !seen.iter().any(|m| m == want) {
            let n = socket.recv(&mut buffer).expect("a notification");
            seen.push(String::from_utf8_lossy(&buffer[..n]).trim().to_string());
        }
    };
    wait_for("READY=1", &mut seen);
    assert_eq!(curl(port, "GET", "/ready", true, None).0, 200);
    wait_for("WATCHDOG=1", &mut seen);
    // A reload (nothing changed): RELOADING=1, then READY=1 again.
    seen.clear();
    Command::new("kill")
        .args(["-HUP", &server.id().to_string()])
        .status()
        .unwrap();
    wait_for("RELOADING=1", &mut seen);
    seen.clear();
    wait_for("READY=1", &mut seen);
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    wait_for("STOPPING=1", &mut seen);
    assert!(server.wait().unwrap().success());
}

/// The shipped unit passes `systemd-analyze verify` (pointed at the built
/// binary and an existing user, which verify checks).
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/laminardb.service"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unit = unit
        .replace("/usr/local/bin/laminardb", env!("CARGO_BIN_EXE_laminardb"))
        .replace("User=laminardb", "User=root")
        .replace("Group=laminardb", "Group=root");
    let path = dir.path().join("laminardb.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (the test script installs systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("laminardb.service:"), "{text}");
}

/// Kill -9 while a client is pushing: every request answered 200 is
/// recovered, whole, and at most the one request in flight is added.
#[test]
fn a_kill_during_ingest_loses_no_acknowledged_request() {
    let dir = tempfile::tempdir().unwrap();
    let (port, pg_port) = (free_port(), free_port());
    let config = write_config(dir.path(), port, pg_port);
    let log = dir.path().join("serve.log");
    let server = start(&config, &log);
    wait_ready(port);
    let body: String = (0..100)
        .map(|i| format!("{{\"symbol\":\"K\",\"price\":1.0,\"volume\":1,\"ts\":{i}}}\n"))
        .collect();
    let file = dir.path().join("rows.jsonl");
    std::fs::write(&file, body).unwrap();
    let upload = format!("@{}", file.display());
    // Kill once a few requests went through, while the client goes on.
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let killer = {
        let pid = server.0.id();
        let acknowledged = std::sync::Arc::clone(&acknowledged);
        std::thread::spawn(move || {
            eventually("a few acknowledged requests", || {
                (acknowledged.load(std::sync::atomic::Ordering::Acquire) >= 5).then(String::new)
            });
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
        })
    };
    loop {
        let (status, _) = curl(port, "POST", "/sources/trades", true, Some(&upload));
        if status != 200 {
            break;
        }
        acknowledged.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    killer.join().unwrap();
    drop(server);
    let acknowledged = acknowledged.load(std::sync::atomic::Ordering::Acquire);
    assert!(acknowledged >= 5, "the kill came before the requests");

    let _server = start(&config, &log);
    wait_ready(port);
    let query = "SELECT trades FROM per_symbol WHERE symbol = 'K'";
    // The view takes in the replayed results a moment after recovery.
    let recovered: u64 = eventually("the recovered count", || {
        let (status, body) = curl(port, "POST", "/query", true, Some(query));
        let count: u64 = body
            .split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (status == 200 && count >= acknowledged * 100).then(|| count.to_string())
    })
    .parse()
    .unwrap();
    assert_eq!(
        recovered % 100,
        0,
        "a request was half applied: {recovered}"
    );
    assert!(
        (acknowledged * 100..=(acknowledged + 1) * 100).contains(&recovered),
        "{acknowledged} requests acknowledged, {recovered} rows recovered"
    );
}

/// `GET /ws/streams/{name}` with a real WebSocket client: one JSON array per
/// result batch, the bearer token required, and the shard queue depth in
/// the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tails_a_stream() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let (dir, _server, port, _) = start_ready().await;

    let url = format!("ws://127.0.0.1:{port}/ws/streams/per_symbol");
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("401")),
        "{refused:?}"
    );
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // The subscription starts with the upgrade, which the test cannot see:
    // push until a batch comes.
    let row = r#"{"symbol":"WS","price":1.0,"volume":7,"ts":1700000000000}"#;
    let text = loop {
        let pushed = tokio::task::spawn_blocking(move || {
            curl(port, "POST", "/sources/trades", true, Some(row))
        })
        .await
        .unwrap();
        assert_eq!(pushed.0, 200, "{}", pushed.1);
        match tokio::time::timeout(Duration::from_millis(500), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => break text.to_string(),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => continue,
        }
    };
    assert!(
        text.starts_with('[') && text.contains(r#""symbol":"WS""#),
        "{text}"
    );
    assert!(text.contains(r#""_weight":1"#), "{text}");

    let (_, metrics) =
        tokio::task::spawn_blocking(move || curl(port, "GET", "/metrics", true, None))
            .await
            .unwrap();
    assert!(
        metrics.contains("laminardb_shard_queue_depth{pipeline=\"market\",shard=\"1\"}"),
        "{metrics}"
    );
    socket.close(None).await.unwrap();

    // POST /query answers an Arrow IPC stream when asked for one.
    let ipc = dir.path().join("answer.arrows");
    let status = Command::new("curl")
        .args(["-s", "-S", "--max-time", "20", "-o"])
        .arg(&ipc)
        .args(["-w", "%{http_code} %{content_type}", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .args(["-H", "Accept: application/vnd.apache.arrow.stream"])
        .args([
            "--data-binary",
            "SELECT symbol, volume FROM per_symbol WHERE symbol = 'WS'",
        ])
        .arg(format!("http://127.0.0.1:{port}/query"))
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert_eq!(status, "200 application/vnd.apache.arrow.stream");
    let reader = laminar_db::arrow::ipc::reader::StreamReader::try_new(
        std::fs::File::open(&ipc).unwrap(),
        None,
    )
    .unwrap();
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    let text = laminar_db::pretty(&batches).unwrap();
    assert!(text.contains("WS"), "{text}");
}

/// Tailing a stream from `psql` with a cursor: `DECLARE ... CURSOR FOR
/// SUBSCRIBE TO`, `FETCH` (waiting for rows), `CLOSE`; errors by code.
#[test]
fn psql_tails_a_stream_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let (port, pg_port) = (free_port(), free_port());
    let config = write_config(dir.path(), port, pg_port);
    let _server = start(&config, &dir.path().join("serve.log"));
    wait_ready(port);
    // Push rows until psql has finished: its FETCH waits for the first.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let row = r#"{"symbol":"CURSOR","price":1.0,"volume":3,"ts":1700000000000}"#;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                curl(port, "POST", "/sources/trades", true, Some(row));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &pg_port.to_string()])
        .args(["-U", "laminar", "-d", "laminar", "-X", "-A", "-t"])
        .args(["-v", "ON_ERROR_STOP=1"])
        .args(["-c", "BEGIN"])
        .args(["-c", "DECLARE c CURSOR FOR SUBSCRIBE TO per_symbol"])
        .args(["-c", "FETCH 1 c WITH (timeout = '20 s')"])
        .args(["-c", "CLOSE c"])
        .args(["-c", "COMMIT"])
        .env("PGPASSWORD", PG_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    pusher.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One row of the changelog: symbol|volume|trades|_weight (the first
    // may retract a row from before the cursor).
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("CURSOR|")).collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0].split('|').count(), 4, "{text}");
    assert!(text.contains("CLOSE CURSOR"), "{text}");

    // Nothing arrives within a zero timeout: no rows, no error.
    let (ok, text) = psql(
        pg_port,
        PG_PASSWORD,
        "DECLARE q CURSOR FOR SUBSCRIBE TO per_minute; FETCH ALL q WITH (timeout = '0 s')",
    );
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "DECLARE CURSOR", "no rows: {text}");
    let (ok, text) = psql(pg_port, PG_PASSWORD, "FETCH 1 nope");
    assert!(!ok && text.contains("LDB-1002"), "{text}");
    let (ok, text) = psql(
        pg_port,
        PG_PASSWORD,
        "DECLARE c CURSOR FOR SUBSCRIBE TO nothing",
    );
    assert!(!ok && text.contains("LDB-1002"), "{text}");
}

/// `[pgwire]` with a certificate: `psql` connects over TLS
/// (`sslmode=require`); MD5 login when configured; a missing key file is
/// refused by `check-config`.
#[test]
fn psql_over_tls_with_md5() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(dir.path().join("server.key"))
        .arg("-out")
        .arg(dir.path().join("server.crt"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let (port, pg_port) = (free_port(), free_port());
    std::fs::write(dir.path().join("market.sql"), PIPELINE).unwrap();
    let config = dir.path().join("laminardb.toml");
    let write = |port: u16, pg_port: u16, key: &str, extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\n\
                 [pgwire]\nlisten = \"127.0.0.1:{pg_port}\"\nuser = \"laminar\"\n\
                 password = \"{PG_PASSWORD}\"\nauth = \"md5\"\n\
                 tls_cert = \"server.crt\"\ntls_key = \"{key}\"\n{extra}\n\
                 [[pipeline]]\nname = \"market\"\nfile = \"market.sql\"\n"
            ),
        )
        .unwrap();
    };
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_laminardb"))
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    write(port, pg_port, "missing.key", "");
    let (ok, text) = check();
    assert!(!ok && text.contains("tls_key"), "{text}");

    write(port, pg_port, "server.key", "");
    let _server = start(&config, &dir.path().join("serve.log"));
    wait_ready(port);
    let psql_with = |pg_port: u16, mode: &str| {
        let out = Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={pg_port} user=laminar dbname=laminar sslmode={mode}"
            ))
            .args(["-X", "-A", "-t", "-c", "SHOW STREAMS"])
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success() && text.contains("per_minute"), text)
    };
    for mode in ["require", "disable"] {
        let (ok, text) = psql_with(pg_port, mode);
        assert!(ok, "{mode}: {text}");
    }
    let (ok, text) = psql(pg_port, "wrong-password", "SELECT 1");
    assert!(
        !ok && text
            .to_lowercase()
            .contains("password authentication failed"),
        "{text}"
    );

    drop(_server);

    // tls_required: plain connections are refused before any password.
    let (port, pg_port) = (free_port(), free_port());
    write(port, pg_port, "server.key", "tls_required = true\n");
    let _server = start(&config, &dir.path().join("serve-tls.log"));
    wait_ready(port);
    let (ok, text) = psql_with(pg_port, "require");
    assert!(ok, "{text}");
    let (ok, text) = psql_with(pg_port, "disable");
    assert!(
        !ok && text.contains("LDB-5003") && text.contains("TLS"),
        "{text}"
    );
}

/// A driver on the extended query protocol (tokio-postgres): prepared
/// statements with parameters typed from the query or the `INSERT`
/// target, binary results, a statement reused with other values, quotes
/// in values kept as data, `SHOW`, and errors by code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_runs_prepared_statements() {
    use tokio_postgres::types::Type;
    let (_dir, _server, _, pg_port) = start_ready().await;
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={pg_port} user=laminar password={PG_PASSWORD} dbname=laminar"
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);

    let insert = client
        .prepare("INSERT INTO trades VALUES ($1, $2, $3, $4)")
        .await
        .unwrap();
    assert_eq!(
        insert.params(),
        [Type::VARCHAR, Type::FLOAT8, Type::INT8, Type::INT8]
    );
    for (i, symbol) in ["AAPL", "O'Brien", "AAPL"].into_iter().enumerate() {
        let i = i as i64;
        let inserted = client
            .execute(
                &insert,
                &[
                    &symbol,
                    &(10.0 + i as f64),
                    &(100 * (i + 1)),
                    &(1_700_000_000_000 + i),
                ],
            )
            .await
            .unwrap();
        assert_eq!(inserted, 1);
    }

    let rows = client
        .query(
            "SELECT symbol, price, volume FROM trades WHERE volume >= $1 ORDER BY volume",
            &[&200i64],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, String>(0), "O'Brien");
    assert_eq!(rows[0].get::<_, f64>(1), 11.0);
    assert_eq!(rows[1].get::<_, i64>("volume"), 300);

    let by_symbol = client
        .prepare("SELECT COUNT(*) AS n FROM trades WHERE symbol = $1")
        .await
        .unwrap();
    for (symbol, want) in [("AAPL", 2i64), ("O'Brien", 1), ("x' OR '1'='1", 0)] {
        let row = client.query_one(&by_symbol, &[&symbol]).await.unwrap();
        assert_eq!(row.get::<_, i64>("n"), want, "{symbol}");
    }

    let streams = client.query("SHOW STREAMS", &[]).await.unwrap();
    assert!(
        streams
            .iter()
            .any(|row| row.get::<_, String>(0) == "per_minute"),
        "{streams:?}"
    );

    let error = client
        .query("SELECT nope FROM trades", &[])
        .await
        .unwrap_err();
    let message = error.as_db_error().map(|e| e.message().to_string());
    assert!(
        message.as_deref().is_some_and(|m| m.contains("LDB-")),
        "{error:?}"
    );
    let error = client
        .execute(&insert, &[&"X", &1.0f64, &1i64])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("parameters"), "{error}");
}
