//! Changing a VM after it is made (`updateVm`). What a running QEMU cannot
//! take (its CPU count, its memory) waits as *pending changes* on the VM and
//! is applied when the VM next starts; the rest (name, description, tags)
//! changes at once, whatever the state.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, IntoActiveModel, Set};
use serde::{Deserialize, Serialize};

use super::{Vm, VmState, ensure_vm_name_free, model, tag};
use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::{NewEvent, Payload, Writer, find_in},
    operation::{self, Change, OperationKind, Request, SubjectType},
    validate,
};

/// Longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;
/// Most tags a VM may have.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG: usize = 63;

/// Changes waiting for the next start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
    /// As stored ([`super::media::store`]); empty: the firmware's own order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<String>,
}

impl Pending {
    pub fn of(vm: &Vm) -> Pending {
        vm.pending_changes
            .clone()
            .and_then(|json| serde_json::from_value(json).ok())
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self == &Pending::default()
    }

    fn to_json(&self) -> Option<serde_json::Value> {
        (!self.is_empty()).then(|| serde_json::to_value(self).unwrap_or_default())
    }

    fn fields(&self) -> Vec<String> {
        let mut fields = Vec::new();
        if self.vcpus.is_some() {
            fields.push("vcpus".to_string());
        }
        if self.memory_mib.is_some() {
            fields.push("memoryMib".to_string());
        }
        if self.boot_order.is_some() {
            fields.push("bootOrder".to_string());
        }
        fields
    }
}

/// The VM as its next start makes it: its pending changes applied.
pub fn effective(vm: &Vm) -> Vm {
    let pending = Pending::of(vm);
    let mut vm = vm.clone();
    vm.vcpus = pending.vcpus.unwrap_or(vm.vcpus);
    vm.memory_mib = pending.memory_mib.unwrap_or(vm.memory_mib);
    if let Some(order) = pending.boot_order {
        vm.boot_order = (!order.is_empty()).then_some(order);
    }
    vm
}

/// Inside a start's final write: makes the pending changes the VM's own
/// settings (its QEMU was just started with them) and journals it.
pub async fn apply_pending(w: &mut Writer<'_>, vm: &Vm, op: &str) -> ApiResult<()> {
    let pending = Pending::of(vm);
    if pending.is_empty() {
        return Ok(());
    }
    let now = effective(vm);
    model::ActiveModel {
        id: Set(vm.id.clone()),
        vcpus: Set(now.vcpus),
        memory_mib: Set(now.memory_mib),
        boot_order: Set(now.boot_order.clone()),
        pending_changes: Set(None),
        updated_at: Set(Utc::now()),
        ..Default::default()
    }
    .update(w.txn())
    .await?;
    w.record(NewEvent::new(
        &vm.id,
        Some(op),
        Payload::VmUpdated {
            name: vm.name.clone(),
            changed: pending.fields(),
            pending: Vec::new(),
        },
    ))
    .await?;
    Ok(())
}

/// Checks tags: each 1 to [`MAX_TAG`] bytes of lowercase letters, digits,
/// `-`, `_`, `.`, `:` and `/`, starting with a letter or digit; at most
/// [`MAX_TAGS`]. Returns them sorted, without repeats.
pub fn check_tags(tags: &[String]) -> ApiResult<Vec<String>> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::bad_input(format!(
            "at most {MAX_TAGS} tags, not {}",
            tags.len()
        )));
    }
    for tag in tags {
        let ok_char = |c: char| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | ':' | '/')
        };
        let first_ok = tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if tag.len() > MAX_TAG || !first_ok || !tag.chars().all(ok_char) {
            return Err(ApiError::bad_input(format!(
                "tag {:?} is not valid: 1 to {MAX_TAG} characters, lowercase letters, digits, '-', '_', '.', ':' or '/', a letter or digit first",
                tag.chars().take(80).collect::<String>()
            )));
        }
    }
    let mut tags = tags.to_vec();
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// What `updateVm` may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UpdateVm {
    pub name: Option<String>,
    pub description: Option<String>,
    pub vcpus: Option<i32>,
    pub memory_mib: Option<i64>,
    /// The whole new set of tags.
    pub tags: Option<Vec<String>>,
    /// Empty: the firmware's own order.
    pub boot_order: Option<Vec<crate::host::BootDevice>>,
    /// `Some(None)`: remove it; a change takes effect at the next boot.
    pub cloud_init: Option<Option<super::cloud_init::CloudInit>>,
}

/// States in which a new CPU count or memory size applies at once: no
/// QEMU runs with the old one.
fn applies_now(state: VmState) -> bool {
    matches!(state, VmState::Stopped | VmState::Crashed)
}

