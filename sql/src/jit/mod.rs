//! The Cranelift JIT: hot expressions compiled into native kernels.
//!
//! - [`ir`]: lowers a DataFusion `PhysicalExpr` into a typed tree, or
//!   refuses a node the compiler does not support (that part then stays
//!   interpreted; never an error).
//! - [`codegen`]: emits one native loop per expression over Arrow buffers
//!   (values and validity bitmaps), with SQL's three-valued logic.
//! - [`expr`]: [`CompiledExpr`], the `PhysicalExpr` operators run: the
//!   interpreted expression until the kernel is ready, the kernel after.
//!
//! The planner calls [`compile_tree`] on every expression it hands to an
//! operator (filters, projections, aggregate arguments, join and window
//! inputs): each largest supported subtree that computes something is
//! replaced by a `CompiledExpr`. In [`JitMode::Adaptive`] (the default)
//! a background thread compiles while the query already runs
//! interpreted; each shard switches to the kernel at its next batch.

#[cfg(feature = "jit")]
mod codegen;
#[cfg(not(feature = "jit"))]
#[allow(dead_code)]
mod codegen {
    //! Built without the `jit` feature: nothing compiles.
    use super::ir::Program;

    #[repr(C)]
    pub(crate) struct InputDesc {
        pub values: *const u8,
        pub valid: *const u8,
        pub values_bit_offset: u64,
        pub valid_bit_offset: u64,
        pub valid_mask: u64,
        pub data: *const u8,
    }

    #[derive(Debug)]
    pub(crate) struct Kernel {
        pub function: unsafe extern "C" fn(*const InputDesc, u64, *mut u8, *mut u8) -> u8,
    }

    #[derive(Debug)]
    pub(crate) struct Kernels {
        pub general: Kernel,
        pub dense: Kernel,
        pub dense_writes_validity: bool,
    }

    pub(crate) fn compile(_program: &Program) -> Result<Kernels, String> {
        Err("built without the `jit` feature".to_string())
    }
}
#[cfg(feature = "jit")]
mod fused_codegen;
#[cfg(not(feature = "jit"))]
#[allow(dead_code)]
mod fused_codegen {
    //! Built without the `jit` feature: nothing compiles.
    use super::codegen::InputDesc;
    use super::fused::FusedProgram;

    #[derive(Debug)]
    pub(crate) struct FusedKernel {
        pub function: unsafe extern "C" fn(
            *const InputDesc,
            u64,
            *const u8,
            u64,
            *const u64,
            *const *mut u64,
        ),
    }

    #[derive(Debug)]
    pub(crate) struct LookupKernel {
        pub function: unsafe extern "C" fn(
            *const InputDesc,
            u64,
            *const u8,
            u64,
            *mut laminar_operators::fused_lookup::GroupLookup,
            u64,
        ) -> u64,
    }

    #[derive(Debug)]
    pub(crate) struct LookupKernels {
        pub general: LookupKernel,
        pub dense: LookupKernel,
    }

    #[derive(Debug)]
    pub(crate) struct FusedKernels {
        pub general: FusedKernel,
        pub dense: FusedKernel,
        pub lookup: Option<LookupKernels>,
    }

    pub(crate) fn compile_fused(_program: &FusedProgram) -> Result<FusedKernels, String> {
        Err("built without the `jit` feature".to_string())
    }
}
// Without the `jit` feature the compiler's input is built but never read.
#[cfg_attr(not(feature = "jit"), allow(dead_code))]
mod expr;
#[cfg_attr(not(feature = "jit"), allow(dead_code))]
mod fused;
#[cfg_attr(not(feature = "jit"), allow(dead_code))]
mod ir;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use arrow::datatypes::Schema;
use datafusion::physical_expr::PhysicalExpr;

use expr::Outcome;
pub use expr::{CompiledExpr, CompiledSlot};
pub use fused::{fused_update, FusedInput, FusedLookup};

