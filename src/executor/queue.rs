//! The limit on concurrently running containers, with a FIFO queue behind it.
//!
//! A task takes a [`Slot`] before it touches the engine and gives it back by
//! dropping it. When no slot is free the task waits in line and learns its
//! position (1 = next) each time the line moves. A freed slot is handed
//! straight to the head of the line, so a newcomer can never overtake a task
//! that is already waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{oneshot, watch};

/// The concurrency limit and its queue. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    max_running: usize,
    max_queue: usize,
    running: usize,
    waiting: VecDeque<Waiter>,
    next_ticket: u64,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    position: watch::Sender<u32>,
    grant: oneshot::Sender<Slot>,
}

/// The right to run one container. Dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Slots,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueFull {
    pub running: usize,
    pub queued: usize,
}

/// What `try_acquire` gives: a slot now, or a place in line.
#[derive(Debug)]
pub(crate) enum Acquired {
    Now(Slot),
    Queued(Place),
}

/// News for a task waiting in line.
#[derive(Debug)]
pub(crate) enum Turn {
    /// The line moved; the new position (1 = next).
    Moved(u32),
    /// A slot is ours.
    Granted(Slot),
}

/// A place in line. Dropping it leaves the line.
#[derive(Debug)]
pub(crate) struct Place {
    slots: Slots,
    ticket: u64,
    position: watch::Receiver<u32>,
    granted: oneshot::Receiver<Slot>,
}

impl Slots {
    pub(crate) fn new(max_running: usize, max_queue: usize) -> Slots {
        let state = State {
            // Zero slots would queue every task forever.
            max_running: max_running.max(1),
            max_queue,
            running: 0,
            waiting: VecDeque::new(),
            next_ticket: 0,
        };
        Slots {
            inner: Arc::new(Mutex::new(state)),
        }
    }

    // A panic while holding the lock cannot leave the counters half-updated
    // (each update is a single statement), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `(running, queued)`.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.running, state.waiting.len())
    }

    /// Takes a free slot, or a place at the end of the line, or fails when
    /// the line is full.
    pub(crate) fn try_acquire(&self) -> Result<Acquired, QueueFull> {
        let mut state = self.lock();
        if state.running < state.max_running && state.waiting.is_empty() {
            state.running += 1;
            return Ok(Acquired::Now(Slot {
                slots: self.clone(),
            }));
        }
        if state.waiting.len() >= state.max_queue {
            return Err(QueueFull {
                running: state.running,
                queued: state.waiting.len(),
            });
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let (position_tx, position_rx) = watch::channel(state.waiting.len() as u32 + 1);
        let (grant_tx, grant_rx) = oneshot::channel();
        state.waiting.push_back(Waiter {
            ticket,
            position: position_tx,
            grant: grant_tx,
        });
        Ok(Acquired::Queued(Place {
            slots: self.clone(),
            ticket,
            position: position_rx,
            granted: grant_rx,
        }))
    }

    /// A slot came free: hand it to the head of the line, or count it free.
    fn release(&self) {
        let head = {
            let mut state = self.lock();
            match state.waiting.pop_front() {
                Some(head) => {
                    renumber(&state.waiting);
                    head
                }
                None => {
                    state.running = state.running.saturating_sub(1);
                    return;
                }
            }
        };
        // Outside the lock: if the waiter is already gone, the slot comes
        // back to us and its drop releases it again (to the next in line).
        let _ = head.grant.send(Slot {
            slots: self.clone(),
        });
    }

    fn leave(&self, ticket: u64) {
        let mut state = self.lock();
        if let Some(index) = state.waiting.iter().position(|w| w.ticket == ticket) {
            state.waiting.remove(index);
            renumber(&state.waiting);
        }
    }
}

fn renumber(waiting: &VecDeque<Waiter>) {
    for (index, waiter) in waiting.iter().enumerate() {
        waiter.position.send_if_modified(|position| {
            let new = index as u32 + 1;
            let changed = *position != new;
            *position = new;
            changed
        });
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl Place {
    /// The current position (1 = next).
    pub(crate) fn position(&mut self) -> u32 {
        *self.position.borrow_and_update()
    }

    /// Waits until the line moves or a slot is granted. `None` only if the
    /// queue dropped this place without a slot, which it never does.
    pub(crate) async fn next_turn(&mut self) -> Option<Turn> {
        tokio::select! {
            // A grant also drops the position sender; see the grant first.
            biased;
            granted = &mut self.granted => granted.ok().map(Turn::Granted),
            Ok(()) = self.position.changed() => Some(Turn::Moved(*self.position.borrow_and_update())),
            else => None,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // If the slot was already granted but not taken, it sits in the
        // oneshot channel and is released when the receiver drops.
        self.slots.leave(self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(admission: Acquired) -> Place {
        match admission {
            Acquired::Queued(place) => place,
            Acquired::Now(_) => panic!("expected to queue"),
        }
    }

    async fn granted(place: &mut Place) -> Slot {
        loop {
            match place.next_turn().await {
                Some(Turn::Granted(slot)) => return slot,
                Some(Turn::Moved(_)) => continue,
                None => panic!("the queue dropped a place"),
            }
        }
    }

    #[tokio::test]
    async fn fifo_with_positions() {
        let slots = Slots::new(1, 2);
        let first = match slots.try_acquire().expect("free") {
            Acquired::Now(slot) => slot,
            Acquired::Queued(_) => panic!("expected a slot"),
        };
        let mut a = queued(slots.try_acquire().expect("room in line"));
        let mut b = queued(slots.try_acquire().expect("room in line"));
        assert_eq!(a.position(), 1);
        assert_eq!(b.position(), 2);
        assert!(slots.try_acquire().is_err(), "the line is full");
        assert_eq!(slots.counts(), (1, 2));

        drop(first);
        let slot_a = granted(&mut a).await;
        assert!(matches!(b.next_turn().await, Some(Turn::Moved(1))));
        drop(slot_a);
        let slot_b = granted(&mut b).await;
        assert_eq!(slots.counts(), (1, 0));
        drop(slot_b);
        assert_eq!(slots.counts(), (0, 0));
    }

    #[tokio::test]
    async fn leaving_the_line_moves_others_up_and_frees_granted_slots() {
        let slots = Slots::new(1, 4);
        let first = slots.try_acquire().expect("free");
        let a = queued(slots.try_acquire().expect("room"));
        let mut b = queued(slots.try_acquire().expect("room"));
        drop(a);
        assert_eq!(b.position(), 1);
        // Granted to b, but b leaves without taking it: the slot comes back.
        drop(first);
        drop(b);
        assert_eq!(slots.counts(), (0, 0));
    }
}
