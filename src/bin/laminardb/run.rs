//! `laminardb run`: SQL over CSV, JSON-lines or Parquet files (by
//! extension: `.jsonl`/`.ndjson`/`.json` are JSON lines, `.parquet`/`.pq`
//! Parquet, anything else CSV with a header row), results to CSV files.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use laminar_db::arrow::array::RecordBatch;
use laminar_db::arrow::csv::reader::Format;
use laminar_db::arrow::csv::{Reader, ReaderBuilder, WriterBuilder};
use laminar_db::{Error, ErrorCode, ExecuteResult, LaminarDB, Result, SourceHandle, Statement};
use laminar_operators::EventTimeUnit;

pub struct RunArgs {
    pub sql: PathBuf,
    pub inputs: Vec<String>,
    pub output: PathBuf,
    pub batch_rows: usize,
    pub shards: Option<usize>,
    /// Storage directory and durability: resume after a crash.
    pub storage: Option<(PathBuf, laminar_db::Durability)>,
    /// With a storage directory: take a checkpoint this often.
    pub checkpoint_interval: Option<std::time::Duration>,
    /// With a storage directory: WAL segment size.
    pub wal_segment_bytes: Option<u64>,
}

fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::Io,
        format!("cannot {what} {}: {e}", path.display()),
    )
}

/// Batches read from an input file.
type Batches = Box<
    dyn Iterator<Item = std::result::Result<RecordBatch, laminar_db::arrow::error::ArrowError>>,
>;

/// One input file being read, with the event times of its current batch.
struct Input {
    source: usize,
    path: PathBuf,
    reader: Batches,
    time: Option<(usize, EventTimeUnit)>,
    batch: Option<RecordBatch>,
    times_ms: Vec<i64>,
    position: usize,
}

impl Input {
    /// Makes sure a batch with unread rows is loaded; false at end of file.
    fn fill(&mut self) -> Result<bool> {
        while self
            .batch
            .as_ref()
            .is_none_or(|b| self.position >= b.num_rows())
        {
            match self.reader.next() {
                None => return Ok(false),
                Some(Err(e)) => {
                    return Err(Error::new(
                        ErrorCode::InvalidInput,
                        format!("{}: {e}", self.path.display()),
                    ))
                }
                Some(Ok(batch)) => {
                    self.times_ms.clear();
                    if let Some((column, unit)) = &self.time {
                        unit.array_to_ms(batch.column(*column).as_ref(), &mut self.times_ms)
                            .map_err(|e| {
                                Error::new(
                                    ErrorCode::InvalidInput,
                                    format!("{}: {}", self.path.display(), e.message()),
                                )
                            })?;
                    } else {
                        self.times_ms.resize(batch.num_rows(), i64::MIN);
                    }
                    self.batch = Some(batch);
                    self.position = 0;
                }
            }
        }
        Ok(true)
    }

    fn head_time(&self) -> i64 {
        self.times_ms[self.position]
    }
}

fn open_input(
    spec: &str,
    handles: &mut Vec<SourceHandle>,
    db: &LaminarDB,
    batch_rows: usize,
) -> Result<Input> {
    let (source_name, path) = spec.split_once('=').ok_or_else(|| {
        Error::new(
            ErrorCode::InvalidConfig,
            format!("--input '{spec}' must look like SOURCE=PATH"),
        )
    })?;
    let handle = db.source_untyped(source_name)?;
    let schema = handle.schema();
    let path = PathBuf::from(path);
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let reader = match extension.as_str() {
        "jsonl" | "ndjson" | "json" => open_json(&path, &schema, batch_rows)?,
        "parquet" | "pq" => open_parquet(&path, &schema, handle.name(), batch_rows)?,
        _ => open_csv(&path, &schema, handle.name(), batch_rows)?,
    };
    let time = match handle.event_time_column() {
        Some(column) => Some((
            column,
            EventTimeUnit::of(
                schema.field(column).data_type(),
                schema.field(column).name(),
            )?,
        )),
        None => None,
    };
    let source = match handles.iter().position(|h| h.name() == handle.name()) {
        Some(i) => i,
        None => {
            handles.push(handle);
            handles.len() - 1
        }
    };
    Ok(Input {
        source,
        path,
        reader,
        time,
        batch: None,
        times_ms: Vec::new(),
        position: 0,
    })
}

