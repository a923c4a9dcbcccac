//! ASOF and temporal join syntax, rewritten into a plain join before
//! DataFusion plans the query; the stream's lowering then reads the join
//! condition as an ASOF match (see `join.rs`).
//!
//! ```sql
//! FROM a ASOF [LEFT] JOIN b ON a.k = b.k AND a.ts >= b.ts [AND b.ts >= a.ts - tolerance]
//! FROM a ASOF [LEFT] JOIN b MATCH_CONDITION(a.ts <= b.ts) ON a.k = b.k
//! FROM a ASOF [LEFT] JOIN b MATCH_CONDITION(NEAREST(a.ts, b.ts)) ON a.k = b.k
//! FROM a [LEFT] JOIN b FOR SYSTEM_TIME AS OF a.ts [AS r] ON a.k = b.k
//! ```
//!
//! `ASOF` is dropped (the join stays INNER or LEFT) and the join's `ON`
//! clause starts with the marker [`crate::functions::ASOF_JOIN`]`()`, by
//! which the lowering tells this join from the query's other joins; a
//! `MATCH_CONDITION` moves to the front of the `ON` clause, `NEAREST`
//! becomes the marker function [`crate::functions::ASOF_NEAREST`], and
//! `FOR SYSTEM_TIME AS OF a.ts` becomes the backward condition `a.ts >=
//! b.<event time>` (a version is valid from its source's event time on).
//! A versioned view (a deduplication keeping each key's latest row) is
//! replaced by the rows it deduplicates, its versions.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use laminar_runtime::{Error, ErrorCode, Result};

use crate::functions::{ASOF_JOIN, ASOF_NEAREST};
use crate::window_tvf::{closing, is_keyword, next_significant, word};

/// The query had an ASOF or temporal join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AsofSyntax;

fn syntax(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::SqlSyntax, message).with_hint("see 'ASOF joins' in docs/SQL_REFERENCE.md")
}

/// What a temporal join needs of the table it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Versioned {
    /// The column with each version's time.
    pub time: String,
    /// A query to read in the table's place, whose rows are its versions
    /// (for a deduplicating view: the rows it deduplicates).
    pub rows: Option<String>,
}

impl Versioned {
    /// A stand-in for finding out whether a query has an ASOF or temporal
    /// join at all.
    pub(crate) fn any() -> Self {
        Self {
            time: String::new(),
            rows: None,
        }
    }
}

