//! Mailbox: a bounded queue from any thread into one glommio executor, with a prompt wake-up.
//!
//! Foreign threads push commands into a bounded crossbeam channel; the shard's receiving task
//! awaits [`MailboxReceiver::recv`]. When the queue is empty the task parks with its waker
//! stored in a [`WakeSlot`]; a sender that finds the slot armed wakes it. Waking a glommio
//! task's waker from a foreign thread queues the waker on the executor and writes the
//! executor's eventfd (glommio-0.9.0 `task/raw.rs::do_wake` → `SleepNotifier::queue_waker`),
//! which the parked reactor is blocked on, so an idle executor wakes with no busy polling.
//! The eventfd write is unconditional for tasks in a `Latency::Matters` queue (the receiving
//! task runs in one), which avoids depending on glommio's relaxed `should_notify` flag.
//!
//! glommio 0.9.0 nevertheless loses such a wake-up now and then under load: the executor
//! stays parked in `Reactor::wait` (`link_rings_and_sleep`) with messages queued, and a
//! second foreign wake of the same waker brings it back. So the waker stays in the slot
//! (woken by reference) and [`MailboxSender::kick`] can wake it again; [`MailboxSender::taken`]
//! lets an observer tell a receiver that stopped draining from a busy one (the engine's
//! watchdog in shard.rs uses both).
//!
//! Invariants: every successful send is followed by a check of the slot (store → fence →
//! check on both sides, the Dekker pattern), so a message is never left in the queue while the
//! receiver sleeps as far as this module is concerned; the queue never holds more than its
//! named capacity; a repeated or spurious wake-up only costs the receiver one empty poll.

use std::future::poll_fn;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

/// Where a parked receiver leaves its waker.
#[derive(Debug, Default)]
struct WakeSlot {
    /// Set by the receiver just before it parks, cleared by whoever wakes it.
    armed: AtomicBool,
    /// Locked only when the receiver parks or a sender wakes a parked receiver.
    waker: Mutex<Option<Waker>>,
    /// Messages the receiver has taken so far (its progress, read by watchdogs).
    taken: AtomicU64,
}

/// Why a send failed; the message is handed back.
#[derive(Debug)]
pub enum SendFailure<T> {
    /// The queue holds its capacity already.
    Full(T),
    /// The receiver is gone (the shard stopped).
    Closed(T),
}

/// Sending half; cheap to clone, usable from any thread. Dropping the last one wakes the
/// receiver, which then sees the mailbox closed.
#[derive(Debug)]
pub struct MailboxSender<T> {
    /// Always `Some` until `drop`, which releases it before waking the receiver.
    queue: Option<Sender<T>>,
    slot: Arc<WakeSlot>,
}

/// Receiving half; owned by the shard's task.
#[derive(Debug)]
pub struct MailboxReceiver<T> {
    queue: Receiver<T>,
    slot: Arc<WakeSlot>,
}

/// A mailbox holding at most `capacity` messages.
pub fn mailbox<T>(capacity: usize) -> (MailboxSender<T>, MailboxReceiver<T>) {
    assert!(capacity > 0, "a mailbox needs room for one message");
    let (queue_tx, queue_rx) = crossbeam_channel::bounded(capacity);
    let slot = Arc::new(WakeSlot::default());
    (
        MailboxSender { queue: Some(queue_tx), slot: slot.clone() },
        MailboxReceiver { queue: queue_rx, slot },
    )
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        MailboxSender { queue: self.queue.clone(), slot: self.slot.clone() }
    }
}

impl<T> Drop for MailboxSender<T> {
    fn drop(&mut self) {
        // Release the channel first so a receiver woken by the last sender sees it closed.
        drop(self.queue.take());
        self.wake_receiver();
    }
}

impl<T> MailboxSender<T> {
    /// Enqueues without blocking; a full queue is [`SendFailure::Full`].
    pub fn try_send(&self, message: T) -> Result<(), SendFailure<T>> {
        let Some(queue) = &self.queue else {
            return Err(SendFailure::Closed(message));
        };
        match queue.try_send(message) {
            Ok(()) => {
                self.wake_receiver();
                Ok(())
            }
            Err(TrySendError::Full(message)) => Err(SendFailure::Full(message)),
            Err(TrySendError::Disconnected(message)) => Err(SendFailure::Closed(message)),
        }
    }

