//! The websocket endpoint: graphql-transport-ws and the legacy graphql-ws
//! subprotocol, chosen from `Sec-WebSocket-Protocol`.

use axum::routing::{MethodRouter, get_service};

use super::VmanSchema;

pub fn route<S: Clone + Send + Sync + 'static>(schema: VmanSchema) -> MethodRouter<S> {
    get_service(async_graphql_axum::GraphQLSubscription::new(schema))
}
