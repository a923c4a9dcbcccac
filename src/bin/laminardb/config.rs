//! `laminardb.toml`: what `laminardb serve` runs, checked before anything
//! starts (`laminardb check-config`).
//!
//! ```toml
//! [engine]
//! shards = 2                      # default: one per core
//! cpus = [2, 3, 4, 5]             # optional: the CPUs shards run on
//!
//! [storage]                       # optional: without it, nothing is kept
//! dir = "/var/lib/laminardb"
//! durability = "sync"             # or "async"
//! checkpoint_interval_ms = 60000  # optional: checkpoints (and a last one at SIGTERM)
//!
//! [http]
//! listen = "127.0.0.1:8080"
//! token = "a long random string"  # optional: Bearer token for all but /health
//!
//! [pgwire]                        # optional: psql and PostgreSQL clients
//! listen = "127.0.0.1:5433"
//! user = "laminar"
//! password = "a password"         # required, at least 8 characters
//! auth = "scram-sha-256"          # default; or "md5"
//! tls_cert = "/etc/laminardb/server.crt"   # optional, with tls_key: PEM files;
//! tls_key = "/etc/laminardb/server.key"    # clients may then use sslmode=require
//! tls_required = true                       # optional: refuse connections without TLS
//!
//! [[pipeline]]                   # any number, each its own engine
//! name = "market"                 # letters, digits, '_' and '-'
//! sql = "CREATE SOURCE ...; CREATE STREAM ...;"   # or file = "market.sql"
//! shards = 1                      # optional: overrides [engine] shards
//! cpus = [6]                      # optional: overrides [engine] cpus
//! ```
//!
//! SIGHUP rereads the `[[pipeline]]` sections (see `pipelines.rs`); the
//! other sections take effect at the next start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use laminar_db::{Durability, Error, ErrorCode, LaminarDB, Result, Statement};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    engine: EngineSection,
    storage: Option<StorageSection>,
    http: HttpSection,
    pgwire: Option<PgwireSection>,
    #[serde(default, rename = "pipeline")]
    pipelines: Vec<PipelineSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineSection {
    shards: Option<usize>,
    cpus: Option<Vec<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSection {
    dir: PathBuf,
    #[serde(default)]
    durability: DurabilityName,
    checkpoint_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DurabilityName {
    #[default]
    Sync,
    Async,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    listen: String,
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PgwireSection {
    listen: String,
    user: String,
    password: String,
    auth: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_required: Option<bool>,
}

/// How `psql` and other clients log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgAuth {
    ScramSha256,
    Md5,
}

/// The PostgreSQL listener's settings.
#[derive(Debug, Clone)]
pub struct Pgwire {
    pub listen: SocketAddr,
    pub user: String,
    pub password: String,
    pub auth: PgAuth,
    /// PEM certificate chain and private key, read at start.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Refuse connections that do not use TLS.
    pub tls_required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineSection {
    name: String,
    sql: Option<String>,
    file: Option<PathBuf>,
    shards: Option<usize>,
    cpus: Option<Vec<usize>>,
}

/// A pipeline to run: its own engine (shards, WAL, checkpoints), so one
/// can be created, replaced or dropped without touching the others.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub name: String,
    /// The SQL as written: a reload compares it to decide what changed.
    pub sql: String,
    pub statements: Vec<Statement>,
    /// Overrides `[engine] shards` for this pipeline.
    pub shards: Option<usize>,
    /// Overrides `[engine] cpus`: the CPUs its shards run on.
    pub cpus: Option<Vec<usize>>,
}

/// Checks a pipeline's name (it names a directory) and SQL (only
/// `CREATE` statements).
pub fn parse_pipeline(name: &str, sql: &str) -> Result<Vec<Statement>> {
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_name {
        return Err(Error::new(
            ErrorCode::InvalidInput,
            format!("'{name}' is not a pipeline name"),
        )
        .with_hint("use 1 to 64 letters, digits, '_' or '-'"));
    }
    let statements = LaminarDB::parse(sql)
        .map_err(|e| Error::new(e.code(), format!("pipeline '{name}': {}", e.message())))?;
    if statements.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidInput,
            format!("pipeline '{name}' has no statements"),
        ));
    }
    for statement in &statements {
        let creates = matches!(
            statement,
            Statement::CreateSource(_)
                | Statement::CreateStream(_)
                | Statement::CreateTable { .. }
                | Statement::CreateLookupTable { .. }
        );
        if !creates {
            return Err(Error::new(
                ErrorCode::InvalidInput,
                format!(
                    "pipeline '{name}' may only create sources, streams, views, tables and lookup tables"
                ),
            )
            .with_hint("send other statements to POST /query"));
        }
    }
    Ok(statements)
}

/// A checked configuration.
#[derive(Debug)]
pub struct Config {
    pub shards: Option<usize>,
    /// The CPUs pipelines run on (default: every CPU the process may use).
    pub cpus: Option<Vec<usize>>,
    pub storage: Option<(PathBuf, Durability)>,
    /// With storage: how often to take a checkpoint.
    pub checkpoint_interval: Option<std::time::Duration>,
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// The PostgreSQL listener.
    pub pgwire: Option<Pgwire>,
    /// In file order.
    pub pipelines: Vec<PipelineConfig>,
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::InvalidConfig,
        format!("{}: {message}", path.display()),
    )
}

