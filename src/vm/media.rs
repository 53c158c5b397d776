//! Install media and boot order: the ISO image in a VM's CD-ROM drive
//! (`attachCdrom`, `ejectCdrom`) and the devices it boots from, in order
//! (`bootOrder` on VMs and templates).
//!
//! Every VM vman starts has a CD-ROM drive, empty unless a medium is
//! recorded, so a medium can be put in or taken out while it runs (QMP
//! `blockdev-change-medium`, `eject`); the row records it for the next start
//! either way. An ISO is always read-only: the drive opens it so, and an ISO
//! image cannot back a disk (templates' base images must be `DISK` images).

use chrono::Utc;
use sea_orm::{ActiveEnum, ActiveModelTrait, Set};

use super::{Vm, model};
use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::{NewEvent, Payload, find_in},
    host::{BootDevice, VmAction},
    image::model::{self as image, ImageKind},
    operation::{self, Change, HostAction, OperationKind, Request, SubjectType},
    validate,
};

/// A boot order as stored (`CDROM,DISK`): `None` for the firmware's own.
pub fn store(order: &[BootDevice]) -> ApiResult<Option<String>> {
    let mut seen = Vec::new();
    for device in order {
        if seen.contains(device) {
            return Err(ApiError::bad_input(format!(
                "bootOrder names {} twice",
                device.as_str()
            )));
        }
        seen.push(*device);
    }
    Ok((!order.is_empty()).then(|| {
        order
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }))
}

/// A stored boot order; `None` (the firmware's own) when none is stored.
pub fn parse(stored: Option<&str>) -> Option<Vec<BootDevice>> {
    stored.map(|s| s.split(',').filter_map(BootDevice::parse).collect())
}

/// The ISO image `id`, refused unless it is one.
pub(super) async fn iso(ctx: &Ctx, id: &str) -> ApiResult<image::Model> {
    let id = validate::id("imageId", id)?;
    let found = find_in::<image::Entity, _>(&ctx.db, "image", &id).await?;
    if found.kind != ImageKind::Iso {
        return Err(ApiError::bad_input(format!(
            "image {:?} is a {} image; a CD-ROM takes an ISO image",
            found.name,
            found.kind.to_value()
        )));
    }
    Ok(found)
}

/// `attachCdrom` (`Some` image id) and `ejectCdrom` (`None`): changes the
/// medium of a running VM's drive through QMP, and records it for the next
/// start. Ejecting an empty drive changes nothing.
pub async fn set_cdrom(ctx: &Ctx, vm_id: &str, image_id: Option<&str>) -> ApiResult<Change<Vm>> {
    let vm_id = validate::id("id", vm_id)?;
    let medium = match image_id {
        Some(id) => Some(iso(ctx, id).await?),
        None => None,
    };
    let op_id = operation::new_id();
    let kind = match medium {
        Some(_) => OperationKind::AttachCdrom,
        None => OperationKind::EjectCdrom,
    };
    let _guard = ctx.locks.lock(&vm_id, &op_id, kind).await?;
    let vm = find_in::<model::Entity, _>(&ctx.db, "VM", &vm_id).await?;
    crate::cluster::check_local(ctx, &vm).await?;
    if let Some(medium) = &medium {
        crate::cluster::place::ensure_same_host(
            ctx,
            &format!("image {:?}", medium.name),
            medium.host_id.as_deref(),
            vm.host_id.as_deref(),
            &format!(
                "put image {:?} in the drive of VM {:?}",
                medium.name, vm.name
            ),
        )
        .await?;
    }
    let plug = super::plug(&vm, "change the CD-ROM of")?;
    let medium_id = medium.as_ref().map(|m| m.id.clone());
    // What undoing a live change puts back: the medium it had.
    let before = match &vm.cdrom_image_id {
        Some(id) => Some(crate::image::path(
            ctx,
            &find_in::<image::Entity, _>(&ctx.db, "image", id).await?,
        )),
        None => None,
    };
    let request = Request::with_id(op_id, kind, SubjectType::Vm, &vm.id);
    operation::run(ctx, request, async |env| {
        if plug == super::Plug::Hot && (medium.is_some() || vm.cdrom_image_id.is_some()) {
            env.vm(&VmAction::ChangeMedium {
                vm_id: vm.id.clone(),
                medium: medium.as_ref().map(|m| crate::image::path(ctx, m)),
            })
            .await?;
            env.undo_with(HostAction::Vm(VmAction::ChangeMedium {
                vm_id: vm.id.clone(),
                medium: before.clone(),
            }));
        }
        env.commit(async |w, op| {
            // The image may have been deleted meanwhile: checked in the write.
            if let Some(id) = &medium_id {
                find_in::<image::Entity, _>(w.txn(), "image", id).await?;
            }
            let updated = model::ActiveModel {
                id: Set(vm.id.clone()),
                cdrom_image_id: Set(medium_id.clone()),
                updated_at: Set(Utc::now()),
                ..Default::default()
            }
            .update(w.txn())
            .await?;
            if vm.cdrom_image_id != medium_id {
                w.record(NewEvent::new(
                    &vm.id,
                    Some(op),
                    Payload::VmUpdated {
                        name: vm.name.clone(),
                        changed: vec!["cdrom".to_string()],
                        pending: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_order_is_stored_as_names_and_read_back() {
        let order = [BootDevice::Cdrom, BootDevice::Disk];
        let stored = store(&order).unwrap();
        assert_eq!(stored.as_deref(), Some("CDROM,DISK"));
        assert_eq!(parse(stored.as_deref()), Some(order.to_vec()));
        assert_eq!(store(&[]).unwrap(), None);
        assert_eq!(parse(None), None);
    }

    #[test]
    fn a_device_named_twice_is_refused() {
        let e = store(&[BootDevice::Disk, BootDevice::Network, BootDevice::Disk]).unwrap_err();
        assert_eq!(e.code(), "BAD_USER_INPUT");
        assert!(e.to_string().contains("DISK twice"), "{e}");
    }
}
