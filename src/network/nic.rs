//! NICs: a VM's interface on a network. Each NIC has a persistent tap named
//! from its VM and position ([`tap_name`]), enslaved to the network's bridge.
//!
//! A tap exists while its VM runs: it is made before QEMU starts (or before a
//! hot-plug) and removed when the VM stops or the NIC is detached
//! ([`release_taps`]). A vman restart leaves running VMs' taps alone.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, ModelTrait,
    QueryFilter, QueryOrder, Set,
};

use super::model::{self, nic::Attachment};
use super::{Network, Nic};
use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::{NewEvent, Payload, Writer, find_in},
    host::{HostStep, NetworkAction, NicSpec, VmAction},
    operation::{self, Change, HostAction, OperationKind, Request, SubjectType},
    validate,
    vm::{self, Plug},
};

/// NICs per VM: each takes a root port, and positions name taps (two digits).
pub const MAX_NICS_PER_VM: i32 = 8;

/// The tap of a VM's NIC: `vt`, 10 hex digits of a 64-bit FNV-1a hash of the
/// VM's full UUID, and the NIC's position (0-99): at most 14 bytes (the kernel
/// allows 15). Deterministic, so vman finds a running VM's taps after a
/// restart without asking the host. Not the UUID's first characters: UUIDv7
/// starts with a timestamp, so VMs created in the same millisecond share them;
/// the hash covers the random tail. Two VMs sharing 40 hash bits is not
/// expected (about 1 in 10^12 for a thousand VMs), and the `nics.tap` unique
/// index turns it into a CONFLICT rather than a shared tap.
pub fn tap_name(vm_id: &str, position: i32) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in vm_id.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("vt{:010x}{position}", hash >> 24)
}

/// A NIC's tap: the stored name (rows from before taps were stored: the generated one).
pub fn spec_tap(nic: &Nic) -> String {
    nic.tap
        .clone()
        .unwrap_or_else(|| tap_name(&nic.vm_id, nic.position))
}

/// The host's view of a NIC.
pub fn spec(nic: &Nic, network: &Network) -> NicSpec {
    NicSpec {
        id: nic.id.clone(),
        mac: nic.mac.clone(),
        model: nic.model.clone(),
        tap: spec_tap(nic),
        bridge: network.bridge.clone(),
    }
}

/// A VM's attached NICs in position order, as the host sees them.
pub async fn specs(app: &Ctx, vm_id: &str) -> ApiResult<Vec<NicSpec>> {
    let nics = model::nic::Entity::find()
        .filter(model::nic::Column::VmId.eq(vm_id))
        .filter(model::nic::Column::Attachment.eq(Attachment::Attached))
        .order_by_asc(model::nic::Column::Position)
        .all(&app.db)
        .await?;
    let mut specs = Vec::with_capacity(nics.len());
    for nic in &nics {
        let network = find_in::<model::Entity, _>(&app.db, "network", &nic.network_id).await?;
        specs.push(spec(nic, &network));
    }
    Ok(specs)
}

/// The taps a VM's start needs (made before QEMU opens them).
pub fn start_actions(nics: &[NicSpec]) -> Vec<NetworkAction> {
    nics.iter()
        .map(|nic| NetworkAction::EnsureTap {
            tap: nic.tap.clone(),
            bridge: nic.bridge.clone(),
        })
        .collect()
}

/// The taps a stopped VM leaves behind, to remove.
pub fn stop_actions(nics: &[NicSpec]) -> Vec<NetworkAction> {
    nics.iter()
        .map(|nic| NetworkAction::DeleteTap {
            tap: nic.tap.clone(),
        })
        .collect()
}