/// A Parquet file with (at least) the source's columns, found by name
/// (case-insensitively) and cast strictly to the source's types.
fn open_parquet(
    path: &Path,
    schema: &laminar_db::arrow::datatypes::SchemaRef,
    source: &str,
    batch_rows: usize,
) -> Result<Batches> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = File::open(path).map_err(|e| io_error(path, "open", e))?;
    let invalid = |message: String| {
        Error::new(
            ErrorCode::InvalidInput,
            format!("{}: {message}", path.display()),
        )
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| invalid(format!("not a readable Parquet file: {e}")))?;
    let file_schema = Arc::clone(builder.schema());
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            file_schema
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(field.name()))
                .ok_or_else(|| {
                    invalid(format!(
                        "no column '{}' for source '{source}' (the file has: {})",
                        field.name(),
                        file_schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        })
        .collect::<Result<Vec<usize>>>()?;
    let reader = builder
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|e| invalid(format!("cannot read: {e}")))?;
    let schema = Arc::clone(schema);
    let strict = laminar_db::arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    Ok(Box::new(reader.map(move |batch| {
        let batch = batch?;
        let arrays = columns
            .iter()
            .zip(schema.fields())
            .map(|(&c, field)| {
                laminar_db::arrow::compute::cast_with_options(
                    batch.column(c),
                    field.data_type(),
                    &strict,
                )
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        RecordBatch::try_new(Arc::clone(&schema), arrays)
    })))
}

/// A CSV file with a header row matching the source's columns.
fn open_csv(
    path: &Path,
    schema: &laminar_db::arrow::datatypes::SchemaRef,
    source: &str,
    batch_rows: usize,
) -> Result<Batches> {
    let path = path.to_path_buf();
    let mut file = File::open(&path).map_err(|e| io_error(&path, "open", e))?;
    let (header, _) = Format::default()
        .with_header(true)
        .infer_schema(&mut file, Some(0))
        .map_err(|e| {
            Error::new(
                ErrorCode::InvalidInput,
                format!("{}: cannot read the header row: {e}", path.display()),
            )
        })?;
    let names: Vec<&str> = header.fields().iter().map(|f| f.name().as_str()).collect();
    let expected: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let matches = names.len() == expected.len()
        && names
            .iter()
            .zip(&expected)
            .all(|(a, b)| a.trim().eq_ignore_ascii_case(b));
    if !matches {
        return Err(Error::new(
            ErrorCode::InvalidInput,
            format!(
                "{}: the header row is '{}' but source '{}' needs '{}'",
                path.display(),
                names.join(","),
                source,
                expected.join(",")
            ),
        ));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io_error(&path, "read", e))?;
    let reader: Reader<BufReader<File>> = ReaderBuilder::new(Arc::clone(schema))
        .with_header(true)
        .with_batch_size(batch_rows)
        .build(BufReader::new(file))
        .map_err(|e| Error::new(ErrorCode::InvalidInput, format!("{}: {e}", path.display())))?;
    Ok(Box::new(reader))
}

/// A JSON-lines file: one object per line, fields by column name (missing
/// nullable fields are NULL; extra fields are an error).
fn open_json(
    path: &Path,
    schema: &laminar_db::arrow::datatypes::SchemaRef,
    batch_rows: usize,
) -> Result<Batches> {
    let file = File::open(path).map_err(|e| io_error(path, "open", e))?;
    let reader = laminar_db::arrow::json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(batch_rows)
        .with_strict_mode(true)
        .build(BufReader::new(file))
        .map_err(|e| Error::new(ErrorCode::InvalidInput, format!("{}: {e}", path.display())))?;
    Ok(Box::new(reader))
}

/// Feeds all inputs, merged by event time: always the input whose next row
/// is earliest, in runs of at most `batch_rows` rows.
///
/// `skip[source]` rows of each source are not pushed again: a durable run
/// recovered them (the merge order is the same on every run, so they are
/// exactly the first rows of that source).
async fn feed(
    inputs: &mut Vec<Input>,
    handles: &mut [SourceHandle],
    batch_rows: usize,
    skip: &mut [u64],
) -> Result<()> {
    loop {
        let mut i = 0;
        while i < inputs.len() {
            if inputs[i].fill()? {
                i += 1;
            } else {
                inputs.swap_remove(i);
            }
        }
        if inputs.is_empty() {
            return Ok(());
        }
        // Earliest head; ties go to the input listed first.
        let (first, _) = inputs
            .iter()
            .enumerate()
            .min_by_key(|(i, input)| (input.head_time(), *i))
            .expect("non-empty");
        let others = inputs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first)
            .map(|(_, input)| input.head_time())
            .min()
            .unwrap_or(i64::MAX);
        let input = &mut inputs[first];
        let batch = input.batch.as_ref().expect("filled");
        let start = input.position;
        let mut end = start + 1;
        while end < batch.num_rows() && end - start < batch_rows && input.times_ms[end] <= others {
            end += 1;
        }
        let mut piece = batch.slice(start, end - start);
        input.position = end;
        let skipped = skip[input.source].min(piece.num_rows() as u64);
        if skipped > 0 {
            skip[input.source] -= skipped;
            piece = piece.slice(skipped as usize, piece.num_rows() - skipped as usize);
            if piece.num_rows() == 0 {
                continue;
            }
        }
        handles[input.source].push_async(piece).await?;
    }
}

fn write_csv(
    path: &Path,
    batches: &[RecordBatch],
    schema: &laminar_db::arrow::datatypes::SchemaRef,
) -> Result<()> {
    let file = File::create(path).map_err(|e| io_error(path, "create", e))?;
    let mut writer = WriterBuilder::new().with_header(true).build(file);
    writer
        .write(&RecordBatch::new_empty(Arc::clone(schema)))
        .map_err(|e| io_error(path, "write", e))?;
    for batch in batches {
        writer
            .write(batch)
            .map_err(|e| io_error(path, "write", e))?;
    }
    Ok(())
}

pub async fn run(args: RunArgs) -> Result<()> {
    if args.batch_rows == 0 {
        return Err(Error::new(
            ErrorCode::InvalidConfig,
            "--batch-rows must be at least 1",
        ));
    }
    let sql = std::fs::read_to_string(&args.sql).map_err(|e| io_error(&args.sql, "read", e))?;
    let mut builder = LaminarDB::builder();
    if let Some(shards) = args.shards {
        builder = builder.shards(shards);
    }
    if let Some((dir, durability)) = &args.storage {
        builder = builder.storage_dir(dir).durability(*durability);
    }
    if let Some(interval) = args.checkpoint_interval {
        if args.storage.is_none() {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                "--checkpoint-interval-ms needs --storage-dir",
            ));
        }
        builder = builder.checkpoint_interval(interval);
    }
    if let Some(bytes) = args.wal_segment_bytes {
        if args.storage.is_none() {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                "--wal-segment-bytes needs --storage-dir",
            ));
        }
        builder = builder.wal_segment_bytes(bytes);
    }
    let db = builder.build()?;
    // Ad-hoc queries read materialized views, which are complete only once
    // the input has been consumed: they run at the end.
    let mut queries = Vec::new();
    for statement in LaminarDB::parse(&sql)? {
        match statement {
            Statement::Query(_) => queries.push(statement),
            other => {
                db.execute_statement(other).await?;
            }
        }
    }
    let streams = db.streams();
    if streams.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidConfig,
            format!(
                "{} defines no CREATE STREAM: there would be no output",
                args.sql.display()
            ),
        ));
    }
    std::fs::create_dir_all(&args.output).map_err(|e| io_error(&args.output, "create", e))?;

    let mut handles = Vec::new();
    let mut inputs = Vec::new();
    for spec in &args.inputs {
        inputs.push(open_input(spec, &mut handles, &db, args.batch_rows)?);
    }
    for source in db.sources() {
        if !handles.iter().any(|h| h.name() == source) {
            handles.push(db.source_untyped(&source)?);
        }
    }
    // Outputs are kept inside the database: after a crash, the last
    // checkpoint brings back what was emitted before it and the replay of
    // the WAL after it emits the rest, each row once.
    for name in &streams {
        db.retain_output(name)?;
    }
    db.start().await?;
    let mut skip = handles
        .iter()
        .map(|h| db.recovered_rows(h.name()))
        .collect::<Result<Vec<u64>>>()?;
    let recovered: u64 = skip.iter().sum();
    if recovered > 0 {
        eprintln!("recovered {recovered} rows from the storage directory; resuming after them");
    }
    let fed = feed(&mut inputs, &mut handles, args.batch_rows, &mut skip).await;
    if fed.is_ok() {
        // End of input: every window closes.
        for handle in &handles {
            handle.watermark(i64::MAX)?;
        }
    }
    db.shutdown().await?;
    let mut outputs = Vec::new();
    for name in &streams {
        outputs.push((
            name.clone(),
            db.stream_schema(name)?,
            db.retained_output(name)?,
        ));
    }
    fed?;
    if let Some(error) = db.errors().into_iter().next() {
        return Err(error);
    }
    for (name, schema, batches) in outputs {
        write_csv(&args.output.join(format!("{name}.csv")), &batches, &schema)?;
    }
    for (i, query) in queries.into_iter().enumerate() {
        if let ExecuteResult::Rows(batches) = db.execute_statement(query).await? {
            let schema = batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(laminar_db::arrow::datatypes::Schema::empty()));
            write_csv(
                &args.output.join(format!("query_{}.csv", i + 1)),
                &batches,
                &schema,
            )?;
        }
    }
    let metrics = db.metrics();
    for stream in &metrics.streams {
        eprintln!(
            "{}: {} rows in, {} rows out, {} late rows dropped",
            stream.name, stream.rows_in, stream.rows_out, stream.late_rows
        );
    }
    Ok(())
}
