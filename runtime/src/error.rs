//! Errors with stable codes.
//!
//! Every error a user can see carries an [`ErrorCode`] that prints as
//! `LDB-NNNN`. Codes are never reused or renumbered: scripts grep for them.
//! The thousands digit names the layer: 1 = SQL and planning, 2 = ingest and
//! the pipeline's lifecycle, 3 = execution on a shard, 4 = files and formats,
//! 5 = runtime and configuration, 6 = storage (WAL, recovery), 7 =
//! external systems (databases a lookup table loads from).

use std::fmt;

/// A stable error code. `Display` prints it as `LDB-NNNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The SQL text does not parse.
    SqlSyntax,
    /// A name (source, stream, column) that the catalog does not know.
    UnknownObject,
    /// A source or stream with that name already exists.
    AlreadyExists,
    /// Valid SQL that the streaming engine cannot run (yet).
    Unsupported,
    /// A `WATERMARK FOR` clause that is malformed or names a bad column.
    InvalidWatermark,
    /// A window function (`tumble`) with bad arguments.
    InvalidWindow,
    /// DataFusion rejected the query while planning (types, functions).
    Planning,
    /// The object is used by others (e.g. a stream reads the source to
    /// drop).
    InUse,
    /// A pushed batch whose schema does not match the source.
    SchemaMismatch,
    /// A bounded ring was full and the backpressure policy is `Error`.
    Backpressure,
    /// The pipeline is not running (not started yet, or shut down).
    NotRunning,
    /// The operation needs a pipeline that has not been started yet.
    AlreadyStarted,
    /// An expression or operator failed while running on a shard.
    Execution,
    /// A file could not be read or written.
    Io,
    /// An input file is not valid CSV for its source.
    InvalidInput,
    /// Shard executors could not be started or placed.
    RuntimeStart,
    /// A configuration value is out of range.
    InvalidConfig,
    /// A server request without valid credentials.
    Unauthorized,
    /// A source received an event-time value it cannot use (NULL).
    InvalidEventTime,
    /// A write or sync of the write-ahead log failed (disk full, I/O
    /// error). The database stops accepting input; what was acknowledged
    /// before is on disk and comes back on reopen.
    WalWrite,
    /// The storage directory was written by a different pipeline (other
    /// SQL) or a different shard count.
    StorageMismatch,
    /// One pushed batch is larger than a WAL segment can hold.
    RecordTooLarge,
    /// A storage file is unreadable beyond what recovery repairs (a torn
    /// WAL tail is cut silently; a bad marker file or an unknown format
    /// version is not).
    StorageCorrupt,
    /// Another process has the storage directory open.
    StorageLocked,
    /// An external system (a database a lookup table loads from) cannot be
    /// reached or refused the connection.
    ExternalUnavailable,
    /// A checkpoint could not be taken or finished (a shard stopped, a
    /// checkpoint file could not be written, one was already running).
    /// The previous checkpoint and the WAL still hold everything.
    Checkpoint,
}

impl ErrorCode {
    /// The number behind `LDB-`.
    pub const fn number(self) -> u16 {
        match self {
            ErrorCode::SqlSyntax => 1001,
            ErrorCode::UnknownObject => 1002,
            ErrorCode::AlreadyExists => 1003,
            ErrorCode::Unsupported => 1004,
            ErrorCode::InvalidWatermark => 1005,
            ErrorCode::InvalidWindow => 1006,
            ErrorCode::Planning => 1007,
            ErrorCode::InUse => 1008,
            ErrorCode::SchemaMismatch => 2001,
            ErrorCode::Backpressure => 2002,
            ErrorCode::NotRunning => 2003,
            ErrorCode::AlreadyStarted => 2004,
            ErrorCode::InvalidEventTime => 2005,
            ErrorCode::Execution => 3001,
            ErrorCode::Io => 4001,
            ErrorCode::InvalidInput => 4002,
            ErrorCode::RuntimeStart => 5001,
            ErrorCode::InvalidConfig => 5002,
            ErrorCode::Unauthorized => 5003,
            ErrorCode::WalWrite => 6001,
            ErrorCode::StorageMismatch => 6002,
            ErrorCode::RecordTooLarge => 6003,
            ErrorCode::StorageCorrupt => 6004,
            ErrorCode::StorageLocked => 6005,
            ErrorCode::Checkpoint => 6006,
            ErrorCode::ExternalUnavailable => 7001,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LDB-{:04}", self.number())
    }
}

/// The error every LaminarDB API returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    message: String,
    hint: Option<String>,
    /// The offending SQL line with a caret under the position, when known.
    context: Option<String>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a code and a message a user can act on.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            hint: None,
            context: None,
        }
    }

    /// Adds where in the SQL text the error is: the line and a caret.
    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    /// The SQL line with a caret, if known.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    /// Adds a hint: what the user could do instead.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message without code or hint.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        if let Some(context) = &self.context {
            write!(f, "\n{context}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::new(ErrorCode::Execution, e.to_string())
    }
}

impl From<datafusion_common::DataFusionError> for Error {
    fn from(e: datafusion_common::DataFusionError) -> Self {
        Error::new(ErrorCode::Execution, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_code_message_and_hint() {
        let e = Error::new(ErrorCode::Unsupported, "ORDER BY in a stream").with_hint("drop it");
        assert_eq!(
            e.to_string(),
            "LDB-1004: ORDER BY in a stream (hint: drop it)"
        );
        assert_eq!(ErrorCode::Io.to_string(), "LDB-4001");
    }
}
