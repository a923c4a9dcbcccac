//! Pipelines of `laminardb serve` changing while the server runs: SIGHUP
//! reloads of the config, and `POST`/`DELETE /pipelines/{name}`. The
//! pipeline that does not change keeps running: a client tailing one of
//! its streams across every change keeps getting rows.

mod daemon;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use daemon::*;

const MARKET: &str = "
CREATE SOURCE trades (symbol VARCHAR NOT NULL, volume BIGINT NOT NULL);
CREATE MATERIALIZED VIEW per_symbol AS
SELECT symbol, SUM(volume) AS volume FROM trades GROUP BY symbol EMIT CHANGES;
";

const ALERTS_V1: &str = "CREATE SOURCE clicks (user_id BIGINT NOT NULL, ts BIGINT NOT NULL); \
     CREATE MATERIALIZED VIEW clicks_per_user AS \
     SELECT user_id, COUNT(*) AS clicks FROM clicks GROUP BY user_id EMIT CHANGES;";

const ALERTS_V2: &str = "CREATE SOURCE clicks (user_id BIGINT NOT NULL, ts BIGINT NOT NULL); \
     CREATE MATERIALIZED VIEW last_click AS \
     SELECT user_id, MAX(ts) AS ts FROM clicks GROUP BY user_id EMIT CHANGES;";

const EXTRA: &str = "CREATE SOURCE readings (sensor BIGINT NOT NULL, value DOUBLE NOT NULL);
CREATE MATERIALIZED VIEW sensor_max AS
SELECT sensor, MAX(value) AS peak FROM readings GROUP BY sensor EMIT CHANGES;";

/// The config: `market` from a file, and `alerts` with this SQL (none:
/// no such pipeline).
fn write_config(dir: &Path, ports: (u16, u16), alerts: Option<&str>) -> std::path::PathBuf {
    std::fs::write(dir.join("market.sql"), MARKET).unwrap();
    let (port, pg_port) = ports;
    let mut text = format!(
        "[engine]\nshards = 2\n\n[storage]\ndir = \"state\"\ndurability = \"sync\"\n\
         checkpoint_interval_ms = 200\n\n\
         [http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\n\
         [pgwire]\nlisten = \"127.0.0.1:{pg_port}\"\nuser = \"laminar\"\n\
         password = \"{PG_PASSWORD}\"\n\n\
         [[pipeline]]\nname = \"market\"\nfile = \"market.sql\"\n"
    );
    if let Some(sql) = alerts {
        text.push_str(&format!(
            "\n[[pipeline]]\nname = \"alerts\"\nshards = 1\ncpus = [1]\nsql = \"{sql}\"\n"
        ));
    }
    let config = dir.join("laminardb.toml");
    std::fs::write(&config, text).unwrap();
    config
}

fn push(port: u16, source: &str, rows: &str) {
    let (status, body) = curl(
        port,
        "POST",
        &format!("/sources/{source}"),
        true,
        Some(rows),
    );
    assert_eq!(status, 200, "{body}");
}

/// Polls a query until it answers `want`.
fn query_until(port: u16, sql: &str, want: &str) {
    poll_until(sql, || {
        let (status, body) = curl(port, "POST", "/query", true, Some(sql));
        if status == 200 && body.trim() == want {
            Ok(())
        } else {
            Err(format!("wanted {want}, got {status} {body}"))
        }
    })
}