/// When expressions are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitMode {
    /// Everything runs interpreted.
    Off,
    /// Queries start interpreted; kernels compile on a background thread
    /// and each shard switches to them at a batch boundary.
    Adaptive,
    /// Kernels compile while the query is planned (`CREATE STREAM` waits
    /// for them): the first batch already runs compiled. For tests and
    /// benchmarks.
    Eager,
}

const UNSET: u8 = u8::MAX;
static MODE: AtomicU8 = AtomicU8::new(UNSET);

fn encode(mode: JitMode) -> u8 {
    mode as u8
}

/// The mode queries are planned with: set by [`set_mode`], else the
/// `LAMINARDB_JIT` environment variable (`off`, `adaptive`, `eager`),
/// else `Adaptive` (`Off` when built without the `jit` feature).
pub fn mode() -> JitMode {
    if !cfg!(feature = "jit") {
        return JitMode::Off;
    }
    let mut raw = MODE.load(Ordering::Relaxed);
    if raw == UNSET {
        let from_env = match std::env::var("LAMINARDB_JIT").as_deref().map(str::trim) {
            Ok("off") | Ok("0") | Ok("false") => JitMode::Off,
            Ok("eager") => JitMode::Eager,
            Ok("adaptive") | Ok("") | Err(_) => JitMode::Adaptive,
            Ok(other) => {
                log::warn!("LAMINARDB_JIT={other} is not off, adaptive or eager; using adaptive");
                JitMode::Adaptive
            }
        };
        raw = encode(from_env);
        let _ = MODE.compare_exchange(UNSET, raw, Ordering::Relaxed, Ordering::Relaxed);
        raw = MODE.load(Ordering::Relaxed);
    }
    match raw {
        0 => JitMode::Off,
        2 => JitMode::Eager,
        _ => JitMode::Adaptive,
    }
}

/// Sets the mode for queries planned from now on (process-wide).
pub fn set_mode(mode: JitMode) {
    MODE.store(encode(mode), Ordering::Relaxed);
}

/// Work for the background compiler.
enum Job {
    Expr(Arc<CompiledSlot>),
    Fused(Arc<fused::FusedSlot>),
}

/// Jobs handed to the background compiler and not finished yet, and the
/// condition [`wait_for_compiles`] waits on.
static PENDING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

fn add_pending(delta: isize) {
    let (count, finished) = &PENDING;
    let mut count = count
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *count = count.saturating_add_signed(delta);
    if *count == 0 {
        finished.notify_all();
    }
}

/// Takes a finished job off the pending count when dropped.
struct PendingDone;

impl Drop for PendingDone {
    fn drop(&mut self) {
        add_pending(-1);
    }
}

/// Waits until every kernel queued so far, by any database of the process
/// (there is one compiler thread), is compiled or has failed, at most
/// `limit`; returns whether none is left. Starting a pipeline calls
/// this, so that streams created before the start run compiled from their
/// first batch, rather than interpreted while the compiler thread takes a
/// core from them.
pub fn wait_for_compiles(limit: std::time::Duration) -> bool {
    let (count, finished) = &PENDING;
    let count = count
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (count, _) = finished
        .wait_timeout_while(count, limit, |pending| *pending > 0)
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *count == 0
}

/// Hands `job` to the background compiler; if it is gone, the job fails
/// (its expression stays interpreted).
fn submit(job: Job) {
    add_pending(1);
    let unsent = match compiler().lock() {
        Ok(sender) => sender.send(job).err().map(|e| e.0),
        Err(_) => Some(job),
    };
    if unsent.is_some() {
        add_pending(-1);
    }
    let gone = "the compiler thread is gone".to_string();
    match unsent {
        None => {}
        Some(Job::Expr(slot)) => {
            let _ = slot.outcome.set(Outcome::Failed(gone));
        }
        Some(Job::Fused(slot)) => {
            let _ = slot.outcome.set(Err(gone));
        }
    }
}

