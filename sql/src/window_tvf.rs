//! Window table functions and window-bound functions, rewritten into
//! LaminarDB's `GROUP BY` window form before DataFusion sees the query.
//!
//! Accepted forms (function names case-insensitive):
//!
//! ```sql
//! -- Flink
//! FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size [, offset]))
//! FROM TABLE(HOP(TABLE t, DESCRIPTOR(ts), slide, size [, offset]))
//! FROM TABLE(SESSION(TABLE t [PARTITION BY k], DESCRIPTOR(ts), gap))
//! -- RisingWave
//! FROM TUMBLE(t, ts, size [, offset])
//! FROM HOP(t, ts, slide, size [, offset])
//! -- legacy window bounds next to GROUP BY tumble(...) / hop(...) / session(...)
//! tumble_start(ts, size), tumble_end(ts, size), hop_end(ts, size, slide), session_end(ts, gap)
//! ```
//!
//! The table function becomes the plain table; its `window_start` column
//! becomes the window function (`tumble(ts, size)`, `slide(ts, size,
//! slide)`, `session(ts, gap)`), and `window_end` the start plus the size
//! (`MAX(ts)` plus the gap for a session). `window_end` is dropped from the
//! `GROUP BY`, since it follows from `window_start`. The result is ordinary
//! LaminarDB SQL, planned the same way for streaming and for the batch
//! oracle.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use laminar_runtime::{Error, ErrorCode, Result};

/// Name of the internal scalar function adding a window's size to its
/// start, in the start's type.
pub const WINDOW_END: &str = "__window_end";

/// A window named by a table function.
#[derive(Debug, Clone)]
struct Window {
    start: String,
    end: String,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidWindow, message)
        .with_hint("see 'Window table functions' in docs/SQL_REFERENCE.md")
}

/// Splits `tokens` (the inside of a call's parentheses) at top-level
/// commas; each argument's text trimmed.
fn arguments(tokens: &[Token]) -> Vec<String> {
    let mut depth = 0i32;
    let mut out = vec![String::new()];
    for token in tokens {
        match token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Comma if depth == 0 => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        out.last_mut()
            .expect("non-empty")
            .push_str(&crate::dialect::render(token));
    }
    out.into_iter().map(|a| a.trim().to_string()).collect()
}

/// Index of the parenthesis closing the one at `open`.
pub(crate) fn closing(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

pub(crate) fn word(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
        _ => None,
    }
}

pub(crate) fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.keyword == keyword)
}

