//! The PostgreSQL wire protocol for `laminardb serve` (`[pgwire]` in the
//! config): `psql` and other clients run any statement `POST /query`
//! runs, and `INSERT INTO source VALUES ...`, with the simple query
//! protocol or the extended one (prepared statements with `$n`
//! parameters, as drivers use; see `pg_extended.rs`).
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
use futures::Sink;
use laminar_db::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch,
};
use laminar_db::arrow::datatypes::{DataType, Float64Type, Int64Type};
use laminar_db::arrow::util::display::{ArrayFormatter, FormatOptions};
use laminar_db::ScalarValue;
use laminar_db::{Error, ErrorCode, ExecuteResult};

use crate::pipelines::{PipelineAnswer, Pipelines};
use pgwire::api::auth::md5pass::{hash_md5_password, Md5PasswordAuthStartupHandler};
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, QueryResponse, Response, Tag};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use rand::Rng;

use crate::pg_extended::{Parser, Prepared};

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
    db: Arc<Pipelines>,
    cursors: Arc<tokio::sync::Mutex<crate::pg_cursor::Cursors>>,
    parser: Arc<Parser>,
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
enum Auth {
    Md5(Md5PasswordAuthStartupHandler<Login, DefaultServerParameterProvider>),
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
}

struct Startup {
    auth: Auth,
    /// Refuse connections without TLS (before any password is asked).
    tls_required: bool,
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
        if self.tls_required && !client.is_secure() {
            let error = Error::new(
                ErrorCode::Unauthorized,
                "this server accepts TLS connections only",
            )
            .with_hint("connect with sslmode=require (or verify-full)");
            let mut info = ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                format!("{}: {}", error.code(), error.message()),
            );
            info.hint = error.hint().map(str::to_string);
            return Err(PgWireError::UserError(Box::new(info)));
        }
        match &self.auth {
            Auth::Md5(handler) => handler.on_startup(client, message).await,
            Auth::Scram(handler) => handler.on_startup(client, message).await,
        }
    }
}

pub struct Handlers {
    queries: Arc<Queries>,
    startup: Arc<Startup>,
}

