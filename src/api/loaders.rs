//! Batched reads for nested fields. A page of 100 VMs that asks for each
//! one's disks, NICs, tags and template sends one query per relation, not one
//! per VM and relation: each resolver asks the request's [`Loaders`] for its
//! own key, and async-graphql's `DataLoader` gathers the keys that every
//! resolver of the page asked for within a moment and loads them together
//! (`… WHERE vm_id IN (…)`).
//!
//! Every request (and every subscription) gets new loaders from the
//! [`BatchLoading`] extension: nothing is cached from one request to the
//! next, so a read never sees an older request's rows.

use std::{collections::HashMap, hash::Hash, marker::PhantomData, sync::Arc};

use async_graphql::{
    Context, ErrorExtensions, Request, ServerResult,
    dataloader::{DataLoader, Loader},
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest},
};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, ModelTrait, PrimaryKeyTrait, QueryFilter,
    QueryOrder,
};

use crate::{coherence::CoherenceIssue, disk::Disk, error::ApiError, network::Nic};

/// What a batch that failed answers each of its resolvers.
pub type LoadError = Arc<ApiError>;

/// The loaders of one request, reading through the app's read pool.
pub struct Loaders(DataLoader<Reads>);

/// The reads the loaders batch; one key type per relation.
pub struct Reads {
    db: DatabaseConnection,
}

/// A VM's disks (DETACHING ones included), oldest first.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DisksOfVm(pub String);

/// A VM's NICs, by position.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NicsOfVm(pub String);

/// A VM's tags, sorted.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TagsOfVm(pub String);

/// A VM's coherence issues, oldest first: all, open or resolved ones
/// (`Vm.coherenceIssues(open:)`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IssuesOfVm(pub String, pub Option<bool>);

/// A row of `E` by its ID (a foreign key: a VM's template, a NIC's network).
pub struct Row<E>(pub String, PhantomData<fn() -> E>);

impl<E> Row<E> {
    pub fn new(id: impl Into<String>) -> Self {
        Row(id.into(), PhantomData)
    }
}

// By hand: derived ones would ask `E` to be Clone, Eq and Hash too.
impl<E> Clone for Row<E> {
    fn clone(&self) -> Self {
        Row::new(self.0.clone())
    }
}
impl<E> PartialEq for Row<E> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<E> Eq for Row<E> {}
impl<E> Hash for Row<E> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl Loaders {
    pub fn new(db: DatabaseConnection) -> Self {
        Loaders(DataLoader::new(Reads { db }, tokio::spawn))
    }

    /// What `key` names: rows of a relation, or one row (None: no such row).
    pub async fn load<K>(
        &self,
        key: K,
    ) -> async_graphql::Result<Option<<Reads as Loader<K>>::Value>>
    where
        K: Send + Sync + Hash + Eq + Clone + 'static,
        Reads: Loader<K, Error = LoadError>,
    {
        self.0.load_one(key).await.map_err(|e| e.extend())
    }

    /// The rows of a relation (none when nothing matched).
    pub async fn rows<K, V>(&self, key: K) -> async_graphql::Result<Vec<V>>
    where
        K: Send + Sync + Hash + Eq + Clone + 'static,
        V: Send + Sync + Clone + 'static,
        Reads: Loader<K, Value = Vec<V>, Error = LoadError>,
    {
        Ok(self.load(key).await?.unwrap_or_default())
    }
}

/// The request's loaders (the extension puts them in every request; a
/// schema run without it gets new ones, which batch nothing).
pub fn of(ctx: &Context<'_>) -> Arc<Loaders> {
    match ctx.data_opt::<Arc<Loaders>>() {
        Some(loaders) => loaders.clone(),
        None => Arc::new(Loaders::new(super::services(ctx).db.clone())),
    }
}

/// Groups `rows` by `key`, keeping their order.
fn group<M>(rows: Vec<M>, key: impl Fn(&M) -> String) -> HashMap<String, Vec<M>> {
    let mut grouped: HashMap<String, Vec<M>> = HashMap::new();
    for row in rows {
        grouped.entry(key(&row)).or_default().push(row);
    }
    grouped
}

fn ids<'a>(keys: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    keys.into_iter().cloned().collect()
}

fn failed(e: sea_orm::DbErr) -> LoadError {
    Arc::new(ApiError::from(e))
}

impl Loader<DisksOfVm> for Reads {
    type Value = Vec<Disk>;
    type Error = LoadError;

