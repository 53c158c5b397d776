//! API tokens: `vman_<lookup>_<secret>`. The lookup part finds the row; of
//! the whole string only a SHA-256 hash is stored, compared in constant time.
//! The secret is shown once, when the token is made, and is nowhere after.
//!
//! Why SHA-256 and not a password hash: the secret is 256 random bits, not
//! something a person chose, so there is nothing for a slow hash to protect
//! against guessing, and each request pays for the check.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use rand::RngCore;
use sea_orm::{ActiveValue::Set, ConnectionTrait, QueryOrder, entity::prelude::*};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Role;
use crate::error::{ApiError, ApiResult};

/// One API token (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub name: String,
    pub role: Role,
    /// The public part of the secret, to find the row by.
    #[sea_orm(unique)]
    pub lookup: String,
    /// SHA-256 of the whole secret, base64url.
    pub hash: String,
    pub created_at: DateTimeUtc,
    pub expires_at: Option<DateTimeUtc>,
    /// The actor that made it.
    pub created_by: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

pub type ApiToken = Model;

const PREFIX: &str = "vman_";
/// Bytes of randomness in the lookup part and in the secret part.
const LOOKUP_BYTES: usize = 9;
const SECRET_BYTES: usize = 32;

fn random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

fn hash(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

/// A new secret and its lookup part. base64url text may itself hold `_`,
/// so the parts are split by length, not at the separator.
fn generate() -> (String, String) {
    let lookup = random(LOOKUP_BYTES);
    let secret = format!("{PREFIX}{lookup}_{}", random(SECRET_BYTES));
    (lookup, secret)
}

fn lookup_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(PREFIX)?;
    let lookup_len = LOOKUP_BYTES.div_ceil(3) * 4;
    let secret_len = (SECRET_BYTES * 4).div_ceil(3);
    (rest.len() == lookup_len + 1 + secret_len && rest.as_bytes()[lookup_len] == b'_')
        .then(|| &rest[..lookup_len])
}

/// The token whose secret this is, if any.
pub async fn find(db: &impl ConnectionTrait, secret: &str) -> ApiResult<Option<ApiToken>> {
    let Some(lookup) = lookup_of(secret) else {
        return Ok(None);
    };
    let Some(token) = Entity::find()
        .filter(Column::Lookup.eq(lookup))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let matches: bool = hash(secret).as_bytes().ct_eq(token.hash.as_bytes()).into();
    Ok(matches.then_some(token))
}

/// Which of these token ids still exist.
pub async fn existing(
    db: &impl ConnectionTrait,
    ids: &[String],
) -> ApiResult<std::collections::HashSet<String>> {
    Ok(Entity::find()
        .filter(Column::Id.is_in(ids.iter().cloned()))
        .all(db)
        .await?
        .into_iter()
        .map(|token| token.id)
        .collect())
}

/// What a new token needs.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    /// How long it is good for; `None`: until revoked.
    pub expires_in: Option<std::time::Duration>,
}

/// The longest lifetime a token may be given (ten years).
const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 24 * 3600);

/// Checks a new token's name and lifetime; refuses a name in use.
pub async fn check_new(db: &impl ConnectionTrait, new: &NewToken) -> ApiResult<()> {
    super::check_token_name(&new.name)?;
    if let Some(lifetime) = new.expires_in
        && (lifetime.is_zero() || lifetime > MAX_LIFETIME)
    {
        return Err(ApiError::bad_input(
            "expires must be more than zero and at most ten years",
        ));
    }
    if by_name(db, &new.name).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "an API token named {:?} exists; revoke it first or choose another name",
            new.name
        )));
    }
    Ok(())
}

/// Makes a token: the row (with its id `id`) and the secret, which is
/// returned here and never again.
pub async fn insert(
    db: &impl ConnectionTrait,
    id: &str,
    new: &NewToken,
    created_by: &str,
) -> ApiResult<(ApiToken, String)> {
    check_new(db, new).await?;
    let (lookup, secret) = generate();
    let now = Utc::now();
    let expires_at = match new.expires_in {
        Some(lifetime) => Some(
            now + chrono::Duration::from_std(lifetime)
                .map_err(|_| ApiError::bad_input("expires is too long"))?,
        ),
        None => None,
    };
    let token = ActiveModel {
        id: Set(id.to_string()),
        name: Set(new.name.clone()),
        role: Set(new.role),
        lookup: Set(lookup),
        hash: Set(hash(&secret)),
        created_at: Set(now),
        expires_at: Set(expires_at),
        created_by: Set(created_by.to_string()),
    }
    .insert(db)
    .await?;
    Ok((token, secret))
}