/// Next non-whitespace token index from `i`.
pub(crate) fn next_significant(tokens: &[Token], mut i: usize) -> Option<usize> {
    while i < tokens.len() {
        if !matches!(tokens[i], Token::Whitespace(_)) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Previous non-whitespace token index before `i`.
fn previous_significant(tokens: &[Token], i: usize) -> Option<usize> {
    (0..i)
        .rev()
        .find(|&j| !matches!(tokens[j], Token::Whitespace(_)))
}

/// The window a table function describes: (kind, table, event-time column,
/// remaining arguments).
fn window_of(kind: &str, time: &str, args: &[String]) -> Result<Window> {
    match (kind, args) {
        ("tumble", [size]) | ("tumble", [size, _]) => {
            let call = format!("tumble({time}, {})", args.join(", "));
            Ok(Window {
                end: format!("{WINDOW_END}({call}, {size})"),
                start: call,
            })
        }
        ("hop", [slide, size]) | ("hop", [slide, size, _]) => {
            let offset = args.get(2).map(|o| format!(", {o}")).unwrap_or_default();
            let call = format!("slide({time}, {size}, {slide}{offset})");
            Ok(Window {
                end: format!("{WINDOW_END}({call}, {size})"),
                start: call,
            })
        }
        ("session", [gap]) => Ok(Window {
            start: format!("session({time}, {gap})"),
            end: format!("{WINDOW_END}(MAX({time}), {gap})"),
        }),
        _ => Err(invalid(format!(
            "{}(...) has the wrong arguments: TUMBLE(table, ts, size [, offset]), \
             HOP(table, ts, slide, size [, offset]), SESSION(table, ts, gap)",
            kind.to_uppercase()
        ))),
    }
}

/// Rewrites a query's window table functions and window-bound functions.
/// A query without them comes back unchanged. Each table function is
/// rewritten within the `SELECT` whose `FROM` holds it (a subquery's, for
/// Nexmark's joins of two windowed aggregates), innermost first.
pub fn rewrite(query: &str) -> Result<String> {
    let mut tokens = tokenize(query)?;
    replace_bound_functions(&mut tokens)?;
    while let Some(at) = table_functions(&tokens)?
        .into_iter()
        .max_by_key(|&at| depth_at(&tokens, at))
    {
        let (start, end) = scope_of(&tokens, at);
        let mut scope = tokens[start..end].to_vec();
        let window = replace_table_function(&mut scope, at - start)?;
        drop_window_end_from_group_by(&mut scope);
        let rewritten = tokenize(&replace_window_columns(&scope, &window))?;
        tokens.splice(
            start..end,
            rewritten.into_iter().filter(|t| *t != Token::EOF),
        );
    }
    Ok(tokens
        .iter()
        .filter(|t| **t != Token::EOF)
        .map(ToString::to_string)
        .collect())
}

fn tokenize(sql: &str) -> Result<Vec<Token>> {
    Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| Error::new(ErrorCode::SqlSyntax, e.to_string()))
}

const KINDS: [&str; 3] = ["tumble", "hop", "session"];

/// Where the window table functions start: Flink's `TABLE ( KIND (` and
/// RisingWave's `KIND (` after `FROM`, `JOIN` or a comma.
fn table_functions(tokens: &[Token]) -> Result<Vec<usize>> {
    let mut found = Vec::new();
    for i in 0..tokens.len() {
        if is_keyword(&tokens[i], Keyword::TABLE) {
            let open = next_significant(tokens, i + 1);
            let kind_at = open.and_then(|o| next_significant(tokens, o + 1));
            if let (Some(open), Some(kind_at)) = (open, kind_at) {
                let kind = word(&tokens[kind_at]).unwrap_or_default();
                if tokens[open] == Token::LParen && KINDS.contains(&kind.as_str()) {
                    found.push(i);
                }
            }
        } else if word(&tokens[i]).is_some_and(|k| KINDS.contains(&k.as_str())) {
            let after_from = previous_significant(tokens, i).is_some_and(|p| {
                is_keyword(&tokens[p], Keyword::FROM) || is_keyword(&tokens[p], Keyword::JOIN)
            });
            let called =
                next_significant(tokens, i + 1).is_some_and(|o| tokens[o] == Token::LParen);
            if after_from && called {
                found.push(i);
            }
        }
    }
    Ok(found)
}

/// How many parentheses are open at `at`.
fn depth_at(tokens: &[Token], at: usize) -> i32 {
    tokens[..at].iter().fold(0, |depth, t| match t {
        Token::LParen => depth + 1,
        Token::RParen => depth - 1,
        _ => depth,
    })
}

/// The token range of the `SELECT` whose `FROM` holds position `at`: the
/// inside of the innermost parentheses around it that start with `SELECT`
/// or `WITH`, or the whole query.
fn scope_of(tokens: &[Token], at: usize) -> (usize, usize) {
    let mut depth = 0i32;
    for i in (0..at).rev() {
        match tokens[i] {
            Token::RParen => depth += 1,
            Token::LParen if depth > 0 => depth -= 1,
            Token::LParen => {
                let starts_query = next_significant(tokens, i + 1).is_some_and(|n| {
                    is_keyword(&tokens[n], Keyword::SELECT) || is_keyword(&tokens[n], Keyword::WITH)
                });
                if starts_query {
                    if let Some(close) = closing(tokens, i) {
                        return (i + 1, close);
                    }
                }
            }
            _ => {}
        }
    }
    (0, tokens.len())
}

/// Puts the plain table in place of the window table function starting at
/// `i`, and returns the window it described.
fn replace_table_function(tokens: &mut Vec<Token>, i: usize) -> Result<Window> {
    // Flink: TABLE ( KIND ( TABLE t , DESCRIPTOR ( ts ) , ... ) )
    if is_keyword(&tokens[i], Keyword::TABLE) {
        let open = next_significant(tokens, i + 1).expect("found by table_functions");
        let kind_at = next_significant(tokens, open + 1).expect("found by table_functions");
        let kind = word(&tokens[kind_at]).unwrap_or_default();
        let close = closing(tokens, open).ok_or_else(|| invalid("unbalanced TABLE(...)"))?;
        let inner_open = next_significant(tokens, kind_at + 1)
            .filter(|&p| tokens[p] == Token::LParen)
            .ok_or_else(|| invalid(format!("expected '(' after {kind}")))?;
        let inner_close = closing(tokens, inner_open)
            .ok_or_else(|| invalid(format!("unbalanced {kind}(...)")))?;
        let args = arguments(&tokens[inner_open + 1..inner_close]);
        let (table, time, rest) = flink_arguments(&kind, &args)?;
        let window = window_of(&kind, &time, rest)?;
        tokens.splice(i..=close, table_tokens(&table)?);
        return Ok(window);
    }
    // RisingWave: (FROM | JOIN | ,) KIND ( t , ts , ... )
    let kind = word(&tokens[i]).unwrap_or_default();
    let open = next_significant(tokens, i + 1).expect("found by table_functions");
    let close = closing(tokens, open).ok_or_else(|| invalid(format!("unbalanced {kind}(...)")))?;
    let args = arguments(&tokens[open + 1..close]);
    if args.len() < 3 {
        return Err(invalid(format!(
            "{}(table, ts, ...) needs a table, an event-time column and the window's sizes",
            kind.to_uppercase()
        )));
    }
    let window = window_of(&kind, &args[1], &args[2..])?;
    tokens.splice(i..=close, table_tokens(&args[0])?);
    Ok(window)
}

/// `TABLE t [PARTITION BY k]`, `DESCRIPTOR(ts)`, rest.
fn flink_arguments<'a>(kind: &str, args: &'a [String]) -> Result<(String, String, &'a [String])> {
    let [table, descriptor, rest @ ..] = args else {
        return Err(invalid(format!(
            "{}(TABLE t, DESCRIPTOR(ts), ...) needs a table and a descriptor",
            kind.to_uppercase()
        )));
    };
    let table = table
        .strip_prefix("TABLE")
        .or_else(|| table.strip_prefix("table"))
        .map(str::trim)
        .ok_or_else(|| {
            invalid(format!(
                "expected TABLE <name> as the first argument of {kind}"
            ))
        })?;
    // Session windows are per GROUP BY key here; PARTITION BY adds nothing.
    let table = table
        .split_once(|c: char| c.is_whitespace())
        .map_or(table, |(name, _)| name)
        .to_string();
    let time = descriptor
        .trim()
        .strip_prefix("DESCRIPTOR")
        .or_else(|| descriptor.trim().strip_prefix("descriptor"))
        .and_then(|d| d.trim().strip_prefix('('))
        .and_then(|d| d.strip_suffix(')'))
        .map(|d| d.trim().to_string())
        .ok_or_else(|| {
            invalid(format!(
                "expected DESCRIPTOR(ts) as the second argument of {kind}"
            ))
        })?;
    Ok((table, time, rest))
}

