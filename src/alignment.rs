//! Watermark alignment groups: sources in one group may not run ahead of
//! each other by more than a bound in event time.
//!
//! Each source handle of a grouped source publishes its watermark (an
//! atomic) and when it last pushed. Before a push that would move the
//! handle's watermark past `slowest other source + max_drift`, the pushing
//! thread waits (with `Backpressure::Block`) until the others catch up, or
//! fails with `LDB-2002` (`Backpressure::Error`). A source's position is
//! the minimum over its handles; a source that has not pushed yet holds
//! the group at its start, and with an `idle_timeout` a source (or handle)
//! silent that long stops holding it back. A handle's first batch is never
//! held (it establishes where the handle is; otherwise two sources starting
//! together would wait on each other). This all happens on the pushing
//! threads; shards never see it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use laminar_runtime::{Error, ErrorCode, Result};

use crate::Backpressure;

/// One source handle in a group.
pub(crate) struct Member {
    source: usize,
    watermark_ms: AtomicI64,
    /// While the handle waits: the watermark it waits to move to. Others
    /// measure against it, so two handles that each want to jump ahead do
    /// not wait on each other's old position forever.
    waiting_for_ms: AtomicI64,
    /// Microseconds since the group's start when the handle last pushed.
    last_active_us: AtomicU64,
}

/// A source of the group.
struct GroupSource {
    source: usize,
    name: String,
    idle_timeout: Option<Duration>,
}

/// An alignment group.
pub(crate) struct AlignmentGroup {
    pub name: String,
    max_drift_ms: i64,
    sources: Vec<GroupSource>,
    members: Mutex<Vec<Weak<Member>>>,
    started: Instant,
    /// Woken whenever a member's watermark moves.
    moved: (Mutex<()>, Condvar),
}

/// How long a waiting pusher sleeps before looking again (idle timeouts
/// pass without anyone pushing).
const RECHECK: Duration = Duration::from_millis(5);

impl AlignmentGroup {
    pub fn new(name: String, max_drift_ms: i64) -> Self {
        Self {
            name,
            max_drift_ms,
            sources: Vec::new(),
            members: Mutex::new(Vec::new()),
            started: Instant::now(),
            moved: (Mutex::new(()), Condvar::new()),
        }
    }

    pub fn add_source(&mut self, source: usize, name: String, idle_timeout: Option<Duration>) {
        self.sources.push(GroupSource {
            source,
            name,
            idle_timeout,
        });
    }

    /// Registers a handle of `source`.
    pub fn join(&self, source: usize) -> Arc<Member> {
        let member = Arc::new(Member {
            source,
            watermark_ms: AtomicI64::new(i64::MIN),
            waiting_for_ms: AtomicI64::new(i64::MIN),
            last_active_us: AtomicU64::new(self.now_us()),
        });
        if let Ok(mut members) = self.members.lock() {
            members.retain(|m| m.strong_count() > 0);
            members.push(Arc::downgrade(&member));
        }
        member
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Records a handle's new watermark (and that it is active) and wakes
    /// waiting pushers.
    pub fn publish(&self, member: &Member, watermark_ms: i64) {
        member
            .last_active_us
            .store(self.now_us(), Ordering::Relaxed);
        let before = member
            .watermark_ms
            .fetch_max(watermark_ms, Ordering::AcqRel);
        if watermark_ms > before {
            let _guard = self.moved.0.lock();
            self.moved.1.notify_all();
        }
    }

    /// The slowest other source's position, with the source it is, or
    /// `None` when no other source holds the group back.
    fn floor(&self, me: &Member) -> Option<(i64, &str)> {
        let members: Vec<Arc<Member>> = self
            .members
            .lock()
            .map(|m| m.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        let now_us = self.now_us();
        let mut floor: Option<(i64, &str)> = None;
        for source in self.sources.iter().filter(|s| s.source != me.source) {
            let idle = |last_us: u64| {
                source
                    .idle_timeout
                    .is_some_and(|t| now_us.saturating_sub(last_us) >= t.as_micros() as u64)
            };
            let handles: Vec<&Arc<Member>> = members
                .iter()
                .filter(|m| m.source == source.source)
                .collect();
            let position = if handles.is_empty() {
                // Not started: holds the group at its start until idle.
                (!idle(0)).then_some(i64::MIN)
            } else {
                handles
                    .iter()
                    .filter(|m| !idle(m.last_active_us.load(Ordering::Relaxed)))
                    .map(|m| {
                        m.watermark_ms
                            .load(Ordering::Acquire)
                            .max(m.waiting_for_ms.load(Ordering::Acquire))
                    })
                    .min()
            };
            if let Some(position) = position {
                if floor.is_none_or(|(f, _)| position < f) {
                    floor = Some((position, source.name.as_str()));
                }
            }
        }
        floor
    }

    /// Waits until a handle may move its watermark to `candidate_ms`.
    pub fn wait_until_aligned(
        &self,
        member: &Member,
        source_name: &str,
        candidate_ms: i64,
        policy: Backpressure,
        still_running: impl Fn() -> Result<()>,
    ) -> Result<()> {
        let result = self.wait(member, source_name, candidate_ms, policy, still_running);
        member.waiting_for_ms.store(i64::MIN, Ordering::Release);
        result
    }

    fn wait(
        &self,
        member: &Member,
        source_name: &str,
        candidate_ms: i64,
        policy: Backpressure,
        still_running: impl Fn() -> Result<()>,
    ) -> Result<()> {
        loop {
            still_running()?;
            let Some((floor, slowest)) = self.floor(member) else {
                return Ok(());
            };
            if candidate_ms <= floor.saturating_add(self.max_drift_ms) {
                return Ok(());
            }
            if policy == Backpressure::Error {
                return Err(Error::new(
                    ErrorCode::Backpressure,
                    format!(
                        "source '{source_name}' would run {} ms ahead of '{slowest}' in alignment group '{}' (max drift {} ms)",
                        if floor == i64::MIN { "arbitrarily far".to_string() } else { (candidate_ms - floor).to_string() },
                        self.name,
                        self.max_drift_ms
                    ),
                )
                .with_hint(format!("push '{slowest}' first, or retry later")));
            }
            // Marks the waiting handle active, so that waiting is not
            // mistaken for silence, and says where it is going.
            member
                .last_active_us
                .store(self.now_us(), Ordering::Relaxed);
            if member.waiting_for_ms.swap(candidate_ms, Ordering::AcqRel) != candidate_ms {
                let _guard = self.moved.0.lock();
                self.moved.1.notify_all();
            }
            let guard =
                self.moved.0.lock().map_err(|_| {
                    Error::new(ErrorCode::Execution, "alignment group lock poisoned")
                })?;
            let _ = self.moved.1.wait_timeout(guard, RECHECK);
        }
    }
}