/// `updateVm`: on a stopped VM everything applies at once; on any other,
/// `vcpus` and `memoryMib` wait for the next start (as `pendingChanges`)
/// and the rest applies at once. Bad input changes nothing.
pub async fn update(ctx: &Ctx, id: &str, input: UpdateVm) -> ApiResult<Change<Vm>> {
    let id = validate::id("id", id)?;
    let limits = &ctx.config.limits;
    if let Some(name) = &input.name {
        validate::name("name", name)?;
    }
    if let Some(description) = &input.description {
        validate::text("description", description, MAX_DESCRIPTION)?;
    }
    if let Some(vcpus) = input.vcpus {
        validate::vcpus(limits, vcpus)?;
    }
    if let Some(memory_mib) = input.memory_mib {
        validate::memory_mib(limits, memory_mib)?;
    }
    let tags = input.tags.as_deref().map(check_tags).transpose()?;
    let boot_order = input
        .boot_order
        .as_deref()
        .map(super::media::store)
        .transpose()?;
    if let Some(Some(data)) = &input.cloud_init {
        data.check()?;
    }
    let op_id = operation::new_id();
    let _guard = ctx.locks.lock(&id, &op_id, OperationKind::UpdateVm).await?;
    let vm = find_in::<model::Entity, _>(&ctx.db, "VM", &id).await?;
    crate::cluster::check_local(ctx, &vm).await?;
    if let Some(name) = input.name.as_ref().filter(|name| **name != vm.name) {
        ensure_vm_name_free(&ctx.db, name).await?;
    }
    let request = Request::with_id(op_id, OperationKind::UpdateVm, SubjectType::Vm, &vm.id);
    operation::run(ctx, request, async |env| {
        env.commit(async |w, op| {
            let mut changed = Vec::new();
            let mut row = vm.clone().into_active_model();
            if let Some(name) = input.name.as_ref().filter(|name| **name != vm.name) {
                ensure_vm_name_free(w.txn(), name).await?;
                row.name = Set(name.clone());
                changed.push("name".to_string());
            }
            if let Some(description) = input.description.as_ref().filter(|d| **d != vm.description)
            {
                row.description = Set(description.clone());
                changed.push("description".to_string());
            }
            if let Some(tags) = &tags
                && *tags != tag::of(w.txn(), &vm.id).await?
            {
                tag::set(w.txn(), &vm.id, tags).await?;
                changed.push("tags".to_string());
            }
            // The guest reads it at its next boot, whatever the VM's state.
            if let Some(data) = &input.cloud_init
                && super::cloud_init::set(w.txn(), &vm.id, data.as_ref()).await?
            {
                changed.push("cloudInit".to_string());
            }
            let mut pending = Pending::of(&vm);
            let now = applies_now(vm.state);
            if let Some(vcpus) = input.vcpus {
                if now {
                    row.vcpus = Set(vcpus);
                    pending.vcpus = None;
                    (vcpus != vm.vcpus).then(|| changed.push("vcpus".to_string()));
                } else {
                    pending.vcpus = (vcpus != vm.vcpus).then_some(vcpus);
                }
            }
            if let Some(memory_mib) = input.memory_mib {
                if now {
                    row.memory_mib = Set(memory_mib);
                    pending.memory_mib = None;
                    (memory_mib != vm.memory_mib).then(|| changed.push("memoryMib".to_string()));
                } else {
                    pending.memory_mib = (memory_mib != vm.memory_mib).then_some(memory_mib);
                }
            }
            if let Some(order) = &boot_order {
                if now {
                    row.boot_order = Set(order.clone());
                    pending.boot_order = None;
                    if *order != vm.boot_order {
                        changed.push("bootOrder".to_string());
                    }
                } else {
                    pending.boot_order =
                        (*order != vm.boot_order).then(|| order.clone().unwrap_or_default());
                }
            }
            row.pending_changes = Set(pending.to_json());
            row.updated_at = Set(Utc::now());
            let updated = row.update(w.txn()).await?;
            w.record(NewEvent::new(
                &vm.id,
                Some(op),
                Payload::VmUpdated {
                    name: updated.name.clone(),
                    changed,
                    pending: pending.fields(),
                },
            ))
            .await?;
            Ok(updated)
        })
        .await
    })
    .await
}

/// `clearPendingChanges`: drops the changes waiting for the next start.
pub async fn clear_pending(ctx: &Ctx, id: &str) -> ApiResult<Change<Vm>> {
    update_pending(ctx, id, |_| Pending::default()).await
}

async fn update_pending(
    ctx: &Ctx,
    id: &str,
    new: impl FnOnce(&Pending) -> Pending,
) -> ApiResult<Change<Vm>> {
    let id = validate::id("id", id)?;
    let op_id = operation::new_id();
    let _guard = ctx.locks.lock(&id, &op_id, OperationKind::UpdateVm).await?;
    let vm = find_in::<model::Entity, _>(&ctx.db, "VM", &id).await?;
    crate::cluster::check_local(ctx, &vm).await?;
    let before = Pending::of(&vm);
    let after = new(&before);
    let request = Request::with_id(op_id, OperationKind::UpdateVm, SubjectType::Vm, &vm.id);
    operation::run(ctx, request, async |env| {
        env.commit(async |w, op| {
            let updated = model::ActiveModel {
                id: Set(vm.id.clone()),
                pending_changes: Set(after.to_json()),
                updated_at: Set(Utc::now()),
                ..Default::default()
            }
            .update(w.txn())
            .await?;
            if before != after {
                w.record(NewEvent::new(
                    &vm.id,
                    Some(op),
                    Payload::VmUpdated {
                        name: vm.name.clone(),
                        changed: vec!["pendingChanges".to_string()],
                        pending: after.fields(),
                    },
                ))
                .await?;
            }
            Ok(updated)
        })
        .await
    })
    .await
}
