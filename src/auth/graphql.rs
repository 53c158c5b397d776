//! API tokens over GraphQL (admins only, by `auth::guard`), and `me`.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::{Principal, Role, token};
use crate::{
    api,
    error::{ApiError, ResultExt},
    operation::graphql::OperationObject,
};

#[derive(Clone)]
pub struct ApiTokenObject(pub token::ApiToken);

/// A credential for the API. Its secret is shown once, when it is made.
#[Object(name = "ApiToken")]
impl ApiTokenObject {
    /// A UUID, unique across all objects.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Unique among tokens; what operations record as their actor.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// What it may do.
    async fn role(&self) -> Role {
        self.0.role
    }
    /// When it was made.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    /// When it stops working; null: when it is revoked.
    async fn expires_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.expires_at
    }
    /// The actor that made it.
    async fn created_by(&self) -> &str {
        &self.0.created_by
    }
}

/// Who is asking.
#[derive(SimpleObject)]
pub struct Me {
    /// The token's name, or `local` when vman runs without auth.
    pub actor: String,
    /// What the caller may do.
    pub role: Role,
}

#[derive(Default)]
pub struct AuthQuery;

#[Object]
impl AuthQuery {
    /// Who is asking, and with which role.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        let principal = ctx
            .data_opt::<Principal>()
            .ok_or_else(|| ApiError::Unauthenticated("no caller".into()))
            .gql()?;
        Ok(Me {
            actor: principal.actor.clone(),
            role: principal.role,
        })
    }

    /// Every API token, oldest first (admin).
    async fn api_tokens(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ApiTokenObject>> {
        let tokens = token::list(&api::services(ctx).db).await.gql()?;
        Ok(tokens.into_iter().map(ApiTokenObject).collect())
    }
}

/// What a new API token is.
#[derive(InputObject)]
pub struct CreateApiTokenInput {
    /// Unique among tokens: 1-63 lowercase letters, digits or `-`, a letter
    /// first; not `local` or `vman`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// How long it works, as a duration (`30d`, `12h`, `90m`); null: until revoked.
    pub expires: Option<String>,
}

/// A new API token and, this once, its secret.
#[derive(SimpleObject)]
pub struct CreateApiTokenPayload {
    /// The token.
    pub token: ApiTokenObject,
    /// The secret to send as `Authorization: Bearer <secret>`. Shown only
    /// here: vman keeps a hash of it, never the secret.
    pub secret: String,
    /// The operation that recorded it.
    pub operation: Option<OperationObject>,
}

/// A revoked API token.
#[derive(SimpleObject)]
pub struct RevokeApiTokenPayload {
    /// The token as it was.
    pub token: ApiTokenObject,
    /// The operation that recorded it.
    pub operation: Option<OperationObject>,
}

#[derive(Default)]
pub struct AuthMutation;

#[Object]
impl AuthMutation {
    /// Makes an API token (admin). The secret is in the result, once.
    async fn create_api_token(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Its name, role and lifetime.")] input: CreateApiTokenInput,
    ) -> async_graphql::Result<CreateApiTokenPayload> {
        let expires_in = match input.expires.as_deref() {
            None => None,
            Some(text) => Some(
                humantime::parse_duration(text)
                    .map_err(|e| ApiError::bad_input(format!("expires {text:?}: {e}")))
                    .gql()?,
            ),
        };
        let change = token::create(
            api::services(ctx),
            token::NewToken {
                name: input.name,
                role: input.role,
                expires_in,
            },
        )
        .await
        .gql()?;
        let (token, secret) = change.object;
        Ok(CreateApiTokenPayload {
            token: ApiTokenObject(token),
            secret,
            operation: change.operation.map(OperationObject),
        })
    }

    /// Revokes an API token (admin): requests with it are refused from now
    /// on, and its open websockets are closed (4403).
    async fn revoke_api_token(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The token's name.")] name: String,
    ) -> async_graphql::Result<RevokeApiTokenPayload> {
        let change = token::revoke(api::services(ctx), &name).await.gql()?;
        api::app(ctx).auth.revoked(&change.object.id);
        Ok(RevokeApiTokenPayload {
            token: ApiTokenObject(change.object),
            operation: change.operation.map(OperationObject),
        })
    }
}
