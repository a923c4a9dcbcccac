//! Tailing a stream over the PostgreSQL protocol with cursors, as
//! Materialize does:
//!
//! ```sql
//! DECLARE c CURSOR FOR SUBSCRIBE TO vwap;
//! FETCH 100 c WITH (timeout = '1 s');   -- up to 100 rows; waits for the first
//! CLOSE c;
//! ```
//!
//! `DECLARE` subscribes to the stream from that moment; a task drains the
//! subscription into a bounded queue (so a cursor nobody fetches never makes
//! the shards wait: past [`CURSOR_BATCHES`] unfetched batches the cursor is
//! cut off and its next `FETCH` says so). `FETCH n` (or `ALL`) returns the
//! rows waiting, up to `n`; with none waiting it waits for the next batch,
//! at most `timeout` when given. Cursors belong to their connection and end
//! with it. `BEGIN`, `COMMIT` and `ROLLBACK` are accepted and do nothing
//! (clients wrap cursors in transactions; LaminarDB has none).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use laminar_db::arrow::array::RecordBatch;
use laminar_db::arrow::datatypes::SchemaRef;
use laminar_db::{Error, ErrorCode, Result};

use crate::pipelines::Pipelines;

/// Unfetched batches a cursor may hold before it is cut off.
pub const CURSOR_BATCHES: usize = 1024;

/// A statement the cursor layer handles itself.
#[derive(Debug, PartialEq)]
pub enum CursorStatement {
    Declare {
        cursor: String,
        stream: String,
    },
    Fetch {
        cursor: String,
        /// `None`: ALL.
        count: Option<usize>,
        timeout: Option<Duration>,
    },
    Close {
        cursor: String,
    },
    /// BEGIN / COMMIT / ROLLBACK / START TRANSACTION / END: accepted.
    Transaction(&'static str),
}

fn syntax(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::SqlSyntax, message).with_hint(
        "DECLARE c CURSOR FOR SUBSCRIBE TO stream; FETCH 100 c WITH (timeout = '1 s'); CLOSE c",
    )
}

/// Reads a cursor statement; `Ok(None)` for anything else.
pub fn parse(statement: &str) -> Result<Option<CursorStatement>> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    let name = |w: &str| w.trim_matches('"').to_string();
    Ok(Some(match upper.as_slice() {
        ["BEGIN", ..] | ["START", "TRANSACTION", ..] => CursorStatement::Transaction("BEGIN"),
        ["COMMIT"] | ["END"] => CursorStatement::Transaction("COMMIT"),
        ["ROLLBACK"] | ["ABORT"] => CursorStatement::Transaction("ROLLBACK"),
        ["DECLARE", _, rest @ ..] => {
            let stream =
                match rest {
                    ["CURSOR", "FOR", "SUBSCRIBE", "TO", _]
                    | ["NO", "SCROLL", "CURSOR", "FOR", "SUBSCRIBE", "TO", _] => words.last(),
                    ["CURSOR", "FOR", "SUBSCRIBE", _] => words.last(),
                    _ => return Err(syntax(
                        "cursors are for tailing streams: DECLARE c CURSOR FOR SUBSCRIBE TO stream",
                    )),
                };
            CursorStatement::Declare {
                cursor: name(words[1]),
                stream: name(stream.expect("matched")),
            }
        }
        ["FETCH", ..] => parse_fetch(statement, &words[1..], &upper[1..])?,
        ["CLOSE", _] => CursorStatement::Close {
            cursor: name(words[1]),
        },
        _ => return Ok(None),
    }))
}

