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
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn format(&self) -> DiskFormat {
        self.0.format
    }
    async fn size_bytes(&self) -> api::Bytes {
        api::Bytes(self.0.size_bytes)
    }
    async fn attachment(&self) -> Attachment {
        self.0.attachment
    }
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
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

#[derive(InputObject)]
pub struct CreateDiskInput {
    pub name: String,
    pub size_bytes: api::Bytes,
    #[graphql(default_with = "DiskFormat::Qcow2")]
    pub format: DiskFormat,
}

/// The result of a disk mutation; see `VmPayload` for `dryRun`.
#[derive(SimpleObject)]
pub struct DiskPayload {
    pub disk: DiskObject,
    pub operation: Option<OperationObject>,
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
        vm_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
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
        id: Option<ID>,
        name: Option<String>,
    ) -> async_graphql::Result<Option<DiskObject>> {
        let found = api::by_id_or_name::<model::Entity>(ctx, id, name, model::Column::Name).await?;
        Ok(found.map(DiskObject))
    }
}

#[derive(Default)]
pub struct DiskMutation;

#[Object]
impl DiskMutation {
    async fn create_disk(
        &self,
        ctx: &Context<'_>,
        input: CreateDiskInput,
        #[graphql(default = false)] dry_run: bool,
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

    /// Hot-plugs into a running VM; for a stopped VM, takes effect at its next start.
    async fn attach_disk(
        &self,
        ctx: &Context<'_>,
        disk_id: ID,
        vm_id: ID,
        #[graphql(default = false)] dry_run: bool,
    ) -> async_graphql::Result<DiskPayload> {
        Ok(super::attach(api::services(ctx), &disk_id, &vm_id, dry_run)
            .await
            .gql()?
            .into())
    }

    async fn detach_disk(
        &self,
        ctx: &Context<'_>,
        disk_id: ID,
        #[graphql(default = false)] dry_run: bool,
    ) -> async_graphql::Result<DiskPayload> {
        Ok(super::detach(api::services(ctx), &disk_id, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Grows a disk (live when its VM runs); a smaller size is BAD_USER_INPUT.
    async fn resize_disk(
        &self,
        ctx: &Context<'_>,
        disk_id: ID,
        size_bytes: api::Bytes,
        #[graphql(default = false)] dry_run: bool,
    ) -> async_graphql::Result<DiskPayload> {
        Ok(
            super::resize(api::services(ctx), &disk_id, size_bytes.0, dry_run)
                .await
                .gql()?
                .into(),
        )
    }

    /// Deletes a detached disk and its file; an attached disk is CONFLICT.
    async fn delete_disk(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(default = false)] dry_run: bool,
    ) -> async_graphql::Result<DiskPayload> {
        Ok(super::delete(api::services(ctx), &id, dry_run)
            .await
            .gql()?
            .into())
    }
}
