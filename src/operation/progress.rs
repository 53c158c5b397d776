//! Long operations: how far one has come, and how to stop it.
//!
//! A long operation (a full clone's copies today; RAM snapshots and image
//! imports may follow) is accepted with [`super::accept_long`], which records
//! it RUNNING and registers a [`Long`] under its id in [`LongOperations`]
//! (one registry per app, in [`crate::context::Ctx::long`]). Its body then
//! runs in a background task through [`super::carry_out`], which ends the
//! operation CANCELLED when [`Long::cancel`] fires, after undoing what it
//! made. To hook a new long operation on:
//!
//! - report with [`Long::report`] (from [`super::Envelope::long`]) as often
//!   as the work knows more; readers see the latest value only (a
//!   `tokio::sync::watch`), so reporting often costs nothing;
//! - make every host action it takes undoable ([`super::Envelope::undo_with`]),
//!   and write under `.partial` names that a dropped future removes: a cancel
//!   drops the body's future at its next await.
//!
//! Progress lives in memory while the operation runs; its last value is
//! written to the operation's record when it ends (`operations.progress`),
//! so a CANCELLED operation says how far it got. A vman that stops loses the
//! live value with the operation (it is INTERRUPTED at the next start).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How far a long operation has come, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl Progress {
    /// Done over total, 0 to 1 (0 while the total is unknown).
    pub fn fraction(&self) -> f64 {
        match self.bytes_total {
            0 => 0.0,
            total => (self.bytes_done as f64 / total as f64).clamp(0.0, 1.0),
        }
    }

    /// `fraction` (0 to 1) of `total` bytes.
    pub fn of(fraction: f64, total: u64) -> Progress {
        Progress {
            bytes_done: (fraction.clamp(0.0, 1.0) * total as f64) as u64,
            bytes_total: total,
        }
    }
}

/// One long operation in flight: its progress and its cancel.
pub struct Long {
    progress: watch::Sender<Option<Progress>>,
    cancel: CancellationToken,
    /// Who asked it to stop (an actor), once someone did.
    cancelled_by: Mutex<Option<String>>,
}

impl Long {
    /// Reports how far the operation has come; the latest value wins.
    pub fn report(&self, progress: Progress) {
        self.progress.send_replace(Some(progress));
    }

    /// The latest value reported (`None`: none yet).
    pub fn current(&self) -> Option<Progress> {
        *self.progress.borrow()
    }

    /// A receiver of its progress: it sees the latest value, and closes when
    /// the operation has ended and its record says how.
    pub fn watch(&self) -> watch::Receiver<Option<Progress>> {
        self.progress.subscribe()
    }

    /// Asks the operation to stop, for `actor`.
    pub fn cancel(&self, actor: &str) {
        self.cancelled_by
            .lock()
            .expect("cancelled by")
            .get_or_insert_with(|| actor.to_string());
        self.cancel.cancel();
    }

    /// Who asked the operation to stop.
    pub fn cancelled_by(&self) -> Option<String> {
        self.cancelled_by.lock().expect("cancelled by").clone()
    }

    /// Fires when someone asked the operation to stop.
    pub fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// The long operations that run now, by operation id.
#[derive(Default)]
pub struct LongOperations {
    running: Mutex<HashMap<String, Arc<Long>>>,
}

impl LongOperations {
    /// Registers operation `id` as long and running.
    pub fn register(&self, id: &str) -> Arc<Long> {
        let long = Arc::new(Long {
            progress: watch::channel(None).0,
            cancel: CancellationToken::new(),
            cancelled_by: Mutex::default(),
        });
        self.running
            .lock()
            .expect("long operations")
            .insert(id.to_string(), long.clone());
        long
    }

    /// The long operation `id`, while it runs.
    pub fn get(&self, id: &str) -> Option<Arc<Long>> {
        self.running
            .lock()
            .expect("long operations")
            .get(id)
            .cloned()
    }

    /// Forgets operation `id`, once its record says how it ended: its
    /// watchers' receivers close when the last handle goes.
    pub fn remove(&self, id: &str) {
        self.running.lock().expect("long operations").remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_see_the_latest_value_and_a_close_when_the_operation_is_forgotten() {
        let ops = LongOperations::default();
        let long = ops.register("op");
        let mut rx = long.watch();
        long.report(Progress::of(0.25, 400));
        long.report(Progress::of(0.5, 400));
        rx.changed().await.unwrap();
        assert_eq!(
            *rx.borrow_and_update(),
            Some(Progress {
                bytes_done: 200,
                bytes_total: 400
            })
        );
        ops.remove("op");
        drop(long);
        assert!(rx.changed().await.is_err(), "closed once forgotten");
        assert!(ops.get("op").is_none());
    }

    #[test]
    fn a_fraction_is_between_0_and_1() {
        assert_eq!(Progress::default().fraction(), 0.0);
        assert_eq!(Progress::of(2.0, 10).fraction(), 1.0);
        assert_eq!(Progress::of(0.5, 10).bytes_done, 5);
    }
}
