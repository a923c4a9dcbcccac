//! LaminarDB's SQL dialect on top of sqlparser's tokenizer.
//!
//! Statements:
//!
//! ```sql
//! CREATE SOURCE name (
//!     col TYPE [NOT NULL], ...,
//!     [WATERMARK FOR col AS col [- INTERVAL 'n' UNIT | - n]]
//! ) [WITH (idle_timeout = '5 seconds',
//!        alignment_group = 'g', alignment_max_drift = '10 seconds')];
//! CREATE STREAM name [WITH (late_data = 'side_output', two_phase = 'on')] AS SELECT ...
//!     [EMIT ON WINDOW CLOSE | EMIT FINAL | EMIT CHANGES];
//! CREATE MATERIALIZED VIEW name AS SELECT ... [EMIT ...];
//! SHOW SOURCES | SHOW STREAMS | SHOW MATERIALIZED VIEWS | SHOW SINKS;
//! SHOW CREATE SOURCE | STREAM | MATERIALIZED VIEW name;
//! DESCRIBE name;
//! DROP SOURCE | STREAM | MATERIALIZED VIEW [IF EXISTS] name;
//! EXPLAIN [ANALYZE] name;
//! CREATE TABLE name (col TYPE, ..., PRIMARY KEY (col, ...));
//! INSERT INTO source_or_table [(col, ...)] VALUES (...), ... | SELECT ...;
//! SELECT ...;   -- ad hoc, over materialized views and tables
//! ```
//!
//! Only the DDL shell is parsed here; column definitions go to DataFusion
//! (as a `CREATE TABLE`) and the stream's query stays DataFusion SQL.

use arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};
use laminar_runtime::{Error, ErrorCode, Result};

/// One parsed statement.
#[derive(Debug, Clone)]
pub enum Statement {
    /// `CREATE SOURCE`.
    CreateSource(SourceDefSyntax),
    /// `CREATE STREAM ... AS SELECT` or `CREATE MATERIALIZED VIEW ... AS
    /// SELECT`.
    CreateStream(StreamDef),
    /// `SHOW SOURCES | STREAMS | MATERIALIZED VIEWS`.
    Show(ShowWhat),
    /// `EXPLAIN [ANALYZE] name`: the operator plan of a stream or view
    /// (with per-shard counters for `ANALYZE`).
    Explain {
        /// The stream or view.
        name: String,
        /// `EXPLAIN ANALYZE`.
        analyze: bool,
    },
    /// `DESCRIBE name`: columns of a source, stream or view.
    Describe(String),
    /// `SHOW CREATE SOURCE | STREAM | MATERIALIZED VIEW name`.
    ShowCreate(String),
    /// `DROP SOURCE | STREAM | MATERIALIZED VIEW [IF EXISTS] name`.
    Drop {
        /// What kind of object the statement names.
        kind: DropKind,
        /// Its name.
        name: String,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// An ad-hoc query (`SELECT ...`, `WITH ...`) over materialized views
    /// and tables.
    Query(String),
    /// `CREATE TABLE name (...) [PRIMARY KEY]`: the text, for DataFusion.
    CreateTable {
        /// Table name.
        name: String,
        /// `IF NOT EXISTS` was given.
        if_not_exists: bool,
        /// The statement's text.
        sql: String,
    },
    /// `CREATE LOOKUP TABLE name [(columns)] FROM POSTGRES (options)`: a
    /// table whose rows are loaded, and refreshed, from an external
    /// database.
    CreateLookupTable {
        /// Table name.
        name: String,
        /// `IF NOT EXISTS` was given.
        if_not_exists: bool,
        /// The column list as a `CREATE TABLE` statement, when given.
        columns_sql: Option<String>,
        /// The connector (`postgres`), lower-cased.
        connector: String,
        /// Its options, keys lower-cased.
        options: Vec<(String, String)>,
        /// The statement's text.
        sql: String,
    },
    /// `INSERT INTO name [(columns)] VALUES ... | SELECT ...`.
    Insert {
        /// The source or table written to.
        target: String,
        /// The column list, if given.
        columns: Option<Vec<String>>,
        /// The rows: a `VALUES` list or a query.
        query: String,
        /// The statement's text.
        sql: String,
    },
}

/// The kind of object a `DROP` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropKind {
    /// `DROP SOURCE`.
    Source,
    /// `DROP STREAM`.
    Stream,
    /// `DROP MATERIALIZED VIEW`.
    MaterializedView,
    /// `DROP TABLE`.
    Table,
}

/// What `SHOW` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowWhat {
    /// Sources and their columns.
    Sources,
    /// Streams and materialized views.
    Streams,
    /// Materialized views only.
    MaterializedViews,
    /// Sinks (none can be declared yet: always empty).
    Sinks,
    /// Tables.
    Tables,
}

