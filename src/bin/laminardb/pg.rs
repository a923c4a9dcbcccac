//! The PostgreSQL wire protocol for `laminardb serve` (`[pgwire]` in the
//! config): `psql` and other clients using the simple query protocol run
//! any statement `POST /query` runs, and `INSERT INTO source VALUES ...`.
//!
//! Streams are tailed with cursors (`DECLARE c CURSOR FOR SUBSCRIBE TO
//! stream; FETCH 100 c`, see `pg_cursor.rs`); each connection has its own
//! handlers, so its cursors end with it.
//!
//! Authentication is always on: SCRAM-SHA-256 (default) or MD5 (the
//! `pgwire` crate's), one user and password from the config, a fresh salt
//! per connection; TLS (rustls) when the config names a certificate and
//! key. Result
//! columns map integers to `int8`, floats to `float8`, booleans to `bool`,
//! and everything else to its text form as `varchar`.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use laminar_db::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch,
};
use laminar_db::arrow::datatypes::DataType;
use laminar_db::arrow::util::display::{ArrayFormatter, FormatOptions};
use laminar_db::{Error, ErrorCode, ExecuteResult, LaminarDB};
use pgwire::api::auth::md5pass::{hash_md5_password, Md5PasswordAuthStartupHandler};
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::{ClientInfo, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use rand::Rng;

/// The one login the server accepts.
#[derive(Debug)]
struct Login {
    user: String,
    password: String,
}

impl Login {
    fn check_user(&self, login: &LoginInfo) -> PgWireResult<()> {
        let user = login.user().unwrap_or_default();
        if user != self.user {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                format!("password authentication failed for user \"{user}\""),
            ))));
        }
        Ok(())
    }
}

#[async_trait]
impl AuthSource for Login {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        self.check_user(login)?;
        let salt: [u8; 4] = rand::rng().random();
        Ok(Password::new(
            Some(salt.to_vec()),
            hash_md5_password(&self.user, &self.password, &salt).into_bytes(),
        ))
    }
}

struct Queries {
    db: LaminarDB,
    cursors: tokio::sync::Mutex<crate::pg_cursor::Cursors>,
}

/// PBKDF2 rounds of the SCRAM exchange (PostgreSQL's default).
const SCRAM_ITERATIONS: usize = 4096;

/// The same login checked with SCRAM-SHA-256: the server derives the
/// salted password with a fresh salt per connection.
#[derive(Debug)]
struct ScramLogin(Login);

#[async_trait]
impl AuthSource for ScramLogin {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        self.0.check_user(login)?;
        let salt: [u8; 16] = rand::rng().random();
        Ok(Password::new(
            Some(salt.to_vec()),
            gen_salted_password(&self.0.password, &salt, SCRAM_ITERATIONS),
        ))
    }
}

/// The startup handler of the configured authentication.
enum Startup {
    Md5(Md5PasswordAuthStartupHandler<Login, DefaultServerParameterProvider>),
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + futures::Sink<pgwire::messages::PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Md5(handler) => handler.on_startup(client, message).await,
            Startup::Scram(handler) => handler.on_startup(client, message).await,
        }
    }
}

pub struct Handlers {
    queries: Arc<Queries>,
    startup: Arc<Startup>,
}

impl Handlers {
    pub fn new(db: LaminarDB, config: &crate::config::Pgwire) -> Self {
        let login = Login {
            user: config.user.clone(),
            password: config.password.clone(),
        };
        let parameters = Arc::new(DefaultServerParameterProvider::default());
        let startup = match config.auth {
            crate::config::PgAuth::Md5 => Startup::Md5(Md5PasswordAuthStartupHandler::new(
                Arc::new(login),
                parameters,
            )),
            crate::config::PgAuth::ScramSha256 => {
                let mut scram = ScramAuth::new(Arc::new(ScramLogin(login)));
                scram.set_iterations(SCRAM_ITERATIONS);
                Startup::Scram(SASLAuthStartupHandler::new(parameters).with_scram(scram))
            }
        };
        Self {
            queries: Arc::new(Queries {
                db,
                cursors: Default::default(),
            }),
            startup: Arc::new(startup),
        }
    }
}