fn parse_fetch(statement: &str, words: &[&str], upper: &[&str]) -> Result<CursorStatement> {
    // FETCH [FORWARD] [n | ALL | NEXT] [FROM | IN] cursor [WITH (timeout = '...')]
    let mut i = 0;
    if upper.first() == Some(&"FORWARD") {
        i += 1;
    }
    let mut count = Some(1);
    match upper.get(i) {
        Some(&"ALL") => {
            count = None;
            i += 1;
        }
        Some(&"NEXT") => i += 1,
        Some(word) if word.parse::<usize>().is_ok() => {
            count = word.parse().ok();
            i += 1;
        }
        _ => {}
    }
    if matches!(upper.get(i), Some(&"FROM") | Some(&"IN")) {
        i += 1;
    }
    let cursor = words
        .get(i)
        .map(|w| w.trim_matches('"').trim_end_matches(';').to_string())
        .ok_or_else(|| syntax("FETCH needs a cursor name"))?;
    let mut timeout = None;
    if upper.get(i + 1) == Some(&"WITH") {
        let options = statement
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(inside, _)| inside)
            .ok_or_else(|| syntax("FETCH ... WITH (timeout = '1 s')"))?;
        let (key, value) = options
            .split_once('=')
            .ok_or_else(|| syntax("FETCH ... WITH (timeout = '1 s')"))?;
        if !key.trim().eq_ignore_ascii_case("timeout") {
            return Err(syntax(format!("unknown FETCH option '{}'", key.trim())));
        }
        let value = value.trim().trim_matches('\'');
        let ms = laminar_sql::dialect::duration_ms(value)
            .filter(|&ms| ms >= 0)
            .ok_or_else(|| syntax(format!("timeout '{value}' is not a duration")))?;
        timeout = Some(Duration::from_millis(ms as u64));
    } else if words.len() > i + 1 {
        return Err(syntax("unexpected text after the cursor name"));
    }
    Ok(CursorStatement::Fetch {
        cursor,
        count,
        timeout,
    })
}

/// An open cursor.
pub struct Cursor {
    pub schema: SchemaRef,
    batches: tokio::sync::mpsc::Receiver<RecordBatch>,
    /// Rows received but not fetched yet.
    waiting: VecDeque<RecordBatch>,
    cut_off: Arc<AtomicBool>,
    drain: tokio::task::JoinHandle<()>,
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

impl Cursor {
    /// Subscribes to `stream` from now on.
    pub fn declare(db: &Pipelines, stream: &str) -> Result<Self> {
        use futures::StreamExt;
        let mut subscription = db.subscribe(stream)?;
        let schema = db.stream_schema(stream)?;
        let (sender, batches) = tokio::sync::mpsc::channel(CURSOR_BATCHES);
        let cut_off = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cut_off);
        let drain = tokio::spawn(async move {
            while let Some(batch) = subscription.next().await {
                match sender.try_send(batch) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        flag.store(true, Ordering::Release);
                        break;
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        });
        Ok(Self {
            schema,
            batches,
            waiting: VecDeque::new(),
            cut_off,
            drain,
        })
    }

    /// Up to `count` rows (all waiting with `None`); waits for the next
    /// batch when none is waiting, at most `timeout`.
    pub async fn fetch(
        &mut self,
        count: Option<usize>,
        timeout: Option<Duration>,
    ) -> Result<Vec<RecordBatch>> {
        while let Ok(batch) = self.batches.try_recv() {
            self.waiting.push_back(batch);
        }
        if self.waiting.is_empty() {
            let next = match timeout {
                Some(timeout) => tokio::time::timeout(timeout, self.batches.recv())
                    .await
                    .unwrap_or(None),
                None => self.batches.recv().await,
            };
            match next {
                Some(batch) => self.waiting.push_back(batch),
                None if self.cut_off.load(Ordering::Acquire) => {
                    return Err(Error::new(
                        ErrorCode::Backpressure,
                        format!(
                            "the cursor fell more than {CURSOR_BATCHES} batches behind and was cut off"
                        ),
                    )
                    .with_hint("FETCH more often, or CLOSE and DECLARE it again"));
                }
                None => {}
            }
        }
        let mut left = count.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        while left > 0 {
            let Some(batch) = self.waiting.pop_front() else {
                break;
            };
            if batch.num_rows() <= left {
                left -= batch.num_rows();
                out.push(batch);
            } else {
                out.push(batch.slice(0, left));
                self.waiting
                    .push_front(batch.slice(left, batch.num_rows() - left));
                left = 0;
            }
        }
        Ok(out)
    }
}

/// A connection's cursors.
#[derive(Default)]
pub struct Cursors(HashMap<String, Cursor>);

impl Cursors {
    pub fn declare(&mut self, db: &Pipelines, cursor: String, stream: &str) -> Result<()> {
        if self.0.contains_key(&cursor) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("cursor '{cursor}' already exists"),
            ));
        }
        self.0.insert(cursor, Cursor::declare(db, stream)?);
        Ok(())
    }

    pub fn get(&mut self, cursor: &str) -> Result<&mut Cursor> {
        self.0.get_mut(cursor).ok_or_else(|| {
            Error::new(
                ErrorCode::UnknownObject,
                format!("cursor '{cursor}' does not exist"),
            )
        })
    }

    pub fn close(&mut self, cursor: &str) -> Result<()> {
        self.0.remove(cursor).map(drop).ok_or_else(|| {
            Error::new(
                ErrorCode::UnknownObject,
                format!("cursor '{cursor}' does not exist"),
            )
        })
    }
}

