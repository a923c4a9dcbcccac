//! The extended query protocol (Parse, Bind, Describe, Execute), which
//! most PostgreSQL drivers use for every statement: prepared statements
//! with `$1`, `$2`, ... parameters, result rows in text or binary format.
//!
//! Parse asks the database to describe the statement
//! (`LaminarDB::describe_statement`, on the pipeline it names): parameter types inferred from the
//! query (or the `INSERT` target's columns) unless the client gave them,
//! and the result columns. Execute binds the parameter values, decoded
//! by their type from text or binary, and runs the statement on the same
//! path as a simple query.

use std::sync::Arc;

use async_trait::async_trait;
use laminar_db::arrow::datatypes::{DataType, SchemaRef};
use laminar_db::{Error, ErrorCode};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, Type};
use pgwire::error::PgWireResult;

use laminar_db::ScalarValue;

use crate::pg::pg_error;
use crate::pg_cursor::{CursorStatement, Cursors};

/// A parsed statement: its text, parameter types and result columns.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sql: String,
    pub parameters: Vec<Type>,
    /// `None`: the statement returns no rows.
    pub columns: Option<SchemaRef>,
}

/// Describes statements as clients prepare them (one per connection).
pub struct Parser {
    pub db: std::sync::Arc<crate::pipelines::Pipelines>,
    pub cursors: Arc<tokio::sync::Mutex<Cursors>>,
}

/// The PostgreSQL type a parameter of `data_type` is announced as.
fn parameter_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::VARCHAR,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        _ => Type::UNKNOWN,
    }
}

/// Field `i`'s format; a malformed per-column list counts as text.
pub fn format_of(format: &Format, i: usize) -> FieldFormat {
    match format {
        Format::Individual(codes) => codes
            .get(i)
            .map(|&code| FieldFormat::from(code))
            .unwrap_or(FieldFormat::Text),
        other => other.format_for(i),
    }
}

/// The row description of `columns` in `format`.
pub fn fields(columns: &SchemaRef, format: &Format) -> Vec<FieldInfo> {
    columns
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            FieldInfo::new(
                field.name().clone(),
                None,
                None,
                crate::pg::result_type(field.data_type()),
                format_of(format, i),
            )
        })
        .collect()
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if let Some(statement) = crate::pg_cursor::parse(sql).map_err(|e| pg_error(&e))? {
            let columns = match &statement {
                CursorStatement::Fetch { cursor, .. } => {
                    let mut cursors = self.cursors.lock().await;
                    let cursor = cursors.get(cursor).map_err(|e| pg_error(&e))?;
                    Some(Arc::clone(&cursor.schema))
                }
                _ => None,
            };
            return Ok(Some(Prepared {
                sql: sql.to_string(),
                parameters: Vec::new(),
                columns,
            }));
        }
        if let Some(statement) =
            crate::pipelines::parse_pipeline_statement(sql).map_err(|e| pg_error(&e))?
        {
            let columns = match statement {
                crate::pipelines::PipelineStatement::Show => {
                    Some(self.db.listing().map_err(|e| pg_error(&e))?.schema())
                }
                _ => None,
            };
            return Ok(Some(Prepared {
                sql: sql.to_string(),
                parameters: Vec::new(),
                columns,
            }));
        }
        let description = self
            .db
            .describe_statement(sql)
            .await
            .map_err(|e| pg_error(&e))?;
        let parameters = description
            .parameters
            .iter()
            .enumerate()
            .map(|(i, inferred)| {
                types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .unwrap_or_else(|| inferred.as_ref().map_or(Type::UNKNOWN, parameter_type))
            })
            .collect();
        Ok(Some(Prepared {
            sql: sql.to_string(),
            parameters,
            columns: description.columns,
        }))
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(statement.parameters.clone())
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(statement
            .columns
            .as_ref()
            .map(|columns| fields(columns, format.unwrap_or(&Format::UnifiedText)))
            .unwrap_or_default())
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorCode::InvalidInput, message)
}

/// Microseconds from 1970 to PostgreSQL's epoch (2000-01-01).
const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;
/// Days from 1970 to PostgreSQL's epoch.
const POSTGRES_EPOCH_DAYS: i32 = 10_957;