/// Rewrites a query's ASOF and temporal joins; `None` when it has none
/// (the text then comes back unchanged). `versioned` tells what a table
/// (a temporal join's right side) has of versions, if anything.
pub(crate) fn rewrite(
    query: &str,
    versioned: impl Fn(&str) -> Option<Versioned>,
) -> Result<(String, Option<AsofSyntax>)> {
    let dialect = GenericDialect {};
    let tokens: Vec<Token> = Tokenizer::new(&dialect, query)
        .tokenize()
        .map_err(|e| Error::new(ErrorCode::SqlSyntax, e.to_string()))?;
    let mut text: Vec<String> = tokens.iter().map(ToString::to_string).collect();
    let mut found: Option<AsofSyntax> = None;
    let mut i = 0;
    while i < tokens.len() {
        match word(&tokens[i]).as_deref() {
            // ASOF before a join; elsewhere it is an ordinary name.
            Some("asof")
                if next_significant(&tokens, i + 1).is_some_and(|j| {
                    is_keyword(&tokens[j], Keyword::JOIN)
                        || is_keyword(&tokens[j], Keyword::LEFT)
                        || is_keyword(&tokens[j], Keyword::INNER)
                }) =>
            {
                let next = next_significant(&tokens, i + 1).expect("checked");
                found = Some(AsofSyntax);
                for t in &mut text[i..next] {
                    t.clear();
                }
                let on = join_on(&tokens, next)
                    .ok_or_else(|| syntax("an ASOF JOIN needs ON and the join keys"))?;
                text[on] = format!("ON {ASOF_JOIN}() AND");
                i = next;
            }
            Some("match_condition")
                if next_significant(&tokens, i + 1).is_some_and(|j| tokens[j] == Token::LParen) =>
            {
                let open = next_significant(&tokens, i + 1)
                    .filter(|&j| tokens[j] == Token::LParen)
                    .ok_or_else(|| syntax("MATCH_CONDITION takes a condition in parentheses"))?;
                let close = closing(&tokens, open)
                    .ok_or_else(|| syntax("MATCH_CONDITION( is not closed"))?;
                let condition = condition_text(&tokens[open + 1..close]);
                let on = next_significant(&tokens, close + 1)
                    .filter(|&j| is_keyword(&tokens[j], Keyword::ON))
                    .ok_or_else(|| {
                        syntax("MATCH_CONDITION(...) must be followed by ON and the join keys")
                    })?;
                for t in &mut text[i..=close] {
                    t.clear();
                }
                text[on] = format!("{} ({condition}) AND", text[on]);
                i = on + 1;
            }
            _ if is_keyword(&tokens[i], Keyword::FOR) => {
                let Some(j) = next_significant(&tokens, i + 1)
                    .filter(|&j| word(&tokens[j]).as_deref() == Some("system_time"))
                else {
                    i += 1;
                    continue;
                };
                let as_ = next_significant(&tokens, j + 1)
                    .filter(|&k| is_keyword(&tokens[k], Keyword::AS));
                let of = as_
                    .and_then(|k| next_significant(&tokens, k + 1))
                    .filter(|&k| is_keyword(&tokens[k], Keyword::OF))
                    .ok_or_else(|| syntax("write FOR SYSTEM_TIME AS OF left.ts"))?;
                let (column, end) = qualified_name(&tokens, of + 1)
                    .ok_or_else(|| syntax("FOR SYSTEM_TIME AS OF needs a column"))?;
                // The versioned table is the name before FOR; its alias, if
                // any, follows the column.
                let (table_at, table) = previous_word(&tokens, i)
                    .ok_or_else(|| syntax("FOR SYSTEM_TIME AS OF must follow the joined table"))?;
                let mut next = next_significant(&tokens, end + 1);
                if next.is_some_and(|k| is_keyword(&tokens[k], Keyword::AS)) {
                    next = next.and_then(|k| next_significant(&tokens, k + 1));
                }
                let alias = next
                    .filter(|&k| !is_keyword(&tokens[k], Keyword::ON))
                    .and_then(|k| word(&tokens[k]).map(|_| tokens[k].to_string()));
                let on = next_significant(&tokens, next.map_or(end + 1, |k| k + usize::from(alias.is_some())))
                    .filter(|&k| is_keyword(&tokens[k], Keyword::ON))
                    .ok_or_else(|| syntax("FOR SYSTEM_TIME AS OF t [AS alias] must be followed by ON and the join keys"))?;
                let versioned = versioned(&table).ok_or_else(|| {
                    Error::new(
                        ErrorCode::InvalidWindow,
                        format!("FOR SYSTEM_TIME AS OF: '{table}' must be a source with a WATERMARK, or a stream with one event-time column (each version's time)"),
                    )
                    .with_hint("or write it as ASOF JOIN ... ON a.k = b.k AND a.ts >= b.ts")
                })?;
                found = Some(AsofSyntax);
                for t in &mut text[i..=end] {
                    t.clear();
                }
                if let Some(rows) = &versioned.rows {
                    text[table_at] = match alias {
                        Some(_) => format!("({rows})"),
                        None => format!("({rows}) AS {}", tokens[table_at]),
                    };
                }
                let versions = alias.unwrap_or(table);
                let time = &versioned.time;
                text[on] = format!("ON {ASOF_JOIN}() AND ({column} >= {versions}.\"{time}\") AND");
                i = on + 1;
            }
            _ => i += 1,
        }
    }
    if found.is_none() {
        return Ok((query.to_string(), None));
    }
    Ok((text.concat(), found))
}