pub async fn by_name(db: &impl ConnectionTrait, name: &str) -> ApiResult<Option<ApiToken>> {
    Ok(Entity::find().filter(Column::Name.eq(name)).one(db).await?)
}

/// Every token, oldest first.
pub async fn list(db: &impl ConnectionTrait) -> ApiResult<Vec<ApiToken>> {
    Ok(Entity::find()
        .order_by_asc(Column::CreatedAt)
        .order_by_asc(Column::Id)
        .all(db)
        .await?)
}

/// Removes a token; what it was.
pub async fn remove(db: &impl ConnectionTrait, name: &str) -> ApiResult<ApiToken> {
    let token = by_name(db, name)
        .await?
        .ok_or_else(|| ApiError::not_found("API token", name))?;
    Entity::delete_by_id(token.id.clone()).exec(db).await?;
    Ok(token)
}

/// `createApiToken`: the token and its secret, recorded as an operation of
/// the caller.
pub async fn create(
    ctx: &crate::context::Ctx,
    new: NewToken,
) -> ApiResult<crate::operation::Change<(ApiToken, String)>> {
    use crate::operation::{self, OperationKind, Request, SubjectType};
    // Refused before any operation is recorded; checked again in the write.
    check_new(&ctx.db, &new).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let request = Request::new(OperationKind::CreateApiToken, SubjectType::ApiToken, &id);
    let actor = ctx.actor.clone();
    operation::run(ctx, request, async |env| {
        env.commit(async |w, _op| insert(w.txn(), &id, &new, &actor).await)
            .await
    })
    .await
}

/// `revokeApiToken`: removes the token, recorded as an operation of the
/// caller. Its live connections are ended by the caller of this (it knows
/// them).
pub async fn revoke(
    ctx: &crate::context::Ctx,
    name: &str,
) -> ApiResult<crate::operation::Change<ApiToken>> {
    use crate::operation::{self, OperationKind, Request, SubjectType};
    let token = by_name(&ctx.db, name)
        .await?
        .ok_or_else(|| ApiError::not_found("API token", name))?;
    let request = Request::new(
        OperationKind::RevokeApiToken,
        SubjectType::ApiToken,
        &token.id,
    );
    operation::run(ctx, request, async |env| {
        env.commit(async |w, _op| remove(w.txn(), name).await).await
    })
    .await
}

/// A write transaction of the command line's that holds SQLite's write lock
/// from its start (`BEGIN IMMEDIATE`): a serving vman writes too (its
/// heartbeat, every `cluster.heartbeat_interval`), and a transaction that
/// began reading could not wait for the lock, only fail.
async fn begin_write(
    db: &sea_orm::DatabaseConnection,
) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
    use sea_orm::TransactionTrait;
    db.begin_with_options(sea_orm::TransactionOptions {
        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// `vman token create`: like [`create`], for the command line, which has
/// the database but no serving vman. Recorded as an operation of `local`.
pub async fn create_local(
    db: &sea_orm::DatabaseConnection,
    new: &NewToken,
) -> ApiResult<(ApiToken, String)> {
    let id = uuid::Uuid::now_v7().to_string();
    let txn = begin_write(db).await?;
    let made = insert(&txn, &id, new, super::LOCAL).await?;
    crate::operation::record_done(
        &txn,
        crate::operation::OperationKind::CreateApiToken,
        crate::operation::SubjectType::ApiToken,
        &id,
        super::LOCAL,
    )
    .await?;
    txn.commit().await?;
    Ok(made)
}

/// `vman token revoke`: like [`revoke`], for the command line. A serving
/// vman ends the token's websockets when it next checks (within a second).
pub async fn revoke_local(db: &sea_orm::DatabaseConnection, name: &str) -> ApiResult<ApiToken> {
    let txn = begin_write(db).await?;
    let token = remove(&txn, name).await?;
    crate::operation::record_done(
        &txn,
        crate::operation::OperationKind::RevokeApiToken,
        crate::operation::SubjectType::ApiToken,
        &token.id,
        super::LOCAL,
    )
    .await?;
    txn.commit().await?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_carries_its_lookup_and_hashes_to_what_is_stored() {
        let (lookup, secret) = generate();
        assert_eq!(lookup_of(&secret), Some(lookup.as_str()));
        assert!(secret.len() > 50, "{secret}");
        assert_ne!(hash(&secret), hash(&format!("{secret}x")));
        for bad in ["", "vman_", "Bearer x", "vman_short_x", &secret[..20]] {
            assert_eq!(lookup_of(bad), None, "{bad:?}");
        }
    }
}