/// A `CREATE SOURCE` before its column types are resolved.
#[derive(Debug, Clone)]
pub struct SourceDefSyntax {
    /// Source name (lower-cased unless quoted).
    pub name: String,
    /// The column list as a `CREATE TABLE` statement DataFusion can plan.
    pub create_table_sql: String,
    /// The watermark clause, if any.
    pub watermark: Option<WatermarkDef>,
    /// `WITH (idle_timeout = ...)`, in ms.
    pub idle_timeout_ms: Option<i64>,
    /// `WITH (retention_rows = n)`.
    pub retention_rows: Option<usize>,
    /// `WITH (alignment_group = ..., alignment_max_drift = ...)`.
    pub alignment: Option<AlignmentDef>,
    /// `WITH (watermark_key = ..., watermark_key_skew = ...)`.
    pub watermark_key: Option<WatermarkKeyDef>,
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// The statement's text.
    pub sql: String,
}

/// A source with its resolved schema.
#[derive(Debug, Clone)]
pub struct SourceDef {
    /// Source name.
    pub name: String,
    /// Columns.
    pub schema: SchemaRef,
    /// The watermark clause, if any.
    pub watermark: Option<WatermarkDef>,
    /// A source partition (handle) silent for this long stops holding the
    /// source's watermark back until it pushes again.
    pub idle_timeout_ms: Option<i64>,
    /// The source's watermark alignment group, if any.
    pub alignment: Option<AlignmentDef>,
    /// Per-key watermarks, if asked for.
    pub watermark_key: Option<WatermarkKeyDef>,
    /// Rows kept for ad-hoc queries (`None`: the default).
    pub retention_rows: Option<usize>,
    /// The statement's text, for `SHOW CREATE`-style introspection.
    pub sql: String,
}

/// A watermark alignment group membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlignmentDef {
    /// Group name.
    pub group: String,
    /// How far ahead of the group's slowest source a source may run, ms.
    pub max_drift_ms: i64,
}

/// Per-key watermarks: one watermark per value of `column`, the source's
/// being the slowest active key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkKeyDef {
    /// The key column.
    pub column: String,
    /// A key further than this (ms) behind the fastest stops holding the
    /// watermark back; `None`: never.
    pub skew_ms: Option<i64>,
}

/// `WATERMARK FOR column AS column - bound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkDef {
    /// Event-time column.
    pub column: String,
    /// Allowed out-of-orderness in ms.
    pub bound_ms: i64,
}

/// How a stream emits results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitMode {
    /// Once per window, when the watermark closes it (also `EMIT FINAL`,
    /// and the default for windowed aggregates).
    OnWindowClose,
    /// A changelog on every update (`EMIT CHANGES`).
    Changes,
}

/// `CREATE STREAM name AS query [EMIT ...]`.
#[derive(Debug, Clone)]
pub struct StreamDef {
    /// Stream name.
    pub name: String,
    /// The `SELECT` text.
    pub query: String,
    /// The EMIT clause, if given.
    pub emit: Option<EmitMode>,
    /// `CREATE MATERIALIZED VIEW`: the result is also kept for ad-hoc
    /// queries.
    pub materialized: bool,
    /// `WITH (late_data = 'side_output')`: late rows go to the stream
    /// `<name>_late` instead of only being counted.
    pub late_side_output: bool,
    /// `WITH (two_phase = ...)`: whether window aggregates aggregate on
    /// every shard first and merge the states per group.
    pub two_phase: TwoPhase,
    /// The statement's text.
    pub sql: String,
}

/// `WITH (two_phase = 'auto' | 'on' | 'off')`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TwoPhase {
    /// Two phases where the groups cannot be spread by a source column
    /// (no key, or a computed one); one phase where they can.
    #[default]
    Auto,
    /// Two phases for every window aggregate of the query, also when its
    /// keys are columns: for keys so few (or so skewed) that their owner
    /// shards would do most of the work.
    On,
    /// One phase always: every group aggregated on its owner shard.
    Off,
}

fn syntax_error(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::SqlSyntax, message)
}

fn location(token: &TokenWithSpan) -> String {
    format!(
        "line {}, column {}",
        token.span.start.line, token.span.start.column
    )
}

/// Splits a script into statements and parses each.
pub fn parse_script(sql: &str) -> Result<Vec<Statement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| syntax_error(e.to_string()))?;
    let mut statements = Vec::new();
    for chunk in tokens.split(|t| t.token == Token::SemiColon) {
        let significant: Vec<&TokenWithSpan> = chunk
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
            .collect();
        if significant.is_empty() {
            continue;
        }
        statements.push(parse_statement(chunk, &significant)?);
    }
    Ok(statements)
}

/// A token as SQL text. sqlparser prints quoted strings and identifiers
/// without doubling the quotes inside them (`'O''Brien'` would come back
/// as `'O'Brien'`); this puts them back.
pub fn render(token: &Token) -> String {
    match token {
        Token::SingleQuotedString(s) => format!("'{}'", s.replace('\'', "''")),
        Token::Word(w) if w.quote_style == Some('"') => {
            format!("\"{}\"", w.value.replace('"', "\"\""))
        }
        other => other.to_string(),
    }
}

fn text_of(tokens: &[TokenWithSpan]) -> String {
    tokens
        .iter()
        .filter(|t| t.token != Token::EOF)
        .map(|t| render(&t.token))
        .collect::<String>()
        .trim()
        .to_string()
}