/// Call when a VM's QEMU is gone (a stop, a failed start, a crash or a guest
/// power-off seen by the observer): removes the taps of all its NICs and
/// completes the detach of its DETACHING NICs. Best effort per tap (a tap
/// that cannot be removed is logged, the others still go); returns the steps.
pub async fn release_taps(app: &Ctx, vm_id: &str) -> ApiResult<Vec<HostStep>> {
    let nics = model::nic::Entity::find()
        .filter(model::nic::Column::VmId.eq(vm_id))
        .order_by_asc(model::nic::Column::Position)
        .all(&app.db)
        .await?;
    let mut steps = Vec::new();
    for nic in &nics {
        let tap = spec_tap(nic);
        match app
            .network
            .execute(&NetworkAction::DeleteTap { tap: tap.clone() })
            .await
        {
            Ok(outcome) => steps.extend(outcome.steps),
            Err(e) => {
                tracing::error!(vm = vm_id, %tap, error = %e, "removing the tap of a stopped VM")
            }
        }
        if nic.attachment == Attachment::Detaching {
            let mut w = app.bus.writer().await?;
            forget(&mut w, &nic.id, None).await?;
            w.commit().await?;
        }
    }
    Ok(steps)
}

/// Deletes a NIC row in `w`, if it still exists, journaling NIC_DETACHED.
async fn forget(
    w: &mut Writer<'_>,
    nic_id: &str,
    operation_id: Option<&str>,
) -> ApiResult<Option<Nic>> {
    let Some(nic) = model::nic::Entity::find_by_id(nic_id.to_string())
        .one(w.txn())
        .await?
    else {
        return Ok(None);
    };
    nic.clone().delete(w.txn()).await?;
    w.record(detached_event(&nic, operation_id)).await?;
    Ok(Some(nic))
}

pub fn detached_event(nic: &Nic, operation_id: Option<&str>) -> NewEvent {
    NewEvent::new(
        &nic.id,
        operation_id,
        Payload::NicDetached {
            vm_id: nic.vm_id.clone(),
            network_id: nic.network_id.clone(),
            mac: nic.mac.clone(),
            tap: nic.tap.clone(),
        },
    )
}

async fn ensure_mac_free(db: &impl ConnectionTrait, mac: &str) -> ApiResult<()> {
    if model::nic::Entity::find()
        .filter(model::nic::Column::Mac.eq(mac))
        .one(db)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "MAC {mac} is already used by a NIC"
        )));
    }
    Ok(())
}

/// A locally administered unicast MAC (`02:` and five random bytes) no NIC uses.
pub(crate) async fn generate_mac(db: &impl ConnectionTrait) -> ApiResult<String> {
    use std::io::Read;
    for _ in 0..16 {
        let mut bytes = [0u8; 5];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(ApiError::internal)?;
        let mac = format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]
        );
        if ensure_mac_free(db, &mac).await.is_ok() {
            return Ok(mac);
        }
    }
    Err(ApiError::Conflict("no free MAC address found".into()))
}

/// Writes a new NIC's row (its MAC checked again in the write) and
/// journals NIC_ATTACHED.
pub(crate) async fn insert_attached(
    w: &mut crate::events::Writer<'_>,
    nic: &Nic,
    hot: bool,
    op: &str,
) -> ApiResult<Nic> {
    ensure_mac_free(w.txn(), &nic.mac).await?;
    let nic = model::nic::ActiveModel::from(nic.clone())
        .insert(w.txn())
        .await?;
    w.record(NewEvent::new(
        &nic.id,
        Some(op),
        Payload::NicAttached {
            vm_id: nic.vm_id.clone(),
            network_id: nic.network_id.clone(),
            mac: nic.mac.clone(),
            model: nic.model.clone(),
            tap: nic.tap.clone(),
            hot,
        },
    ))
    .await?;
    Ok(nic)
}

pub struct AttachNic {
    pub vm_id: String,
    pub network_id: String,
    pub mac: Option<String>,
    pub model: Option<String>,
}

