use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use sea_orm::EntityTrait;

use super::{Image, model};
use crate::{
    api::{
        self, PlanStep,
        pagination::{Page, id_cursor, page},
    },
    disk::DiskFormat,
    error::ResultExt,
    operation::{Change, graphql::OperationObject},
    validate,
};

#[derive(Clone)]
pub struct ImageObject(pub Image);

impl ImageObject {
    pub async fn load(
        ctx: &Context<'_>,
        id: Option<&str>,
    ) -> async_graphql::Result<Option<ImageObject>> {
        Ok(api::load::<model::Entity>(ctx, id).await?.map(ImageObject))
    }
}

/// A file in storage that templates build on.
#[Object(name = "Image")]
impl ImageObject {
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn kind(&self) -> model::ImageKind {
        self.0.kind
    }
    /// Disk images only.
    async fn format(&self) -> Option<DiskFormat> {
        self.0.format
    }
    async fn size_bytes(&self) -> api::Bytes {
        api::Bytes(self.0.size_bytes)
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

#[derive(Default)]
pub struct ImageQuery;

#[Object]
impl ImageQuery {
    async fn images(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Page<ImageObject>> {
        let after = id_cursor(after).gql()?;
        page(
            &api::services(ctx).db,
            model::Entity::find(),
            model::Column::Id,
            after,
            first,
            |i| i.id.clone(),
            ImageObject,
        )
        .await
        .gql()
    }

    async fn image(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<ImageObject>> {
        let id = validate::id("id", &id).gql()?;
        ImageObject::load(ctx, Some(&id)).await
    }
}

#[derive(InputObject)]
pub struct ImportImageInput {
    pub name: String,
    pub kind: model::ImageKind,
    /// A file inside the configured import directory, as a relative path.
    pub path: String,
}

/// The result of an image mutation; see `VmPayload` for `dryRun`.
#[derive(SimpleObject)]
pub struct ImagePayload {
    pub image: ImageObject,
    pub operation: Option<OperationObject>,
    pub plan: Vec<PlanStep>,
}

impl From<Change<Image>> for ImagePayload {
    fn from(change: Change<Image>) -> Self {
        ImagePayload {
            image: ImageObject(change.object),
            operation: change.operation.map(OperationObject),
            plan: api::plan(&change.plan),
        }
    }
}

#[derive(Default)]
pub struct ImageMutation;

#[Object]
impl ImageMutation {
    /// (Admin) Copies a file from the import directory into storage. A DISK
    /// image must be a standalone qcow2 or raw file: no backing file, no data file.
    async fn import_image(
        &self,
        ctx: &Context<'_>,
        input: ImportImageInput,
        #[graphql(default = false)] dry_run: bool,
    ) -> async_graphql::Result<ImagePayload> {
        let input = super::ImportImage {
            name: input.name,
            kind: input.kind,
            path: input.path,
        };
        Ok(super::import(api::services(ctx), input, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Fails with CONFLICT while templates use it.
    async fn delete_image(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ImagePayload> {
        Ok(super::delete(api::services(ctx), &id).await.gql()?.into())
    }
}