fn keyword(token: &TokenWithSpan) -> Option<Keyword> {
    match &token.token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
        _ => None,
    }
}

fn is_word(token: &TokenWithSpan, word: &str) -> bool {
    matches!(&token.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// An identifier as DataFusion normalises it: unquoted names lower-case.
fn identifier(token: &TokenWithSpan, what: &str) -> Result<String> {
    match &token.token {
        Token::Word(w) if w.quote_style.is_some() => Ok(w.value.clone()),
        Token::Word(w) => Ok(w.value.to_lowercase()),
        other => Err(syntax_error(format!(
            "expected {what}, found '{other}' at {}",
            location(token)
        ))),
    }
}

fn parse_statement(chunk: &[TokenWithSpan], significant: &[&TokenWithSpan]) -> Result<Statement> {
    let text = text_of(chunk);
    match keyword(significant[0]) {
        Some(Keyword::SELECT | Keyword::WITH) => return Ok(Statement::Query(text)),
        Some(Keyword::SHOW) => {
            let words: Vec<String> = significant[1..]
                .iter()
                .map(|t| t.token.to_string().to_uppercase())
                .collect();
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            return match words.as_slice() {
                ["SOURCES"] => Ok(Statement::Show(ShowWhat::Sources)),
                ["STREAMS"] => Ok(Statement::Show(ShowWhat::Streams)),
                ["MATERIALIZED", "VIEWS"] | ["VIEWS"] => {
                    Ok(Statement::Show(ShowWhat::MaterializedViews))
                }
                ["SINKS"] => Ok(Statement::Show(ShowWhat::Sinks)),
                ["TABLES"] => Ok(Statement::Show(ShowWhat::Tables)),
                ["CREATE", "SOURCE" | "STREAM" | "TABLE", _]
                | ["CREATE", "MATERIALIZED", "VIEW", _] => {
                    let name = significant.last().expect("matched");
                    Ok(Statement::ShowCreate(identifier(name, "a name")?))
                }
                _ => Err(Error::new(
                    ErrorCode::Unsupported,
                    format!("SHOW {} is not supported", words.join(" ")),
                )
                .with_hint(
                    "SHOW SOURCES | STREAMS | MATERIALIZED VIEWS | SINKS, SHOW CREATE SOURCE | STREAM | MATERIALIZED VIEW name",
                )),
            };
        }
        Some(Keyword::INSERT) => return parse_insert(chunk, significant, text),
        Some(Keyword::DESCRIBE | Keyword::DESC) => {
            return match &significant[1..] {
                [name] => Ok(Statement::Describe(identifier(name, "a name")?)),
                _ => Err(syntax_error(
                    "DESCRIBE takes the name of a source, stream or view",
                )),
            };
        }
        Some(Keyword::EXPLAIN) => {
            return match &significant[1..] {
                [name] if keyword(name) != Some(Keyword::ANALYZE) => Ok(Statement::Explain {
                    name: identifier(name, "a stream name")?,
                    analyze: false,
                }),
                [analyze, name] if keyword(analyze) == Some(Keyword::ANALYZE) => {
                    Ok(Statement::Explain {
                        name: identifier(name, "a stream name")?,
                        analyze: true,
                    })
                }
                _ => Err(Error::new(
                    ErrorCode::Unsupported,
                    "EXPLAIN takes the name of a stream or materialized view",
                )
                .with_hint("EXPLAIN my_stream, or EXPLAIN ANALYZE my_stream")),
            };
        }
        Some(Keyword::DROP) => {
            let words: Vec<String> = significant[1..]
                .iter()
                .map(|t| t.token.to_string().to_uppercase())
                .collect();
            let (kind_words, rest) = match words.first().map(String::as_str) {
                Some("SOURCE") => (1, DropKind::Source),
                Some("TABLE") => (1, DropKind::Table),
                Some("STREAM") => (1, DropKind::Stream),
                Some("MATERIALIZED") if words.get(1).map(String::as_str) == Some("VIEW") => {
                    (2, DropKind::MaterializedView)
                }
                _ => {
                    return Err(Error::new(
                        ErrorCode::Unsupported,
                        format!("DROP {} is not supported", words.join(" ")),
                    )
                    .with_hint("DROP SOURCE | STREAM | MATERIALIZED VIEW [IF EXISTS] name"))
                }
            };
            let tail = &significant[1 + kind_words..];
            let (if_exists, name) = match tail {
                [name] => (false, name),
                [if_, exists, name]
                    if keyword(if_) == Some(Keyword::IF)
                        && keyword(exists) == Some(Keyword::EXISTS) =>
                {
                    (true, name)
                }
                _ => return Err(syntax_error("expected DROP <kind> [IF EXISTS] <name>")),
            };
            return Ok(Statement::Drop {
                kind: rest,
                name: identifier(name, "a name")?,
                if_exists,
            });
        }
        _ => {}
    }
    if keyword(significant[0]) != Some(Keyword::CREATE) || significant.len() < 2 {
        return Err(Error::new(
            ErrorCode::Unsupported,
            format!(
                "statement not supported: '{}'",
                text.chars().take(60).collect::<String>()
            ),
        )
        .with_hint("LaminarDB accepts CREATE SOURCE, CREATE STREAM / MATERIALIZED VIEW ... AS SELECT, SHOW, EXPLAIN and SELECT"));
    }
    if is_word(significant[1], "SOURCE") {
        return parse_create_source(&significant[2..], text).map(Statement::CreateSource);
    }
    if is_word(significant[1], "STREAM") {
        return parse_create_stream(chunk, &significant[2..], text, false)
            .map(Statement::CreateStream);
    }
    if is_word(significant[1], "LOOKUP") {
        return parse_create_lookup_table(&significant[2..], text);
    }
    if keyword(significant[1]) == Some(Keyword::TABLE) {
        let mut i = 2;
        let if_not_exists = significant.len() > 5
            && keyword(significant[2]) == Some(Keyword::IF)
            && keyword(significant[3]) == Some(Keyword::NOT)
            && keyword(significant[4]) == Some(Keyword::EXISTS);
        if if_not_exists {
            i = 5;
        }
        let name = significant
            .get(i)
            .ok_or_else(|| syntax_error("CREATE TABLE needs a name"))?;
        return Ok(Statement::CreateTable {
            name: identifier(name, "a table name")?,
            if_not_exists,
            sql: text,
        });
    }
    if significant.len() > 2
        && is_word(significant[1], "MATERIALIZED")
        && is_word(significant[2], "VIEW")
    {
        return parse_create_stream(chunk, &significant[3..], text, true)
            .map(Statement::CreateStream);
    }
    let what = significant[1..]
        .iter()
        .take(2)
        .map(|t| t.token.to_string().to_uppercase())
        .collect::<Vec<_>>()
        .join(" ");
    Err(Error::new(
        ErrorCode::Unsupported,
        format!("CREATE {what} is not supported yet"),
    )
    .with_hint("use CREATE SOURCE for inputs and CREATE STREAM ... AS SELECT for queries"))
}

/// `TABLE [IF NOT EXISTS] name [(columns)] FROM connector (options)`, after
/// `CREATE LOOKUP`.
fn parse_create_lookup_table(rest: &[&TokenWithSpan], text: String) -> Result<Statement> {
    let usage = "CREATE LOOKUP TABLE name [(column TYPE, ..., PRIMARY KEY (column))] FROM POSTGRES (hostname = '...', database = '...', query = '...', ...)";
    if rest.first().and_then(|t| keyword(t)) != Some(Keyword::TABLE) {
        return Err(syntax_error("expected TABLE after CREATE LOOKUP").with_hint(usage));
    }
    let mut i = 1;
    let if_not_exists = rest.len() > 4
        && keyword(rest[1]) == Some(Keyword::IF)
        && keyword(rest[2]) == Some(Keyword::NOT)
        && keyword(rest[3]) == Some(Keyword::EXISTS);
    if if_not_exists {
        i = 4;
    }
    let name = identifier(
        rest.get(i)
            .ok_or_else(|| syntax_error("CREATE LOOKUP TABLE needs a name").with_hint(usage))?,
        "a table name",
    )?;
    i += 1;
    let mut columns_sql = None;
    if rest.get(i).map(|t| &t.token) == Some(&Token::LParen) {
        let mut depth = 0;
        let start = i;
        loop {
            match rest.get(i).map(|t| &t.token) {
                Some(Token::LParen) => depth += 1,
                Some(Token::RParen) => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                Some(_) => {}
                None => return Err(syntax_error("unclosed column list").with_hint(usage)),
            }
            i += 1;
        }
        let columns: Vec<String> = rest[start..=i].iter().map(|t| render(&t.token)).collect();
        columns_sql = Some(format!("CREATE TABLE {name} {}", columns.join(" ")));
        i += 1;
    }
    if rest.get(i).and_then(|t| keyword(t)) != Some(Keyword::FROM) {
        return Err(syntax_error("expected FROM <connector> (...)").with_hint(usage));
    }
    let connector = rest
        .get(i + 1)
        .map(|t| t.token.to_string().to_lowercase())
        .ok_or_else(|| syntax_error("expected a connector after FROM").with_hint(usage))?;
    let (options, used) = parse_options(&rest[i + 2..]).map_err(|e| e.with_hint(usage))?;
    if i + 2 + used != rest.len() {
        return Err(syntax_error("unexpected text after the options").with_hint(usage));
    }
    Ok(Statement::CreateLookupTable {
        name,
        if_not_exists,
        columns_sql,
        connector,
        options,
        sql: text,
    })
}

fn parse_create_source(rest: &[&TokenWithSpan], text: String) -> Result<SourceDefSyntax> {
    let mut i = 0;
    let mut if_not_exists = false;
    if rest.len() >= 3
        && keyword(rest[0]) == Some(Keyword::IF)
        && keyword(rest[1]) == Some(Keyword::NOT)
        && keyword(rest[2]) == Some(Keyword::EXISTS)
    {
        if_not_exists = true;
        i = 3;
    }
    let name_token = rest
        .get(i)
        .ok_or_else(|| syntax_error("CREATE SOURCE needs a name"))?;
    let name = identifier(name_token, "a source name")?;
    i += 1;
    match rest.get(i) {
        Some(t) if t.token == Token::LParen => {}
        Some(t) => {
            return Err(syntax_error(format!(
                "expected '(' and a column list after the source name, found '{}' at {}",
                t.token,
                location(t)
            )))
        }
        None => {
            return Err(syntax_error(
                "CREATE SOURCE needs a column list in parentheses",
            ))
        }
    }
    // Split the parenthesised list into top-level items.
    let mut depth = 0usize;
    let mut items: Vec<Vec<&TokenWithSpan>> = vec![Vec::new()];
    let mut close = None;
    for (j, token) in rest.iter().enumerate().skip(i) {
        match token.token {
            Token::LParen => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    close = Some(j);
                    break;
                }
            }
            Token::Comma if depth == 1 => {
                items.push(Vec::new());
                continue;
            }
            _ => {}
        }
        items.last_mut().expect("non-empty").push(token);
    }
    let close = close.ok_or_else(|| syntax_error("unbalanced parentheses in CREATE SOURCE"))?;
    let mut after = close + 1;
    let mut idle_timeout_ms = None;
    let mut alignment_group = None;
    let mut alignment_max_drift_ms = None;
    let mut retention_rows = None;
    let mut watermark_key = None;
    let mut watermark_key_skew_ms = None;
    if rest
        .get(after)
        .is_some_and(|t| keyword(t) == Some(Keyword::WITH))
    {
        let (options, used) = parse_options(&rest[after + 1..])?;
        after += 1 + used;
        for (key, value) in options {
            match key.as_str() {
                "idle_timeout" => {
                    idle_timeout_ms =
                        Some(duration_ms(&value).filter(|&ms| ms > 0).ok_or_else(|| {
                            Error::new(
                                ErrorCode::InvalidConfig,
                                format!("idle_timeout = '{value}' is not a positive duration"),
                            )
                            .with_hint("e.g. idle_timeout = '5 seconds' or '500 ms'")
                        })?)
                }
                "retention_rows" => {
                    retention_rows = Some(value.trim().parse::<usize>().map_err(|_| {
                        Error::new(
                            ErrorCode::InvalidConfig,
                            format!("retention_rows = '{value}' is not a row count"),
                        )
                        .with_hint("e.g. retention_rows = 100000, or 0 to keep none")
                    })?)
                }
                "alignment_group" => alignment_group = Some(value),
                "watermark_key" => watermark_key = Some(value),
                "watermark_key_skew" => {
                    watermark_key_skew_ms =
                        Some(duration_ms(&value).filter(|&ms| ms >= 0).ok_or_else(|| {
                            Error::new(
                                ErrorCode::InvalidConfig,
                                format!("watermark_key_skew = '{value}' is not a duration"),
                            )
                            .with_hint("e.g. watermark_key_skew = '1 minute'")
                        })?)
                }
                "alignment_max_drift" => {
                    alignment_max_drift_ms =
                        Some(duration_ms(&value).filter(|&ms| ms >= 0).ok_or_else(|| {
                            Error::new(
                                ErrorCode::InvalidConfig,
                                format!("alignment_max_drift = '{value}' is not a duration"),
                            )
                            .with_hint("e.g. alignment_max_drift = '10 seconds'")
                        })?)
                }
                other => {
                    return Err(Error::new(
                        ErrorCode::Unsupported,
                        format!("source option '{other}' is not supported"),
                    )
                    .with_hint(
                        "source options: idle_timeout, retention_rows, alignment_group, \
                         alignment_max_drift, watermark_key, watermark_key_skew",
                    ))
                }
            }
        }
    }
    let alignment = match (alignment_group, alignment_max_drift_ms) {
        (None, None) => None,
        (Some(group), Some(drift)) => Some(AlignmentDef {
            group,
            max_drift_ms: drift,
        }),
        _ => {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                "alignment_group and alignment_max_drift go together",
            )
            .with_hint("WITH (alignment_group = 'g', alignment_max_drift = '10 seconds')"))
        }
    };
    let watermark_key = match (watermark_key, watermark_key_skew_ms) {
        (None, None) => None,
        (Some(column), skew_ms) => Some(WatermarkKeyDef { column, skew_ms }),
        (None, Some(_)) => {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                "watermark_key_skew needs watermark_key",
            )
            .with_hint("WITH (watermark_key = 'symbol', watermark_key_skew = '1 minute')"))
        }
    };
    if let Some(extra) = rest.get(after) {
        if keyword(extra) == Some(Keyword::FROM) {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!(
                    "source connectors (FROM ... at {}) are not supported yet",
                    location(extra)
                ),
            )
            .with_hint("push Arrow batches with source_untyped(name).push(batch), or use laminardb run --input"));
        }
        return Err(syntax_error(format!(
            "unexpected '{}' after the column list at {}",
            extra.token,
            location(extra)
        )));
    }
    let mut columns = Vec::new();
    let mut watermark = None;
    for item in items {
        if item.is_empty() {
            return Err(syntax_error(
                "empty item in the column list of CREATE SOURCE",
            ));
        }
        if is_word(item[0], "WATERMARK") {
            if watermark.is_some() {
                return Err(Error::new(
                    ErrorCode::InvalidWatermark,
                    "a source may declare only one WATERMARK",
                ));
            }
            watermark = Some(parse_watermark(&item)?);
        } else {
            columns.push(
                item.iter()
                    .map(|t| render(&t.token))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    if columns.is_empty() {
        return Err(syntax_error("CREATE SOURCE needs at least one column"));
    }
    let quoted_name = format!("\"{}\"", name.replace('"', "\"\""));
    Ok(SourceDefSyntax {
        create_table_sql: format!("CREATE TABLE {quoted_name} ({})", columns.join(", ")),
        name,
        watermark,
        idle_timeout_ms,
        retention_rows,
        alignment,
        watermark_key,
        if_not_exists,
        sql: text,
    })
}

/// `WATERMARK FOR col AS col [- INTERVAL 'n' UNIT | - INTERVAL 'n UNIT' | - n]`
fn parse_watermark(item: &[&TokenWithSpan]) -> Result<WatermarkDef> {
    let invalid = |why: &str| {
        Error::new(
            ErrorCode::InvalidWatermark,
            format!("invalid WATERMARK clause at {}: {why}", location(item[0])),
        )
        .with_hint("write WATERMARK FOR ts AS ts - INTERVAL '5' SECOND")
    };
    if item.len() < 4
        || keyword(item[1]) != Some(Keyword::FOR)
        || keyword(item[3]) != Some(Keyword::AS)
    {
        return Err(invalid(
            "expected WATERMARK FOR <column> AS <column> - <bound>",
        ));
    }
    let column = identifier(item[2], "the event-time column")
        .map_err(|_| invalid("expected a column name after FOR"))?;
    let expr = &item[4..];
    let Some(first) = expr.first() else {
        return Err(invalid("missing expression after AS"));
    };
    if identifier(first, "column").ok().as_deref() != Some(column.as_str()) {
        return Err(invalid(
            "the expression after AS must start with the same column as FOR",
        ));
    }
    let bound_ms = match &expr[1..] {
        [] => 0,
        [minus, rest @ ..] if minus.token == Token::Minus => parse_bound(rest).ok_or_else(|| {
            invalid("the bound must be INTERVAL 'n' UNIT (MILLISECOND to DAY) or a number of milliseconds")
        })?,
        _ => return Err(invalid("expected '<column> - <bound>'")),
    };
    if bound_ms < 0 {
        return Err(invalid("the bound must not be negative"));
    }
    Ok(WatermarkDef { column, bound_ms })
}

/// A duration written as `'<n> <unit>'` (or `'<n><unit>'`, or plain
/// milliseconds): units ms, s, m, h, d and their long forms.
pub fn duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (amount, unit) = text.split_at(split);
    let amount: f64 = amount.parse().ok()?;
    let unit_ms = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        _ => return None,
    };
    let ms = amount * unit_ms;
    (ms.fract() == 0.0 && ms <= i64::MAX as f64).then_some(ms as i64)
}

