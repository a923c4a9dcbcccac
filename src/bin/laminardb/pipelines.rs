//! The daemon's pipelines: each one its own engine (a [`LaminarDB`] with
//! its own shards, WAL and checkpoints), so that one can be created,
//! replaced or dropped while the others keep running untouched.
//!
//! - Pipelines from `laminardb.toml` start with the server; SIGHUP rereads
//!   the file ([`Pipelines::reload`]): an unchanged pipeline keeps
//!   running, a changed one is checked, then stopped (drained, with a
//!   final checkpoint) and started from its new SQL, a removed one is
//!   stopped, a new one is started.
//! - Pipelines created through `POST /pipelines/{name}` are kept in the
//!   storage directory (`api/<name>.sql`) and start again with the server;
//!   `DELETE /pipelines/{name}` stops one and deletes its data.
//! - Object names (sources, streams, views, tables) are unique across
//!   pipelines, so a statement from `psql` or `POST /query` goes to the
//!   pipeline that owns the objects it names ([`Pipelines::route`]).
//!
//! Storage layout, under `[storage] dir`: `pipelines/<name>/` is each
//! pipeline's engine directory; a pipeline whose SQL changed leaves its old
//! directory as `pipelines/<name>.replaced-<unix ms>/` (its state belongs
//! to the old SQL; kept for inspection, deleted by the operator).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use laminar_db::arrow::array::RecordBatch;
use laminar_db::arrow::datatypes::SchemaRef;
use laminar_db::{
    Backpressure, Description, Durability, Error, ErrorCode, ExecuteResult, LaminarDB, Result,
    ScalarValue, SourceHandle, Statement, Subscription,
};

use crate::config::PipelineConfig;

/// Engine settings every pipeline shares (from the config at start).
pub struct Settings {
    pub shards: Option<usize>,
    pub cpus: Option<Vec<usize>>,
    pub storage: Option<(PathBuf, Durability)>,
    pub checkpoint_interval: Option<Duration>,
}

/// Where a pipeline's definition lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `[[pipeline]]` of the config file.
    Config,
    /// `POST /pipelines/{name}` or `CREATE PIPELINE`.
    Api,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
        }
    }
}

/// A running pipeline.
pub struct Pipeline {
    pub name: String,
    pub sql: String,
    pub shards: Option<usize>,
    pub cpus: Option<Vec<usize>>,
    pub origin: Origin,
    pub db: LaminarDB,
    /// One handle per source, shared by the requests that push to it.
    pub handles: HashMap<String, Mutex<SourceHandle>>,
    pub schemas: HashMap<String, SchemaRef>,
    /// Its sources, streams, views and tables.
    pub objects: Vec<String>,
}

/// What [`Pipelines::reload`] did.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub started: Vec<String>,
    pub replaced: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
    /// Pipelines left as they were, with the reason.
    pub failed: Vec<(String, Error)>,
}

/// Where a statement runs.
enum Route {
    /// The pipeline owning the objects it names.
    One(Arc<Pipeline>),
    /// It names no pipeline's object (`SELECT 1`, or an unknown name whose
    /// error the empty engine reports).
    Nowhere,
    /// `SHOW ...`: every pipeline's answer, together.
    Every,
}

