//! One Glommio executor per shard, pinned to the CPU its placement names.
//!
//! A shard's work is a single future that the caller builds on the shard's
//! own thread (it may hold `!Send` state: the shard owns its data). The
//! executor thread exits when that future completes; [`ShardThreads::join`]
//! waits for all of them.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::error::{Error, ErrorCode, Result};
use crate::placement::ShardPlacement;

/// A shard's main future, built on the shard's thread.
pub type ShardMain = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send + 'static>;

/// Executor settings shared by every shard.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// How long an idle executor spins before it sleeps in io_uring. Spinning
    /// trades CPU for wake-up latency: a sleeping executor needs an eventfd
    /// write (a syscall and a few microseconds) to wake.
    pub spin_before_park: Duration,
    /// Memory registered with io_uring per shard. Kept small: it counts
    /// against `RLIMIT_MEMLOCK`, and Glommio silently falls back to
    /// unregistered buffers when the limit is too low.
    pub io_memory_bytes: usize,
    /// Thread name prefix; threads are named `<prefix>-<shard>`.
    pub name_prefix: String,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            // Shards poll their own rings while recently busy (see
            // `LaminarDbBuilder::idle_spin`); the executor itself parks at once.
            spin_before_park: Duration::ZERO,
            io_memory_bytes: 512 * 1024,
            name_prefix: "laminar-shard".to_string(),
        }
    }
}

/// The running shard threads.
pub struct ShardThreads {
    handles: Vec<(usize, glommio::ExecutorJoinHandle<()>)>,
}

impl ShardThreads {
    /// Starts one executor per placement, each running `mains[i]`.
    pub fn spawn(
        placements: &[ShardPlacement],
        config: &ExecutorConfig,
        mains: Vec<ShardMain>,
    ) -> Result<Self> {
        assert_eq!(placements.len(), mains.len(), "one main future per shard");
        let mut handles = Vec::with_capacity(placements.len());
        for (placement, main) in placements.iter().zip(mains) {
            log::info!(
                "shard {} -> cpu {} (numa node {})",
                placement.shard,
                placement.cpu,
                placement.numa_node
            );
            let handle = LocalExecutorBuilder::new(Placement::Fixed(placement.cpu))
                .name(&format!("{}-{}", config.name_prefix, placement.shard))
                .spin_before_park(config.spin_before_park)
                .io_memory(config.io_memory_bytes)
                .spawn({
                    #[cfg(feature = "allocation-tracking")]
                    let shard = placement.shard;
                    move || {
                        #[cfg(feature = "allocation-tracking")]
                        crate::alloc_tracking::track_current_thread(shard);
                        main()
                    }
                })
                .map_err(|e| {
                    Error::new(
                        ErrorCode::RuntimeStart,
                        format!(
                            "cannot start shard {} on cpu {}: {e}",
                            placement.shard, placement.cpu
                        ),
                    )
                    .with_hint("check RLIMIT_MEMLOCK (ulimit -l) and that io_uring is enabled")
                })?;
            handles.push((placement.shard, handle));
        }
        Ok(Self { handles })
    }

    /// Waits for every shard thread to finish.
    pub fn join(self) -> Result<()> {
        let mut first_error = None;
        for (shard, handle) in self.handles {
            if let Err(e) = handle.join() {
                first_error.get_or_insert_with(|| {
                    Error::new(ErrorCode::Execution, format!("shard {shard} failed: {e}"))
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{discover_cpus, plan};
    use crate::spsc::ring;

    #[test]
    fn shards_run_pinned_and_talk_through_rings() {
        let placements = plan(Some(2), &discover_cpus().unwrap()).unwrap();
        let mut mains: Vec<ShardMain> = Vec::new();
        let mut outputs = Vec::new();
        for placement in &placements {
            let (mut tx, rx) = ring::<(usize, usize)>(4);
            outputs.push(rx);
            let shard = placement.shard;
            mains.push(Box::new(move || {
                Box::pin(async move {
                    for i in 0..100 {
                        tx.push((shard, i)).await.unwrap();
                    }
                })
            }));
        }
        let threads = ShardThreads::spawn(&placements, &ExecutorConfig::default(), mains).unwrap();
        for (shard, mut rx) in outputs.into_iter().enumerate() {
            let got: Vec<_> = futures::executor::block_on(async {
                let mut v = Vec::new();
                while let Some(x) = rx.pop().await {
                    v.push(x);
                }
                v
            });
            assert_eq!(got.len(), 100);
            assert!(got.iter().all(|&(s, _)| s == shard));
        }
        threads.join().unwrap();
    }
}
