use async_graphql::{Context, Object};

use crate::health::Health;

#[derive(Default)]
pub struct HealthQuery;

#[Object]
impl HealthQuery {
    /// The readiness checks by name, as `/readyz` runs them.
    async fn health(&self, ctx: &Context<'_>) -> Health {
        crate::health::check(super::app(ctx)).await
    }
}
