//! Single-executor wake-up primitives of the replicator (no locks, not `Send`): a one-shot
//! reply slot for producers and readers, and a timeout wrapper. ("Something changed" is the
//! engine's epoch `ringlog_engine::notify::Notify`.)
//!
//! Invariant: every waker registered is woken at the next `notify_all` / `fill`; a waiter
//! re-checks its condition after waking (spurious wake-ups are harmless).

#![forbid(unsafe_code)]

use std::cell::RefCell;
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

/// Runs `future` for at most `timeout`; `None` on timeout.
pub(crate) async fn within<T>(timeout: Duration, future: impl Future<Output = T>) -> Option<T> {
    let expire = async {
        glommio::timer::sleep(timeout).await;
        None
    };
    futures_lite::future::or(async { Some(future.await) }, expire).await
}