fn table_tokens(table: &str) -> Result<Vec<Token>> {
    let dialect = GenericDialect {};
    Tokenizer::new(&dialect, table)
        .tokenize()
        .map_err(|e| Error::new(ErrorCode::SqlSyntax, e.to_string()))
}

/// `tumble_start(...)`, `tumble_end(...)`, `hop_start/end`, `slide_start/end`,
/// `session_start/end` become the window function and its end.
fn replace_bound_functions(tokens: &mut Vec<Token>) -> Result<()> {
    let mut i = 0;
    while i < tokens.len() {
        let Some(name) = word(&tokens[i]) else {
            i += 1;
            continue;
        };
        let Some((kind, bound)) = name.rsplit_once('_') else {
            i += 1;
            continue;
        };
        let function = match kind {
            "tumble" => "tumble",
            "hop" | "slide" => "slide",
            "session" => "session",
            _ => {
                i += 1;
                continue;
            }
        };
        if bound != "start" && bound != "end" {
            i += 1;
            continue;
        }
        let Some(open) = next_significant(tokens, i + 1).filter(|&o| tokens[o] == Token::LParen)
        else {
            i += 1;
            continue;
        };
        let close =
            closing(tokens, open).ok_or_else(|| invalid(format!("unbalanced {name}(...)")))?;
        let args = arguments(&tokens[open + 1..close]);
        if args.len() < 2 {
            return Err(invalid(format!(
                "{name}() takes the same arguments as {function}()"
            )));
        }
        let call = format!("{function}({})", args.join(", "));
        let text = match (function, bound) {
            (_, "start") => call,
            ("session", _) => format!("{WINDOW_END}(MAX({}), {})", args[0], args[1]),
            _ => format!("{WINDOW_END}({call}, {})", args[1]),
        };
        let replacement = table_tokens(&text)?;
        let len = replacement.len();
        tokens.splice(i..=close, replacement);
        i += len;
    }
    Ok(())
}

