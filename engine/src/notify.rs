//! Single-executor wake-ups: an epoch `Notify` and the per-append `Durable` future.
//!
//! Invariants: a `DurableSlot` is resolved at most once; once resolved its result never
//! changes. Everything here lives on one executor (Rc/RefCell, no locks).

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::error::LogError;

/// Wakes every task waiting for "something changed" (epoch-based, no lost wake-ups): a
/// waiter reads `epoch()`, checks its condition, then awaits `wait(epoch)`. Single-executor.
#[derive(Debug, Default)]
pub struct Notify {
    epoch: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get() + 1);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Resolves once `notify_all` has run after `epoch` was read.
    pub fn wait(&self, epoch: u64) -> NotifyWait<'_> {
        NotifyWait { notify: self, epoch }
    }
}

/// The future of [`Notify::wait`].
#[derive(Debug)]
pub struct NotifyWait<'a> {
    notify: &'a Notify,
    epoch: u64,
}

impl Future for NotifyWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        let mut wakers = self.notify.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Where the outcome of one append's durability lands (one `RefCell`: one borrow per poll and
/// per resolve).
#[derive(Debug, Default)]
pub(crate) struct DurableSlot {
    state: RefCell<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    result: Option<Result<(), LogError>>,
    waker: Option<Waker>,
}

impl DurableSlot {
    pub(crate) fn resolve(&self, result: Result<(), LogError>) {
        let waker = {
            let mut state = self.state.borrow_mut();
            if state.result.is_some() {
                return;
            }
            state.result = Some(result);
            state.waker.take()
        };
        // Woken outside the borrow: the woken task may poll this slot at once.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Resolves when the appended batch is durable (fdatasync completed), or with the reason it
/// never will be (`Failed`, `Truncated`, `Closed`). Dropping it does not cancel the append.
#[derive(Debug)]
#[must_use = "an append is durable only once this resolves with Ok"]
pub struct Durable {
    pub(crate) slot: Rc<DurableSlot>,
}

impl Future for Durable {
    type Output = Result<(), LogError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.slot.state.borrow_mut();
        if let Some(result) = state.result.as_ref() {
            return Poll::Ready(result.clone());
        }
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}