/// A parameter value sent as text, by its announced type.
fn from_text(text: &str, pg_type: &Type) -> Result<ScalarValue, Error> {
    let bad = || invalid(format!("'{text}' is not a valid {pg_type} parameter"));
    Ok(match *pg_type {
        Type::BOOL => match text.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "yes" | "on" => ScalarValue::Boolean(Some(true)),
            "f" | "false" | "0" | "no" | "off" => ScalarValue::Boolean(Some(false)),
            _ => return Err(bad()),
        },
        Type::INT2 => ScalarValue::Int16(Some(text.trim().parse().map_err(|_| bad())?)),
        Type::INT4 => ScalarValue::Int32(Some(text.trim().parse().map_err(|_| bad())?)),
        Type::INT8 => ScalarValue::Int64(Some(text.trim().parse().map_err(|_| bad())?)),
        Type::FLOAT4 => ScalarValue::Float32(Some(text.trim().parse().map_err(|_| bad())?)),
        Type::FLOAT8 => ScalarValue::Float64(Some(text.trim().parse().map_err(|_| bad())?)),
        // Everything else as a string literal: comparisons and INSERT
        // casts turn it into the column's type.
        _ => ScalarValue::Utf8(Some(text.to_string())),
    })
}

/// A parameter value sent in binary, by its announced type.
fn from_binary(bytes: &[u8], pg_type: &Type) -> Result<ScalarValue, Error> {
    let bad = || {
        invalid(format!(
            "a binary {pg_type} parameter of {} bytes is malformed",
            bytes.len()
        ))
    };
    macro_rules! be {
        ($t:ty) => {
            <$t>::from_be_bytes(bytes.try_into().map_err(|_| bad())?)
        };
    }
    Ok(match *pg_type {
        Type::BOOL => ScalarValue::Boolean(Some(*bytes.first().ok_or_else(bad)? != 0)),
        Type::INT2 => ScalarValue::Int16(Some(be!(i16))),
        Type::INT4 => ScalarValue::Int32(Some(be!(i32))),
        Type::INT8 => ScalarValue::Int64(Some(be!(i64))),
        Type::FLOAT4 => ScalarValue::Float32(Some(be!(f32))),
        Type::FLOAT8 => ScalarValue::Float64(Some(be!(f64))),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            Some(be!(i64).checked_add(POSTGRES_EPOCH_US).ok_or_else(bad)?),
            None,
        ),
        Type::DATE => ScalarValue::Date32(Some(
            be!(i32).checked_add(POSTGRES_EPOCH_DAYS).ok_or_else(bad)?,
        )),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            ScalarValue::Utf8(Some(String::from_utf8(bytes.to_vec()).map_err(|_| bad())?))
        }
        _ => {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!("binary parameters of type {pg_type} are not supported; send it as text"),
            ))
        }
    })
}

/// The portal's parameter values, decoded.
pub fn parameters(portal: &Portal<Prepared>) -> Result<Vec<ScalarValue>, Error> {
    let types = &portal.statement.statement.parameters;
    if portal.parameters.len() != types.len() {
        return Err(invalid(format!(
            "the statement takes {} parameter(s), {} were bound",
            types.len(),
            portal.parameters.len()
        )));
    }
    portal
        .parameters
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (value, pg_type))| match value {
            None => Ok(ScalarValue::Null),
            Some(bytes) if format_of(&portal.parameter_format, i) == FieldFormat::Binary => {
                from_binary(bytes, pg_type)
            }
            Some(bytes) => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| invalid(format!("parameter ${} is not UTF-8", i + 1)))?;
                from_text(text, pg_type)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_decode_by_type() {
        assert_eq!(
            from_text("42", &Type::INT8).unwrap(),
            ScalarValue::Int64(Some(42))
        );
        assert!(from_text("42; DROP", &Type::INT8).is_err());
        assert_eq!(
            from_binary(&7i32.to_be_bytes(), &Type::INT4).unwrap(),
            ScalarValue::Int32(Some(7))
        );
        // 2000-01-01 00:00:01 in PostgreSQL's binary form.
        assert_eq!(
            from_binary(&1_000_000i64.to_be_bytes(), &Type::TIMESTAMP).unwrap(),
            ScalarValue::TimestampMicrosecond(Some(946_684_801_000_000), None)
        );
        assert!(from_binary(&[1, 2], &Type::INT8).is_err());
    }
}
