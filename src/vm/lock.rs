//! Per-VM mutual exclusion for mutations.
//!
//! Mutations on one VM run one at a time. A caller that cannot get the lock
//! within the configured deadline fails with `VM_BUSY`, naming the operation
//! that holds it, instead of queueing behind a slow stop.
//!
//! The table holds a slot only while somebody holds or waits for it: the last
//! one out removes it, so IDs that name nothing (or a deleted VM or disk) do
//! not stay behind.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::OwnedMutexGuard;

use crate::{
    error::{ApiError, ApiResult},
    operation::OperationKind,
};

#[derive(Default)]
struct Slot {
    mutex: Arc<tokio::sync::Mutex<()>>,
    holder: Mutex<Option<(String, String)>>,
}

type Table = Arc<Mutex<HashMap<String, Arc<Slot>>>>;

pub struct VmLocks {
    slots: Table,
    timeout: Duration,
}

/// One reference to an id's slot. Every reference is taken under the table's
/// lock (`VmLocks::slot`) and let go under it (on drop, so a caller dropped
/// while it waits lets go too); the last one out removes the slot.
struct SlotRef {
    table: Table,
    id: String,
    /// `Some` until dropped.
    slot: Option<Arc<Slot>>,
}

impl SlotRef {
    fn slot(&self) -> &Slot {
        self.slot.as_ref().expect("slot held until drop")
    }
}

impl Drop for SlotRef {
    fn drop(&mut self) {
        let mut slots = self.table.lock().expect("vm locks");
        drop(self.slot.take());
        if slots
            .get(&self.id)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            slots.remove(&self.id);
        }
    }
}

/// Held while a mutation works on a VM.
pub struct VmGuard {
    slot: SlotRef,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        // Cleared before the mutex guard and the slot (fields) are released.
        *self.slot.slot().holder.lock().expect("vm lock holder") = None;
    }
}

impl VmLocks {
    pub fn new(timeout: Duration) -> Self {
        VmLocks {
            slots: Table::default(),
            timeout,
        }
    }

    fn slot(&self, vm_id: &str) -> SlotRef {
        let slot = self
            .slots
            .lock()
            .expect("vm locks")
            .entry(vm_id.to_string())
            .or_default()
            .clone();
        SlotRef {
            table: self.slots.clone(),
            id: vm_id.to_string(),
            slot: Some(slot),
        }
    }

    fn guard(
        slot: SlotRef,
        guard: OwnedMutexGuard<()>,
        operation_id: &str,
        kind: OperationKind,
    ) -> VmGuard {
        *slot.slot().holder.lock().expect("vm lock holder") =
            Some((operation_id.to_string(), kind.to_string()));
        VmGuard {
            slot,
            _guard: guard,
        }
    }

    pub async fn lock(
        &self,
        vm_id: &str,
        operation_id: &str,
        kind: OperationKind,
    ) -> ApiResult<VmGuard> {
        let slot = self.slot(vm_id);
        let mutex = slot.slot().mutex.clone();
        match tokio::time::timeout(self.timeout, mutex.lock_owned()).await {
            Ok(guard) => Ok(Self::guard(slot, guard, operation_id, kind)),
            Err(_) => {
                let (operation_id, kind) = slot
                    .slot()
                    .holder
                    .lock()
                    .expect("vm lock holder")
                    .clone()
                    .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
                Err(ApiError::VmBusy {
                    vm_id: vm_id.to_string(),
                    operation_id,
                    kind,
                })
            }
        }
    }

    /// Takes a VM's lock only if nobody holds it (the observer never queues
    /// behind a mutation).
    pub fn try_lock(
        &self,
        vm_id: &str,
        operation_id: &str,
        kind: OperationKind,
    ) -> Option<VmGuard> {
        let slot = self.slot(vm_id);
        let guard = slot.slot().mutex.clone().try_lock_owned().ok()?;
        Some(Self::guard(slot, guard, operation_id, kind))
    }