/// Attaches a new NIC: its tap and a hot-plug when the VM runs, recorded for
/// the next start otherwise.
pub async fn attach(app: &Ctx, input: AttachNic, dry_run: bool) -> ApiResult<Change<Nic>> {
    let vm_id = validate::id("vmId", &input.vm_id)?;
    let network_id = validate::id("networkId", &input.network_id)?;
    let model = input.model.unwrap_or_else(|| "virtio-net-pci".into());
    validate::nic_model(&model)?;
    let mac = input.mac.as_deref().map(validate::mac).transpose()?;
    let op_id = operation::new_id();
    let kind = OperationKind::AttachNic;
    let _vm_guard = app.locks.lock(&vm_id, &op_id, kind).await?;
    let vm = find_in::<vm::model::Entity, _>(&app.db, "VM", &vm_id).await?;
    crate::cluster::check_local(app, &vm).await?;
    let network = find_in::<model::Entity, _>(&app.db, "network", &network_id).await?;
    let hot = vm::plug(&vm, "attach a NIC to")? == Plug::Hot;
    let existing = model::nic::Entity::find()
        .filter(model::nic::Column::VmId.eq(&vm.id))
        .all(&app.db)
        .await?;
    let position = (0..MAX_NICS_PER_VM)
        .find(|p| existing.iter().all(|n| n.position != *p))
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "VM {:?} has {MAX_NICS_PER_VM} NICs, the most it may have",
                vm.name
            ))
        })?;
    let mac = match mac {
        Some(mac) => {
            ensure_mac_free(&app.db, &mac).await?;
            mac
        }
        None => generate_mac(&app.db).await?,
    };
    let tap = tap_name(&vm.id, position);
    if let Some(other) = model::nic::Entity::find()
        .filter(model::nic::Column::Tap.eq(&tap))
        .one(&app.db)
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "tap {tap} is already used by NIC {}",
            other.id
        )));
    }
    let nic = Nic {
        id: uuid::Uuid::now_v7().to_string(),
        vm_id: vm.id.clone(),
        network_id: network.id.clone(),
        mac,
        model,
        position,
        tap: Some(tap.clone()),
        attachment: Attachment::Attached,
        created_at: Utc::now(),
    };
    let nic_spec = spec(&nic, &network);
    // The first NIC on this network on this host makes its bridge here.
    let make_bridge = (!super::made_on(&app.db, &network.id, &app.host_id).await?)
        .then(|| super::ensure_action(&network));
    let ensure_tap = NetworkAction::EnsureTap {
        tap: tap.clone(),
        bridge: network.bridge.clone(),
    };
    let plug = VmAction::AttachNic {
        vm_id: vm.id.clone(),
        nic: nic_spec,
    };
    if dry_run {
        let mut plan: Vec<HostStep> = make_bridge
            .iter()
            .flat_map(|a| app.network.plan(a))
            .collect();
        if hot {
            plan.extend(app.network.plan(&ensure_tap));
            plan.extend(app.hypervisor.plan(&plug));
        }
        return Ok(Change::planned(nic, plan));
    }
    if hot && !app.network.capabilities().taps.supported {
        return Err(ApiError::Host(format!(
            "this host cannot make taps (capability taps: {})",
            app.network.capabilities().taps.detail
        )));
    }
    let request = Request::with_id(op_id, kind, SubjectType::Nic, &nic.id);
    operation::run(app, request, async |env| {
        if let Some(action) = &make_bridge {
            env.network(action).await?;
            env.undo_with(HostAction::Network(super::delete_action(&network)));
        }
        if hot {
            env.network(&ensure_tap).await?;
            env.undo_with(HostAction::Network(NetworkAction::DeleteTap {
                tap: tap.clone(),
            }));
            env.vm(&plug).await?;
        }
        env.commit(async |w, op| {
            find_in::<model::Entity, _>(w.txn(), "network", &network.id).await?;
            super::record_made_on(w.txn(), &network, &app.host_id).await?;
            insert_attached(w, &nic, hot, op).await
        })
        .await
    })
    .await
}

pub async fn find_nic(app: &Ctx, id: &str) -> ApiResult<Nic> {
    let id = validate::id("nicId", id)?;
    find_in::<model::nic::Entity, _>(&app.db, "NIC", &id).await
}

