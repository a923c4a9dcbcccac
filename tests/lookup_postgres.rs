//! Lookup tables loaded from a real PostgreSQL server, started by the test
//! on a loopback port (the test command installs PostgreSQL when missing).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use datafusion::arrow::array::{Array, Int64Array, StringArray};
use laminar_db::LaminarDB;

const PASSWORD: &str = "lookup-secret";

/// A PostgreSQL server in a temporary directory, stopped on drop.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

fn postgres_bin() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (the test command installs it)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

/// Runs a PostgreSQL program as the `postgres` user when we are root
/// (initdb refuses root), as ourselves otherwise.
fn as_postgres(program: &Path) -> Command {
    let root = unsafe { libc_geteuid() } == 0;
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

impl Postgres {
    fn start() -> Self {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        // The server's user must own its directory.
        Command::new("chmod")
            .arg("777")
            .arg(dir.path())
            .status()
            .unwrap();
        Command::new("chmod")
            .arg("644")
            .arg(&pwfile)
            .status()
            .unwrap();
        let status = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "laminar",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Postgres {
            bin,
            data,
            port,
            _dir: dir,
        };
        server.pg_ctl_start();
        server.psql("postgres", "CREATE DATABASE market");
        server
    }

    fn pg_ctl_start(&self) {
        let socket_dir = self.data.parent().unwrap();
        let status = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {}",
                self.port,
                socket_dir.display()
            ))
            .arg("start")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl start failed");
    }

    fn stop(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }

    fn psql(&self, database: &str, sql: &str) {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "laminar",
                "-d",
            ])
            .arg(database)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn options(&self, extra: &str) -> String {
        format!(
            "hostname = '127.0.0.1', port = '{}', database = 'market', user = 'laminar',
             password = '{PASSWORD}'{extra}",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn trade(symbol: &str, volume: i64) -> Trade {
    Trade {
        symbol: symbol.to_string(),
        price: 10.0,
        volume,
        ts: 1_700_000_000_000 + volume,
    }
}

/// Pushes one trade and returns the sector and lot it was joined with.
fn enrich(
    handle: &laminar_db::SourceHandle,
    sub: &mut laminar_db::Subscription,
    symbol: &str,
    volume: i64,
) -> (Option<String>, Option<i64>) {
    handle.push(trades_batch(&[trade(symbol, volume)])).unwrap();
    let b = sub
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("a joined row");
    let sectors = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
    let lots = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
    (
        sectors.is_valid(0).then(|| sectors.value(0).to_string()),
        lots.is_valid(0).then(|| lots.value(0)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_table_loads_and_refreshes_from_postgres() {
    let pg = Postgres::start();
    pg.psql(
        "market",
        "CREATE TABLE instruments (symbol text PRIMARY KEY, sector text, lot int8, listed date);
         INSERT INTO instruments VALUES ('AAPL', 'tech', 100, '1980-12-12'),
           ('XOM', 'energy', 50, '1970-01-01'), ('PFE', NULL, 10, '1972-01-01');",
    );
    let db = LaminarDB::builder().shards(2).build().unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(&format!(
        "CREATE LOOKUP TABLE instruments (
             symbol VARCHAR NOT NULL, sector VARCHAR, lot BIGINT, PRIMARY KEY (symbol)
         ) FROM POSTGRES ({}, query = 'SELECT symbol, sector, lot FROM instruments',
                          refresh_interval = '200 ms')",
        pg.options("")
    ))
    .await
    .unwrap();
    let shown = db.execute("SHOW CREATE TABLE instruments").await.unwrap();
    let shown = format!("{shown:?}");
    assert!(
        shown.contains("FROM POSTGRES") && !shown.contains(PASSWORD),
        "{shown}"
    );
    // The rows are there for ad-hoc queries at once.
    let rows = db
        .sql("SELECT COUNT(*) AS n FROM instruments")
        .await
        .unwrap();
    assert_eq!(
        rows[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0),
        3
    );
    db.execute(
        "CREATE STREAM enriched AS SELECT t.symbol, i.sector, i.lot FROM trades t
         LEFT JOIN instruments i ON t.symbol = i.symbol",
    )
    .await
    .unwrap();
    let mut sub = db.subscribe("enriched").unwrap();
    let handle = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    assert_eq!(
        enrich(&handle, &mut sub, "AAPL", 1),
        (Some("tech".into()), Some(100))
    );
    assert_eq!(enrich(&handle, &mut sub, "PFE", 2), (None, Some(10)));
    assert_eq!(enrich(&handle, &mut sub, "MSFT", 3), (None, None));

    // Changes in PostgreSQL arrive with the next refresh: an update, a
    // delete and an insert.
    pg.psql(
        "market",
        "UPDATE instruments SET lot = 200 WHERE symbol = 'AAPL';
         DELETE FROM instruments WHERE symbol = 'XOM';
         INSERT INTO instruments VALUES ('MSFT', 'tech', 300, '1986-03-13');",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut volume = 10;
    loop {
        volume += 1;
        if enrich(&handle, &mut sub, "MSFT", volume) == (Some("tech".into()), Some(300)) {
            break;
        }
        assert!(Instant::now() < deadline, "the refresh never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        enrich(&handle, &mut sub, "AAPL", 100),
        (Some("tech".into()), Some(200))
    );
    assert_eq!(
        enrich(&handle, &mut sub, "XOM", 101),
        (None, None),
        "deleted upstream"
    );

    // A dead database: refreshes fail, the last rows stay.
    let lookup = &db.metrics().lookup_tables[0];
    assert_eq!(lookup.name, "instruments");
    assert!(lookup.refreshes >= 1, "{lookup:?}");
    let failed_before = lookup.refresh_failures;
    pg.stop();
    eventually(|| db.metrics().lookup_tables[0].refresh_failures >= failed_before + 2);
    assert_eq!(
        enrich(&handle, &mut sub, "AAPL", 102),
        (Some("tech".into()), Some(200))
    );

    // Rows come from the database only.
    let error = db
        .execute("INSERT INTO instruments VALUES ('IBM', 'tech', 1)")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("LDB-1004") && error.contains("lookup table"),
        "{error}"
    );
    db.shutdown().await.unwrap();
    assert!(db.errors().is_empty(), "{:?}", db.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_table_columns_from_the_query_and_errors() {
    let pg = Postgres::start();
    pg.psql(
        "market",
        "CREATE TABLE fx (ccy char(3) PRIMARY KEY, rate float8, fixed timestamptz, active bool,
                          note numeric);
         INSERT INTO fx VALUES ('EUR', 1.08, '2026-01-02 10:00:00+00', true, 1.5),
                               ('JPY', 0.0067, '2026-01-02 10:00:00+00', false, 2);",
    );
    let db = LaminarDB::open().unwrap();
    // No column list: the types PostgreSQL reports, the key from the option.
    db.execute(&format!(
        "CREATE LOOKUP TABLE fx FROM POSTGRES ({},
             query = 'SELECT ccy, rate, fixed, active FROM fx', primary_key = 'ccy',
             refresh_interval = '0')",
        pg.options("")
    ))
    .await
    .unwrap();
    let rows = db
        .sql("SELECT ccy, rate, active, CAST(fixed AS VARCHAR) AS fixed FROM fx ORDER BY ccy")
        .await
        .unwrap();
    let text = laminar_db::pretty(&rows).unwrap();
    assert!(
        text.contains("EUR") && text.contains("1.08") && text.contains("true"),
        "{text}"
    );
    assert!(text.contains("2026-01-02T10:00:00"), "{text}");

    let cases: [(String, &str); 6] = [
        (pg.options(", query = 'SELECT * FROM fx'"), "numeric"),
        (pg.options(", query = 'SELECT * FROM nowhere'"), "LDB-4002"),
        (
            pg.options(", query = 'SELECT ccy, rate FROM fx'"),
            "primary key",
        ),
        (
            pg.options(", query = 'SELECT ccy FROM fx'")
                .replace(PASSWORD, "wrong"),
            "LDB-7001",
        ),
        (
            "hostname = '127.0.0.1', port = '1', database = 'market', user = 'laminar',
             query = 'SELECT 1', connect_timeout = '2 s'"
                .to_string(),
            "LDB-7001",
        ),
        (
            "hostname = '127.0.0.1', database = 'market'".to_string(),
            "LDB-5002",
        ),
    ];
    for (i, (options, expected)) in cases.iter().enumerate() {
        let error = db
            .execute(&format!(
                "CREATE LOOKUP TABLE bad{i} FROM POSTGRES ({options})"
            ))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "case {i}: {error}");
        assert!(!error.contains(PASSWORD), "the password leaks: {error}");
    }
    let syntax = db
        .execute("CREATE LOOKUP TABLE x FROM MYSQL (hostname = 'h')")
        .await
        .unwrap_err()
        .to_string();
    assert!(syntax.contains("LDB-1004"), "{syntax}");
}
