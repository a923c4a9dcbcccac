//! Prepared statements: what a statement takes (`$1`, `$2`, ...) and
//! returns, found without running it, and running it with parameter
//! values bound.
//!
//! Parameters are bound as SQL literals in the statement's text, so a
//! prepared statement runs on exactly the path its text would (one
//! planner for every entry point). The literals are built from typed
//! values, never from client text: a string is quoted with its quotes
//! doubled, so a value cannot change the statement around it.

use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use laminar_runtime::{Error, ErrorCode, Result};
use laminar_sql::{parse_script, Statement};

use crate::{ExecuteResult, LaminarDB};

/// What a statement takes and returns, found without running it.
#[derive(Debug, Clone)]
pub struct Description {
    /// `[i]` is the type of parameter `$(i+1)` where it can be inferred
    /// (a comparison with a column, an `INSERT ... VALUES` position).
    pub parameters: Vec<Option<DataType>>,
    /// The columns of the rows it returns; `None` when it returns none
    /// (DDL, `INSERT`).
    pub columns: Option<SchemaRef>,
}

fn tokens(sql: &str) -> Result<Vec<Token>> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| Error::new(ErrorCode::SqlSyntax, e.to_string()))
}

/// The parameter number of a `$n` token.
fn parameter_number(token: &Token) -> Result<Option<usize>> {
    let Token::Placeholder(text) = token else {
        return Ok(None);
    };
    match text.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
        Some(n) if n >= 1 => Ok(Some(n)),
        _ => Err(Error::new(
            ErrorCode::SqlSyntax,
            format!("parameter {text} is not of the form $1, $2, ..."),
        )),
    }
}

/// How many parameters `sql` takes: its highest `$n`.
fn parameter_count(sql: &str) -> Result<usize> {
    let mut count = 0;
    for token in tokens(sql)? {
        if let Some(n) = parameter_number(&token)? {
            count = count.max(n);
        }
    }
    Ok(count)
}

/// `value` as a SQL literal of its type.
fn sql_literal(value: &ScalarValue) -> Result<String> {
    if value.is_null() {
        return Ok("NULL".to_string());
    }
    let float = |v: f64, sql_type: &str| {
        if v.is_finite() {
            format!("CAST({v:?} AS {sql_type})")
        } else {
            let text = if v.is_nan() {
                "NaN"
            } else if v > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            };
            format!("CAST('{text}' AS {sql_type})")
        }
    };
    Ok(match value {
        ScalarValue::Boolean(Some(v)) => v.to_string().to_uppercase(),
        ScalarValue::Int8(Some(v)) => format!("CAST({v} AS TINYINT)"),
        ScalarValue::Int16(Some(v)) => format!("CAST({v} AS SMALLINT)"),
        ScalarValue::Int32(Some(v)) => format!("CAST({v} AS INT)"),
        ScalarValue::Int64(Some(v)) => format!("CAST({v} AS BIGINT)"),
        ScalarValue::Float32(Some(v)) => float(f64::from(*v), "REAL"),
        ScalarValue::Float64(Some(v)) => float(*v, "DOUBLE"),
        ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) => {
            format!("'{}'", v.replace('\'', "''"))
        }
        ScalarValue::TimestampMicrosecond(Some(_), None) | ScalarValue::Date32(Some(_)) => {
            let sql_type = if matches!(value, ScalarValue::Date32(_)) {
                "DATE"
            } else {
                "TIMESTAMP"
            };
            // Arrow's display of these types is ISO 8601, which CAST parses.
            format!("CAST('{value}' AS {sql_type})")
        }
        other => {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!(
                    "a parameter of type {} cannot be bound yet",
                    other.data_type()
                ),
            ))
        }
    })
}