impl Handlers {
    pub fn new(db: Arc<Pipelines>, config: &crate::config::Pgwire) -> Self {
        let login = Login {
            user: config.user.clone(),
            password: config.password.clone(),
        };
        let parameters = Arc::new(DefaultServerParameterProvider::default());
        let auth = match config.auth {
            crate::config::PgAuth::Md5 => Auth::Md5(Md5PasswordAuthStartupHandler::new(
                Arc::new(login),
                parameters,
            )),
            crate::config::PgAuth::ScramSha256 => {
                let mut scram = ScramAuth::new(Arc::new(ScramLogin(login)));
                scram.set_iterations(SCRAM_ITERATIONS);
                Auth::Scram(SASLAuthStartupHandler::new(parameters).with_scram(scram))
            }
        };
        let startup = Startup {
            auth,
            tls_required: config.tls_required,
        };
        let cursors: Arc<tokio::sync::Mutex<crate::pg_cursor::Cursors>> = Default::default();
        Self {
            queries: Arc::new(Queries {
                parser: Arc::new(Parser {
                    db: Arc::clone(&db),
                    cursors: Arc::clone(&cursors),
                }),
                db,
                cursors,
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

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }
}

/// A LaminarDB error as a PostgreSQL one: the `LDB-NNNN` code leads the
/// message; the SQLSTATE is the closest class.
pub(crate) fn pg_error(e: &Error) -> PgWireError {
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
        let statements = crate::pg_cursor::split_statements(query);
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(statements.len());
        for statement in statements {
            out.extend(self.run(&statement, &[], &Format::UnifiedText).await?);
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let values = crate::pg_extended::parameters(portal).map_err(|e| pg_error(&e))?;
        let sql = &portal.statement.statement.sql;
        let mut responses = self.run(sql, &values, &portal.result_column_format).await?;
        Ok(responses.pop().unwrap_or(Response::EmptyQuery))
    }
}

impl Queries {
    /// Runs one statement (a cursor statement here, anything else on the
    /// database) with `$n` bound to `parameters`; rows go out in `format`.
    async fn run(
        &self,
        statement: &str,
        parameters: &[ScalarValue],
        format: &Format,
    ) -> PgWireResult<Vec<Response>> {
        use crate::pg_cursor::{parse, CursorStatement};
        let mut out = Vec::new();
        if let Some(pipeline_statement) =
            crate::pipelines::parse_pipeline_statement(statement).map_err(|e| pg_error(&e))?
        {
            match self
                .db
                .run_pipeline_statement(pipeline_statement)
                .await
                .map_err(|e| pg_error(&e))?
            {
                PipelineAnswer::Done(tag) => out.push(Response::Execution(Tag::new(tag))),
                PipelineAnswer::Rows(batch) => out.push(rows(&[batch], format)?),
            }
            return Ok(out);
        }
        match parse(statement).map_err(|e| pg_error(&e))? {
            None => {
                let results = self
                    .db
                    .execute_with_parameters(statement, parameters)
                    .await
                    .map_err(|e| pg_error(&e))?;
                for result in results {
                    out.push(response(result, format)?);
                }
            }
            Some(CursorStatement::Transaction(tag)) => out.push(Response::Execution(Tag::new(tag))),
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
                out.push(rows(&batches, format)?);
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
        Ok(out)
    }
}

fn response(result: ExecuteResult, format: &Format) -> PgWireResult<Response> {
    let tag = |t: &str| Ok(Response::Execution(Tag::new(t)));
    match result {
        ExecuteResult::Rows(batches) => rows(&batches, format),
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

/// The PostgreSQL type a result column of `data_type` goes out as.
pub(crate) fn result_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Type::INT8,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => Type::FLOAT8,
        DataType::Boolean => Type::BOOL,
        _ => Type::VARCHAR,
    }
}

fn column(array: &ArrayRef) -> PgWireResult<Column> {
    let cast = |to: &DataType| {
        laminar_db::arrow::compute::cast(array, to).map_err(|e| PgWireError::ApiError(Box::new(e)))
    };
    let pg_type = result_type(array.data_type());
    Ok(if pg_type == Type::INT8 {
        let a = cast(&DataType::Int64)?;
        Column::Int(a.as_primitive::<Int64Type>().clone())
    } else if pg_type == Type::FLOAT8 {
        let a = cast(&DataType::Float64)?;
        Column::Float(a.as_primitive::<Float64Type>().clone())
    } else if pg_type == Type::BOOL {
        Column::Bool(array.as_boolean().clone())
    } else {
        Column::Text(Arc::clone(array))
    })
}

fn rows(batches: &[RecordBatch], format: &Format) -> PgWireResult<Response> {
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Ok(Response::Query(QueryResponse::new(
            Arc::new(Vec::new()),
            futures::stream::iter(Vec::<PgWireResult<_>>::new()),
        )));
    };
    let fields = Arc::new(crate::pg_extended::fields(&schema, format));
    let mut out = Vec::new();
    for batch in batches {
        let columns = batch
            .columns()
            .iter()
            .map(column)
            .collect::<PgWireResult<Vec<_>>>()?;
        let options = FormatOptions::default();
        let formatters = columns
            .iter()
            .map(|c| match c {
                Column::Text(a) => ArrayFormatter::try_new(a.as_ref(), &options)
                    .map(Some)
                    .map_err(|e| PgWireError::ApiError(Box::new(e))),
                _ => Ok(None),
            })
            .collect::<PgWireResult<Vec<_>>>()?;
        let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
        for row in 0..batch.num_rows() {
            for (c, formatter) in columns.iter().zip(&formatters) {
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
        fields,
        futures::stream::iter(out),
    )))
}
