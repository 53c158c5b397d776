//! Per-VM mutual exclusion for mutations.
//!
//! Mutations on one VM run one at a time. A caller that cannot get the lock
//! within the configured deadline fails with `VM_BUSY`, naming the operation
//! that holds it, instead of queueing behind a slow stop.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::OwnedMutexGuard;

use crate::error::{ApiError, ApiResult};

#[derive(Default)]
struct Slot {
    mutex: Arc<tokio::sync::Mutex<()>>,
    holder: Mutex<Option<(String, String)>>,
}

pub struct VmLocks {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    timeout: Duration,
}

/// Held while a mutation works on a VM.
pub struct VmGuard {
    slot: Arc<Slot>,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        // Cleared before the mutex guard (a field) is released.
        *self.slot.holder.lock().expect("vm lock holder") = None;
    }
}

impl VmLocks {
    pub fn new(timeout: Duration) -> Self {
        VmLocks {
            slots: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn slot(&self, vm_id: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .expect("vm locks")
            .entry(vm_id.to_string())
            .or_default()
            .clone()
    }

    pub async fn lock(&self, vm_id: &str, operation_id: &str, kind: &str) -> ApiResult<VmGuard> {
        let slot = self.slot(vm_id);
        match tokio::time::timeout(self.timeout, slot.mutex.clone().lock_owned()).await {
            Ok(guard) => {
                *slot.holder.lock().expect("vm lock holder") =
                    Some((operation_id.to_string(), kind.to_string()));
                Ok(VmGuard {
                    slot,
                    _guard: guard,
                })
            }
            Err(_) => {
                let (operation_id, kind) = slot
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
    pub fn try_lock(&self, vm_id: &str, operation_id: &str, kind: &str) -> Option<VmGuard> {
        let slot = self.slot(vm_id);
        let guard = slot.mutex.clone().try_lock_owned().ok()?;
        *slot.holder.lock().expect("vm lock holder") =
            Some((operation_id.to_string(), kind.to_string()));
        Some(VmGuard {
            slot,
            _guard: guard,
        })
    }

    /// The operation holding a VM's lock, if any (id, kind).
    pub fn holder(&self, vm_id: &str) -> Option<(String, String)> {
        let slot = self.slots.lock().expect("vm locks").get(vm_id).cloned()?;
        slot.holder.lock().expect("vm lock holder").clone()
    }

    /// Forgets a deleted VM's slot.
    pub fn forget(&self, vm_id: &str) {
        self.slots.lock().expect("vm locks").remove(vm_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_caller_is_told_who_holds_the_lock() {
        let locks = VmLocks::new(Duration::from_millis(50));
        let held = locks.lock("vm", "op-1", "START_VM").await.unwrap();
        match locks.lock("vm", "op-2", "STOP_VM").await {
            Err(ApiError::VmBusy {
                operation_id, kind, ..
            }) => {
                assert_eq!((operation_id.as_str(), kind.as_str()), ("op-1", "START_VM"));
            }
            _ => panic!("expected VM_BUSY"),
        }
        assert!(locks.lock("other-vm", "op-3", "STOP_VM").await.is_ok());
        drop(held);
        assert!(locks.lock("vm", "op-2", "STOP_VM").await.is_ok());
    }
}