/// The background compiler: one thread, started on first use.
fn compiler() -> &'static Mutex<Sender<Job>> {
    static COMPILER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    COMPILER.get_or_init(|| {
        let (sender, receiver) = channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("laminar-jit".to_string())
            .spawn(move || {
                while let Ok(job) = receiver.recv() {
                    // Counted done even if compiling panics (the thread
                    // then ends): `start` must not wait for it forever.
                    let _done = PendingDone;
                    match job {
                        Job::Expr(slot) => compile_slot(&slot),
                        Job::Fused(slot) => slot.compile(),
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the JIT compiler thread ({e}); expressions stay interpreted");
        }
        Mutex::new(sender)
    })
}

fn compile_slot(slot: &CompiledSlot) {
    let started = std::time::Instant::now();
    let outcome = match codegen::compile(&slot.program) {
        Ok(kernel) => {
            log::debug!("JIT: compiled a kernel in {:?}", started.elapsed());
            Outcome::Ready(Box::new(kernel))
        }
        Err(e) => {
            log::warn!(
                "JIT: cannot compile {:?}: {e}; it stays interpreted",
                slot.program.root
            );
            Outcome::Failed(e)
        }
    };
    let _ = slot.outcome.set(outcome);
}

/// Replaces each largest compilable subtree of `expr` (over `schema`) that
/// computes something by a [`CompiledExpr`], which `compiled` also
/// collects (for `EXPLAIN`). Returns `expr` itself in [`JitMode::Off`].
pub fn compile_tree(
    expr: Arc<dyn PhysicalExpr>,
    schema: &Schema,
    compiled: &mut Vec<Arc<CompiledExpr>>,
) -> Arc<dyn PhysicalExpr> {
    let mode = mode();
    if mode == JitMode::Off {
        return expr;
    }
    wrap(expr, schema, mode, compiled)
}

fn wrap(
    expr: Arc<dyn PhysicalExpr>,
    schema: &Schema,
    mode: JitMode,
    compiled: &mut Vec<Arc<CompiledExpr>>,
) -> Arc<dyn PhysicalExpr> {
    if expr.children().is_empty() || expr.is::<CompiledExpr>() {
        // A column or literal: nothing to compute.
        return expr;
    }
    if let Some(program) = ir::lower(&expr, schema) {
        let slot = Arc::new(CompiledSlot {
            large_batches: program.wins_on_large_batches(),
            program,
            outcome: OnceLock::new(),
        });
        match mode {
            JitMode::Eager => compile_slot(&slot),
            _ => submit(Job::Expr(Arc::clone(&slot))),
        }
        let wrapped = Arc::new(CompiledExpr::new(expr, slot));
        compiled.push(Arc::clone(&wrapped));
        return wrapped;
    }
    let children: Vec<Arc<dyn PhysicalExpr>> = expr
        .children()
        .into_iter()
        .map(|child| wrap(Arc::clone(child), schema, mode, compiled))
        .collect();
    let changed = children
        .iter()
        .zip(expr.children())
        .any(|(new, old)| !Arc::ptr_eq(new, old));
    if !changed {
        return expr;
    }
    match Arc::clone(&expr).with_new_children(children) {
        Ok(rebuilt) => rebuilt,
        Err(_) => expr,
    }
}

/// Lines for `EXPLAIN`: each compiled expression and its state.
pub fn explain(compiled: &[Arc<CompiledExpr>]) -> String {
    if compiled.is_empty() {
        return "JIT: nothing compiled (no compilable expression, or LAMINARDB_JIT=off)"
            .to_string();
    }
    let mut text = String::from("JIT:");
    for expr in compiled {
        text.push_str(&format!("\n  {}: {}", expr.state(), expr.inner()));
    }
    text
}

#[cfg(all(test, feature = "jit"))]
mod fused_lookup_tests;
#[cfg(all(test, feature = "jit"))]
mod fused_tests;
#[cfg(test)]
mod tests;
