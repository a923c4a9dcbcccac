//! Bounded lock-free single-producer/single-consumer ring.
//!
//! This is the only channel on the data path: the router hands sub-batches
//! to a shard through one ring per (ingest lane, shard), and a shard hands
//! results to a subscriber through one ring per (shard, subscriber). Each end
//! is owned by exactly one thread, so a slot is written by one thread and
//! read by one other, and the two indices live on separate cache lines.
//!
//! Invariants:
//! - `0 <= tail - head <= capacity` (indices grow without wrapping; the slot
//!   is `index & mask`).
//! - Slots in `[head, tail)` are initialised; all others are not.
//! - Only the producer stores `tail`; only the consumer stores `head`.
//!
//! Closing is linearisable: once [`Consumer::close`] has been called and
//! [`Consumer::is_settled`] says so, every push either returned `Ok` with
//! its item visible to the consumer or returned `Closed`. A shard that
//! stops closes its lanes this way before its last drain, so a push that
//! succeeded is never stranded in a ring nobody reads.
//!
//! Waiting is async and wake-based (no spinning, no locks): a consumer that
//! finds the ring empty parks its waker and re-checks; a producer wakes it
//! after every push. The same in the other direction for a full ring.
//! A producer may also push quietly ([`Producer::push_quiet`]) and wake
//! the consumer later ([`Producer::wake_consumer`]): waking a consumer
//! thread that sleeps is a futex syscall, and a busy producer can make
//! one wake cover many pushes.
//! Blocking callers wrap the async calls in `futures::executor::block_on`.

use std::cell::UnsafeCell;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use crossbeam_utils::CachePadded;
use futures::task::AtomicWaker;

struct Ring<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
    /// Next slot the consumer reads.
    head: CachePadded<AtomicUsize>,
    /// Next slot the producer writes.
    tail: CachePadded<AtomicUsize>,
    /// Whether a push is between its check of `refusing` and publishing
    /// `tail`. Written by the producer on every push, read by the
    /// consumer only while it closes: a line of its own keeps those
    /// writes local (sharing `tail`'s line, which the consumer polls, cost
    /// about 20 ns per message).
    pushing: CachePadded<AtomicBool>,
    /// Read on every push and pop, written once: they share the read-only
    /// line of `slots` and `mask`.
    producer_closed: AtomicBool,
    consumer_closed: AtomicBool,
    /// Set by [`Consumer::close`] and by dropping the consumer: pushes
    /// are refused from then on.
    refusing: AtomicBool,
    /// The consumer's waker, parked while the ring is empty. Every push
    /// wakes it (an atomic read-modify-write), so it has a line of its own:
    /// sharing one with `space_ready`, which every pop writes, bounced that
    /// line between the two cores on every message (about 90 ns each,
    /// `runtime/benches/spsc.rs`).
    data_ready: CachePadded<AtomicWaker>,
    /// The producer's waker, parked while the ring is full.
    space_ready: CachePadded<AtomicWaker>,
}

// SAFETY: a slot is only touched by the producer before `tail` is published
// and by the consumer after it observed that `tail`, so `T: Send` suffices.
unsafe impl<T: Send> Send for Ring<T> {}
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        let head = *self.head.get_mut();
        let tail = *self.tail.get_mut();
        for index in head..tail {
            // SAFETY: slots in [head, tail) are initialised and no end is alive.
            unsafe { (*self.slots[index & self.mask].get()).assume_init_drop() };
        }
    }
}

/// Why a push did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The ring is full; the value is handed back.
    Full(T),
    /// The consumer is gone; the value is handed back.
    Closed(T),
}

/// Creates a ring with room for `capacity` items (rounded up to a power of
/// two, at least 2).
pub fn ring<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity.max(2).next_power_of_two();
    let slots = (0..capacity)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect::<Vec<_>>()
        .into_boxed_slice();
    let ring = Arc::new(Ring {
        slots,
        mask: capacity - 1,
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        pushing: CachePadded::new(AtomicBool::new(false)),
        producer_closed: AtomicBool::new(false),
        consumer_closed: AtomicBool::new(false),
        refusing: AtomicBool::new(false),
        data_ready: CachePadded::new(AtomicWaker::new()),
        space_ready: CachePadded::new(AtomicWaker::new()),
    });
    (
        Producer {
            ring: Arc::clone(&ring),
            tail: 0,
            cached_head: 0,
        },
        Consumer {
            ring,
            head: 0,
            cached_tail: 0,
        },
    )
}