/// Whether tokens `[i..]` start with `window_end` (optionally qualified);
/// returns the index after it.
fn window_column_at(tokens: &[Token], i: usize, column: &str) -> Option<usize> {
    if word(&tokens[i]).as_deref() == Some(column) {
        return Some(i + 1);
    }
    if word(&tokens[i]).is_some()
        && tokens.get(i + 1) == Some(&Token::Period)
        && tokens.get(i + 2).and_then(word).as_deref() == Some(column)
    {
        return Some(i + 3);
    }
    None
}

/// Removes `window_end` items from a top-level GROUP BY (they follow from
/// `window_start`).
fn drop_window_end_from_group_by(tokens: &mut Vec<Token>) {
    let mut depth = 0i32;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth == 0 && is_keyword(&tokens[i], Keyword::GROUP) => {
                let Some(by) = next_significant(tokens, i + 1) else {
                    return;
                };
                if !is_keyword(&tokens[by], Keyword::BY) {
                    i += 1;
                    continue;
                }
                // Items run to the next top-level clause keyword.
                let start = by + 1;
                let mut end = start;
                let mut inner = 0i32;
                while end < tokens.len() {
                    match &tokens[end] {
                        Token::LParen => inner += 1,
                        Token::RParen if inner == 0 => break,
                        Token::RParen => inner -= 1,
                        Token::Word(w)
                            if inner == 0
                                && w.quote_style.is_none()
                                && matches!(
                                    w.keyword,
                                    Keyword::HAVING
                                        | Keyword::ORDER
                                        | Keyword::LIMIT
                                        | Keyword::UNION
                                        | Keyword::WINDOW
                                ) =>
                        {
                            break
                        }
                        Token::SemiColon | Token::EOF => break,
                        _ => {}
                    }
                    end += 1;
                }
                let items = split_items(&tokens[start..end]);
                let kept: Vec<Vec<Token>> = items
                    .into_iter()
                    .filter(|item| {
                        let significant: Vec<Token> = item
                            .iter()
                            .filter(|t| !matches!(t, Token::Whitespace(_)))
                            .cloned()
                            .collect();
                        window_column_at(&significant, 0, "window_end") != Some(significant.len())
                    })
                    .collect();
                let mut rebuilt = vec![Token::Whitespace(
                    datafusion::sql::sqlparser::tokenizer::Whitespace::Space,
                )];
                for (n, item) in kept.into_iter().enumerate() {
                    if n > 0 {
                        rebuilt.push(Token::Comma);
                    }
                    rebuilt.extend(item);
                }
                rebuilt.push(Token::Whitespace(
                    datafusion::sql::sqlparser::tokenizer::Whitespace::Space,
                ));
                tokens.splice(start..end, rebuilt);
                return;
            }
            _ => {}
        }
        i += 1;
    }
}

fn split_items(tokens: &[Token]) -> Vec<Vec<Token>> {
    let mut depth = 0i32;
    let mut items = vec![Vec::new()];
    for token in tokens {
        match token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Comma if depth == 0 => {
                items.push(Vec::new());
                continue;
            }
            _ => {}
        }
        items.last_mut().expect("non-empty").push(token.clone());
    }
    items
}