/// Splits a simple query into statements at `;` outside quotes.
pub fn split_statements(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut at = 0;
    let bytes = query.as_bytes();
    while at < bytes.len() {
        match bytes[at] {
            quote @ (b'\'' | b'"') => {
                at = query[at + 1..]
                    .find(quote as char)
                    .map_or(bytes.len(), |end| at + 1 + end + 1);
                continue;
            }
            // A dollar-quoted string ($$ ... $$ or $tag$ ... $tag$), as
            // psql sends `CREATE PIPELINE p AS $$ ...; ... $$`.
            b'$' => {
                if let Some(tag_len) = dollar_tag(&query[at..]) {
                    let tag = &query[at..at + tag_len];
                    at = query[at + tag_len..]
                        .find(tag)
                        .map_or(bytes.len(), |end| at + tag_len + end + tag_len);
                    continue;
                }
            }
            b';' => {
                let statement = query[start..at].trim();
                if !statement.is_empty() {
                    out.push(statement.to_string());
                }
                start = at + 1;
            }
            _ => {}
        }
        at += 1;
    }
    let statement = query[start..].trim();
    if !statement.is_empty() {
        out.push(statement.to_string());
    }
    out
}

/// The length of the dollar-quote tag (`$$`, `$body$`) `text` starts
/// with, if it starts with one.
pub fn dollar_tag(text: &str) -> Option<usize> {
    let rest = text.strip_prefix('$')?;
    let end = rest.find('$')?;
    let tag = &rest[..end];
    let valid = tag
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    valid.then_some(end + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_statements() {
        assert_eq!(
            parse("DECLARE c CURSOR FOR SUBSCRIBE TO vwap").unwrap(),
            Some(CursorStatement::Declare {
                cursor: "c".into(),
                stream: "vwap".into()
            })
        );
        assert_eq!(
            parse("fetch 10 from c with (timeout = '2 s')").unwrap(),
            Some(CursorStatement::Fetch {
                cursor: "c".into(),
                count: Some(10),
                timeout: Some(Duration::from_secs(2))
            })
        );
        assert_eq!(
            parse("FETCH ALL c").unwrap(),
            Some(CursorStatement::Fetch {
                cursor: "c".into(),
                count: None,
                timeout: None
            })
        );
        assert_eq!(
            parse("close c").unwrap(),
            Some(CursorStatement::Close { cursor: "c".into() })
        );
        assert_eq!(
            parse("DECLARE Tail CURSOR FOR SUBSCRIBE per_symbol").unwrap(),
            Some(CursorStatement::Declare {
                cursor: "Tail".into(),
                stream: "per_symbol".into()
            })
        );
        assert_eq!(parse("SELECT 1").unwrap(), None);
        assert!(parse("DECLARE c CURSOR FOR SELECT 1").is_err());
        assert!(parse("FETCH 1 c WITH (speed = 'fast')").is_err());
        assert_eq!(
            split_statements("BEGIN; DECLARE c CURSOR FOR SUBSCRIBE x; SELECT ';'"),
            vec!["BEGIN", "DECLARE c CURSOR FOR SUBSCRIBE x", "SELECT ';'"]
        );
        assert_eq!(
            split_statements("CREATE PIPELINE p AS $$ a; b $$; SELECT $1; x $t$;$t$ ;"),
            vec!["CREATE PIPELINE p AS $$ a; b $$", "SELECT $1", "x $t$;$t$"]
        );
        assert_eq!(
            split_statements("SELECT 'open; quote"),
            vec!["SELECT 'open; quote"]
        );
    }
}