fn parse_bound(tokens: &[&TokenWithSpan]) -> Option<i64> {
    match tokens {
        [number] => match &number.token {
            Token::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        [interval, rest @ ..] if keyword(interval) == Some(Keyword::INTERVAL) => {
            let (amount, unit) = match rest {
                [value] => {
                    let Token::SingleQuotedString(s) = &value.token else {
                        return None;
                    };
                    let mut parts = s.split_whitespace();
                    (parts.next()?.to_string(), parts.next()?.to_string())
                }
                [value, unit] => {
                    let amount = match &value.token {
                        Token::SingleQuotedString(s) => s.trim().to_string(),
                        Token::Number(n, _) => n.clone(),
                        _ => return None,
                    };
                    let Token::Word(w) = &unit.token else {
                        return None;
                    };
                    (amount, w.value.clone())
                }
                _ => return None,
            };
            let amount: f64 = amount.parse().ok()?;
            let unit_ms = match unit.to_ascii_uppercase().trim_end_matches('S') {
                "MILLISECOND" => 1.0,
                "SECOND" => 1_000.0,
                "MINUTE" => 60_000.0,
                "HOUR" => 3_600_000.0,
                "DAY" => 86_400_000.0,
                _ => return None,
            };
            let ms = amount * unit_ms;
            (ms.fract() == 0.0).then_some(ms as i64)
        }
        _ => None,
    }
}

fn parse_create_stream(
    chunk: &[TokenWithSpan],
    rest: &[&TokenWithSpan],
    text: String,
    materialized: bool,
) -> Result<StreamDef> {
    let name_token = rest
        .first()
        .ok_or_else(|| syntax_error("CREATE STREAM needs a name"))?;
    let name = identifier(name_token, "a stream name")?;
    let mut next = 1;
    let mut late_side_output = false;
    let mut two_phase = TwoPhase::Auto;
    if rest
        .get(next)
        .is_some_and(|t| keyword(t) == Some(Keyword::WITH))
    {
        let (options, used) = parse_options(&rest[next + 1..])?;
        next += 1 + used;
        for (key, value) in options {
            match (key.as_str(), value.as_str()) {
                ("late_data", "drop") => late_side_output = false,
                ("late_data", "side_output") => late_side_output = true,
                ("late_data", other) => {
                    return Err(
                        syntax_error(format!("late_data = '{other}' is not an option"))
                            .with_hint("late_data = 'drop' (the default) or 'side_output'"),
                    )
                }
                ("two_phase", "auto") => two_phase = TwoPhase::Auto,
                ("two_phase", "on") => two_phase = TwoPhase::On,
                ("two_phase", "off") => two_phase = TwoPhase::Off,
                ("two_phase", other) => {
                    return Err(
                        syntax_error(format!("two_phase = '{other}' is not an option"))
                            .with_hint("two_phase = 'auto' (the default), 'on' or 'off'"),
                    )
                }
                (other, _) => {
                    return Err(Error::new(
                        ErrorCode::Unsupported,
                        format!("stream option '{other}' is not supported"),
                    )
                    .with_hint("stream options: late_data, two_phase"))
                }
            }
        }
    }
    let as_token = rest
        .get(next)
        .filter(|t| keyword(t) == Some(Keyword::AS))
        .ok_or_else(|| syntax_error(format!("expected AS after CREATE STREAM {name}")))?;
    // The query is everything after AS, up to a top-level EMIT.
    let start = chunk
        .iter()
        .position(|t| std::ptr::eq(t, *as_token))
        .expect("token from this chunk")
        + 1;
    let mut depth = 0i32;
    let mut emit_at = None;
    for (j, token) in chunk.iter().enumerate().skip(start) {
        match &token.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth == 0 && is_word(token, "EMIT") => {
                emit_at = Some(j);
                break;
            }
            _ => {}
        }
    }
    let (query_tokens, emit) = match emit_at {
        Some(j) => (&chunk[start..j], Some(parse_emit(&chunk[j..])?)),
        None => (&chunk[start..], None),
    };
    let query = text_of(query_tokens);
    if query.is_empty() {
        return Err(syntax_error(format!(
            "CREATE STREAM {name} AS needs a SELECT"
        )));
    }
    Ok(StreamDef {
        name,
        query,
        emit,
        materialized,
        late_side_output,
        two_phase,
        sql: text,
    })
}