impl Config {
    /// Reads and checks `path`: TOML shape, addresses, and every
    /// pipeline's SQL (parsed, and only `CREATE` statements).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorCode::Io,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let file: File = toml::from_str(&text).map_err(|e| invalid(path, e.to_string().trim()))?;
        let listen: SocketAddr = file.http.listen.parse().map_err(|_| {
            invalid(
                path,
                format!(
                    "[http] listen = '{}' is not an address like 127.0.0.1:8080",
                    file.http.listen
                ),
            )
        })?;
        let pgwire = match file.pgwire {
            None => None,
            Some(pg) => {
                let listen: SocketAddr = pg.listen.parse().map_err(|_| {
                    invalid(
                        path,
                        format!(
                            "[pgwire] listen = '{}' is not an address like 127.0.0.1:5433",
                            pg.listen
                        ),
                    )
                })?;
                if pg.user.is_empty() || pg.password.len() < 8 {
                    return Err(invalid(
                        path,
                        "[pgwire] needs a user and a password of at least 8 characters",
                    ));
                }
                let auth = match pg.auth.as_deref() {
                    None | Some("scram-sha-256") => PgAuth::ScramSha256,
                    Some("md5") => PgAuth::Md5,
                    Some(other) => {
                        return Err(invalid(
                            path,
                            format!("[pgwire] auth = '{other}': use \"scram-sha-256\" or \"md5\""),
                        ))
                    }
                };
                let base = path.parent().unwrap_or(Path::new("."));
                let read = |file: &Path, what: &str| {
                    let file = base.join(file);
                    std::fs::read(&file).map_err(|e| {
                        invalid(path, format!("[pgwire] {what} {}: {e}", file.display()))
                    })
                };
                let tls = match (&pg.tls_cert, &pg.tls_key) {
                    (None, None) => None,
                    (Some(cert), Some(key)) => {
                        Some((read(cert, "tls_cert")?, read(key, "tls_key")?))
                    }
                    _ => return Err(invalid(path, "[pgwire] tls_cert and tls_key go together")),
                };
                let tls = match tls {
                    Some((cert, key)) => {
                        crate::pg::tls_acceptor(&cert, &key)
                            .map_err(|e| invalid(path, format!("[pgwire] {}", e.message())))?;
                        Some((cert, key))
                    }
                    None => None,
                };
                let tls_required = pg.tls_required.unwrap_or(false);
                if tls_required && tls.is_none() {
                    return Err(invalid(
                        path,
                        "[pgwire] tls_required = true needs tls_cert and tls_key",
                    ));
                }
                Some(Pgwire {
                    listen,
                    user: pg.user,
                    password: pg.password,
                    auth,
                    tls,
                    tls_required,
                })
            }
        };
        if file.http.token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(path, "[http] token must be at least 16 characters"));
        }
        if file.engine.shards == Some(0) {
            return Err(invalid(path, "[engine] shards must be at least 1"));
        }
        if file.engine.cpus.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(path, "[engine] cpus must list at least one CPU"));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut pipelines: Vec<PipelineConfig> = Vec::new();
        for pipeline in file.pipelines {
            if pipelines.iter().any(|p| p.name == pipeline.name) {
                return Err(invalid(
                    path,
                    format!("two pipelines are named '{}'", pipeline.name),
                ));
            }
            let sql = match (pipeline.sql, pipeline.file) {
                (Some(sql), None) => sql,
                (None, Some(file)) => {
                    let file = base.join(file);
                    std::fs::read_to_string(&file).map_err(|e| {
                        invalid(
                            path,
                            format!(
                                "pipeline '{}': cannot read {}: {e}",
                                pipeline.name,
                                file.display()
                            ),
                        )
                    })?
                }
                _ => {
                    return Err(invalid(
                        path,
                        format!(
                            "pipeline '{}' needs exactly one of sql or file",
                            pipeline.name
                        ),
                    ))
                }
            };
            if pipeline.shards == Some(0) {
                return Err(invalid(
                    path,
                    format!("pipeline '{}': shards must be at least 1", pipeline.name),
                ));
            }
            let statements = parse_pipeline(&pipeline.name, &sql).map_err(|e| {
                let message = invalid(path, e.message());
                match e.hint() {
                    Some(hint) => message.with_hint(hint),
                    None => message,
                }
            })?;
            if pipeline.cpus.as_ref().is_some_and(Vec::is_empty) {
                return Err(invalid(
                    path,
                    format!(
                        "pipeline '{}': cpus must list at least one CPU",
                        pipeline.name
                    ),
                ));
            }
            pipelines.push(PipelineConfig {
                name: pipeline.name,
                sql,
                statements,
                shards: pipeline.shards,
                cpus: pipeline.cpus,
            });
        }
        let checkpoint_interval = match file.storage.as_ref().and_then(|s| s.checkpoint_interval_ms)
        {
            Some(0) => {
                return Err(invalid(
                    path,
                    "[storage] checkpoint_interval_ms must be at least 1",
                ))
            }
            other => other.map(std::time::Duration::from_millis),
        };
        let storage = file.storage.map(|s| {
            let durability = match s.durability {
                DurabilityName::Sync => Durability::Sync,
                DurabilityName::Async => Durability::Async,
            };
            (base.join(s.dir), durability)
        });
        Ok(Self {
            shards: file.engine.shards,
            cpus: file.engine.cpus,
            storage,
            checkpoint_interval,
            listen,
            token: file.http.token,
            pgwire,
            pipelines,
        })
    }
}
