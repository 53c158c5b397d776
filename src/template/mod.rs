//! Templates: named recipes for VMs (CPU, memory, base image or direct boot,
//! default root-disk size). Creating or deleting one touches no host state.

pub mod graphql;
pub mod model;

use chrono::Utc;
use sea_orm::{
    ActiveEnum, ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, ModelTrait,
    PaginatorTrait, QueryFilter, Set,
};

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::{NewEvent, Payload, find_in},
    image::model::{self as image, ImageKind},
    operation::{self, Change, OperationKind, Request, SubjectType},
    validate,
};
pub use model::Model as Template;

pub struct CreateTemplate {
    pub name: String,
    pub description: Option<String>,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub base_image_id: Option<String>,
    pub kernel_image_id: Option<String>,
    pub initrd_image_id: Option<String>,
    pub cmdline: Option<String>,
    pub default_disk_size_bytes: Option<i64>,
    pub boot_order: Option<Vec<crate::host::BootDevice>>,
}

pub async fn create(app: &Ctx, input: CreateTemplate) -> ApiResult<Change<Template>> {
    let limits = &app.config.limits;
    validate::name("name", &input.name)?;
    let description = input.description.unwrap_or_default();
    validate::text("description", &description, 4096)?;
    validate::vcpus(limits, input.vcpus)?;
    validate::memory_mib(limits, input.memory_mib)?;
    if let Some(size) = input.default_disk_size_bytes {
        validate::size_bytes(limits, "defaultDiskSizeBytes", size)?;
    }
    if let Some(cmdline) = &input.cmdline {
        validate::cmdline(cmdline)?;
    }
    let boot_order = crate::vm::media::store(input.boot_order.as_deref().unwrap_or_default())?;
    if (input.cmdline.is_some() || input.initrd_image_id.is_some())
        && input.kernel_image_id.is_none()
    {
        return Err(ApiError::bad_input(
            "cmdline and initrdImageId need kernelImageId",
        ));
    }
    let refs = [
        ("baseImageId", &input.base_image_id, ImageKind::Disk),
        ("kernelImageId", &input.kernel_image_id, ImageKind::Kernel),
        ("initrdImageId", &input.initrd_image_id, ImageKind::Initrd),
    ];
    let mut image_ids = Vec::new();
    for (field, id, kind) in refs {
        image_ids.push(match id {
            Some(id) => {
                let id = validate::id(field, id)?;
                let found = image::Entity::find_by_id(id.clone())
                    .one(&app.db)
                    .await?
                    .ok_or_else(|| ApiError::not_found("image", &id))?;
                if found.kind != kind {
                    return Err(ApiError::bad_input(format!(
                        "{field} {id} is a {} image, not {}",
                        found.kind.to_value(),
                        kind.to_value()
                    )));
                }
                Some(id)
            }
            None => None,
        });
    }
    let [base_image_id, kernel_image_id, initrd_image_id]: [Option<String>; 3] =
        image_ids.try_into().expect("three image references");

    // Refused before any operation is recorded; checked again in the write.
    ensure_name_free(&app.db, &input.name).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let request = Request::new(OperationKind::CreateTemplate, SubjectType::Template, &id);
    let change = operation::run(app, request, async |env| {
        env.commit(async |w, op| {
            ensure_name_free(w.txn(), &input.name).await?;
            let now = Utc::now();
            let template = model::ActiveModel {
                id: Set(id.clone()),
                name: Set(input.name.clone()),
                description: Set(description.clone()),
                vcpus: Set(input.vcpus),
                memory_mib: Set(input.memory_mib),
                base_image_id: Set(base_image_id.clone()),
                kernel_image_id: Set(kernel_image_id.clone()),
                initrd_image_id: Set(initrd_image_id.clone()),
                cmdline: Set(input.cmdline.clone()),
                default_disk_size_bytes: Set(input.default_disk_size_bytes),
                boot_order: Set(boot_order.clone()),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(w.txn())
            .await?;
            w.record(NewEvent::new(
                &template.id,
                Some(op),
                Payload::TemplateCreated {
                    name: template.name.clone(),
                },
            ))
            .await?;
            Ok(template)
        })
        .await
    })
    .await?;
    Ok(change)
}

/// Deletes a template no VM or disk is made from.
pub async fn delete(app: &Ctx, id: &str) -> ApiResult<Change<Template>> {
    let id = validate::id("id", id)?;
    // Refused before any operation is recorded; checked again in the write.
    ensure_unused(&app.db, &id).await?;
    let request = Request::new(OperationKind::DeleteTemplate, SubjectType::Template, &id);
    operation::run(app, request, async |env| {
        env.commit(async |w, op| {
            let template = ensure_unused(w.txn(), &id).await?;
            template.clone().delete(w.txn()).await?;
            w.record(NewEvent::new(
                &template.id,
                Some(op),
                Payload::TemplateDeleted {
                    name: template.name.clone(),
                },
            ))
            .await?;
            Ok(template)
        })
        .await
    })
    .await
}

/// What `updateTemplate` may change; `None` leaves a field as it is. Its
/// images are not among them: disks already made are overlays of the base
/// image it names.
#[derive(Debug, Clone, Default)]
pub struct UpdateTemplate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub vcpus: Option<i32>,
    pub memory_mib: Option<i64>,
    pub cmdline: Option<String>,
    pub default_disk_size_bytes: Option<i64>,
    pub boot_order: Option<Vec<crate::host::BootDevice>>,
}

