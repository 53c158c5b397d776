//! Relay connections over sea-orm selects, ordered by a unique column.

use async_graphql::{
    ErrorExtensions, Object, OutputType,
    connection::{Connection, Edge, EmptyFields},
};
use futures_util::future::BoxFuture;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, Order, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Select,
};

use crate::error::{ApiError, ApiResult};

/// What a page knows of its whole list. The count is read only when
/// `totalCount` is asked for: on a large table it is the dearest part of a
/// page (every matching row is counted), and most pages do not show it.
pub struct Totals {
    count: Box<dyn Fn() -> BoxFuture<'static, Result<u64, DbErr>> + Send + Sync>,
}

impl Totals {
    fn of<E>(db: &DatabaseConnection, select: Select<E>) -> Totals
    where
        E: EntityTrait,
        E::Model: Sync,
    {
        let db = db.clone();
        Totals {
            count: Box::new(move || {
                let (db, select) = (db.clone(), select.clone());
                Box::pin(async move { select.count(&db).await })
            }),
        }
    }
}

#[Object]
impl Totals {
    /// How many items match, across all pages.
    async fn total_count(&self) -> async_graphql::Result<u64> {
        (self.count)()
            .await
            .map_err(ApiError::from)
            .map_err(|e| e.extend())
    }
}

pub type Page<N> = Connection<String, N, Totals, EmptyFields>;

const DEFAULT_FIRST: i32 = 50;
const MAX_FIRST: i32 = 500;

pub fn first(first: Option<i32>) -> ApiResult<u64> {
    match first.unwrap_or(DEFAULT_FIRST) {
        n @ 0..=MAX_FIRST => Ok(n as u64),
        n => Err(ApiError::bad_input(format!(
            "first {n} is out of range: 0 to {MAX_FIRST}"
        ))),
    }
}

/// One page of `select` after the cursor `after` (a value of `order`).
pub async fn page<E, N, V>(
    db: &DatabaseConnection,
    select: Select<E>,
    order: E::Column,
    after: Option<V>,
    first: Option<i32>,
    cursor: impl Fn(&E::Model) -> String,
    node: impl Fn(E::Model) -> N,
) -> ApiResult<Page<N>>
where
    E: EntityTrait,
    E::Model: Sync,
    N: OutputType,
    V: Into<sea_orm::Value>,
{
    page_in(db, select, (order, Order::Asc), after, first, cursor, node).await
}

/// [`page`] in `direction` of `order`: with `Desc`, the rows before
/// `after`, highest first.
pub async fn page_in<E, N, V>(
    db: &DatabaseConnection,
    select: Select<E>,
    (order, direction): (E::Column, Order),
    after: Option<V>,
    first: Option<i32>,
    cursor: impl Fn(&E::Model) -> String,
    node: impl Fn(E::Model) -> N,
) -> ApiResult<Page<N>>
where
    E: EntityTrait,
    E::Model: Sync,
    N: OutputType,
    V: Into<sea_orm::Value>,
{
    let first = self::first(first)?;
    let totals = Totals::of(db, select.clone());
    let has_after = after.is_some();
    let descending = direction == Order::Desc;
    let mut select = select.order_by(order, direction);
    if let Some(after) = after {
        select = select.filter(match descending {
            true => order.lt(after),
            false => order.gt(after),
        });
    }
    let rows = select.limit(first + 1).all(db).await?;
    Ok(connection(rows, first, has_after, totals, |row| {
        Edge::new(cursor(&row), node(row))
    }))
}

/// The connection of `rows` (one more than a page when there is a next page).
fn connection<M, N: OutputType>(
    mut rows: Vec<M>,
    first: u64,
    has_after: bool,
    totals: Totals,
    edge: impl Fn(M) -> Edge<String, N, EmptyFields>,
) -> Page<N> {
    let has_next = rows.len() as u64 > first;
    rows.truncate(first as usize);
    let mut connection = Connection::with_additional_fields(has_after, has_next, totals);
    connection.edges.extend(rows.into_iter().map(edge));
    connection
}

/// Parses an ID-valued cursor.
pub fn id_cursor(after: Option<String>) -> ApiResult<Option<String>> {
    after.map(|a| crate::validate::id("after", &a)).transpose()
}

/// One page of `select` ordered by a key that is not unique and then by a
/// unique column (`(state, id)`); the cursor holds both, opaque to clients
/// (base64url of a JSON pair).
pub async fn page_by_key<E, N>(
    db: &DatabaseConnection,
    select: Select<E>,
    (key, unique): (E::Column, E::Column),
    after: Option<String>,
    first: Option<i32>,
    cursor: impl Fn(&E::Model) -> (String, String),
    node: impl Fn(E::Model) -> N,
) -> ApiResult<Page<N>>
where
    E: EntityTrait,
    E::Model: Sync,
    N: OutputType,
{
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use sea_orm::sea_query::{Expr, ExprTrait};
    let first = self::first(first)?;
    let totals = Totals::of(db, select.clone());
    let has_after = after.is_some();
    let mut select = select.order_by_asc(key).order_by_asc(unique);
    if let Some(after) = after {
        let (k, u): (String, String) = URL_SAFE_NO_PAD
            .decode(after.as_bytes())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| {
                ApiError::bad_input("after is not a cursor of this list in this order")
            })?;
        // A row value, `(key, unique) > (k, u)`: SQLite walks the
        // `(key, unique)` index from there in order (the same condition
        // spelt with OR reads two ranges and sorts them).
        select = select.filter(
            Expr::tuple([key.into_expr(), unique.into_expr()])
                .gt(Expr::tuple([Expr::val(k), Expr::val(u)])),
        );
    }
    let rows = select.limit(first + 1).all(db).await?;
    Ok(connection(rows, first, has_after, totals, |row| {
        let pair = serde_json::to_vec(&cursor(&row)).unwrap_or_default();
        Edge::new(URL_SAFE_NO_PAD.encode(pair), node(row))
    }))
}
