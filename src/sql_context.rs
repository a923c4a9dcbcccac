//! Points SQL errors at the text they are about: the line of the script
//! with a caret under the position.

use laminar_runtime::{Error, ErrorCode};

/// Adds a caret context to `error` about `statement` (a statement of
/// `script`, found at byte `offset`), when the error names a position or
/// an identifier that appears in the statement.
pub(crate) fn locate(error: Error, script: &str, offset: usize, statement: &str) -> Error {
    if error.context().is_some()
        || !matches!(
            error.code(),
            ErrorCode::SqlSyntax
                | ErrorCode::UnknownObject
                | ErrorCode::Planning
                | ErrorCode::Unsupported
                | ErrorCode::InvalidWindow
                | ErrorCode::InvalidWatermark
        )
    {
        return error;
    }
    let message = error.message().to_string();
    let position = line_column(&message, "at line ", ", column ")
        .and_then(|(line, column)| byte_of(script, line, column))
        .or_else(|| {
            // DataFusion's parser counts in the query it was given, which is
            // the end of the statement.
            let (line, column) = line_column(&message, "Line: ", ", Column: ")?;
            let query_start = statement.find(" AS ").map_or(0, |i| i + 4);
            let query = statement[query_start..].trim_start();
            let base = offset + statement.len() - statement[query_start..].len()
                + (statement[query_start..].len() - query.len());
            byte_of(&script[base..], line, column).map(|b| base + b)
        })
        .or_else(|| {
            let name = named_identifier(&message)?;
            find_word(statement, &name).map(|i| offset + i)
        });
    match position {
        Some(position) => error.with_context(caret(script, position)),
        None => error,
    }
}

/// `(line, column)` after `line_prefix` and `column_prefix` in a message.
fn line_column(message: &str, line_prefix: &str, column_prefix: &str) -> Option<(usize, usize)> {
    let start = message.find(line_prefix)? + line_prefix.len();
    let rest = &message[start..];
    let line_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let line: usize = rest[..line_end].parse().ok()?;
    let rest = rest[line_end..].strip_prefix(column_prefix)?;
    let column_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let column: usize = rest[..column_end].parse().ok()?;
    Some((line, column))
}

/// Byte offset of a 1-based (line, column) in `text`.
fn byte_of(text: &str, line: usize, column: usize) -> Option<usize> {
    let mut offset = 0;
    for (i, text_line) in text.split('\n').enumerate() {
        if i + 1 == line {
            let within = text_line
                .char_indices()
                .nth(column.saturating_sub(1))
                .map_or(text_line.len(), |(b, _)| b);
            return Some(offset + within);
        }
        offset += text_line.len() + 1;
    }
    None
}

/// The name an "unknown object" style message is about.
fn named_identifier(message: &str) -> Option<String> {
    if let Some(i) = message.find("No field named ") {
        let rest = &message[i + "No field named ".len()..];
        let name: String = rest
            .trim_start_matches('"')
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        let name = name.trim_end_matches('.').rsplit('.').next()?;
        return (!name.is_empty()).then(|| name.to_string());
    }
    // ... 'name' ... : the first quoted word.
    let start = message.find('\'')? + 1;
    let end = start + message[start..].find('\'')?;
    let quoted = &message[start..end];
    let name = quoted.rsplit('.').next()?;
    (!name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .then(|| name.to_string())
}

/// First whole-word, case-insensitive occurrence of `word` in `text`.
fn find_word(text: &str, word: &str) -> Option<usize> {
    if word.is_empty() {
        return None;
    }
    // ASCII lower-casing keeps byte offsets.
    let lower = text.to_ascii_lowercase();
    let word = word.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(&word) {
        let at = from + i;
        let before = lower[..at].chars().next_back();
        let after = lower[at + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if boundary(before) && boundary(after) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// The line holding byte `position` of `script`, and a caret under it.
fn caret(script: &str, position: usize) -> String {
    let position = position.min(script.len());
    let line_start = script[..position].rfind('\n').map_or(0, |i| i + 1);
    let line_end = script[position..]
        .find('\n')
        .map_or(script.len(), |i| position + i);
    let line = &script[line_start..line_end];
    let column = script[line_start..position].chars().count();
    let number = script[..line_start].matches('\n').count() + 1;
    let gutter = format!("{number} | ");
    format!("{gutter}{line}\n{}^", " ".repeat(gutter.len() + column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carets_point_at_positions_and_names() {
        let script = "CREATE SOURCE t (a BIGINT);\nCREATE STREAM s AS SELECT nope FROM t";
        let statement_offset = script.find("CREATE STREAM").unwrap();
        let statement = &script[statement_offset..];
        let e = locate(
            Error::new(
                ErrorCode::UnknownObject,
                "Schema error: No field named nope.",
            ),
            script,
            statement_offset,
            statement,
        );
        assert_eq!(
            e.context().unwrap(),
            "2 | CREATE STREAM s AS SELECT nope FROM t\n                              ^"
        );
        let e = locate(
            Error::new(ErrorCode::SqlSyntax, "unexpected ')' at line 1, column 18"),
            script,
            0,
            &script[..26],
        );
        assert_eq!(
            e.context().unwrap(),
            "1 | CREATE SOURCE t (a BIGINT);\n                     ^"
        );
    }
}
