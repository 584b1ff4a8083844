//! A count of slots on one thread (the analytics API's query connections, a shard's
//! connection places), which any number of waiters may give up on at any moment (a
//! timeout, a sibling query failing first, the drain beginning).
//!
//! Hand-written because `local_sync`'s semaphore panics ("already borrowed") when a
//! waiter that was just handed a permit is dropped before it runs: its `Drop` holds the
//! wait list while giving the permit back through it. Here a release wakes every waiter
//! and each takes a free slot when it runs; a waiter dropped before then takes nothing.
//! Fairness is not kept: the first waiter to run after a release wins.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
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

    /// Takes a free slot's count, if there is one (a count taken for good: nothing gives
    /// it back).
    pub fn take(&self) -> bool {
        let free = self.free.get();
        if free == 0 {
            return false;
        }
        self.free.set(free - 1);
        true
    }

    /// Waits until a slot's count is taken for good (cancel-safe: dropping the future
    /// takes nothing).
    pub async fn take_one(&self) {
        poll_fn(|cx| {
            if self.take() {
                return Poll::Ready(());
            }
            // Once per task: a task that gives up its wait and waits again (`make_room`
            // at every choice) would otherwise add a waker each time until a release.
            let mut waiting = self.waiting.borrow_mut();
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Gives a slot back (or adds one: a count of events, `server`'s declined evictions)
    /// and wakes every waiter (the first to run takes it).
    pub fn give_back(&self) {
        self.free.set(self.free.get() + 1);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for w in waiting {
            w.wake();
        }
    }

    /// A free slot now, if there is one. (The slot is made only once its count is taken —
    /// `then`, not `then_some`: one made and dropped gives back a count never taken.)
    pub fn try_acquire(&self) -> Option<Slot<'_>> {
        self.take().then(|| Slot { slots: self })
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> Slot<'_> {
        self.take_one().await;
        Slot { slots: self }
    }

    /// A free slot now, held apart from this borrow, if there is one.
    pub fn try_acquire_owned(self: &Rc<Self>) -> Option<OwnedSlot> {
        self.take().then(|| OwnedSlot { slots: self.clone() })
    }

    /// Waits for a free slot, held apart from this borrow.
    pub async fn acquire_owned(self: Rc<Self>) -> OwnedSlot {
        self.take_one().await;
        OwnedSlot { slots: self }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.give_back();
    }
}

/// A slot held until dropped, by whoever owns it (a connection's task).
#[derive(Debug)]
pub struct OwnedSlot {
    slots: Rc<Slots>,
}

impl Drop for OwnedSlot {
    fn drop(&mut self) {
        self.slots.give_back();
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
    fn a_slot_refused_gives_nothing_back() {
        let slots = Slots::new(1);
        let held = slots.try_acquire();
        assert!(held.is_some());
        // Refused while the one slot is held, again and again: still refused (a refusal
        // that gave a count back let one more in each second time: the control port's
        // bound on API requests admitted past its 32).
        for _ in 0..3 {
            assert!(slots.try_acquire().is_none());
        }
        let owned = Rc::new(Slots::new(1));
        let held_owned = owned.try_acquire_owned();
        assert!(held_owned.is_some());
        for _ in 0..3 {
            assert!(owned.try_acquire_owned().is_none());
        }
        drop(held);
        assert!(slots.try_acquire().is_some());
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

    /// Review finding: a task that gave up its wait and waited again added a waker each
    /// time (the connection cap's wait for a decline, at every choice), kept until a
    /// release: unbounded under a flood. One per task now.
    #[test]
    fn a_task_waiting_again_is_kept_once() {
        struct Task;
        impl std::task::Wake for Task {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let task = Waker::from(std::sync::Arc::new(Task));
        let slots = Slots::new(0);
        for _ in 0..1_000 {
            let mut waiting = Box::pin(slots.take_one());
            assert!(waiting.as_mut().poll(&mut Context::from_waker(&task)).is_pending());
        }
        assert_eq!(slots.waiting.borrow().len(), 1);
        slots.give_back();
        assert!(slots.waiting.borrow().is_empty());
    }
}
