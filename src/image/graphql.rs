use async_graphql::{Context, ErrorExtensions, ID, InputObject, Object, SimpleObject};
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
    /// A UUID, unique across all objects; the file is named from it.
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Unique among images.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// What the file is for.
    async fn kind(&self) -> model::ImageKind {
        self.0.kind
    }
    /// The format of a DISK image; null for other kinds (and in dry-run mode).
    async fn format(&self) -> Option<DiskFormat> {
        self.0.format
    }
    /// A DISK image's virtual size, other kinds' file size, in bytes (0 in
    /// dry-run mode).
    async fn size_bytes(&self) -> api::Bytes {
        api::Bytes(self.0.size_bytes)
    }
    /// The host whose storage holds its file (the host of the node that
    /// imported it): VMs on other hosts cannot use it. Null for an image
    /// from before hosts whose host is not known.
    async fn host(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::cluster::graphql::HostObject>> {
        crate::cluster::graphql::by_id(ctx, self.0.host_id.as_deref()).await
    }
    /// When the image was imported.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

#[derive(Default)]
pub struct ImageQuery;

#[Object]
impl ImageQuery {
    /// All images, oldest first.
    async fn images(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "At most this many (default 50, at most 500).")] first: Option<i32>,
        #[graphql(desc = "Only those after this cursor (an `endCursor`).")] after: Option<String>,
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

    /// An image by ID.
    async fn image(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The image's ID.")] id: ID,
    ) -> async_graphql::Result<Option<ImageObject>> {
        let id = validate::id("id", &id).gql()?;
        ImageObject::load(ctx, Some(&id)).await
    }
}

/// A file to import.
#[derive(InputObject)]
pub struct ImportImageInput {
    /// 1 to 63 characters: a lowercase letter, then lowercase letters, digits
    /// or `-`. Unique among images.
    pub name: String,
    /// What the file is for.
    pub kind: model::ImageKind,
    /// A file inside the configured import directory, as a relative path;
    /// or give `url`.
    pub path: Option<String>,
    /// An http or https URL to download the file from (redirects followed
    /// up to 5 times); give `sha256` with it. Or give `path`.
    pub url: Option<String>,
    /// The file's SHA-256, 64 hexadecimal digits: a download that does not
    /// match is refused and nothing is kept. Only with `url`.
    pub sha256: Option<String>,
}

/// The result of `importImage`. From the import directory the image is made
/// within the mutation. From a URL the download goes on after it answers:
/// `image` is null and `operation` RUNNING, with its progress
/// (`operationProgress`) and cancel (`cancelOperation`); the image is
/// `operation.targetId` once it SUCCEEDED. With `dryRun: true`, `image` is
/// what would be and `plan` lists the host steps.
#[derive(SimpleObject)]
pub struct ImportImagePayload {
    /// The image; null while a download runs.
    pub image: Option<ImageObject>,
    /// The record of the host work; null with `dryRun: true`.
    pub operation: Option<OperationObject>,
    /// The host steps taken (none yet for a download that runs), or with
    /// `dryRun: true` those that would be.
    pub plan: Vec<PlanStep>,
}

impl From<Change<Option<Image>>> for ImportImagePayload {
    fn from(change: Change<Option<Image>>) -> Self {
        ImportImagePayload {
            image: change.object.map(ImageObject),
            operation: change.operation.map(OperationObject),
            plan: api::plan(&change.plan),
        }
    }
}

/// The result of an image mutation; see `VmPayload` for `dryRun`.
#[derive(SimpleObject)]
pub struct ImagePayload {
    /// The image after the mutation (as it was, for `deleteImage`).
    pub image: ImageObject,
    /// The record of the host work; null with `dryRun: true` and for `deleteImage`.
    pub operation: Option<OperationObject>,
    /// The host steps taken, or with `dryRun: true` those that would be.
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
    /// (Admin) Copies a file from the import directory into storage, or
    /// downloads one from a URL (a long operation). A DISK image must be a
    /// standalone qcow2 or raw file: no backing file, no data file. The
    /// image is on the host of the node that takes the request (`host`).
    async fn import_image(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The file and what it is.")] input: ImportImageInput,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<ImportImagePayload> {
        let refuse = |why: &str| crate::error::ApiError::bad_input(why).extend();
        let source = match (input.path, input.url, input.sha256) {
            (Some(path), None, None) => super::ImportSource::Path(path),
            (None, Some(url), Some(sha256)) => super::ImportSource::Url { url, sha256 },
            (None, Some(_), None) => return Err(refuse("a url needs its file's sha256")),
            (Some(_), None, Some(_)) => {
                return Err(refuse(
                    "sha256 goes with url; a file from the import directory needs none",
                ));
            }
            (Some(_), Some(_), _) => return Err(refuse("give path or url, not both")),
            (None, None, _) => return Err(refuse("give path or url")),
        };
        let input = super::ImportImage {
            name: input.name,
            kind: input.kind,
            source,
        };
        Ok(super::import(api::services(ctx), input, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Fails with CONFLICT while templates use it. Carried out by the node of
    /// its host, where its file is.
    async fn delete_image(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The image's ID.")] id: ID,
    ) -> async_graphql::Result<ImagePayload> {
        Ok(super::delete(api::services(ctx), &id).await.gql()?.into())
    }
}