/// `GET /streams/per_symbol`, its lines sent to a channel.
fn tail(port: u16) -> (std::process::Child, Receiver<String>) {
    let mut child = Command::new("curl")
        .args(["-s", "-N", "--max-time", "120", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(format!("http://127.0.0.1:{port}/streams/per_symbol"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

/// Pushes a trade of `symbol` until the tail shows it (the subscription
/// may start after the first push).
fn tail_sees(port: u16, lines: &Receiver<String>, symbol: &str) {
    let row = format!(r#"{{"symbol":"{symbol}","volume":1}}"#);
    for _ in 0..100 {
        push(port, "trades", &row);
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            if line.contains(&format!("\"symbol\":\"{symbol}\"")) {
                return;
            }
        }
    }
    panic!("the tail never showed {symbol}");
}

fn metric(port: u16, name: &str) -> Option<u64> {
    let (_, metrics) = curl(port, "GET", "/metrics", true, None);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
}

#[test]
fn pipelines_change_while_the_others_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let (port, pg_port) = (free_port(), free_port());
    let ports = (port, pg_port);
    let config = write_config(dir.path(), ports, Some(ALERTS_V1));
    let log = dir.path().join("serve.log");
    let mut server = start(&config, &log);
    wait_ready_logged(port, &log);

    let (mut tail_process, lines) = tail(port);
    tail_sees(port, &lines, "FIRST");
    push(
        port,
        "clicks",
        "{\"user_id\":1,\"ts\":10}\n{\"user_id\":1,\"ts\":20}",
    );
    query_until(
        port,
        "SELECT user_id, clicks FROM clicks_per_user",
        r#"[{"user_id":1,"clicks":2}]"#,
    );

    // SIGHUP with alerts' SQL changed: alerts restarts on it, market is
    // left alone (its tail keeps going).
    write_config(dir.path(), ports, Some(ALERTS_V2));
    signal(&server, "HUP");
    let alerts = eventually("alerts on its new SQL", || {
        let (status, body) = curl(port, "GET", "/pipelines/alerts", true, None);
        (status == 200 && body.contains("last_click")).then_some(body)
    });
    assert!(alerts.contains(r#""shards":1,"cpus":[1]"#), "{alerts}");
    push(port, "clicks", "{\"user_id\":2,\"ts\":30}");
    query_until(
        port,
        "SELECT user_id, ts FROM last_click",
        r#"[{"user_id":2,"ts":30}]"#,
    );
    let (status, body) = curl(
        port,
        "POST",
        "/query",
        true,
        Some("SELECT * FROM clicks_per_user"),
    );
    assert_ne!(status, 200, "the old view is gone: {body}");
    tail_sees(port, &lines, "AFTER_RELOAD");
    let replaced = std::fs::read_dir(dir.path().join("state/pipelines"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("alerts.replaced-"))
        .count();
    assert_eq!(replaced, 1, "the old SQL's storage is set aside");

    // New SQL that does not plan: alerts keeps its running version.
    write_config(
        dir.path(),
        ports,
        Some("CREATE SOURCE clicks (user_id BIGINT); CREATE STREAM t AS SELECT * FROM missing;"),
    );
    signal(&server, "HUP");
    eventually("a failed reload", || {
        (metric(port, "laminardb_reload_failures_total") == Some(1)).then(String::new)
    });
    push(port, "clicks", "{\"user_id\":2,\"ts\":40}");
    query_until(
        port,
        "SELECT user_id, ts FROM last_click",
        r#"[{"user_id":2,"ts":40}]"#,
    );
    assert_eq!(metric(port, "laminardb_reloads_total"), Some(2));

    // The REST API: create, refuse what clashes or does not parse, list.
    let (status, body) = curl(port, "POST", "/pipelines/extra", true, Some(EXTRA));
    assert_eq!(status, 201, "{body}");
    assert!(body.contains(r#""origin":"api""#), "{body}");
    push(
        port,
        "readings",
        "{\"sensor\":7,\"value\":1.5}\n{\"sensor\":7,\"value\":3.5}",
    );
    query_until(
        port,
        "SELECT sensor, peak FROM sensor_max",
        r#"[{"sensor":7,"peak":3.5}]"#,
    );
    let refusals = [
        ("/pipelines/extra", EXTRA, 409, "LDB-1003"),
        (
            "/pipelines/clash",
            "CREATE SOURCE trades (a BIGINT)",
            409,
            "already an object of pipeline 'market'",
        ),
        ("/pipelines/bad", "CREATE SORCE s (a BIGINT)", 400, "SORCE"),
        ("/pipelines/a.b", EXTRA, 400, "not a pipeline name"),
    ];
    for (path, sql, want_status, want) in refusals {
        let (status, body) = curl(port, "POST", path, true, Some(sql));
        assert_eq!(status, want_status, "{path}: {body}");
        assert!(body.contains(want), "{path}: {body}");
    }
    let (status, body) = curl(port, "DELETE", "/pipelines/market", true, None);
    assert!(status == 409 && body.contains("LDB-1008"), "{body}");
    let (status, body) = curl(port, "GET", "/pipelines", true, None);
    assert_eq!(status, 200, "{body}");
    for name in ["market", "alerts", "extra"] {
        assert!(body.contains(&format!(r#""name":"{name}""#)), "{body}");
    }

    // Statements go to the pipeline that owns what they name.
    let (status, body) = curl(
        port,
        "POST",
        "/query",
        true,
        Some("SELECT * FROM per_symbol, sensor_max"),
    );
    assert!(status == 400 && body.contains("LDB-1004"), "{body}");
    let (status, body) = curl(
        port,
        "POST",
        "/query",
        true,
        Some("CREATE SOURCE x (a BIGINT)"),
    );
    assert!(status == 400 && body.contains("LDB-2004"), "{body}");
    let (status, body) = curl(
        port,
        "POST",
        "/query",
        true,
        Some("SHOW MATERIALIZED VIEWS"),
    );
    assert_eq!(status, 200, "{body}");
    for view in ["per_symbol", "last_click", "sensor_max"] {
        assert!(body.contains(view), "{body}");
    }
    // The same from psql: CREATE PIPELINE (dollar-quoted SQL), SHOW
    // PIPELINES, INSERT and SELECT on its objects, DROP PIPELINE.
    let (ok, text) = psql(
        pg_port,
        PG_PASSWORD,
        "CREATE PIPELINE meters AS $$ \
         CREATE SOURCE meter_readings (meter BIGINT NOT NULL, kwh DOUBLE NOT NULL); \
         CREATE MATERIALIZED VIEW meter_total AS SELECT meter, SUM(kwh) AS kwh \
         FROM meter_readings GROUP BY meter EMIT CHANGES; $$",
    );
    assert!(ok && text.contains("CREATE PIPELINE"), "{text}");
    let (ok, text) = psql(pg_port, PG_PASSWORD, "SHOW PIPELINES");
    assert!(ok, "{text}");
    for row in [
        "meters|api|2|meter_readings|meter_total|",
        "market|config|2|trades|per_symbol|",
    ] {
        assert!(text.contains(row), "{text}");
    }
    let (ok, text) = psql(
        pg_port,
        PG_PASSWORD,
        "INSERT INTO meter_readings VALUES (1, 2.5), (1, 4.0)",
    );
    assert!(ok, "{text}");
    eventually("psql sees meter_total", || {
        let (ok, text) = psql(pg_port, PG_PASSWORD, "SELECT meter, kwh FROM meter_total");
        (ok && text.trim() == "1|6.5").then_some(text)
    });
    let (ok, text) = psql(
        pg_port,
        PG_PASSWORD,
        "CREATE PIPELINE broken AS 'CREATE SOURCE'",
    );
    assert!(!ok && text.contains("LDB-1001"), "{text}");
    let (ok, text) = psql(pg_port, PG_PASSWORD, "DROP PIPELINE meters");
    assert!(ok && text.contains("DROP PIPELINE"), "{text}");
    let (ok, text) = psql(pg_port, PG_PASSWORD, "DROP PIPELINE meters");
    assert!(!ok && text.contains("unknown pipeline"), "{text}");
    let (ok, text) = psql(pg_port, PG_PASSWORD, "DROP PIPELINE IF EXISTS meters");
    assert!(ok, "{text}");

    tail_sees(port, &lines, "AFTER_API");
    let _ = tail_process.kill();
    let _ = tail_process.wait();

    // An API pipeline comes back with the server, with its data (and so
    // does alerts, from its storage; a config with SQL that does not plan
    // would stop the server from starting).
    write_config(dir.path(), ports, Some(ALERTS_V2));
    signal(&server, "TERM");
    assert!(wait_exit(&mut server), "exit 0");
    let mut server = start(&config, &log);
    wait_ready_logged(port, &log);
    let (status, body) = curl(port, "GET", "/pipelines/extra", true, None);
    assert!(
        status == 200 && body.contains(r#""origin":"api""#),
        "{body}"
    );
    query_until(
        port,
        "SELECT sensor, peak FROM sensor_max",
        r#"[{"sensor":7,"peak":3.5}]"#,
    );
    query_until(
        port,
        "SELECT user_id, ts FROM last_click",
        r#"[{"user_id":2,"ts":40}]"#,
    );
    let (status, body) = curl(port, "DELETE", "/pipelines/extra", true, None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl(port, "GET", "/pipelines/extra", true, None);
    assert_eq!(status, 404, "{body}");
    assert!(!dir.path().join("state/pipelines/extra").exists());
    assert!(!dir.path().join("state/api/extra.sql").exists());

    // A pipeline taken out of the config stops; its storage stays for
    // when it comes back.
    write_config(dir.path(), ports, None);
    signal(&server, "HUP");
    eventually("alerts stopped", || {
        (curl(port, "GET", "/pipelines/alerts", true, None).0 == 404).then(String::new)
    });
    assert!(dir.path().join("state/pipelines/alerts").exists());
    query_until(
        port,
        "SELECT symbol FROM per_symbol WHERE symbol = 'FIRST'",
        r#"[{"symbol":"FIRST"}]"#,
    );
    signal(&server, "TERM");
    assert!(wait_exit(&mut server), "exit 0");
}

/// A storage directory from before pipelines had their own engines is
/// refused with a hint, never replayed into a new, empty layout.
#[test]
fn the_storage_layout_of_one_engine_for_all_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), (free_port(), free_port()), None);
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/PIPELINE"), "LaminarDB pipeline v1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_laminardb"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("LDB-6002") && text.contains("pipelines/<name>/"),
        "{text}"
    );
}