/// `sql` with each `$n` replaced by the literal of `values[n - 1]`.
fn bind(sql: &str, values: &[ScalarValue]) -> Result<String> {
    let mut out = String::with_capacity(sql.len());
    for token in tokens(sql)? {
        match parameter_number(&token)? {
            Some(n) => {
                let value = values.get(n - 1).ok_or_else(|| {
                    Error::new(
                        ErrorCode::InvalidInput,
                        format!(
                            "the statement uses ${n} but {} parameter value(s) were given",
                            values.len()
                        ),
                    )
                })?;
                out.push_str(&sql_literal(value)?);
            }
            None => out.push_str(&laminar_sql::dialect::render(&token)),
        }
    }
    Ok(out)
}

/// The types of the parameters that stand alone at a position of an
/// `INSERT ... VALUES` row: that position's column type.
fn insert_parameter_types(
    values: &str,
    columns: &[DataType],
    parameters: &mut [Option<DataType>],
) -> Result<()> {
    let mut depth = 0usize;
    let mut position = 0usize;
    // The parameter at the current position, if it is all there is.
    let mut alone: Option<Option<usize>> = None;
    for token in tokens(values)? {
        match &token {
            Token::Whitespace(_) => continue,
            Token::LParen => {
                depth += 1;
                if depth == 1 {
                    position = 0;
                    alone = None;
                    continue;
                }
            }
            Token::RParen | Token::Comma if depth == 1 => {
                if let (Some(Some(n)), Some(data_type)) = (alone, columns.get(position)) {
                    if let Some(slot) = parameters.get_mut(n - 1) {
                        slot.get_or_insert_with(|| data_type.clone());
                    }
                }
                position += 1;
                alone = None;
                if matches!(token, Token::RParen) {
                    depth -= 1;
                }
                continue;
            }
            Token::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth >= 1 {
            let n = parameter_number(&token)?;
            alone = match (alone, n) {
                (None, Some(n)) if depth == 1 => Some(Some(n)),
                _ => Some(None),
            };
        }
    }
    Ok(())
}

impl LaminarDB {
    /// What one statement takes and returns, without running it: the
    /// types of its `$n` parameters (where they can be inferred) and the
    /// columns of its rows. `SHOW`, `DESCRIBE` and `EXPLAIN` run to find
    /// their columns (they change nothing).
    pub async fn describe_statement(&self, sql: &str) -> Result<Description> {
        let statements = parse_script(sql)?;
        let [statement] = statements.as_slice() else {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!(
                    "a prepared statement holds one statement, not {}",
                    statements.len()
                ),
            ));
        };
        let count = parameter_count(sql)?;
        let mut parameters = vec![None; count];
        let columns = match statement {
            Statement::Query(query) if !laminar_sql::has_asof(query)? => {
                let ctx = self.query_context()?;
                let plan = ctx
                    .state()
                    .create_logical_plan(query)
                    .await
                    .map_err(|e| self.query_error(e))?;
                let types = plan.get_parameter_types()?;
                for (i, slot) in parameters.iter_mut().enumerate() {
                    *slot = types.get(&format!("${}", i + 1)).cloned().flatten();
                }
                Some(Arc::new(plan.schema().as_arrow().clone()))
            }
            Statement::Query(_)
            | Statement::Show(_)
            | Statement::Explain { .. }
            | Statement::Describe(_)
            | Statement::ShowCreate(_) => {
                if count > 0 {
                    return Err(Error::new(
                        ErrorCode::Unsupported,
                        "parameters are not supported in SHOW, DESCRIBE, EXPLAIN or ASOF queries",
                    ));
                }
                match self.execute(sql).await?.pop() {
                    Some(ExecuteResult::Rows(batches)) => batches.first().map(|b| b.schema()),
                    _ => None,
                }
            }
            Statement::Insert {
                target,
                columns,
                query,
                ..
            } => {
                if let Some(schema) = self.insert_target_schema(target)? {
                    let types: Vec<DataType> = match columns {
                        None => schema
                            .fields()
                            .iter()
                            .map(|f| f.data_type().clone())
                            .collect(),
                        Some(names) => names
                            .iter()
                            .map(|name| {
                                schema
                                    .fields()
                                    .iter()
                                    .find(|f| f.name().eq_ignore_ascii_case(name))
                                    .map(|f| f.data_type().clone())
                                    .unwrap_or(DataType::Null)
                            })
                            .collect(),
                    };
                    insert_parameter_types(query, &types, &mut parameters)?;
                }
                None
            }
            _ => None,
        };
        Ok(Description {
            parameters,
            columns,
        })
    }

    /// Runs one statement with `$1`, `$2`, ... bound to `parameters`.
    ///
    /// ```
    /// use laminar_db::{LaminarDB, ScalarValue};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// # rt.block_on(async {
    /// let db = LaminarDB::open()?;
    /// db.execute("CREATE TABLE desks (symbol VARCHAR PRIMARY KEY, desk VARCHAR)").await?;
    /// let insert = "INSERT INTO desks VALUES ($1, $2)";
    /// let described = db.describe_statement(insert).await?;
    /// assert_eq!(described.parameters.len(), 2);
    /// db.execute_with_parameters(
    ///     insert,
    ///     &[ScalarValue::from("O'Neil"), ScalarValue::from("rates")],
    /// )
    /// .await?;
    /// let rows = db
    ///     .execute_with_parameters(
    ///         "SELECT desk FROM desks WHERE symbol = $1",
    ///         &[ScalarValue::from("O'Neil")],
    ///     )
    ///     .await?;
    /// assert!(matches!(&rows[0], laminar_db::ExecuteResult::Rows(b) if b[0].num_rows() == 1));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn execute_with_parameters(
        &self,
        sql: &str,
        parameters: &[ScalarValue],
    ) -> Result<Vec<ExecuteResult>> {
        if parameters.is_empty() && parameter_count(sql)? == 0 {
            return self.execute(sql).await;
        }
        self.execute(&bind(sql, parameters)?).await
    }

    /// The schema of the source or table an `INSERT` writes.
    fn insert_target_schema(&self, target: &str) -> Result<Option<SchemaRef>> {
        let catalog = self.shared.catalog.lock().map_err(|_| crate::poisoned())?;
        if let Some(source) = catalog
            .sources
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(target))
        {
            return Ok(Some(Arc::clone(&source.schema)));
        }
        drop(catalog);
        let tables = self.shared.tables.lock().map_err(|_| crate::poisoned())?;
        Ok(tables
            .iter()
            .find(|t| t.def.name.eq_ignore_ascii_case(target))
            .map(|t| Arc::clone(&t.def.schema)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_quotes_strings_and_types_numbers() {
        let sql = "SELECT * FROM t WHERE a = $1 AND b = $2 AND c = '$1' AND d = $1";
        let bound = bind(
            sql,
            &[
                ScalarValue::Utf8(Some("O'Brien; DROP".into())),
                ScalarValue::Float64(Some(f64::NAN)),
            ],
        )
        .unwrap();
        assert_eq!(
            bound,
            "SELECT * FROM t WHERE a = 'O''Brien; DROP' AND b = CAST('NaN' AS DOUBLE) \
             AND c = '$1' AND d = 'O''Brien; DROP'"
        );
        assert_eq!(parameter_count(sql).unwrap(), 2);
        // Quotes inside the statement's own literals stay doubled.
        let bound = bind(
            "SELECT 'it''s', \"a\"\"b\" FROM t WHERE x = $1",
            &[ScalarValue::Int64(Some(1))],
        )
        .unwrap();
        assert_eq!(
            bound,
            "SELECT 'it''s', \"a\"\"b\" FROM t WHERE x = CAST(1 AS BIGINT)"
        );
        let err = bind("SELECT $3", &[ScalarValue::Int64(Some(1))]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidInput);
    }

    #[test]
    fn insert_values_give_parameters_their_column_types() {
        let mut parameters = vec![None; 4];
        insert_parameter_types(
            "VALUES ($1, $2 + 1, $3), ($4, 'x', upper($1))",
            &[DataType::Utf8, DataType::Int64, DataType::Float64],
            &mut parameters,
        )
        .unwrap();
        assert_eq!(
            parameters,
            [
                Some(DataType::Utf8),
                None,
                Some(DataType::Float64),
                Some(DataType::Utf8)
            ]
        );
    }
}
