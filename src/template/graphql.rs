use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{CreateTemplate, Template, model};
use crate::host::BootDevice;
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
    /// A UUID, unique across all objects.
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Unique among templates.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Free text; empty when none was given.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// Virtual CPUs a VM made from this template gets unless it asks otherwise.
    async fn vcpus(&self) -> i32 {
        self.0.vcpus
    }
    /// Memory in MiB a VM made from this template gets unless it asks otherwise.
    async fn memory_mib(&self) -> i64 {
        self.0.memory_mib
    }
    /// Root disks of VMs made from this template are qcow2 overlays of this image.
    async fn base_image(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ImageObject>> {
        ImageObject::load(ctx, self.0.base_image_id.as_deref()).await
    }
    /// The KERNEL image VMs boot directly; null: they boot from their disks.
    async fn kernel(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ImageObject>> {
        ImageObject::load(ctx, self.0.kernel_image_id.as_deref()).await
    }
    /// The INITRD image for direct boot; null without one.
    async fn initrd(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ImageObject>> {
        ImageObject::load(ctx, self.0.initrd_image_id.as_deref()).await
    }
    /// Kernel command line for direct boot; null without one.
    async fn cmdline(&self) -> Option<&str> {
        self.0.cmdline.as_deref()
    }
    /// Size of the root disk a VM gets when it does not ask for one. Null: the
    /// base image's size, or no root disk without a base image.
    async fn default_disk_size_bytes(&self) -> Option<api::Bytes> {
        self.0.default_disk_size_bytes.map(api::Bytes)
    }
    /// The boot order its VMs get, first first; null: the firmware's own.
    async fn boot_order(&self) -> Option<Vec<BootDevice>> {
        crate::vm::media::parse(self.0.boot_order.as_deref())
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
    /// When the template was created.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    /// When the template was last changed.
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

/// A new template.
#[derive(InputObject)]
pub struct CreateTemplateInput {
    /// 1 to 63 characters: a lowercase letter, then lowercase letters, digits
    /// or `-`. Unique among templates.
    pub name: String,
    /// Free text, at most 4096 bytes.
    pub description: Option<String>,
    /// Virtual CPUs, 1 to `limits.max_vcpus`.
    pub vcpus: i32,
    /// Memory in MiB, 16 to `limits.max_memory_mib`.
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
    /// The boot order its VMs get, first first, each device at most once;
    /// empty or absent: the firmware's own.
    pub boot_order: Option<Vec<BootDevice>>,
}

/// What to change on a template; what is left out stays as it is.
#[derive(InputObject)]
pub struct UpdateTemplateInput {
    /// A new name (the rules of `createTemplate`).
    pub name: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// The CPU count VMs made from now on get.
    pub vcpus: Option<i32>,
    /// The memory VMs made from now on get, in MiB.
    pub memory_mib: Option<i64>,
    /// A new kernel command line (a template with a kernel only).
    pub cmdline: Option<String>,
    /// The root disk size VMs made from now on get.
    pub default_disk_size_bytes: Option<api::Bytes>,
    /// The boot order VMs made from now on get (empty: the firmware's own).
    pub boot_order: Option<Vec<BootDevice>>,
}

/// The result of a template mutation.
#[derive(SimpleObject)]
pub struct TemplatePayload {
    /// The template created, or the one deleted as it was.
    pub template: TemplateObject,
    /// The operation that recorded the change (template changes touch no
    /// host state, so it has no steps).
    pub operation: Option<OperationObject>,
    /// Always empty: there are no host steps.
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
    /// All templates, oldest first.
    async fn templates(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "At most this many (default 50, at most 500).")] first: Option<i32>,
        #[graphql(desc = "Only those after this cursor (an `endCursor`).")] after: Option<String>,
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
        #[graphql(desc = "The template's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The template's name; or give `id`.")] name: Option<String>,
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
    /// Records a template; nothing on the host changes.
    async fn create_template(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What the template is.")] input: CreateTemplateInput,
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
                boot_order: input.boot_order,
            },
        )
        .await
        .gql()?;
        Ok(template.into())
    }

    /// Changes a template at once. VMs already made from it keep their own
    /// settings; VMs made later get the new ones. Its images cannot change.
    async fn update_template(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The template's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The template's name; or give `id`.")] name: Option<String>,
        #[graphql(desc = "What to change; what is left out stays.")] input: UpdateTemplateInput,
    ) -> async_graphql::Result<TemplatePayload> {
        let id = template_id(ctx, id, name).await?;
        let input = super::UpdateTemplate {
            name: input.name,
            description: input.description,
            vcpus: input.vcpus,
            memory_mib: input.memory_mib,
            cmdline: input.cmdline,
            default_disk_size_bytes: input.default_disk_size_bytes.map(|b| b.0),
            boot_order: input.boot_order,
        };
        Ok(super::update(api::services(ctx), &id, input)
            .await
            .gql()?
            .into())
    }

    /// Fails with CONFLICT while VMs or disks are made from it.
    async fn delete_template(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The template's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The template's name; or give `id`.")] name: Option<String>,
    ) -> async_graphql::Result<TemplatePayload> {
        let id = template_id(ctx, id, name).await?;
        Ok(super::delete(api::services(ctx), &id).await.gql()?.into())
    }
}

/// The template a mutation names by `id` or `name`.
async fn template_id(
    ctx: &Context<'_>,
    id: Option<ID>,
    name: Option<String>,
) -> async_graphql::Result<String> {
    api::target::<model::Entity>(
        ctx,
        "template",
        ("id", id),
        ("name", name),
        (model::Column::Id, model::Column::Name),
    )
    .await
}