/// `INSERT INTO name [(c1, c2, ...)] VALUES (...), ... | SELECT ...`.
fn parse_insert(
    chunk: &[TokenWithSpan],
    significant: &[&TokenWithSpan],
    text: String,
) -> Result<Statement> {
    if significant.len() < 4 || keyword(significant[1]) != Some(Keyword::INTO) {
        return Err(syntax_error(
            "expected INSERT INTO <name> VALUES (...) or SELECT ...",
        ));
    }
    let target = identifier(significant[2], "a source or table name")?;
    let mut next = 3;
    let mut columns = None;
    if significant[next].token == Token::LParen {
        let mut names = Vec::new();
        next += 1;
        loop {
            let token = significant
                .get(next)
                .ok_or_else(|| syntax_error("unterminated column list in INSERT"))?;
            names.push(identifier(token, "a column name")?);
            match significant.get(next + 1).map(|t| &t.token) {
                Some(Token::Comma) => next += 2,
                Some(Token::RParen) => {
                    next += 2;
                    break;
                }
                _ => {
                    return Err(syntax_error(
                        "expected ',' or ')' in the INSERT column list",
                    ))
                }
            }
        }
        columns = Some(names);
    }
    let start = significant
        .get(next)
        .ok_or_else(|| syntax_error("INSERT needs VALUES (...) or a SELECT"))?;
    if !matches!(
        keyword(start),
        Some(Keyword::VALUES | Keyword::SELECT | Keyword::WITH)
    ) {
        return Err(syntax_error(format!(
            "expected VALUES or SELECT after INSERT INTO {target}, found '{}' at {}",
            start.token,
            location(start)
        )));
    }
    let at = chunk
        .iter()
        .position(|t| std::ptr::eq(t, *start))
        .expect("token from this chunk");
    Ok(Statement::Insert {
        target,
        columns,
        query: text_of(&chunk[at..]),
        sql: text,
    })
}

