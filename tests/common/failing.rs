//! Host ports that fail on purpose: both wrap a real (or dry-run) port and
//! share one count of `execute` calls, whichever port gets them, so "the
//! Nth host action of a mutation fails" means the same thing for a VM's
//! start (a tap, then QEMU) as for a disk's creation. The Nth `execute`
//! returns `HostError::Failed("injected failure at step N")` without
//! reaching the host; every other call is delegated.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::broadcast;
use vman::{
    context::Ctx,
    host::{
        Adoption, DiskSeen, DiskSpec, HostError, HostEvent, HostNetwork, HostStep, Hypervisor,
        LinkSeen, NetworkAction, NetworkCapabilities, NicSpec, OrphanSeen, Outcome, ProbeTarget,
        VmAction, VmProbe, VmSpec,
    },
};

/// The shared count, and the names of the actions executed (in order, the
/// failed one and any undo included).
#[derive(Debug, Default)]
pub struct Steps {
    count: AtomicUsize,
    /// The step that fails (counted from 1); 0: none.
    fail_at: usize,
    names: Mutex<Vec<&'static str>>,
}

impl Steps {
    /// Every action executed so far, by name (`VmAction::name`, `NetworkAction::name`).
    pub fn names(&self) -> Vec<&'static str> {
        self.names.lock().unwrap().clone()
    }

    fn next(&self, name: &'static str) -> Result<(), HostError> {
        self.names.lock().unwrap().push(name);
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_at {
            return Err(HostError::Failed(format!("injected failure at step {n}")));
        }
        Ok(())
    }
}

/// A copy of `ctx` whose host ports fail at step `fail_at` (None: never, to
/// count a mutation's steps), and the steps they see.
pub fn ctx_failing_at(ctx: &Ctx, fail_at: Option<usize>) -> (Ctx, Arc<Steps>) {
    let steps = Arc::new(Steps {
        fail_at: fail_at.unwrap_or(0),
        ..Default::default()
    });
    let mut failing = ctx.clone();
    failing.hypervisor = Arc::new(FailingHypervisor {
        inner: ctx.hypervisor.clone(),
        steps: steps.clone(),
    });
    failing.network = Arc::new(FailingNetwork {
        inner: ctx.network.clone(),
        steps: steps.clone(),
    });
    (failing, steps)
}

pub struct FailingHypervisor {
    inner: Arc<dyn Hypervisor>,
    steps: Arc<Steps>,
}

#[async_trait]
impl Hypervisor for FailingHypervisor {
    fn plan(&self, action: &VmAction) -> Vec<HostStep> {
        self.inner.plan(action)
    }

    async fn execute(&self, action: &VmAction) -> Result<Outcome, HostError> {
        self.steps.next(action.name())?;
        self.inner.execute(action).await
    }

    fn is_dry_run(&self) -> bool {
        self.inner.is_dry_run()
    }

    async fn adopt(&self, spec: &VmSpec) -> Result<Adoption, HostError> {
        self.inner.adopt(spec).await
    }

    async fn finish_detach(&self, vm_id: &str, disk: &DiskSpec) -> Result<(), HostError> {
        self.inner.finish_detach(vm_id, disk).await
    }

    async fn finish_detach_nic(&self, vm_id: &str, nic: &NicSpec) -> Result<(), HostError> {
        self.inner.finish_detach_nic(vm_id, nic).await
    }

    fn events(&self) -> broadcast::Receiver<HostEvent> {
        self.inner.events()
    }

    async fn probe(&self, target: &ProbeTarget, timeout: Duration) -> VmProbe {
        self.inner.probe(target, timeout).await
    }

    async fn inspect_disk(&self, disk: &DiskSpec) -> Option<DiskSeen> {
        self.inner.inspect_disk(disk).await
    }

    async fn orphans(&self, run_root: &Path, known: &HashSet<String>) -> Vec<OrphanSeen> {
        self.inner.orphans(run_root, known).await
    }

    async fn remove_partials(&self, storage: &Path) -> Vec<PathBuf> {
        self.inner.remove_partials(storage).await
    }

    async fn command_line(&self, vm_id: &str) -> Option<Vec<String>> {
        self.inner.command_line(vm_id).await
    }

    async fn counters(
        &self,
        vm_id: &str,
        timeout: std::time::Duration,
    ) -> Option<vman::host::VmCounters> {
        self.inner.counters(vm_id, timeout).await
    }

    async fn list_dir(&self, dir: &Path) -> Option<Vec<vman::host::FileSeen>> {
        self.inner.list_dir(dir).await
    }

    fn console(&self, vm_id: &str, run_dir: &Path) -> vman::host::ConsoleAccess {
        self.inner.console(vm_id, run_dir)
    }
}

pub struct FailingNetwork {
    inner: Arc<dyn HostNetwork>,
    steps: Arc<Steps>,
}

#[async_trait]
impl HostNetwork for FailingNetwork {
    fn plan(&self, action: &NetworkAction) -> Vec<HostStep> {
        self.inner.plan(action)
    }

    async fn execute(&self, action: &NetworkAction) -> Result<Outcome, HostError> {
        self.steps.next(action.name())?;
        self.inner.execute(action).await
    }

    async fn links(&self) -> Result<HashMap<String, LinkSeen>, HostError> {
        self.inner.links().await
    }

    fn capabilities(&self) -> NetworkCapabilities {
        self.inner.capabilities()
    }

    fn link_counters(&self, name: &str) -> Option<vman::host::LinkCounters> {
        self.inner.link_counters(name)
    }
}
