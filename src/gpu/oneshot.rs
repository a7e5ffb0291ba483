//! A one-value channel whose receiver is a future: how a wgpu callback (a buffer mapped, the
//! queue's work done) wakes the code awaiting it. Natively the callback has already run when
//! the receiver is first polled, since the wait before it blocks in `Device::poll`; in the
//! browser the callback runs later, from the page's event loop, and wakes the awaiting task.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    /// Set once the sender is dropped, sent or not.
    closed: bool,
    waker: Option<Waker>,
}

pub struct Sender<T>(Arc<Mutex<Slot<T>>>);

/// Resolves to the value sent, or None when the sender was dropped without sending.
pub struct Receiver<T>(Arc<Mutex<Slot<T>>>);

pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot { value: None, closed: false, waker: None }));
    (Sender(slot.clone()), Receiver(slot))
}

impl<T> Sender<T> {
    pub fn send(self, value: T) {
        self.0.lock().expect("oneshot slot poisoned").value = Some(value);
        // Dropping self closes the slot and wakes the receiver.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut slot = self.0.lock().expect("oneshot slot poisoned");
        slot.closed = true;
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = self.0.lock().expect("oneshot slot poisoned");
        if slot.closed {
            Poll::Ready(slot.value.take())
        } else {
            slot.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_a_value_sent_before_or_after_the_first_poll() {
        let (tx, rx) = channel();
        tx.send(3);
        assert_eq!(pollster::block_on(rx), Some(3));
        let (tx, rx) = channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send("late");
        });
        assert_eq!(pollster::block_on(rx), Some("late"));
        sender.join().unwrap();
    }

    #[test]
    fn a_dropped_sender_resolves_to_none() {
        let (tx, rx) = channel::<u32>();
        drop(tx);
        assert_eq!(pollster::block_on(rx), None);
    }
}
