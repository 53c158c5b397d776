//! Templates: named recipes for VMs (CPU, memory, base image or direct boot,
//! default root-disk size). Creating or deleting one touches no host state.

pub mod graphql;
pub mod model;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, ModelTrait, PaginatorTrait, QueryFilter, Set,
};
use serde_json::json;

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::{EventKind, NewEvent, find_in},
    image::model::{self as image, ImageKind},
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
}

pub async fn create(app: &Ctx, input: CreateTemplate) -> ApiResult<Template> {
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
                        "{field} {id} is a {:?} image, not {kind:?}",
                        found.kind
                    )));
                }
                Some(id)
            }
            None => None,
        });
    }
    let [base_image_id, kernel_image_id, initrd_image_id]: [Option<String>; 3] =
        image_ids.try_into().expect("three image references");

    let mut w = app.bus.writer().await?;
    if model::Entity::find()
        .filter(model::Column::Name.eq(&input.name))
        .one(w.txn())
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "a template named {:?} already exists",
            input.name
        )));
    }
    let now = Utc::now();
    let template = model::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        name: Set(input.name),
        description: Set(description),
        vcpus: Set(input.vcpus),
        memory_mib: Set(input.memory_mib),
        base_image_id: Set(base_image_id),
        kernel_image_id: Set(kernel_image_id),
        initrd_image_id: Set(initrd_image_id),
        cmdline: Set(input.cmdline),
        default_disk_size_bytes: Set(input.default_disk_size_bytes),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(w.txn())
    .await?;
    w.record(NewEvent {
        kind: EventKind::TemplateCreated,
        subject_id: template.id.clone(),
        subject_type: "Template",
        operation_id: None,
        payload: json!({"name": template.name}),
    })
    .await?;
    w.commit().await?;
    Ok(template)
}

pub async fn delete(app: &Ctx, id: &str) -> ApiResult<Template> {
    let id = validate::id("id", id)?;
    let mut w = app.bus.writer().await?;
    let template = find_in::<model::Entity, _>(w.txn(), "template", &id).await?;
    let vms = crate::vm::model::Entity::find()
        .filter(crate::vm::model::Column::TemplateId.eq(&id))
        .count(w.txn())
        .await?;
    let disks = crate::disk::model::Entity::find()
        .filter(crate::disk::model::Column::BackingTemplateId.eq(&id))
        .count(w.txn())
        .await?;
    if vms > 0 || disks > 0 {
        return Err(ApiError::Conflict(format!(
            "template {:?} is in use by {vms} VM(s) and {disks} disk(s)",
            template.name
        )));
    }
    template.clone().delete(w.txn()).await?;
    w.record(NewEvent {
        kind: EventKind::TemplateDeleted,
        subject_id: template.id.clone(),
        subject_type: "Template",
        operation_id: None,
        payload: json!({"name": template.name}),
    })
    .await?;
    w.commit().await?;
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
