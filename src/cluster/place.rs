//! Where things may be used: an image's or a disk's file is in the storage
//! of one host (the host of the node that made it), so a VM can use it only
//! on that host. A new VM without a `hostId` goes to the online host with
//! the most memory available among those that hold every image it needs
//! (its template's base, kernel and initrd, and the ISO for its CD-ROM).
//!
//! Rows from before hosts (`host_id` null) are taken to be on every host:
//! they constrain nothing.

use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder};

use super::{Host, HostState, model};
use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    image::{self, Image},
    template::model::Model as Template,
};

/// The images a new VM of `template` (and with the ISO `cdrom` in its
/// drive) needs on its host. Ids that name no image are left out: the
/// resolver says so with its code.
pub async fn needed_images(
    ctx: &Ctx,
    template: Option<&Template>,
    cdrom: Option<&str>,
) -> ApiResult<Vec<Image>> {
    let ids: Vec<String> = template
        .into_iter()
        .flat_map(|t| {
            [
                t.base_image_id.clone(),
                t.kernel_image_id.clone(),
                t.initrd_image_id.clone(),
            ]
        })
        .chain([cdrom.map(str::to_string)])
        .flatten()
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(image::model::Entity::find()
        .filter(image::model::Column::Id.is_in(ids))
        .order_by_asc(image::model::Column::Name)
        .all(&ctx.db)
        .await?)
}

/// Whether `host_id` holds every image of `needed`.
fn holds(host_id: &str, needed: &[Image]) -> bool {
    needed
        .iter()
        .all(|i| i.host_id.as_deref().is_none_or(|h| h == host_id))
}

/// The names of the hosts `ids` (an id itself where no host has it).
async fn names(ctx: &Ctx, ids: &[&str]) -> ApiResult<Vec<String>> {
    let found = model::Entity::find()
        .filter(model::Column::Id.is_in(ids.iter().map(|id| id.to_string())))
        .all(&ctx.db)
        .await?;
    Ok(ids
        .iter()
        .map(|id| {
            found
                .iter()
                .find(|h| h.id == *id)
                .map_or_else(|| id.to_string(), |h| h.name.clone())
        })
        .collect())
}

/// Where each image of `needed` is, for a message: `image "k" is on host "b"`.
async fn whereabouts(ctx: &Ctx, needed: &[&Image]) -> ApiResult<String> {
    let hosts: Vec<&str> = needed.iter().filter_map(|i| i.host_id.as_deref()).collect();
    let names = names(ctx, &hosts).await?;
    Ok(needed
        .iter()
        .filter(|i| i.host_id.is_some())
        .zip(names)
        .map(|(image, host)| format!("image {:?} is on host {host:?}", image.name))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Refuses, with CONFLICT and nothing done, a file of host `its_host` used
/// on host `host` (either null: from before hosts, anywhere). `what` names
/// the file's row (`disk "d"`), `doing` what was asked (`attach disk "d" to
/// VM "v"`).
pub async fn ensure_same_host(
    ctx: &Ctx,
    what: &str,
    its_host: Option<&str>,
    host: Option<&str>,
    doing: &str,
) -> ApiResult<()> {
    let (Some(its_host), Some(host)) = (its_host, host) else {
        return Ok(());
    };
    if its_host == host {
        return Ok(());
    }
    let names = names(ctx, &[its_host, host]).await?;
    Err(ApiError::Conflict(format!(
        "cannot {doing}: {what} is on host {:?} (its file is in that host's storage), not on host {:?}",
        names[0], names[1]
    )))
}

/// Refuses, with CONFLICT and nothing made, a new VM on `host_id` when an
/// image it needs is on another host. `placed`: no `hostId` was asked for
/// (the VM was placed here), and then none may fit at all, which it says.
pub async fn ensure_images_on(
    ctx: &Ctx,
    host_id: &str,
    needed: &[Image],
    placed: bool,
) -> ApiResult<()> {
    if holds(host_id, needed) {
        return Ok(());
    }
    if placed {
        // No other node carried it: say why none could.
        place(ctx, needed).await?;
    }
    let elsewhere: Vec<&Image> = needed
        .iter()
        .filter(|i| i.host_id.as_deref().is_some_and(|h| h != host_id))
        .collect();
    let here = names(ctx, &[host_id]).await?.remove(0);
    Err(ApiError::Conflict(format!(
        "a VM on host {here:?} cannot use the images it needs: {}; make it on a host that holds them all (or leave out hostId), or import them on {here:?}",
        whereabouts(ctx, &elsewhere).await?
    )))
}

/// Where a new VM that needs the images `needed` goes without a `hostId`:
/// the online host with the most memory available that holds them all, of
/// those whose node can be reached (`Host.apiUrl`, or this node's); this
/// node's when it has as much. None holds them: HOST_UNAVAILABLE when every
/// one is on one host whose node is offline, CONFLICT otherwise.
pub async fn place(ctx: &Ctx, needed: &[Image]) -> ApiResult<String> {
    let hosts: Vec<Host> = model::Entity::find()
        .filter(model::Column::State.eq(HostState::Online))
        .filter(
            Condition::any()
                .add(model::Column::ApiUrl.is_not_null())
                .add(model::Column::Id.eq(&*ctx.host_id)),
        )
        .order_by_desc(model::Column::MemoryAvailableBytes)
        .all(&ctx.db)
        .await?
        .into_iter()
        .filter(|h| holds(&h.id, needed))
        .collect();
    let best = hosts.first().map(|h| h.memory_available_bytes);
    if let Some(host) = hosts
        .iter()
        .filter(|h| Some(h.memory_available_bytes) == best)
        .find(|h| h.id == *ctx.host_id)
        .or(hosts.first())
    {
        return Ok(host.id.clone());
    }
    let on_hosts: Vec<&Image> = needed.iter().filter(|i| i.host_id.is_some()).collect();
    let mut owners: Vec<&str> = on_hosts
        .iter()
        .filter_map(|i| i.host_id.as_deref())
        .collect();
    owners.sort_unstable();
    owners.dedup();
    let whereabouts = whereabouts(ctx, &on_hosts).await?;
    if let [owner] = owners[..] {
        let host = model::Entity::find_by_id(owner.to_string())
            .one(&ctx.db)
            .await?;
        let why = match host {
            Some(h) if h.state == HostState::Offline => {
                format!("host {:?} is offline", h.name)
            }
            Some(h) => format!(
                "the node of host {:?} cannot be reached (no cluster.advertise_url)",
                h.name
            ),
            None => format!("host {owner} is not registered"),
        };
        return Err(ApiError::HostUnavailable(format!(
            "no online host holds the images the VM needs: {whereabouts}, and {why}; nothing was made"
        )));
    }
    Err(ApiError::Conflict(format!(
        "no host holds every image the VM needs: {whereabouts}; import them on one host; nothing was made"
    )))
}