    /// The operation holding a VM's lock, if any (id, kind).
    pub fn holder(&self, vm_id: &str) -> Option<(String, String)> {
        let slots = self.slots.lock().expect("vm locks");
        let holder = slots.get(vm_id)?.holder.lock().expect("vm lock holder");
        holder.clone()
    }

    /// How many callers hold or wait for `id`'s lock.
    pub fn callers(&self, id: &str) -> usize {
        let slots = self.slots.lock().expect("vm locks");
        slots.get(id).map_or(0, |s| Arc::strong_count(s) - 1)
    }

    /// How many slots the table holds (held or waited for).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().expect("vm locks").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second caller of `id`'s lock, in a task, once it waits.
    async fn queue(
        locks: &Arc<VmLocks>,
        id: &'static str,
    ) -> tokio::task::JoinHandle<ApiResult<()>> {
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move {
                locks
                    .lock(id, "op-2", OperationKind::StopVm)
                    .await
                    .map(drop)
            }
        });
        while locks.callers(id) < 2 {
            tokio::task::yield_now().await;
        }
        waiter
    }

    #[tokio::test]
    async fn a_second_caller_is_told_who_holds_the_lock() {
        let locks = VmLocks::new(Duration::from_millis(50));
        let held = locks
            .lock("vm", "op-1", OperationKind::StartVm)
            .await
            .unwrap();
        match locks.lock("vm", "op-2", OperationKind::StopVm).await {
            Err(ApiError::VmBusy {
                operation_id, kind, ..
            }) => {
                assert_eq!((operation_id.as_str(), kind.as_str()), ("op-1", "START_VM"));
            }
            _ => panic!("expected VM_BUSY"),
        }
        assert!(
            locks
                .lock("other-vm", "op-3", OperationKind::StopVm)
                .await
                .is_ok()
        );
        drop(held);
        assert!(
            locks
                .lock("vm", "op-2", OperationKind::StopVm)
                .await
                .is_ok()
        );
        assert_eq!(locks.len(), 0, "every guard is gone, so is every slot");
    }

    #[tokio::test]
    async fn the_table_keeps_a_slot_only_while_it_is_held_or_awaited() {
        let locks = Arc::new(VmLocks::new(Duration::from_secs(5)));
        // An ID that names nothing: locked, refused by the caller, let go.
        drop(
            locks
                .lock("no-such-vm", "op-1", OperationKind::StartVm)
                .await
                .unwrap(),
        );
        assert_eq!(locks.len(), 0);
        assert!(
            locks
                .try_lock("no-such-vm", "op-1", OperationKind::CoherenceRepair)
                .is_some()
        );
        assert_eq!(locks.len(), 0);

        // A waiter keeps the slot after the holder lets go, and takes it over.
        let held = locks
            .lock("vm", "op-1", OperationKind::StartVm)
            .await
            .unwrap();
        let waiter = queue(&locks, "vm").await;
        assert!(
            locks
                .try_lock("vm", "op-3", OperationKind::CoherenceRepair)
                .is_none()
        );
        drop(held);
        assert_eq!(locks.len(), 1, "the waiter still needs the slot");
        waiter.await.unwrap().unwrap();
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_nothing_behind() {
        let locks = VmLocks::new(Duration::from_millis(20));
        let held = locks
            .lock("vm", "op-1", OperationKind::StartVm)
            .await
            .unwrap();
        assert!(
            locks
                .lock("vm", "op-2", OperationKind::StopVm)
                .await
                .is_err()
        );
        assert_eq!(locks.holder("vm"), Some(("op-1".into(), "START_VM".into())));
        drop(held);
        assert_eq!(locks.len(), 0);
        assert_eq!(locks.holder("vm"), None);
    }

    #[tokio::test]
    async fn a_caller_dropped_while_it_waits_leaves_nothing_behind() {
        let locks = Arc::new(VmLocks::new(Duration::from_secs(5)));
        let held = locks
            .lock("vm", "op-1", OperationKind::StartVm)
            .await
            .unwrap();
        let waiter = queue(&locks, "vm").await;
        drop(held);
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(locks.len(), 0);
    }
}
