//! Helpers for the tests that drive `laminardb serve` as a user would:
//! the real binary, loopback ports, `curl`.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-0123456789";

pub const PG_PASSWORD: &str = "pg-secret-42";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server process, killed if a test fails before it stops it.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start(config: &Path, log: &Path) -> Server {
    Server(
        Command::new(env!("CARGO_BIN_EXE_laminardb"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// `curl` a URL; returns (status, body).
pub fn curl(port: u16, method: &str, path: &str, token: bool, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-S",
        "--max-time",
        "20",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if token {
        c.arg("-H").arg(format!("Authorization: Bearer {TOKEN}"));
    }
    if let Some(body) = body {
        c.arg("--data-binary").arg(body);
    }
    c.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = c.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// Polls until `check` passes (`Ok`) or 30 s go by; then fails with what
/// the last check saw (`Err`).
pub fn poll_until<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match check() {
            Ok(found) => return found,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Polls until `check` passes or 30 s go by.
pub fn eventually(what: &str, mut check: impl FnMut() -> Option<String>) -> String {
    poll_until(what, || check().ok_or_else(String::new))
}

pub fn wait_ready(port: u16) {
    eventually("ready", || {
        (curl(port, "GET", "/ready", true, None).0 == 200).then(String::new)
    });
}

/// Sends `signal` (`TERM`, `HUP`, ...) to the server with kill(1).
pub fn signal(server: &Server, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}");
}

/// Waits (up to 30 s) for the server to exit after SIGTERM; returns
/// whether it exited 0.
pub fn wait_exit(server: &mut Server) -> bool {
    let pid = server.0.id();
    let (sender, exited) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = sender.send(server.0.wait().map(|s| s.success()));
        });
        match exited.recv_timeout(Duration::from_secs(30)) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                // Unblock the waiting thread before failing.
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("the server did not stop within 30 s");
            }
        }
    })
}

/// [`wait_ready`], failing with the server's log.
pub fn wait_ready_logged(port: u16, log: &Path) {
    poll_until("the server to get ready", || {
        if curl(port, "GET", "/ready", true, None).0 == 200 {
            Ok(())
        } else {
            Err(format!(
                "not ready; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ))
        }
    })
}

/// `psql` with the config's login; returns (success, stdout + stderr).
pub fn psql(pg_port: u16, password: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &pg_port.to_string()])
        .args(["-U", "laminar", "-d", "laminar", "-X", "-A", "-t"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql (the test script installs postgresql-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