/// Parses `(key = 'value', ...)`; returns the pairs (keys lower-cased) and
/// the number of tokens used.
fn parse_options(tokens: &[&TokenWithSpan]) -> Result<(Vec<(String, String)>, usize)> {
    if tokens.first().map(|t| &t.token) != Some(&Token::LParen) {
        return Err(syntax_error("expected '(' after WITH"));
    }
    let mut options = Vec::new();
    let mut i = 1;
    loop {
        let key = tokens
            .get(i)
            .ok_or_else(|| syntax_error("unterminated WITH (...)"))?;
        let key = identifier(key, "an option name")?;
        if tokens.get(i + 1).map(|t| &t.token) != Some(&Token::Eq) {
            return Err(syntax_error(format!("expected '=' after option {key}")));
        }
        let value = match tokens.get(i + 2).map(|t| &t.token) {
            Some(Token::SingleQuotedString(v)) => v.clone(),
            Some(Token::Word(w)) => w.value.clone(),
            Some(Token::Number(n, _)) => n.clone(),
            _ => return Err(syntax_error(format!("expected a value for option {key}"))),
        };
        options.push((key, value));
        match tokens.get(i + 3).map(|t| &t.token) {
            Some(Token::Comma) => i += 4,
            Some(Token::RParen) => return Ok((options, i + 4)),
            _ => return Err(syntax_error("expected ',' or ')' in WITH (...)")),
        }
    }
}

