//! A count of query slots on one thread, which any number of waiting requests may give up
//! on at any moment (a timeout, a sibling query failing first).
//!
//! Hand-written because `local_sync`'s semaphore panics ("already borrowed") when a
//! waiter that was just handed a permit is dropped before it runs: its `Drop` holds the
//! wait list while giving the permit back through it. Here a release wakes every waiter
//! and each takes a free slot when it runs; a waiter dropped before then takes nothing.
//! Fairness is not kept, which a handful of slots per thread does not need.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Slots free and the tasks waiting for one.
#[derive(Debug)]
pub struct Slots {
    free: Cell<usize>,
    waiting: RefCell<Vec<Waker>>,
}

/// A slot held until dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    slots: &'a Slots,
}

impl Slots {
    /// `n` slots, all free.
    pub fn new(n: usize) -> Slots {
        Slots { free: Cell::new(n), waiting: RefCell::new(Vec::new()) }
    }

    /// Waits for a free slot (cancel-safe: dropping the future takes nothing).
    pub async fn acquire(&self) -> Slot<'_> {
        poll_fn(|cx| {
            let free = self.free.get();
            if free > 0 {
                self.free.set(free - 1);
                return Poll::Ready(Slot { slots: self });
            }
            self.waiting.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.free.set(self.slots.free.get() + 1);
        let waiting = std::mem::take(&mut *self.slots.waiting.borrow_mut());
        for w in waiting {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Context;

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_waiter_given_up_after_a_release_takes_nothing() {
        let slots = Slots::new(1);
        let Poll::Ready(held) = poll_once(pin!(slots.acquire()).as_mut()) else { panic!("a free slot") };
        let mut waiting = Box::pin(slots.acquire());
        assert!(poll_once(waiting.as_mut()).is_pending());
        // Released, then the waiter is dropped before it runs (a timeout, a sibling's error).
        drop(held);
        drop(waiting);
        assert_eq!(slots.free.get(), 1);
        let Poll::Ready(a) = poll_once(pin!(slots.acquire()).as_mut()) else { panic!("the slot is free") };
        assert_eq!(slots.free.get(), 0);
        drop(a);
        assert_eq!(slots.free.get(), 1);
    }
}