pub struct Pipelines {
    settings: Settings,
    running: RwLock<BTreeMap<String, Arc<Pipeline>>>,
    /// Runs statements that name no pipeline's objects.
    empty: LaminarDB,
    /// Creating, dropping and reloading happen one at a time.
    changing: tokio::sync::Mutex<()>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl Pipelines {
    pub fn new(settings: Settings) -> Result<Self> {
        if let Some((dir, _)) = &settings.storage {
            check_layout(dir)?;
        }
        Ok(Self {
            settings,
            running: RwLock::new(BTreeMap::new()),
            empty: LaminarDB::builder().shards(1).build()?,
            changing: tokio::sync::Mutex::new(()),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// Starts the config's pipelines and those created through the API
    /// before. The first failure stops the server: serving part of what it
    /// was asked to would hide it.
    pub async fn start(&self, configured: &[PipelineConfig]) -> Result<()> {
        let _changing = self.changing.lock().await;
        for pipeline in configured {
            self.launch(pipeline, Origin::Config).await?;
        }
        for pipeline in self.stored_api_pipelines()? {
            if configured.iter().any(|p| p.name == pipeline.name) {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "pipeline '{}' is in the config and was also created through the API",
                        pipeline.name
                    ),
                )
                .with_hint(
                    "rename one: drop the API one (DELETE /pipelines/{name}) or edit the config",
                ));
            }
            self.launch(&pipeline, Origin::Api).await?;
        }
        Ok(())
    }

    /// Every running pipeline, by name.
    pub fn all(&self) -> Vec<Arc<Pipeline>> {
        self.read().values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Pipeline>> {
        self.read().get(name).cloned()
    }

    /// The running pipelines. The map is only swapped whole entries under
    /// the lock, so a panic elsewhere while it was held left it consistent:
    /// a poisoned lock is read through, not treated as empty.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Pipeline>>> {
        self.running.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Pipeline>>> {
        self.running.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The pipeline that has an object of that name.
    pub fn owner(&self, object: &str) -> Option<Arc<Pipeline>> {
        let running = self.read();
        running
            .values()
            .find(|p| p.objects.iter().any(|o| o == object))
            .or_else(|| {
                running
                    .values()
                    .find(|p| p.objects.iter().any(|o| o.eq_ignore_ascii_case(object)))
            })
            .cloned()
    }

    /// Waits until every running pipeline has replayed its storage.
    pub async fn wait_recovered(&self) -> Result<()> {
        for pipeline in self.all() {
            pipeline
                .db
                .wait_recovered()
                .await
                .map_err(|e| prefixed(&pipeline.name, e))?;
        }
        Ok(())
    }

    /// `POST /pipelines/{name}`: starts a pipeline from `sql` and keeps its
    /// definition, so it starts again with the server.
    pub async fn create(&self, name: &str, sql: &str) -> Result<Arc<Pipeline>> {
        let statements = crate::config::parse_pipeline(name, sql)?;
        let _changing = self.changing.lock().await;
        if self.get(name).is_some() {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("pipeline '{name}' already exists"),
            )
            .with_hint("drop it first (DELETE /pipelines/{name})"));
        }
        let config = PipelineConfig {
            name: name.to_string(),
            sql: sql.to_string(),
            statements,
            shards: None,
            cpus: None,
        };
        // A directory left by an earlier pipeline of that name would be
        // replayed into other SQL.
        self.set_aside(name)?;
        let pipeline = self.launch(&config, Origin::Api).await?;
        if let Some(path) = self.api_file(name) {
            if let Err(e) = write_definition(&path, sql) {
                self.remove(name);
                stop(&pipeline, false).await;
                return Err(e);
            }
        }
        Ok(pipeline)
    }

    /// `DELETE /pipelines/{name}`: stops a pipeline created through the API
    /// and deletes its data.
    pub async fn drop_pipeline(&self, name: &str) -> Result<()> {
        let _changing = self.changing.lock().await;
        let Some(pipeline) = self.get(name) else {
            return Err(Error::new(
                ErrorCode::UnknownObject,
                format!("unknown pipeline '{name}'"),
            ));
        };
        if pipeline.origin == Origin::Config {
            return Err(Error::new(
                ErrorCode::InUse,
                format!("pipeline '{name}' is defined in the config file"),
            )
            .with_hint("remove its [[pipeline]] section and send SIGHUP"));
        }
        self.remove(name);
        stop(&pipeline, false).await;
        drop(pipeline);
        if let Some(path) = self.api_file(name) {
            remove_file(&path)?;
        }
        if let Some(dir) = self.storage_dir(name) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::new(
                        ErrorCode::Io,
                        format!("cannot delete {}: {e}", dir.display()),
                    ))
                }
            }
        }
        Ok(())
    }

    /// SIGHUP: brings the config's pipelines in line with `configured`.
    /// A pipeline whose new SQL fails its check keeps running as it was.
    pub async fn reload(&self, configured: &[PipelineConfig]) -> Reloaded {
        let _changing = self.changing.lock().await;
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let mut done = Reloaded::default();
        let current = self.all();
        for old in current.iter().filter(|p| p.origin == Origin::Config) {
            if !configured.iter().any(|p| p.name == old.name) {
                self.remove(&old.name);
                stop(old, self.checkpoints()).await;
                done.stopped.push(old.name.clone());
            }
        }
        for new in configured {
            let old = self.get(&new.name);
            let result = match &old {
                Some(old) if old.origin == Origin::Api => Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!("pipeline '{}' was created through the API", new.name),
                )
                .with_hint("drop it (DELETE /pipelines/{name}) or rename the config's")),
                Some(old)
                    if old.sql == new.sql && old.shards == new.shards && old.cpus == new.cpus =>
                {
                    done.unchanged.push(new.name.clone());
                    continue;
                }
                Some(old) => self.replace(old, new).await.map(|()| &mut done.replaced),
                None => self
                    .launch(new, Origin::Config)
                    .await
                    .map(|_| &mut done.started),
            };
            match result {
                Ok(list) => list.push(new.name.clone()),
                Err(e) => {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    done.failed.push((new.name.clone(), e));
                }
            }
        }
        done
    }

    /// Swaps a running pipeline for its new SQL, once that SQL has been
    /// checked on an engine of its own (the old one keeps running if not).
    async fn replace(&self, old: &Arc<Pipeline>, new: &PipelineConfig) -> Result<()> {
        let mut check =
            LaminarDB::builder().shards(new.shards.or(self.settings.shards).unwrap_or(1));
        if let Some(cpus) = new.cpus.as_ref().or(self.settings.cpus.as_ref()) {
            check = check.cpus(cpus.iter().copied());
        }
        let check = check.build().map_err(|e| prefixed(&new.name, e))?;
        for statement in &new.statements {
            check
                .execute_statement(statement.clone())
                .await
                .map_err(|e| prefixed(&new.name, e))?;
        }
        self.check_names(&new.name, &objects(&check))?;
        drop(check);
        self.remove(&old.name);
        stop(old, self.checkpoints()).await;
        self.set_aside(&new.name)?;
        self.launch(new, Origin::Config).await.map(|_| ())
    }

    /// Builds, fills and starts a pipeline's engine and adds it.
    async fn launch(&self, config: &PipelineConfig, origin: Origin) -> Result<Arc<Pipeline>> {
        let name = &config.name;
        // A full ring answers 429 instead of holding a request (and its
        // source's handle) until the shards catch up.
        let mut builder = LaminarDB::builder().backpressure(Backpressure::Error);
        if let Some(shards) = config.shards.or(self.settings.shards) {
            builder = builder.shards(shards);
        }
        if let Some(cpus) = config.cpus.as_ref().or(self.settings.cpus.as_ref()) {
            builder = builder.cpus(cpus.iter().copied());
        }
        if let (Some(dir), Some((_, durability))) = (self.storage_dir(name), &self.settings.storage)
        {
            builder = builder.storage_dir(dir).durability(*durability);
        }
        if let Some(interval) = self.settings.checkpoint_interval {
            builder = builder.checkpoint_interval(interval);
        }
        let db = builder.build().map_err(|e| prefixed(name, e))?;
        for statement in &config.statements {
            db.execute_statement(statement.clone())
                .await
                .map_err(|e| prefixed(name, e))?;
        }
        let objects = objects(&db);
        self.check_names(name, &objects)?;
        let mut handles = HashMap::new();
        let mut schemas = HashMap::new();
        for source in db.sources() {
            let handle = db.source_untyped(&source)?;
            schemas.insert(source.clone(), handle.schema());
            handles.insert(source, Mutex::new(handle));
        }
        db.start().await.map_err(|e| prefixed(name, e))?;
        eprintln!(
            "laminardb: pipeline '{name}' running ({} shard(s); {})",
            db.placement().len(),
            objects.join(", ")
        );
        let pipeline = Arc::new(Pipeline {
            name: name.clone(),
            sql: config.sql.clone(),
            shards: config.shards,
            cpus: config.cpus.clone(),
            origin,
            db,
            handles,
            schemas,
            objects,
        });
        self.write().insert(name.clone(), Arc::clone(&pipeline));
        Ok(pipeline)
    }

    /// Refuses object names another pipeline already has.
    fn check_names(&self, pipeline: &str, names: &[String]) -> Result<()> {
        for other in self.all().iter().filter(|p| p.name != pipeline) {
            if let Some(taken) = names
                .iter()
                .find(|n| other.objects.iter().any(|o| o.eq_ignore_ascii_case(n)))
            {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "pipeline '{pipeline}': '{taken}' is already an object of pipeline '{}'",
                        other.name
                    ),
                )
                .with_hint("object names are unique across pipelines"));
            }
        }
        Ok(())
    }

    /// Whether pipelines take checkpoints (and so a last one when stopped).
    fn checkpoints(&self) -> bool {
        self.settings.checkpoint_interval.is_some()
    }

    fn remove(&self, name: &str) {
        self.write().remove(name);
    }

    fn storage_dir(&self, name: &str) -> Option<PathBuf> {
        let (dir, _) = self.settings.storage.as_ref()?;
        Some(dir.join("pipelines").join(name))
    }

    fn api_file(&self, name: &str) -> Option<PathBuf> {
        let (dir, _) = self.settings.storage.as_ref()?;
        Some(dir.join("api").join(format!("{name}.sql")))
    }

    /// Moves a pipeline's old storage out of the way of new SQL.
    fn set_aside(&self, name: &str) -> Result<()> {
        let Some(dir) = self.storage_dir(name) else {
            return Ok(());
        };
        if !dir.exists() {
            return Ok(());
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let aside = dir.with_file_name(format!("{name}.replaced-{now_ms}"));
        std::fs::rename(&dir, &aside).map_err(|e| {
            Error::new(
                ErrorCode::Io,
                format!("cannot move {} aside: {e}", dir.display()),
            )
        })?;
        eprintln!(
            "laminardb: pipeline '{name}': the storage of its earlier SQL is now {}",
            aside.display()
        );
        Ok(())
    }

    /// The definitions `POST /pipelines` kept, by name.
    fn stored_api_pipelines(&self) -> Result<Vec<PipelineConfig>> {
        let Some((dir, _)) = &self.settings.storage else {
            return Ok(Vec::new());
        };
        let dir = dir.join("api");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::new(
                    ErrorCode::Io,
                    format!("cannot read {}: {e}", dir.display()),
                ))
            }
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".sql"))
            else {
                continue;
            };
            let sql = std::fs::read_to_string(&path).map_err(|e| {
                Error::new(
                    ErrorCode::Io,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let statements = crate::config::parse_pipeline(name, &sql)?;
            found.push(PipelineConfig {
                name: name.to_string(),
                sql,
                statements,
                shards: None,
                cpus: None,
            });
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Stops every pipeline (final checkpoints where configured).
    pub async fn shutdown(&self) {
        let _changing = self.changing.lock().await;
        for pipeline in self.all() {
            self.remove(&pipeline.name);
            stop(&pipeline, self.checkpoints()).await;
        }
    }

    /// Which engine runs `sql`. A statement that does not parse goes to
    /// the empty engine, which reports the syntax error.
    fn route(&self, sql: &str) -> Result<Route> {
        let Ok(statements) = LaminarDB::parse(sql) else {
            return Ok(Route::Nowhere);
        };
        if let [Statement::Show(_)] = statements.as_slice() {
            return Ok(Route::Every);
        }
        let mut names = Vec::new();
        for statement in &statements {
            match statement {
                Statement::CreateSource(_)
                | Statement::CreateStream(_)
                | Statement::CreateTable { .. }
                | Statement::CreateLookupTable { .. } => {
                    return Err(Error::new(
                        ErrorCode::AlreadyStarted,
                        "objects are created in pipelines, not by single statements",
                    )
                    .with_hint(
                        "create a pipeline (POST /pipelines/{name} with the SQL as body), \
                         or add a [[pipeline]] to the config and send SIGHUP",
                    ))
                }
                Statement::Explain { name, .. }
                | Statement::Describe(name)
                | Statement::ShowCreate(name)
                | Statement::Drop { name, .. } => names.push(name.clone()),
                Statement::Insert { target, query, .. } => {
                    names.push(target.clone());
                    names.extend(relations(query));
                }
                Statement::Query(text) => names.extend(relations(text)),
                Statement::Show(_) => {}
            }
        }
        let mut owner: Option<Arc<Pipeline>> = None;
        for name in &names {
            let Some(found) = self.owner(name) else {
                continue;
            };
            match &owner {
                Some(first) if first.name != found.name => {
                    return Err(Error::new(
                        ErrorCode::Unsupported,
                        format!(
                            "the statement reads objects of two pipelines ('{}' and '{}')",
                            first.name, found.name
                        ),
                    )
                    .with_hint("a statement may use the objects of one pipeline"))
                }
                _ => owner = Some(found),
            }
        }
        Ok(owner.map_or(Route::Nowhere, Route::One))
    }

    pub async fn execute(&self, sql: &str) -> Result<Vec<ExecuteResult>> {
        self.execute_with_parameters(sql, &[]).await
    }

    /// Runs `sql` on the pipeline that owns what it names; `SHOW` lists
    /// what every pipeline has.
    pub async fn execute_with_parameters(
        &self,
        sql: &str,
        parameters: &[ScalarValue],
    ) -> Result<Vec<ExecuteResult>> {
        match self.route(sql)? {
            Route::One(pipeline) => pipeline.db.execute_with_parameters(sql, parameters).await,
            Route::Nowhere => self.empty.execute_with_parameters(sql, parameters).await,
            Route::Every => {
                let mut answers = self.empty.execute_with_parameters(sql, parameters).await?;
                for pipeline in self.all() {
                    for answer in pipeline.db.execute_with_parameters(sql, parameters).await? {
                        if let (ExecuteResult::Rows(rows), Some(ExecuteResult::Rows(all))) =
                            (answer, answers.first_mut())
                        {
                            all.extend(rows.into_iter().filter(|b| b.num_rows() > 0));
                        }
                    }
                }
                Ok(answers)
            }
        }
    }

    /// The parameters and result columns of `sql`, without running it.
    pub async fn describe_statement(&self, sql: &str) -> Result<Description> {
        match self.route(sql)? {
            Route::One(pipeline) => pipeline.db.describe_statement(sql).await,
            Route::Nowhere | Route::Every => self.empty.describe_statement(sql).await,
        }
    }

    pub fn subscribe(&self, stream: &str) -> Result<Subscription> {
        match self.owner(stream) {
            Some(pipeline) => pipeline.db.subscribe(stream),
            None => self.empty.subscribe(stream),
        }
    }

    pub fn stream_schema(&self, stream: &str) -> Result<SchemaRef> {
        match self.owner(stream) {
            Some(pipeline) => pipeline.db.stream_schema(stream),
            None => self.empty.stream_schema(stream),
        }
    }
}

/// Drains a pipeline's engine; with `checkpoint`, takes a last checkpoint
/// first, so its next start replays little.
async fn stop(pipeline: &Pipeline, checkpoint: bool) {
    let name = &pipeline.name;
    if checkpoint {
        match pipeline.db.checkpoint().await {
            Ok(info) => eprintln!(
                "laminardb: pipeline '{name}': final checkpoint {}",
                info.epoch
            ),
            Err(e) => eprintln!("laminardb: pipeline '{name}': final checkpoint failed: {e}"),
        }
    }
    match pipeline.db.shutdown().await {
        Ok(()) => eprintln!("laminardb: pipeline '{name}' stopped"),
        Err(e) => eprintln!("laminardb: pipeline '{name}': stopping failed: {e}"),
    }
}

/// A pipeline's sources, streams, views and tables.
pub fn objects(db: &LaminarDB) -> Vec<String> {
    let mut names = db.sources();
    names.extend(db.streams());
    names.extend(db.tables());
    names
}

/// The tables a query reads (CTE names excluded). A query DataFusion's
/// parser does not take (our dialect's ASOF JOIN, window table functions)
/// falls back to its words: a word that names another pipeline's object
/// then at worst makes the statement ask for one pipeline, never run on
/// the wrong one.
fn relations(sql: &str) -> Vec<String> {
    use datafusion::sql::parser::DFParser;
    use datafusion::sql::resolve::resolve_table_references;
    if let Ok(statements) = DFParser::parse_sql(sql) {
        let mut names = Vec::new();
        let mut resolved = true;
        for statement in &statements {
            match resolve_table_references(statement, true) {
                Ok((tables, _ctes)) => names.extend(tables.iter().map(|t| t.table().to_string())),
                Err(_) => resolved = false,
            }
        }
        if resolved {
            return names;
        }
    }
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn prefixed(pipeline: &str, e: Error) -> Error {
    if e.message().starts_with("pipeline '") {
        return e;
    }
    let mut error = Error::new(e.code(), format!("pipeline '{pipeline}': {}", e.message()));
    if let Some(hint) = e.hint() {
        error = error.with_hint(hint);
    }
    if let Some(context) = e.context() {
        error = error.with_context(context);
    }
    error
}

/// Refuses a storage directory written by a server that ran all pipelines
/// in one engine (before pipelines had their own).
fn check_layout(dir: &Path) -> Result<()> {
    if dir.join("PIPELINE").exists() {
        return Err(Error::new(
            ErrorCode::StorageMismatch,
            format!(
                "{} holds one engine for all pipelines (the layout before pipelines had their own)",
                dir.display()
            ),
        )
        .with_hint(
            "move its contents into pipelines/<name>/ when the config has one pipeline, \
             or start with a new directory (see docs/OPERATIONS.md, Upgrades)",
        ));
    }
    Ok(())
}

fn write_definition(path: &Path, sql: &str) -> Result<()> {
    let io = |e: std::io::Error| {
        Error::new(
            ErrorCode::Io,
            format!("cannot write {}: {e}", path.display()),
        )
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let partial = path.with_extension("sql.partial");
    std::fs::write(&partial, sql).map_err(io)?;
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::new(
            ErrorCode::Io,
            format!("cannot delete {}: {e}", path.display()),
        )),
    }
}

/// The daemon's own statements, for `psql` and `POST /query`.
#[derive(Debug, PartialEq, Eq)]
pub enum PipelineStatement {
    /// `CREATE PIPELINE name AS $$ sql $$` (or `AS 'sql'`): what
    /// `POST /pipelines/{name}` does.
    Create { name: String, sql: String },
    /// `DROP PIPELINE [IF EXISTS] name`: what `DELETE /pipelines/{name}`
    /// does.
    Drop { name: String, if_exists: bool },
    /// `SHOW PIPELINES`.
    Show,
}

/// Recognises a pipeline statement; `None` for any other statement.
pub fn parse_pipeline_statement(text: &str) -> Result<Option<PipelineStatement>> {
    let text = text.trim().trim_end_matches(';').trim_end();
    let words: Vec<&str> = text.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    let name = |w: &str| w.trim_matches('"').to_string();
    let syntax = |message: &str| {
        Error::new(ErrorCode::SqlSyntax, message.to_string()).with_hint(
            "CREATE PIPELINE name AS $$ CREATE SOURCE ...; CREATE STREAM ...; $$ | \
             DROP PIPELINE [IF EXISTS] name | SHOW PIPELINES",
        )
    };
    Ok(Some(match upper.as_slice() {
        ["SHOW", "PIPELINES"] => PipelineStatement::Show,
        ["DROP", "PIPELINE", "IF", "EXISTS", _] => PipelineStatement::Drop {
            name: name(words[4]),
            if_exists: true,
        },
        ["DROP", "PIPELINE", _] => PipelineStatement::Drop {
            name: name(words[2]),
            if_exists: false,
        },
        ["DROP", "PIPELINE", ..] => return Err(syntax("DROP PIPELINE takes one name")),
        ["CREATE", "PIPELINE", _, "AS", ..] => {
            // The body starts after the fourth word.
            let mut rest = text;
            for word in &words[..4] {
                let at = rest.find(word).map_or(rest.len(), |at| at + word.len());
                rest = &rest[at..];
            }
            PipelineStatement::Create {
                name: name(words[2]),
                sql: quoted_body(rest.trim())
                    .ok_or_else(|| syntax("the pipeline's SQL goes in $$ ... $$ or '...'"))?,
            }
        }
        ["CREATE", "PIPELINE", ..] => return Err(syntax("CREATE PIPELINE name AS $$ ... $$")),
        _ => return Ok(None),
    }))
}

/// The text of a dollar-quoted or single-quoted string that is all of
/// `text`.
fn quoted_body(text: &str) -> Option<String> {
    if let Some(tag_len) = crate::pg_cursor::dollar_tag(text) {
        let tag = &text[..tag_len];
        let body = text[tag_len..].strip_suffix(tag)?;
        return (!body.contains(tag)).then(|| body.to_string());
    }
    let body = text.strip_prefix('\'')?.strip_suffix('\'')?;
    // Inside, a quote is doubled.
    (!body.replace("''", "").contains('\'')).then(|| body.replace("''", "'"))
}

/// What a pipeline statement did.
pub enum PipelineAnswer {
    /// The command tag (`CREATE PIPELINE`, `DROP PIPELINE`).
    Done(&'static str),
    /// `SHOW PIPELINES`: one row per pipeline.
    Rows(RecordBatch),
}

impl Pipelines {
    pub async fn run_pipeline_statement(
        &self,
        statement: PipelineStatement,
    ) -> Result<PipelineAnswer> {
        match statement {
            PipelineStatement::Create { name, sql } => {
                self.create(&name, &sql).await?;
                Ok(PipelineAnswer::Done("CREATE PIPELINE"))
            }
            PipelineStatement::Drop { name, if_exists } => match self.drop_pipeline(&name).await {
                Ok(()) => Ok(PipelineAnswer::Done("DROP PIPELINE")),
                Err(e) if if_exists && e.code() == ErrorCode::UnknownObject => {
                    Ok(PipelineAnswer::Done("DROP PIPELINE"))
                }
                Err(e) => Err(e),
            },
            PipelineStatement::Show => Ok(PipelineAnswer::Rows(self.listing()?)),
        }
    }

    /// `SHOW PIPELINES`: name, origin, shards, and objects by kind.
    pub fn listing(&self) -> Result<RecordBatch> {
        use laminar_db::arrow::array::{ArrayRef, Int64Array, StringArray};
        let all = self.all();
        let text = |f: &dyn Fn(&Pipeline) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(all.iter().map(|p| f(p))))
        };
        RecordBatch::try_from_iter([
            ("name", text(&|p| p.name.clone())),
            ("origin", text(&|p| p.origin.as_str().to_string())),
            (
                "shards",
                Arc::new(Int64Array::from_iter_values(
                    all.iter().map(|p| p.db.placement().len() as i64),
                )) as ArrayRef,
            ),
            ("sources", text(&|p| p.db.sources().join(", "))),
            ("streams", text(&|p| p.db.streams().join(", "))),
            ("tables", text(&|p| p.db.tables().join(", "))),
        ])
        .map_err(|e| Error::new(ErrorCode::Execution, format!("SHOW PIPELINES: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_statements() {
        let parse = |text: &str| parse_pipeline_statement(text).unwrap();
        assert_eq!(parse("show pipelines;"), Some(PipelineStatement::Show));
        assert_eq!(
            parse("CREATE PIPELINE p AS $$ CREATE SOURCE s (a BIGINT); $$"),
            Some(PipelineStatement::Create {
                name: "p".into(),
                sql: " CREATE SOURCE s (a BIGINT); ".into()
            })
        );
        assert_eq!(
            parse("create pipeline \"p\" as $body$ x $$ y $body$"),
            Some(PipelineStatement::Create {
                name: "p".into(),
                sql: " x $$ y ".into()
            })
        );
        assert_eq!(
            parse("CREATE PIPELINE p AS 'CREATE SOURCE s (a VARCHAR DEFAULT ''x'')'"),
            Some(PipelineStatement::Create {
                name: "p".into(),
                sql: "CREATE SOURCE s (a VARCHAR DEFAULT 'x')".into()
            })
        );
        assert_eq!(
            parse("DROP PIPELINE IF EXISTS p"),
            Some(PipelineStatement::Drop {
                name: "p".into(),
                if_exists: true
            })
        );
        assert_eq!(parse("SELECT 1"), None);
        assert_eq!(parse("CREATE SOURCE pipeline (a BIGINT)"), None);
        for bad in [
            "CREATE PIPELINE p AS CREATE SOURCE s (a BIGINT)",
            "CREATE PIPELINE p AS $$ unterminated",
            "CREATE PIPELINE p AS 'a' 'b'",
            "CREATE PIPELINE p",
            "DROP PIPELINE a b",
        ] {
            let error = parse_pipeline_statement(bad).unwrap_err();
            assert_eq!(error.code(), ErrorCode::SqlSyntax, "{bad}");
        }
    }
}