/// A TLS acceptor from PEM files (certificate chain, private key).
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<pgwire::tokio::TlsAcceptor, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::new(ErrorCode::InvalidConfig, format!("TLS {what}: {e}"))
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", &e))?;
    if certs.is_empty() {
        return Err(bad("certificate", &"no certificate in the PEM file"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("key", &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("setup", &e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad("certificate and key", &e))?;
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }
}

/// A LaminarDB error as a PostgreSQL one: the `LDB-NNNN` code leads the
/// message; the SQLSTATE is the closest class.
fn pg_error(e: &Error) -> PgWireError {
    let sqlstate = match e.code() {
        ErrorCode::SqlSyntax => "42601",
        ErrorCode::UnknownObject => "42P01",
        ErrorCode::AlreadyExists => "42P07",
        ErrorCode::Unsupported => "0A000",
        ErrorCode::SchemaMismatch | ErrorCode::InvalidInput => "22000",
        ErrorCode::Backpressure | ErrorCode::NotRunning => "57P03",
        ErrorCode::WalWrite | ErrorCode::Io => "58030",
        _ => "XX000",
    };
    let mut info = ErrorInfo::new(
        "ERROR".into(),
        sqlstate.into(),
        format!("{}: {}", e.code(), e.message()),
    );
    info.hint = e.hint().map(str::to_string);
    PgWireError::UserError(Box::new(info))
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        use crate::pg_cursor::{parse, split_statements, CursorStatement};
        let statements = split_statements(query);
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(statements.len());
        for statement in statements {
            let cursor_statement = parse(&statement).map_err(|e| pg_error(&e))?;
            match cursor_statement {
                None => {
                    let results = self
                        .db
                        .execute(&statement)
                        .await
                        .map_err(|e| pg_error(&e))?;
                    for result in results {
                        out.push(response(result)?);
                    }
                }
                Some(CursorStatement::Transaction(tag)) => {
                    out.push(Response::Execution(Tag::new(tag)))
                }
                Some(CursorStatement::Declare { cursor, stream }) => {
                    self.cursors
                        .lock()
                        .await
                        .declare(&self.db, cursor, &stream)
                        .map_err(|e| pg_error(&e))?;
                    out.push(Response::Execution(Tag::new("DECLARE CURSOR")));
                }
                Some(CursorStatement::Fetch {
                    cursor,
                    count,
                    timeout,
                }) => {
                    let mut cursors = self.cursors.lock().await;
                    let cursor = cursors.get(&cursor).map_err(|e| pg_error(&e))?;
                    let mut batches = cursor
                        .fetch(count, timeout)
                        .await
                        .map_err(|e| pg_error(&e))?;
                    if batches.is_empty() {
                        batches.push(RecordBatch::new_empty(Arc::clone(&cursor.schema)));
                    }
                    out.push(rows(&batches)?);
                }
                Some(CursorStatement::Close { cursor }) => {
                    self.cursors
                        .lock()
                        .await
                        .close(&cursor)
                        .map_err(|e| pg_error(&e))?;
                    out.push(Response::Execution(Tag::new("CLOSE CURSOR")));
                }
            }
        }
        Ok(out)
    }
}

fn response(result: ExecuteResult) -> PgWireResult<Response> {
    let tag = |t: &str| Ok(Response::Execution(Tag::new(t)));
    match result {
        ExecuteResult::Rows(batches) => rows(&batches),
        ExecuteResult::SourceCreated(_) | ExecuteResult::SourceExists(_) => tag("CREATE SOURCE"),
        ExecuteResult::StreamCreated(_) => tag("CREATE STREAM"),
        ExecuteResult::ViewCreated(_) => tag("CREATE MATERIALIZED VIEW"),
        ExecuteResult::TableCreated(_) => tag("CREATE TABLE"),
        ExecuteResult::Inserted { rows, .. } => Ok(Response::Execution(
            Tag::new("INSERT").with_oid(0).with_rows(rows),
        )),
        ExecuteResult::Dropped(_) | ExecuteResult::NothingToDrop(_) => tag("DROP"),
    }
}

/// A column as it goes out.
enum Column {
    Int(Int64Array),
    Float(Float64Array),
    Bool(BooleanArray),
    Text(ArrayRef),
}

fn column(array: &ArrayRef) -> PgWireResult<(Type, Column)> {
    let cast = |to: &DataType| {
        laminar_db::arrow::compute::cast(array, to).map_err(|e| PgWireError::ApiError(Box::new(e)))
    };
    Ok(match array.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => {
            let a = cast(&DataType::Int64)?;
            let a = a
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("cast to Int64")
                .clone();
            (Type::INT8, Column::Int(a))
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let a = cast(&DataType::Float64)?;
            let a = a
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64")
                .clone();
            (Type::FLOAT8, Column::Float(a))
        }
        DataType::Boolean => {
            let a = array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .expect("boolean")
                .clone();
            (Type::BOOL, Column::Bool(a))
        }
        _ => (Type::VARCHAR, Column::Text(Arc::clone(array))),
    })
}

fn rows(batches: &[RecordBatch]) -> PgWireResult<Response> {
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Ok(Response::Query(QueryResponse::new(
            Arc::new(Vec::new()),
            futures::stream::iter(Vec::<PgWireResult<_>>::new()),
        )));
    };
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut out = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let columns = batch
            .columns()
            .iter()
            .map(column)
            .collect::<PgWireResult<Vec<_>>>()?;
        if b == 0 {
            for (field, (pg_type, _)) in schema.fields().iter().zip(&columns) {
                fields.push(FieldInfo::new(
                    field.name().clone(),
                    None,
                    None,
                    pg_type.clone(),
                    FieldFormat::Text,
                ));
            }
        }
        let fields = Arc::new(fields.clone());
        let options = FormatOptions::default();
        let formatters = columns
            .iter()
            .map(|(_, c)| match c {
                Column::Text(a) => ArrayFormatter::try_new(a.as_ref(), &options)
                    .map(Some)
                    .map_err(|e| PgWireError::ApiError(Box::new(e))),
                _ => Ok(None),
            })
            .collect::<PgWireResult<Vec<_>>>()?;
        let mut encoder = DataRowEncoder::new(fields);
        for row in 0..batch.num_rows() {
            for ((_, c), formatter) in columns.iter().zip(&formatters) {
                match c {
                    Column::Int(a) => {
                        encoder.encode_field(&(!a.is_null(row)).then(|| a.value(row)))?
                    }
                    Column::Float(a) => {
                        encoder.encode_field(&(!a.is_null(row)).then(|| a.value(row)))?
                    }
                    Column::Bool(a) => {
                        encoder.encode_field(&(!a.is_null(row)).then(|| a.value(row)))?
                    }
                    Column::Text(a) => {
                        let text = (!a.is_null(row))
                            .then(|| formatter.as_ref().map(|f| f.value(row).to_string()))
                            .flatten();
                        encoder.encode_field(&text)?
                    }
                }
            }
            out.push(Ok(encoder.take_row()));
        }
    }
    Ok(Response::Query(QueryResponse::new(
        Arc::new(fields),
        futures::stream::iter(out),
    )))
}