    /// Number of messages waiting.
    pub fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, Sender::len)
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many messages the receiver has taken so far; with [`len`](Self::len), tells a
    /// receiver that is not draining its queue from one that is.
    pub fn taken(&self) -> u64 {
        self.slot.taken.load(Ordering::SeqCst)
    }

    /// Wakes the receiver again if messages are waiting, whether or not it looks parked.
    /// A spurious wake-up only costs the receiver one empty poll. Returns whether a waker was
    /// found to wake.
    pub fn kick(&self) -> bool {
        if self.is_empty() {
            return false;
        }
        self.slot.armed.store(false, Ordering::SeqCst);
        self.slot.wake_stored()
    }

    /// Wakes the receiver's executor even when no message is waiting. glommio 0.9.0 can
    /// also lose the wake-up of an IO completion or of its blocking-pool thread (e.g. a
    /// segment roll's rename), leaving the executor parked with work it does not see; the
    /// receiver's task then takes one empty poll and the reactor looks at its rings again.
    /// Returns whether a waker was found to wake.
    pub fn nudge(&self) -> bool {
        self.slot.armed.store(false, Ordering::SeqCst);
        self.slot.wake_stored()
    }

    fn wake_receiver(&self) {
        fence(Ordering::SeqCst);
        if self.slot.armed.swap(false, Ordering::SeqCst) {
            self.slot.wake_stored();
        }
    }
}

/// Checks in a row without progress after which [`StallWatch`] logs a warning.
pub const STALLS_LOGGED: u32 = 50;

/// The watchdogs' stall check over a set of mailboxes (engine/src/shard.rs and the node's):
/// called every interval, it kicks a mailbox that holds messages while its receiver took
/// none since the previous call, and logs once a receiver stayed stalled for
/// [`STALLS_LOGGED`] calls in a row. It never wakes an idle receiver (empty mailbox) nor a
/// busy one (it took messages), so parked executors stay parked. Its memory is one entry per
/// mailbox.
#[derive(Debug, Default)]
pub struct StallWatch {
    /// Per mailbox: messages taken at the previous call, and calls in a row without progress.
    last: Vec<(Option<u64>, u32)>,
}

impl StallWatch {
    /// One check of every mailbox in `senders` (the same order on every call); `interval`
    /// is the time between calls, for the log line.
    pub fn check<T>(&mut self, senders: &[MailboxSender<T>], interval: std::time::Duration) {
        self.last.resize(senders.len(), (None, 0));
        for (shard, sender) in senders.iter().enumerate() {
            let taken = sender.taken();
            let (previous, stalls) = &mut self.last[shard];
            if sender.is_empty() || *previous != Some(taken) {
                *stalls = 0;
            } else if sender.kick() {
                // One interval without progress is often just a descheduled thread on a
                // loaded host: the kick is harmless then, so only a long stall is logged.
                *stalls += 1;
                if *stalls == STALLS_LOGGED {
                    tracing::warn!(
                        shard,
                        queued = sender.len(),
                        "shard took no command for {:?}; woke it again",
                        interval * STALLS_LOGGED
                    );
                }
            }
            *previous = Some(taken);
        }
    }
}

impl WakeSlot {
    /// Wakes the stored waker by reference: it stays in the slot so a later [`kick`] can
    /// wake the same task again. Replaced by the receiver on its next pending poll.
    ///
    /// [`kick`]: MailboxSender::kick
    fn wake_stored(&self) -> bool {
        match self.waker.lock() {
            Ok(waker) => waker.as_ref().map(Waker::wake_by_ref).is_some(),
            Err(_) => false,
        }
    }
}