/// The writing end. Not `Clone`: there is one producer.
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
    tail: usize,
    /// Last `head` seen; refreshed only when the ring looks full, so the
    /// common push touches no cache line the consumer writes.
    cached_head: usize,
}

impl<T> Producer<T> {
    /// Capacity in items.
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }

    /// Pushes without waiting.
    ///
    /// Against [`Consumer::close`] this is Dekker's handshake: the push
    /// announces itself (`pushing`, SeqCst) before it reads `refusing`
    /// (SeqCst), and the consumer sets `refusing` before it reads
    /// `pushing`. At least one of them sees the other, so
    /// a push that finds the ring open is waited for by
    /// [`Consumer::is_settled`]. One full fence per push (per batch on the
    /// data path, never per row).
    pub fn try_push(&mut self, value: T) -> Result<(), PushError<T>> {
        self.try_push_quiet(value)?;
        self.ring.data_ready.wake();
        Ok(())
    }

    /// [`Producer::try_push`] without waking the consumer when the push
    /// succeeds: the caller owes it a [`Producer::wake_consumer`].
    pub fn try_push_quiet(&mut self, value: T) -> Result<(), PushError<T>> {
        let announce = &self.ring.pushing;
        announce.store(true, Ordering::SeqCst);
        if self.ring.refusing.load(Ordering::SeqCst) {
            announce.store(false, Ordering::Release);
            // A consumer waiting in `is_settled` may be asleep on an empty
            // ring: this refusal is what it waits for.
            self.ring.data_ready.wake();
            return Err(PushError::Closed(value));
        }
        let capacity = self.ring.mask + 1;
        if self.tail - self.cached_head == capacity {
            self.cached_head = self.ring.head.load(Ordering::Acquire);
            if self.tail - self.cached_head == capacity {
                announce.store(false, Ordering::Release);
                return Err(PushError::Full(value));
            }
        }
        let slot = &self.ring.slots[self.tail & self.ring.mask];
        // SAFETY: the slot is outside [head, tail), so the consumer does not
        // read it, and it holds no initialised value.
        unsafe { (*slot.get()).write(value) };
        self.tail += 1;
        self.ring.tail.store(self.tail, Ordering::Release);
        announce.store(false, Ordering::Release);
        Ok(())
    }

    /// Wakes the consumer if it is waiting for data.
    pub fn wake_consumer(&self) {
        self.ring.data_ready.wake();
    }

    /// Pushes, waiting for space while the ring is full.
    ///
    /// Returns the value back if the consumer is gone.
    pub async fn push(&mut self, value: T) -> Result<(), T> {
        self.push_quiet(value).await?;
        self.ring.data_ready.wake();
        Ok(())
    }

    /// [`Producer::push`] without waking the consumer when the push
    /// succeeds (the caller owes it a [`Producer::wake_consumer`]). A
    /// full ring wakes it before waiting: the items it holds are what the
    /// consumer must take to make room.
    pub async fn push_quiet(&mut self, value: T) -> Result<(), T> {
        let mut value = Some(value);
        poll_fn(|cx| {
            let Some(v) = value.take() else {
                return Poll::Ready(Ok(()));
            };
            match self.try_push_quiet(v) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(PushError::Closed(v)) => Poll::Ready(Err(v)),
                Err(PushError::Full(v)) => {
                    self.ring.data_ready.wake();
                    self.ring.space_ready.register(cx.waker());
                    // Re-check after parking, or a pop between the check and
                    // the registration would be a lost wake-up.
                    match self.try_push_quiet(v) {
                        Ok(()) => Poll::Ready(Ok(())),
                        Err(PushError::Closed(v)) => Poll::Ready(Err(v)),
                        Err(PushError::Full(v)) => {
                            value = Some(v);
                            Poll::Pending
                        }
                    }
                }
            }
        })
        .await
    }

    /// Registers `waker` to be woken when the consumer frees a slot, and
    /// returns whether a push would succeed (or fail for good) right now,
    /// checked after registering so that no wake-up is lost.
    pub fn register_space_and_check(&self, waker: &std::task::Waker) -> bool {
        self.ring.space_ready.register(waker);
        self.ring.refusing.load(Ordering::Acquire) || self.free_slots() > 0
    }

    /// Items in the ring right now (racy, for metrics).
    pub fn len(&self) -> usize {
        self.tail - self.ring.head.load(Ordering::Relaxed)
    }

    /// Slots free right now. Only the consumer changes the ring's other end,
    /// and it only frees slots, so at least this many pushes will succeed.
    pub fn free_slots(&self) -> usize {
        self.ring.mask + 1 - (self.tail - self.ring.head.load(Ordering::Acquire))
    }

    /// Whether the consumer is gone (dropped; not merely refusing new
    /// pushes after [`Consumer::close`] while it drains the queued ones).
    pub fn is_consumer_closed(&self) -> bool {
        self.ring.consumer_closed.load(Ordering::Acquire)
    }

    /// Whether the ring is empty right now (racy, for metrics).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.ring.producer_closed.store(true, Ordering::Release);
        self.ring.data_ready.wake();
    }
}