    async fn load(&self, keys: &[DisksOfVm]) -> Result<HashMap<DisksOfVm, Vec<Disk>>, LoadError> {
        use crate::disk::model::{Column, Entity};
        let rows = Entity::find()
            .filter(Column::VmId.is_in(ids(keys.iter().map(|k| &k.0))))
            .order_by_asc(Column::VmId)
            .order_by_asc(Column::Id)
            .all(&self.db)
            .await
            .map_err(failed)?;
        let grouped = group(rows, |d| d.vm_id.clone().unwrap_or_default());
        Ok(grouped
            .into_iter()
            .map(|(vm, disks)| (DisksOfVm(vm), disks))
            .collect())
    }
}

impl Loader<NicsOfVm> for Reads {
    type Value = Vec<Nic>;
    type Error = LoadError;

    async fn load(&self, keys: &[NicsOfVm]) -> Result<HashMap<NicsOfVm, Vec<Nic>>, LoadError> {
        use crate::network::model::nic::{Column, Entity};
        let rows = Entity::find()
            .filter(Column::VmId.is_in(ids(keys.iter().map(|k| &k.0))))
            .order_by_asc(Column::VmId)
            .order_by_asc(Column::Position)
            .all(&self.db)
            .await
            .map_err(failed)?;
        let grouped = group(rows, |n| n.vm_id.clone());
        Ok(grouped
            .into_iter()
            .map(|(vm, nics)| (NicsOfVm(vm), nics))
            .collect())
    }
}

impl Loader<TagsOfVm> for Reads {
    type Value = Vec<String>;
    type Error = LoadError;

    async fn load(&self, keys: &[TagsOfVm]) -> Result<HashMap<TagsOfVm, Vec<String>>, LoadError> {
        let tags = crate::vm::tag::of_many(&self.db, &ids(keys.iter().map(|k| &k.0)))
            .await
            .map_err(Arc::new)?;
        Ok(tags
            .into_iter()
            .map(|(vm, tags)| (TagsOfVm(vm), tags))
            .collect())
    }
}

impl Loader<IssuesOfVm> for Reads {
    type Value = Vec<CoherenceIssue>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[IssuesOfVm],
    ) -> Result<HashMap<IssuesOfVm, Vec<CoherenceIssue>>, LoadError> {
        use crate::coherence::model::{Column, Entity};
        let mut found = HashMap::new();
        // One query per kind of `open` asked for (at most three).
        for open in [None, Some(true), Some(false)] {
            let vms = ids(keys.iter().filter(|k| k.1 == open).map(|k| &k.0));
            if vms.is_empty() {
                continue;
            }
            let select = Entity::find().filter(Column::VmId.is_in(vms));
            let rows = crate::coherence::graphql::filter_open(select, open)
                .order_by_asc(Column::VmId)
                .order_by_asc(Column::Id)
                .all(&self.db)
                .await
                .map_err(failed)?;
            let grouped = group(rows, |i| i.vm_id.clone().unwrap_or_default());
            found.extend(
                grouped
                    .into_iter()
                    .map(|(vm, issues)| (IssuesOfVm(vm, open), issues)),
            );
        }
        Ok(found)
    }
}

impl<E> Loader<Row<E>> for Reads
where
    E: EntityTrait,
    E::Model: Send + Sync + Clone,
    E::PrimaryKey: PrimaryKeyTrait<ValueType = String>,
{
    type Value = E::Model;
    type Error = LoadError;

    async fn load(&self, keys: &[Row<E>]) -> Result<HashMap<Row<E>, E::Model>, LoadError> {
        let id = primary_column::<E>();
        let rows = E::find()
            .filter(id.is_in(ids(keys.iter().map(|k| &k.0))))
            .all(&self.db)
            .await
            .map_err(failed)?;
        Ok(rows
            .into_iter()
            .filter_map(|row| match row.get(id) {
                sea_orm::Value::String(Some(id)) => Some((Row::new(id), row)),
                _ => None,
            })
            .collect())
    }
}

/// The column of `E`'s one-column primary key.
fn primary_column<E: EntityTrait>() -> E::Column {
    use sea_orm::{Iterable, PrimaryKeyToColumn};
    E::PrimaryKey::iter()
        .next()
        .map(|key| key.into_column())
        .expect("every table has a primary key")
}

/// The schema extension that gives every request its [`Loaders`].
pub struct BatchLoading;

impl ExtensionFactory for BatchLoading {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(BatchLoading)
    }
}

#[async_trait::async_trait]
impl Extension for BatchLoading {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // The app's read pool: the request's own `Ctx` (its actor) is not
        // in the context yet, and reads do not depend on it.
        let request = match ctx.data_opt::<Arc<crate::app::App>>() {
            Some(app) => request.data(Arc::new(Loaders::new(app.ctx.db.clone()))),
            None => request,
        };
        next.run(ctx, request).await
    }
}