/// Replaces `window_start` / `window_end` references. In the SELECT list a
/// bare reference keeps its name as an alias.
fn replace_window_columns(tokens: &[Token], window: &Window) -> String {
    let mut out = String::new();
    let mut depth = 0i32;
    let mut in_select_list = false;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            t if depth == 0 && is_keyword(t, Keyword::SELECT) => in_select_list = true,
            t if depth == 0 && is_keyword(t, Keyword::FROM) => in_select_list = false,
            _ => {}
        }
        // `... AS window_start` names an output column: leave it.
        let after_as =
            previous_significant(tokens, i).is_some_and(|p| is_keyword(&tokens[p], Keyword::AS));
        let mut replaced = false;
        for (column, text) in [("window_start", &window.start), ("window_end", &window.end)] {
            let Some(after) = window_column_at(tokens, i, column).filter(|_| !after_as) else {
                continue;
            };
            out.push_str(text);
            let bare_item = in_select_list
                && depth == 0
                && next_significant(tokens, after).is_none_or(|n| {
                    tokens[n] == Token::Comma || is_keyword(&tokens[n], Keyword::FROM)
                });
            if bare_item {
                out.push_str(" AS ");
                out.push_str(column);
            }
            i = after;
            replaced = true;
            break;
        }
        if !replaced {
            if tokens[i] != Token::EOF {
                out.push_str(&tokens[i].to_string());
            }
            i += 1;
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
    fn flink_tumble_becomes_group_by_tumble() {
        let q = rewrite(
            "SELECT auction, window_start, window_end, COUNT(*) AS n
             FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
             GROUP BY auction, window_start, window_end",
        )
        .unwrap();
        assert_eq!(
            squash(&q),
            squash(
                "SELECT auction, tumble(date_time, INTERVAL '10' SECOND) AS window_start, \
                 __window_end(tumble(date_time, INTERVAL '10' SECOND), INTERVAL '10' SECOND) AS window_end, \
                 COUNT(*) AS n FROM bid GROUP BY auction, tumble(date_time, INTERVAL '10' SECOND)"
            )
        );
    }

    #[test]
    fn risingwave_hop_and_aliases() {
        let q = rewrite(
            "SELECT b.window_start AS ws, COUNT(*) FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS b
             GROUP BY b.window_start, b.window_end",
        )
        .unwrap();
        assert_eq!(
            squash(&q),
            squash(
                "SELECT slide(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND) AS ws, COUNT(*) \
                 FROM bid AS b GROUP BY slide(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND)"
            )
        );
    }

    #[test]
    fn each_subquery_gets_its_own_window() {
        let q = rewrite(
            "SELECT P.id FROM (
                SELECT id, window_start AS starttime FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(ts), INTERVAL '10' SECOND))
                GROUP BY id, window_start, window_end) P
             JOIN (
                SELECT seller, window_start AS starttime FROM HOP(auction, ts, INTERVAL '2' SECOND, INTERVAL '4' SECOND)
                GROUP BY seller, window_start, window_end) A
             ON P.id = A.seller AND P.starttime = A.starttime",
        )
        .unwrap();
        assert_eq!(
            squash(&q),
            squash(
                "SELECT P.id FROM ( SELECT id, tumble(ts, INTERVAL '10' SECOND) AS starttime FROM person \
                 GROUP BY id, tumble(ts, INTERVAL '10' SECOND) ) P JOIN ( \
                 SELECT seller, slide(ts, INTERVAL '4' SECOND, INTERVAL '2' SECOND) AS starttime FROM auction \
                 GROUP BY seller, slide(ts, INTERVAL '4' SECOND, INTERVAL '2' SECOND) ) A \
                 ON P.id = A.seller AND P.starttime = A.starttime"
            )
        );
    }

    #[test]
    fn legacy_bound_functions_and_plain_queries() {
        let q = rewrite(
            "SELECT tumble_start(ts, INTERVAL '1' MINUTE) AS s, tumble_end(ts, INTERVAL '1' MINUTE) AS e
             FROM t GROUP BY tumble(ts, INTERVAL '1' MINUTE)",
        )
        .unwrap();
        assert!(
            q.contains("__window_end(tumble(ts, INTERVAL '1' MINUTE), INTERVAL '1' MINUTE) AS e"),
            "{q}"
        );
        let plain = "SELECT a, b FROM t WHERE a > 1";
        assert_eq!(rewrite(plain).unwrap(), plain);
        assert!(rewrite("SELECT * FROM TUMBLE(t, ts)").is_err());
    }
}
