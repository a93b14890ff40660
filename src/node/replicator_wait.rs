//! Single-executor wake-up primitives of the replicator (no locks, not `Send`): a one-shot
//! reply slot for producers and readers, and an epoch notifier for "something changed"
//! (commit advanced, fatal error).
//!
//! Invariant: every waker registered is woken at the next `notify_all` / `fill`; a waiter
//! re-checks its condition after waking (spurious wake-ups are harmless).

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// A reply that arrives once.
#[derive(Debug)]
pub(crate) struct Slot<T> {
    inner: Rc<RefCell<(Option<T>, Option<Waker>)>>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot { inner: self.inner.clone() }
    }
}

impl<T> Slot<T> {
    pub(crate) fn new() -> Slot<T> {
        Slot { inner: Rc::new(RefCell::new((None, None))) }
    }

    /// Stores the reply (a second one is ignored) and wakes the waiter.
    pub(crate) fn fill(&self, value: T) {
        let waker = {
            let mut inner = self.inner.borrow_mut();
            if inner.0.is_some() {
                return;
            }
            inner.0 = Some(value);
            inner.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits for the reply.
    pub(crate) async fn wait(&self) -> T {
        std::future::poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            match inner.0.take() {
                Some(value) => Poll::Ready(value),
                None => {
                    inner.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// "Something changed": waiters remember the epoch, then wait for it to move.
#[derive(Debug, Default)]
pub(crate) struct Notify {
    epoch: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    pub(crate) fn notify_all(&self) {
        self.epoch.set(self.epoch.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves once the epoch differs from `seen`.
    pub(crate) async fn changed(&self, seen: u64) {
        std::future::poll_fn(|cx| {
            if self.epoch.get() != seen {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// Runs `future` for at most `timeout`; `None` on timeout.
pub(crate) async fn within<T>(timeout: Duration, future: impl Future<Output = T>) -> Option<T> {
    let expire = async {
        glommio::timer::sleep(timeout).await;
        None
    };
    futures_lite::future::or(async { Some(future.await) }, expire).await
}