/// The `ON` of the join whose `JOIN` (or `LEFT`, `INNER`) is at `from`:
/// the first at the join's own level, past a parenthesised right side.
fn join_on(tokens: &[Token], from: usize) -> Option<usize> {
    let mut i = from;
    while i < tokens.len() {
        if tokens[i] == Token::LParen {
            i = closing(tokens, i)?;
        } else if is_keyword(&tokens[i], Keyword::ON) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A possibly qualified name starting at or after `from`: its text and
/// the index of its last token.
fn qualified_name(tokens: &[Token], from: usize) -> Option<(String, usize)> {
    let mut end = next_significant(tokens, from)?;
    let mut name = String::new();
    loop {
        if !matches!(tokens[end], Token::Word(_)) {
            return None;
        }
        name.push_str(&tokens[end].to_string());
        if tokens.get(end + 1) == Some(&Token::Period) {
            name.push('.');
            end += 2;
        } else {
            return Some((name, end));
        }
    }
}

/// The word just before `i`, skipping whitespace.
fn previous_word(tokens: &[Token], i: usize) -> Option<(usize, String)> {
    (0..i)
        .rev()
        .find(|&j| !matches!(tokens[j], Token::Whitespace(_)))
        .and_then(|j| Some((j, word(&tokens[j])?)))
}

/// A match condition's text, with `NEAREST(` renamed to the marker.
fn condition_text(tokens: &[Token]) -> String {
    let mut out = String::new();
    for (i, token) in tokens.iter().enumerate() {
        if word(token).as_deref() == Some("nearest")
            && next_significant(tokens, i + 1).is_some_and(|j| tokens[j] == Token::LParen)
        {
            out.push_str(ASOF_NEAREST);
        } else {
            out.push_str(&crate::dialect::render(token));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squash(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn asof_forms() {
        let time = |table: &str| {
            (table == "rates").then(|| Versioned {
                time: "valid_from".to_string(),
                rows: None,
            })
        };
        let (q, s) = rewrite(
            "SELECT * FROM a ASOF JOIN b ON a.k = b.k AND a.ts >= b.ts",
            time,
        )
        .unwrap();
        assert_eq!(
            squash(&q),
            "SELECT * FROM a JOIN b ON __asof_join() AND a.k = b.k AND a.ts >= b.ts"
        );
        assert_eq!(s, Some(AsofSyntax));
        let (q, _) = rewrite(
            "SELECT * FROM a ASOF LEFT JOIN b MATCH_CONDITION(NEAREST(a.ts, b.ts)) ON a.k = b.k",
            time,
        )
        .unwrap();
        assert_eq!(
            squash(&q),
            "SELECT * FROM a LEFT JOIN b ON __asof_join() AND (__asof_nearest(a.ts, b.ts)) AND a.k = b.k"
        );
        let (q, _) = rewrite(
            "SELECT * FROM o JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.c = r.c",
            time,
        )
        .unwrap();
        assert_eq!(
            squash(&q),
            "SELECT * FROM o JOIN rates AS r ON __asof_join() AND (o.ts >= r.\"valid_from\") AND o.c = r.c"
        );
        let (q, _) = rewrite(
            "SELECT * FROM o LEFT JOIN rates FOR SYSTEM_TIME AS OF o.ts ON o.c = rates.c",
            time,
        )
        .unwrap();
        assert_eq!(
            squash(&q),
            "SELECT * FROM o LEFT JOIN rates ON __asof_join() AND (o.ts >= rates.\"valid_from\") AND o.c = rates.c"
        );
        assert!(rewrite(
            "SELECT * FROM o JOIN other FOR SYSTEM_TIME AS OF o.ts ON o.c = other.c",
            time
        )
        .is_err());
        // The ON of the ASOF join itself, past a parenthesised right side
        // with joins of its own; two ASOF joins in one query.
        let (q, _) = rewrite(
            "SELECT * FROM a ASOF JOIN (SELECT * FROM b JOIN c ON b.k = c.k) x ON a.k = x.k AND a.ts >= x.ts \
             ASOF LEFT JOIN d ON a.k = d.k AND a.ts >= d.ts",
            time,
        )
        .unwrap();
        assert_eq!(
            squash(&q),
            "SELECT * FROM a JOIN (SELECT * FROM b JOIN c ON b.k = c.k) x ON __asof_join() AND a.k = x.k AND a.ts >= x.ts \
             LEFT JOIN d ON __asof_join() AND a.k = d.k AND a.ts >= d.ts"
        );
        assert!(rewrite("SELECT * FROM a ASOF JOIN b", time).is_err());
        let plain = "SELECT asof, match_condition FROM t FOR";
        assert_eq!(rewrite(plain, time).unwrap(), (plain.to_string(), None));
        // A versioned view reads the rows it deduplicates.
        let view = |table: &str| {
            (table == "latest").then(|| Versioned {
                time: "ts".to_string(),
                rows: Some("SELECT \"c\", \"ts\" FROM \"rates\"".to_string()),
            })
        };
        let (q, _) = rewrite(
            "SELECT * FROM o JOIN latest FOR SYSTEM_TIME AS OF o.ts ON o.c = latest.c",
            view,
        )
        .unwrap();
        assert_eq!(
            squash(&q),
            "SELECT * FROM o JOIN (SELECT \"c\", \"ts\" FROM \"rates\") AS latest ON __asof_join() AND (o.ts >= latest.\"ts\") AND o.c = latest.c"
        );
        let (q, _) = rewrite(
            "SELECT * FROM o JOIN latest FOR SYSTEM_TIME AS OF o.ts AS l ON o.c = l.c",
            view,
        )
        .unwrap();
        assert_eq!(
            squash(&q),
            "SELECT * FROM o JOIN (SELECT \"c\", \"ts\" FROM \"rates\") AS l ON __asof_join() AND (o.ts >= l.\"ts\") AND o.c = l.c"
        );
    }
}
