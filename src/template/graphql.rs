use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{CreateTemplate, Template, model};
use crate::operation::Change;
use crate::{
    api::{
        self, PlanStep,
        pagination::{Page, id_cursor, page},
    },
    error::{ApiError, ResultExt},
    image::graphql::ImageObject,
    operation::graphql::OperationObject,
    vm::graphql::VmObject,
};

#[derive(Clone)]
pub struct TemplateObject(pub Template);

/// A recipe for VMs.
#[Object(name = "Template")]
impl TemplateObject {
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    async fn vcpus(&self) -> i32 {
        self.0.vcpus
    }
    async fn memory_mib(&self) -> i64 {
        self.0.memory_mib
    }
    /// Root disks of VMs made from this template are qcow2 overlays of this image.
    async fn base_image(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ImageObject>> {
        ImageObject::load(ctx, self.0.base_image_id.as_deref()).await
    }
    async fn kernel(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ImageObject>> {
        ImageObject::load(ctx, self.0.kernel_image_id.as_deref()).await
    }
    async fn initrd(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ImageObject>> {
        ImageObject::load(ctx, self.0.initrd_image_id.as_deref()).await
    }
    async fn cmdline(&self) -> Option<&str> {
        self.0.cmdline.as_deref()
    }
    async fn default_disk_size_bytes(&self) -> Option<api::Bytes> {
        self.0.default_disk_size_bytes.map(api::Bytes)
    }
    /// VMs made from this template.
    async fn vms(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<VmObject>> {
        let vms = crate::vm::model::Entity::find()
            .filter(crate::vm::model::Column::TemplateId.eq(&self.0.id))
            .order_by_asc(crate::vm::model::Column::Id)
            .all(&api::services(ctx).db)
            .await
            .map_err(ApiError::from)
            .gql()?;
        Ok(vms.into_iter().map(VmObject).collect())
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

#[derive(InputObject)]
pub struct CreateTemplateInput {
    pub name: String,
    pub description: Option<String>,
    pub vcpus: i32,
    pub memory_mib: i64,
    /// An imported DISK image; VMs get a qcow2 overlay of it as their root disk.
    pub base_image_id: Option<ID>,
    /// An imported KERNEL image for direct boot.
    pub kernel_image_id: Option<ID>,
    /// An imported INITRD image for direct boot.
    pub initrd_image_id: Option<ID>,
    /// Kernel command line for direct boot.
    pub cmdline: Option<String>,
    /// Size of the root disk a VM gets when it does not ask for one.
    pub default_disk_size_bytes: Option<api::Bytes>,
}

#[derive(SimpleObject)]
pub struct TemplatePayload {
    pub template: TemplateObject,
    /// The operation that recorded the change (template changes touch no
    /// host state, so it has no steps).
    pub operation: Option<OperationObject>,
    pub plan: Vec<PlanStep>,
}

impl From<Change<Template>> for TemplatePayload {
    fn from(change: Change<Template>) -> Self {
        TemplatePayload {
            template: TemplateObject(change.object),
            operation: change.operation.map(OperationObject),
            plan: api::plan(&change.plan),
        }
    }
}

#[derive(Default)]
pub struct TemplateQuery;

#[Object]
impl TemplateQuery {
    async fn templates(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Page<TemplateObject>> {
        let after = id_cursor(after).gql()?;
        page(
            &api::services(ctx).db,
            model::Entity::find(),
            model::Column::Id,
            after,
            first,
            |t| t.id.clone(),
            TemplateObject,
        )
        .await
        .gql()
    }

    /// A template by ID or by name.
    async fn template(
        &self,
        ctx: &Context<'_>,
        id: Option<ID>,
        name: Option<String>,
    ) -> async_graphql::Result<Option<TemplateObject>> {
        let found = super::find(
            api::services(ctx),
            id.as_ref().map(|i| i.as_str()),
            name.as_deref(),
        )
        .await
        .gql()?;
        Ok(found.map(TemplateObject))
    }
}

#[derive(Default)]
pub struct TemplateMutation;

#[Object]
impl TemplateMutation {
    async fn create_template(
        &self,
        ctx: &Context<'_>,
        input: CreateTemplateInput,
    ) -> async_graphql::Result<TemplatePayload> {
        let template = super::create(
            api::services(ctx),
            CreateTemplate {
                name: input.name,
                description: input.description,
                vcpus: input.vcpus,
                memory_mib: input.memory_mib,
                base_image_id: input.base_image_id.map(|i| i.0),
                kernel_image_id: input.kernel_image_id.map(|i| i.0),
                initrd_image_id: input.initrd_image_id.map(|i| i.0),
                cmdline: input.cmdline,
                default_disk_size_bytes: input.default_disk_size_bytes.map(|b| b.0),
            },
        )
        .await
        .gql()?;
        Ok(template.into())
    }

    /// Fails with CONFLICT while VMs or disks are made from it.
    async fn delete_template(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<TemplatePayload> {
        Ok(super::delete(api::services(ctx), &id).await.gql()?.into())
    }
}