impl<T> Drop for MailboxReceiver<T> {
    fn drop(&mut self) {
        // Drop the task's waker here, on the receiver's own thread, not on a sender's.
        self.slot.armed.store(false, Ordering::SeqCst);
        let waker = self.slot.waker.lock().map(|mut w| w.take());
        drop(waker);
    }
}

impl<T> MailboxReceiver<T> {
    /// Next message; `None` once every sender is gone and the queue is drained.
    pub async fn recv(&self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Next message if one is waiting, without parking.
    pub fn try_recv(&self) -> Option<T> {
        let message = self.queue.try_recv().ok()?;
        self.slot.taken.fetch_add(1, Ordering::SeqCst);
        Some(message)
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.queue.try_recv() {
            Ok(message) => {
                self.slot.taken.fetch_add(1, Ordering::SeqCst);
                return Poll::Ready(Some(message));
            }
            Err(TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        if let Ok(mut waker) = self.slot.waker.lock() {
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        self.slot.armed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        match self.queue.try_recv() {
            Ok(message) => {
                self.slot.armed.store(false, Ordering::SeqCst);
                self.slot.taken.fetch_add(1, Ordering::SeqCst);
                Poll::Ready(Some(message))
            }
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_full_mailbox_hands_the_message_back() {
        let (tx, _rx) = mailbox::<u32>(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(SendFailure::Full(3))));
    }

    #[test]
    fn a_dropped_receiver_closes_the_mailbox() {
        let (tx, rx) = mailbox::<u32>(2);
        drop(rx);
        assert!(matches!(tx.try_send(7), Err(SendFailure::Closed(7))));
    }

    #[test]
    fn a_parked_executor_wakes_for_a_foreign_send() {
        // The sender waits for each message to be acknowledged, then pauses so the executor
        // parks before the next one: every message must be delivered by a foreign wake-up.
        let (tx, rx) = mailbox::<u64>(4);
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded::<u64>();
        let sender = std::thread::spawn(move || {
            for value in 0..50u64 {
                std::thread::sleep(Duration::from_millis(2));
                tx.try_send(value).unwrap();
                let acked = ack_rx.recv_timeout(Duration::from_secs(30));
                assert_eq!(acked, Ok(value), "no wake-up for message {value}");
            }
        });
        let received =
            glommio::LocalExecutorBuilder::default().io_memory(64 * 1024).make().unwrap().run(
                async move {
                    let mut received = Vec::new();
                    while let Some(value) = rx.recv().await {
                        received.push(value);
                        ack_tx.send(value).unwrap();
                    }
                    received
                },
            );
        sender.join().unwrap();
        assert_eq!(received, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_kick_only_wakes_for_waiting_messages_and_taken_counts_received_ones() {
        let (tx, rx) = mailbox::<u64>(4);
        assert!(!tx.kick(), "nothing waits: no wake-up");
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.taken(), 0);
        assert!(!tx.kick(), "the receiver never parked: no waker to wake");
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(tx.taken(), 1);
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded::<u64>();
        let kicker = std::thread::spawn(move || {
            // The receiver takes 2, parks with its waker in the slot; then 3 arrives and an
            // extra kick must be harmless.
            assert_eq!(ack_rx.recv_timeout(Duration::from_secs(30)), Ok(2));
            tx.try_send(3).unwrap();
            tx.kick();
            assert_eq!(ack_rx.recv_timeout(Duration::from_secs(30)), Ok(3));
            assert_eq!(tx.taken(), 3);
        });
        glommio::LocalExecutorBuilder::default().io_memory(64 * 1024).make().unwrap().run(
            async move {
                while let Some(value) = rx.recv().await {
                    ack_tx.send(value).unwrap();
                }
            },
        );
        kicker.join().unwrap();
    }

    #[test]
    fn dropping_the_last_sender_wakes_the_receiver_to_see_it_closed() {
        let (tx, rx) = mailbox::<u64>(4);
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(tx);
        });
        let started = Instant::now();
        let last = glommio::LocalExecutorBuilder::default()
            .io_memory(64 * 1024)
            .make()
            .unwrap()
            .run(async move { rx.recv().await });
        dropper.join().unwrap();
        assert_eq!(last, None);
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
