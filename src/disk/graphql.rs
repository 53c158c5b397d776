use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{Attachment, CreateDisk, Disk, DiskFormat, model};
use crate::{
    api::{
        self, PlanStep,
        pagination::{Page, id_cursor, page},
    },
    error::ResultExt,
    operation::{Change, graphql::OperationObject},
    template::graphql::TemplateObject,
    validate,
    vm::graphql::VmObject,
};

#[derive(Clone)]
pub struct DiskObject(pub Disk);

/// A disk file in storage, named by vman from its ID.
#[Object(name = "Disk")]
impl DiskObject {
    /// A UUID, unique across all objects; the file is named from it.
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Unique among disks.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The file's format.
    async fn format(&self) -> DiskFormat {
        self.0.format
    }
    /// The size the guest sees, in bytes.
    async fn size_bytes(&self) -> api::Bytes {
        api::Bytes(self.0.size_bytes)
    }
    /// Whether it is part of a VM.
    async fn attachment(&self) -> Attachment {
        self.0.attachment
    }
    /// The VM it is attached to; null when DETACHED.
    async fn vm(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<VmObject>> {
        let vm = api::load::<crate::vm::model::Entity>(ctx, self.0.vm_id.as_deref()).await?;
        Ok(vm.map(VmObject))
    }
    /// The template whose base image this disk is an overlay of.
    async fn backing_template(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<TemplateObject>> {
        let template =
            api::load::<crate::template::model::Entity>(ctx, self.0.backing_template_id.as_deref())
                .await?;
        Ok(template.map(TemplateObject))
    }
    /// The host whose storage holds its file (the host of the node that
    /// made it): it can be attached only to a VM of that host. Null for a
    /// disk from before hosts whose host is not known.
    async fn host(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::cluster::graphql::HostObject>> {
        crate::cluster::graphql::by_id(ctx, self.0.host_id.as_deref()).await
    }
    /// When the disk was created.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    /// When the disk last changed (attached, detached, resized).
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

/// A new, empty disk.
#[derive(InputObject)]
pub struct CreateDiskInput {
    /// 1 to 63 characters: a lowercase letter, then lowercase letters, digits
    /// or `-`. Unique among disks.
    pub name: String,
    /// A multiple of 512, from 1 MiB to `limits.max_disk_bytes`.
    pub size_bytes: api::Bytes,
    /// The file's format.
    #[graphql(default_with = "DiskFormat::Qcow2")]
    pub format: DiskFormat,
}

/// The result of a disk mutation; see `VmPayload` for `dryRun`.
#[derive(SimpleObject)]
pub struct DiskPayload {
    /// The disk after the mutation (as it was, for `deleteDisk`).
    pub disk: DiskObject,
    /// The record of the host work; null with `dryRun: true`.
    pub operation: Option<OperationObject>,
    /// The host steps taken, or with `dryRun: true` those that would be.
    pub plan: Vec<PlanStep>,
}

impl From<Change<Disk>> for DiskPayload {
    fn from(change: Change<Disk>) -> Self {
        DiskPayload {
            disk: DiskObject(change.object),
            operation: change.operation.map(OperationObject),
            plan: api::plan(&change.plan),
        }
    }
}

#[derive(Default)]
pub struct DiskQuery;

#[Object]
impl DiskQuery {
    /// Disks; `vmId` narrows to one VM's.
    async fn disks(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only the disks of this VM.")] vm_id: Option<ID>,
        #[graphql(desc = "At most this many (default 50, at most 500).")] first: Option<i32>,
        #[graphql(desc = "Only those after this cursor (an `endCursor`).")] after: Option<String>,
    ) -> async_graphql::Result<Page<DiskObject>> {
        let after = id_cursor(after).gql()?;
        let mut select = model::Entity::find();
        if let Some(vm_id) = vm_id {
            select = select.filter(model::Column::VmId.eq(validate::id("vmId", &vm_id).gql()?));
        }
        page(
            &api::services(ctx).db,
            select,
            model::Column::Id,
            after,
            first,
            |d| d.id.clone(),
            DiskObject,
        )
        .await
        .gql()
    }

    /// A disk by ID or by name.
    async fn disk(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The disk's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The disk's name; or give `id`.")] name: Option<String>,
    ) -> async_graphql::Result<Option<DiskObject>> {
        let found = api::by_id_or_name::<model::Entity>(ctx, id, name, model::Column::Name).await?;
        Ok(found.map(DiskObject))
    }
}

#[derive(Default)]
pub struct DiskMutation;

#[Object]
impl DiskMutation {
    /// Creates an empty, DETACHED disk file in storage, on the host of the
    /// node that takes the request (`host`).
    async fn create_disk(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What the disk is.")] input: CreateDiskInput,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<DiskPayload> {
        let input = CreateDisk {
            name: input.name,
            size_bytes: input.size_bytes.0,
            format: input.format,
        };
        Ok(super::create(api::services(ctx), input, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Hot-plugs into a running VM; for a stopped VM, takes effect at its next
    /// start. A disk of another host than the VM's is CONFLICT.
    async fn attach_disk(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The disk's ID; or give `diskName`. It must be DETACHED.")]
        disk_id: Option<ID>,
        #[graphql(desc = "The disk's name; or give `diskId`.")] disk_name: Option<String>,
        #[graphql(desc = "The VM's ID; or give `vmName`.")] vm_id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `vmId`.")] vm_name: Option<String>,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<DiskPayload> {
        let app = api::services(ctx);
        let disk_id = disk_id_of(ctx, ("diskId", disk_id), ("diskName", disk_name)).await?;
        let vm_id = match crate::vm::graphql::vm_id(ctx, ("vmId", vm_id), ("vmName", vm_name)).await
        {
            Ok(vm_id) => vm_id,
            Err(e) => {
                // An unknown disk is named first, whatever else is wrong (as
                // `attach` does for IDs).
                super::find_disk(app, &disk_id).await.gql()?;
                return Err(e);
            }
        };
        Ok(super::attach(app, &disk_id, &vm_id, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Unplugs a disk from a running VM (waiting up to 3 s for the guest to let
    /// go; DETACHING after that), or detaches it from a stopped one at once.
    async fn detach_disk(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The disk's ID; or give `diskName`. It must be ATTACHED.")]
        disk_id: Option<ID>,
        #[graphql(desc = "The disk's name; or give `diskId`.")] disk_name: Option<String>,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<DiskPayload> {
        let disk_id = disk_id_of(ctx, ("diskId", disk_id), ("diskName", disk_name)).await?;
        Ok(super::detach(api::services(ctx), &disk_id, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Grows a disk (live when its VM runs); a smaller size is BAD_USER_INPUT.
    async fn resize_disk(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The disk's ID; or give `diskName`.")] disk_id: Option<ID>,
        #[graphql(desc = "The disk's name; or give `diskId`.")] disk_name: Option<String>,
        #[graphql(
            desc = "The new size: larger than now, a multiple of 512, at most `limits.max_disk_bytes`."
        )]
        size_bytes: api::Bytes,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<DiskPayload> {
        let disk_id = disk_id_of(ctx, ("diskId", disk_id), ("diskName", disk_name)).await?;
        Ok(
            super::resize(api::services(ctx), &disk_id, size_bytes.0, dry_run)
                .await
                .gql()?
                .into(),
        )
    }

    /// Deletes a detached disk and its file (on its host's node); an attached
    /// disk is CONFLICT.
    async fn delete_disk(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The disk's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The disk's name; or give `id`.")] name: Option<String>,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<DiskPayload> {
        let id = disk_id_of(ctx, ("id", id), ("name", name)).await?;
        Ok(super::delete(api::services(ctx), &id, dry_run)
            .await
            .gql()?
            .into())
    }
}

/// The disk a mutation names by an ID argument or a name argument.
async fn disk_id_of(
    ctx: &Context<'_>,
    id: (&str, Option<ID>),
    name: (&str, Option<String>),
) -> async_graphql::Result<String> {
    api::target::<model::Entity>(
        ctx,
        "disk",
        id,
        name,
        (model::Column::Id, model::Column::Name),
    )
    .await
}