/// `updateTemplate`: applies at once. VMs already made from the template
/// keep their own settings; VMs made later get the new ones.
pub async fn update(app: &Ctx, id: &str, input: UpdateTemplate) -> ApiResult<Change<Template>> {
    let id = validate::id("id", id)?;
    let limits = &app.config.limits;
    if let Some(name) = &input.name {
        validate::name("name", name)?;
    }
    if let Some(description) = &input.description {
        validate::text("description", description, 4096)?;
    }
    if let Some(vcpus) = input.vcpus {
        validate::vcpus(limits, vcpus)?;
    }
    if let Some(memory_mib) = input.memory_mib {
        validate::memory_mib(limits, memory_mib)?;
    }
    if let Some(size) = input.default_disk_size_bytes {
        validate::size_bytes(limits, "defaultDiskSizeBytes", size)?;
    }
    if let Some(cmdline) = &input.cmdline {
        validate::cmdline(cmdline)?;
    }
    let boot_order = input
        .boot_order
        .as_deref()
        .map(crate::vm::media::store)
        .transpose()?;
    let template = find_in::<model::Entity, _>(&app.db, "template", &id).await?;
    if input.cmdline.is_some() && template.kernel_image_id.is_none() {
        return Err(ApiError::bad_input(
            "cmdline needs a template with a kernel",
        ));
    }
    let renamed = input.name.as_ref().filter(|name| **name != template.name);
    if let Some(name) = renamed {
        ensure_name_free(&app.db, name).await?;
    }
    let request = Request::new(OperationKind::UpdateTemplate, SubjectType::Template, &id);
    operation::run(app, request, async |env| {
        env.commit(async |w, op| {
            use sea_orm::IntoActiveModel;
            let mut row = template.clone().into_active_model();
            let mut changed = Vec::new();
            if let Some(name) = renamed {
                ensure_name_free(w.txn(), name).await?;
                row.name = Set(name.clone());
                changed.push("name");
            }
            if let Some(v) = input
                .description
                .clone()
                .filter(|v| *v != template.description)
            {
                row.description = Set(v);
                changed.push("description");
            }
            if let Some(v) = input.vcpus.filter(|v| *v != template.vcpus) {
                row.vcpus = Set(v);
                changed.push("vcpus");
            }
            if let Some(v) = input.memory_mib.filter(|v| *v != template.memory_mib) {
                row.memory_mib = Set(v);
                changed.push("memoryMib");
            }
            if input.cmdline.is_some() && input.cmdline != template.cmdline {
                row.cmdline = Set(input.cmdline.clone());
                changed.push("cmdline");
            }
            if input.default_disk_size_bytes.is_some()
                && input.default_disk_size_bytes != template.default_disk_size_bytes
            {
                row.default_disk_size_bytes = Set(input.default_disk_size_bytes);
                changed.push("defaultDiskSizeBytes");
            }
            if let Some(order) = boot_order.clone().filter(|o| *o != template.boot_order) {
                row.boot_order = Set(order);
                changed.push("bootOrder");
            }
            row.updated_at = Set(Utc::now());
            let updated = row.update(w.txn()).await?;
            w.record(NewEvent::new(
                &updated.id,
                Some(op),
                Payload::TemplateUpdated {
                    name: updated.name.clone(),
                    changed: changed.into_iter().map(str::to_string).collect(),
                },
            ))
            .await?;
            Ok(updated)
        })
        .await
    })
    .await
}

async fn ensure_name_free(db: &impl ConnectionTrait, name: &str) -> ApiResult<()> {
    crate::db::ensure_free::<model::Entity>(db, model::Column::Name, name, "a template").await
}

/// The template `id`, if no VM or disk is made from it.
async fn ensure_unused(db: &impl ConnectionTrait, id: &str) -> ApiResult<Template> {
    let template = find_in::<model::Entity, _>(db, "template", id).await?;
    let vms = crate::vm::model::Entity::find()
        .filter(crate::vm::model::Column::TemplateId.eq(id))
        .count(db)
        .await?;
    let disks = crate::disk::model::Entity::find()
        .filter(crate::disk::model::Column::BackingTemplateId.eq(id))
        .count(db)
        .await?;
    if vms > 0 || disks > 0 {
        return Err(ApiError::Conflict(format!(
            "template {:?} is in use by {vms} VM(s) and {disks} disk(s)",
            template.name
        )));
    }
    Ok(template)
}

/// Looks a template up by ID or by name.
pub async fn find(app: &Ctx, id: Option<&str>, name: Option<&str>) -> ApiResult<Option<Template>> {
    Ok(match (id, name) {
        (Some(id), None) => {
            model::Entity::find_by_id(validate::id("id", id)?)
                .one(&app.db)
                .await?
        }
        (None, Some(name)) => {
            model::Entity::find()
                .filter(model::Column::Name.eq(name))
                .one(&app.db)
                .await?
        }
        _ => return Err(ApiError::bad_input("give exactly one of id or name")),
    })
}