fn parse_emit(tokens: &[TokenWithSpan]) -> Result<EmitMode> {
    let words: Vec<String> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .map(|t| t.token.to_string().to_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["EMIT", "ON", "WINDOW", "CLOSE"] | ["EMIT", "FINAL"] => Ok(EmitMode::OnWindowClose),
        ["EMIT", "CHANGES"] => Ok(EmitMode::Changes),
        _ => Err(syntax_error(format!(
            "unknown EMIT clause '{}' at {}",
            words.join(" "),
            location(&tokens[0])
        ))
        .with_hint("use EMIT ON WINDOW CLOSE or EMIT FINAL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_with_watermark_and_stream_with_emit() {
        let statements = parse_script(
            "CREATE SOURCE Trades (symbol VARCHAR NOT NULL, price DOUBLE, ts BIGINT,
                WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
             -- a comment
             CREATE STREAM s AS SELECT symbol, COUNT(*) AS n FROM trades
                GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE;",
        )
        .unwrap();
        assert_eq!(statements.len(), 2);
        let Statement::CreateSource(source) = &statements[0] else {
            panic!("source")
        };
        assert_eq!(source.name, "trades");
        assert_eq!(
            source.watermark,
            Some(WatermarkDef {
                column: "ts".into(),
                bound_ms: 5000
            })
        );
        assert!(!source.create_table_sql.contains("WATERMARK"));
        let Statement::CreateStream(stream) = &statements[1] else {
            panic!("stream")
        };
        assert_eq!(stream.emit, Some(EmitMode::OnWindowClose));
        assert!(stream.query.starts_with("SELECT"));
        assert!(stream.query.ends_with("MINUTE)"));
    }

    #[test]
    fn watermark_bounds() {
        for (clause, ms) in [
            ("ts", 0),
            ("ts - 250", 250),
            ("ts - INTERVAL '2 minutes'", 120_000),
            ("ts - INTERVAL '1' HOUR", 3_600_000),
        ] {
            let sql = format!("CREATE SOURCE s (ts BIGINT, WATERMARK FOR ts AS {clause})");
            let Statement::CreateSource(s) = &parse_script(&sql).unwrap()[0] else {
                panic!()
            };
            assert_eq!(s.watermark.as_ref().unwrap().bound_ms, ms, "{clause}");
        }
    }

    #[test]
    fn errors_carry_codes() {
        let code = |sql: &str| parse_script(sql).unwrap_err().code();
        assert_eq!(
            code("CREATE SOURCE s (ts BIGINT, WATERMARK FOR x AS ts - 5)"),
            ErrorCode::InvalidWatermark
        );
        assert_eq!(
            code("CREATE SOURCE s (ts BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' MONTH)"),
            ErrorCode::InvalidWatermark
        );
        assert_eq!(
            code("CREATE SOURCE s (ts BIGINT) FROM KAFKA (topic = 'x')"),
            ErrorCode::Unsupported
        );
        assert_eq!(
            code("CREATE STREAM s AS SELECT 1 EMIT SOMETIMES"),
            ErrorCode::SqlSyntax
        );
        assert_eq!(code("DROP INDEX x"), ErrorCode::Unsupported);
        assert_eq!(
            code("CREATE SOURCE s (a VARCHAR 'unterminated)"),
            ErrorCode::SqlSyntax
        );
        assert_eq!(code("CREATE INDEX i ON t (a)"), ErrorCode::Unsupported);
        assert_eq!(code("INSERT INTO t DEFAULT VALUES"), ErrorCode::SqlSyntax);
        assert_eq!(code("DROP SOURCE"), ErrorCode::SqlSyntax);
        assert_eq!(code("EXPLAIN ANALYZE"), ErrorCode::Unsupported);
    }

    #[test]
    fn introspection_statements() {
        let one = |sql: &str| parse_script(sql).unwrap().remove(0);
        assert!(matches!(
            one("CREATE MATERIALIZED VIEW v AS SELECT 1"),
            Statement::CreateStream(StreamDef {
                materialized: true,
                ..
            })
        ));
        assert!(matches!(one("DESCRIBE trades"), Statement::Describe(n) if n == "trades"));
        assert!(
            matches!(one("SHOW CREATE MATERIALIZED VIEW v"), Statement::ShowCreate(n) if n == "v")
        );
        assert!(matches!(
            one("EXPLAIN ANALYZE v"),
            Statement::Explain { analyze: true, .. }
        ));
        assert!(matches!(
            one("DROP MATERIALIZED VIEW IF EXISTS v"),
            Statement::Drop {
                kind: DropKind::MaterializedView,
                if_exists: true,
                ..
            }
        ));
        assert!(matches!(
            one("SHOW SINKS"),
            Statement::Show(ShowWhat::Sinks)
        ));
    }
}