/// The reading end.
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
    head: usize,
    cached_tail: usize,
}

impl<T> Consumer<T> {
    /// Pops without waiting.
    pub fn try_pop(&mut self) -> Option<T> {
        if self.head == self.cached_tail {
            self.cached_tail = self.ring.tail.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return None;
            }
        }
        let slot = &self.ring.slots[self.head & self.ring.mask];
        // SAFETY: head < tail, so the producer initialised this slot and
        // published it with the Release store we observed.
        let value = unsafe { (*slot.get()).assume_init_read() };
        self.head += 1;
        self.ring.head.store(self.head, Ordering::Release);
        self.ring.space_ready.wake();
        Some(value)
    }

    /// Whether the producer is gone. Items may still be queued.
    pub fn is_producer_closed(&self) -> bool {
        self.ring.producer_closed.load(Ordering::Acquire)
    }

    /// Parks a waker to be woken by the next push or by the producer
    /// closing, and says whether there is something to do already (an item
    /// or a closed producer), in which case the caller should not sleep.
    pub fn register_and_check(&self, waker: &std::task::Waker) -> bool {
        self.ring.data_ready.register(waker);
        self.ring.tail.load(Ordering::Acquire) != self.head || self.is_producer_closed()
    }

    /// Pops, or parks `cx`'s waker and returns `Pending` if the ring is
    /// empty. `Ready(None)` means the producer is gone and the ring drained.
    pub fn poll_pop(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<T>> {
        if let Some(v) = self.try_pop() {
            return Poll::Ready(Some(v));
        }
        // Read "closed" before the re-check: a producer that pushes and then
        // closes is seen as closed only after its last item is visible.
        let closed = self.is_producer_closed();
        self.ring.data_ready.register(cx.waker());
        match self.try_pop() {
            Some(v) => Poll::Ready(Some(v)),
            None if closed => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// Pops, waiting while the ring is empty. `None` once the producer is
    /// gone and everything it pushed was read.
    pub async fn pop(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_pop(cx)).await
    }

    /// Items in the ring right now (racy, for metrics).
    pub fn len(&self) -> usize {
        self.ring.tail.load(Ordering::Relaxed) - self.head
    }

    /// Refuses further pushes (they return [`PushError::Closed`]) while
    /// the consumer lives on to drain what is queued. Idempotent.
    pub fn close(&self) {
        self.ring.refusing.store(true, Ordering::SeqCst);
        self.ring.space_ready.wake();
    }

    /// After [`Consumer::close`]: whether no push is still on its way.
    /// Once true, every item that will ever be in the ring is visible
    /// (`try_pop`, `is_empty`); a push in flight takes nanoseconds unless
    /// its thread was preempted, so callers poll this between other work.
    pub fn is_settled(&self) -> bool {
        self.ring.refusing.load(Ordering::SeqCst) && !self.ring.pushing.load(Ordering::SeqCst)
    }

    /// Whether the ring is empty right now (racy, for metrics).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.ring.refusing.store(true, Ordering::SeqCst);
        self.ring.consumer_closed.store(true, Ordering::Release);
        self.ring.space_ready.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_bounded() {
        let (mut p, mut c) = ring::<u32>(3);
        assert_eq!(p.capacity(), 4);
        for i in 0..4 {
            p.try_push(i).unwrap();
        }
        assert_eq!(p.try_push(9), Err(PushError::Full(9)));
        assert_eq!(c.try_pop(), Some(0));
        p.try_push(4).unwrap();
        let got: Vec<_> = std::iter::from_fn(|| c.try_pop()).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
    }

    #[test]
    fn closed_consumer_hands_value_back() {
        let (mut p, c) = ring::<String>(2);
        drop(c);
        assert_eq!(
            p.try_push("x".into()),
            Err(PushError::Closed("x".to_string()))
        );
    }

    /// Every push that returned `Ok` before the close is read by the
    /// final drain; none after it succeeds. Raced many times on two
    /// threads so that pushes land on both sides of the close.
    #[test]
    fn a_closed_ring_drains_exactly_what_was_accepted() {
        for round in 0..200 {
            let (mut p, mut c) = ring::<u64>(4);
            let pusher = std::thread::spawn(move || {
                let mut accepted = 0u64;
                loop {
                    match p.try_push(accepted) {
                        Ok(()) => accepted += 1,
                        Err(PushError::Full(_)) => std::hint::spin_loop(),
                        Err(PushError::Closed(_)) => return accepted,
                    }
                }
            });
            let mut read = 0u64;
            while read < 50 + round {
                if let Some(v) = c.try_pop() {
                    assert_eq!(v, read);
                    read += 1;
                }
            }
            c.close();
            while !c.is_settled() {
                std::hint::spin_loop();
            }
            while let Some(v) = c.try_pop() {
                assert_eq!(v, read);
                read += 1;
            }
            assert_eq!(pusher.join().unwrap(), read, "round {round}");
        }
    }

    #[test]
    fn unread_items_are_dropped_with_the_ring() {
        let item = Arc::new(());
        let (mut p, c) = ring::<Arc<()>>(4);
        p.try_push(Arc::clone(&item)).unwrap();
        p.try_push(Arc::clone(&item)).unwrap();
        drop(p);
        drop(c);
        assert_eq!(Arc::strong_count(&item), 1);
    }

    #[test]
    fn threads_with_backpressure_deliver_everything_in_order() {
        const N: u64 = 200_000;
        let (mut p, mut c) = ring::<u64>(8);
        let producer = std::thread::spawn(move || {
            futures::executor::block_on(async {
                for i in 0..N {
                    p.push(i).await.unwrap();
                }
            })
        });
        let mut expected = 0;
        futures::executor::block_on(async {
            while let Some(v) = c.pop().await {
                assert_eq!(v, expected);
                expected += 1;
            }
        });
        producer.join().unwrap();
        assert_eq!(expected, N);
    }

    /// Quiet pushes leave the consumer asleep until it is owed a wake,
    /// except when the ring is full: then the producer wakes it rather
    /// than wait for room forever.
    #[test]
    fn quiet_pushes_wake_the_consumer_when_the_ring_fills() {
        const N: u64 = 100_000;
        let (mut p, mut c) = ring::<u64>(4);
        let (sent, done) = std::sync::mpsc::channel();
        let producer = std::thread::spawn(move || {
            futures::executor::block_on(async {
                for i in 0..N {
                    p.push_quiet(i).await.unwrap();
                }
            });
            // The last items are in the ring, the consumer maybe asleep:
            // it is woken once the test has seen it keep waiting.
            done.recv().unwrap();
            p.wake_consumer();
            p
        });
        let mut expected = 0;
        futures::executor::block_on(async {
            while expected < N {
                let v = std::future::poll_fn(|cx| match c.poll_pop(cx) {
                    std::task::Poll::Pending if expected + 4 >= N => {
                        let _ = sent.send(());
                        std::task::Poll::Pending
                    }
                    other => other,
                })
                .await
                .unwrap();
                assert_eq!(v, expected);
                expected += 1;
            }
        });
        let p = producer.join().unwrap();
        assert_eq!(expected, N);
        drop(p);
        assert_eq!(futures::executor::block_on(c.pop()), None);
    }
}