/// Detaches a NIC: unplugged from a running VM (the guest must let go), its
/// tap removed, and the NIC deleted. A guest that has not let go within the
/// wait leaves the NIC DETACHING; it goes when the guest lets go or the VM stops.
pub async fn detach(app: &Ctx, nic_id: &str, dry_run: bool) -> ApiResult<Change<Nic>> {
    let nic = find_nic(app, nic_id).await?;
    let op_id = operation::new_id();
    let kind = OperationKind::DetachNic;
    let _vm_guard = app.locks.lock(&nic.vm_id, &op_id, kind).await?;
    let nic = find_in::<model::nic::Entity, _>(&app.db, "NIC", &nic.id).await?;
    if nic.attachment == Attachment::Detaching {
        return Err(ApiError::Conflict(format!(
            "NIC {} is already detaching: its guest has not let go yet",
            nic.id
        )));
    }
    let vm = find_in::<vm::model::Entity, _>(&app.db, "VM", &nic.vm_id).await?;
    crate::cluster::check_local(app, &vm).await?;
    let network = find_in::<model::Entity, _>(&app.db, "network", &nic.network_id).await?;
    let hot = vm::plug(&vm, "detach a NIC from")? == Plug::Hot;
    let nic_spec = spec(&nic, &network);
    let unplug = hot.then(|| VmAction::DetachNic {
        vm_id: vm.id.clone(),
        nic: nic_spec.clone(),
    });
    let remove_tap = NetworkAction::DeleteTap {
        tap: nic_spec.tap.clone(),
    };
    if dry_run {
        let mut plan: Vec<HostStep> = unplug.iter().flat_map(|a| app.hypervisor.plan(a)).collect();
        plan.extend(app.network.plan(&remove_tap));
        return Ok(Change::planned(nic, plan));
    }
    let request = Request::with_id(op_id, kind, SubjectType::Nic, &nic.id);
    operation::run(app, request, async |env| {
        let outcome = match &unplug {
            Some(action) => env.vm(action).await?,
            None => Default::default(),
        };
        if outcome.detach_pending {
            let nic = env
                .commit(async |w, _| {
                    let mut row = nic.clone().into_active_model();
                    row.attachment = Set(Attachment::Detaching);
                    Ok(row.update(w.txn()).await?)
                })
                .await?;
            spawn_finish_detach(app, nic.clone(), nic_spec.clone());
            return Ok(nic);
        }
        env.network(&remove_tap).await?;
        env.commit(async |w, op| {
            let mut gone = forget(w, &nic.id, Some(op)).await?.unwrap_or(nic.clone());
            gone.attachment = Attachment::Detached;
            Ok(gone)
        })
        .await
    })
    .await
}

fn spawn_finish_detach(app: &Ctx, nic: Nic, spec: NicSpec) {
    let hypervisor = app.hypervisor.clone();
    let network = app.network.clone();
    let bus = app.bus.clone();
    let cancel = app.cancel.clone();
    tokio::spawn(async move {
        let finished = tokio::select! {
            _ = cancel.cancelled() => return,
            r = hypervisor.finish_detach_nic(&nic.vm_id, &spec) => r,
        };
        if let Err(e) = finished {
            tracing::error!(nic = %nic.id, error = %e, "completing a NIC detach");
            return;
        }
        if let Err(e) = network
            .execute(&NetworkAction::DeleteTap {
                tap: spec.tap.clone(),
            })
            .await
        {
            tracing::error!(nic = %nic.id, tap = %spec.tap, error = %e, "removing the tap of a detached NIC");
        }
        let forgotten = async {
            let mut w = bus.writer().await?;
            let Some(nic) = model::nic::Entity::find_by_id(nic.id.clone())
                .one(w.txn())
                .await?
            else {
                return ApiResult::Ok(());
            };
            if nic.attachment == Attachment::Detaching {
                nic.clone().delete(w.txn()).await?;
                w.record(detached_event(&nic, None)).await?;
                w.commit().await?;
            }
            ApiResult::Ok(())
        }
        .await;
        if let Err(e) = forgotten {
            tracing::error!(nic = %nic.id, error = %e, "recording a completed NIC detach");
        }
    });
}
