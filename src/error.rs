//! The one error type services return, and its stable `extensions.code`.
//!
//! async-graphql turns any `Display` error into a field error on `?` and drops
//! the code, so resolvers convert explicitly with [`ResultExt::gql`].

use async_graphql::ErrorExtensions;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadUserInput(String),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("VM {vm_id} is busy with operation {operation_id} ({kind})")]
    VmBusy {
        vm_id: String,
        operation_id: String,
        kind: String,
    },
    #[error("host error: {0}")]
    Host(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// The host port cannot do this at all (the dry run has no consoles).
    #[error("{0}")]
    NotSupported(String),
    /// SQLite stayed busy (another connection held its write lock) for
    /// longer than `database.busy_timeout`. Nothing was changed; retryable.
    #[error("database busy: {0}; try again")]
    DatabaseBusy(String),
    /// A write failed, or was refused before it began, for want of space on
    /// the filesystem that holds `path` (see `storage`).
    #[error("no space left: {detail} (the filesystem of {} has {free_bytes} bytes free)", path.display())]
    StorageFull {
        path: std::path::PathBuf,
        free_bytes: u64,
        detail: String,
    },
    /// The database could not grow (`SQLITE_FULL`). Where the path is known
    /// ([`ApiError::locate`]) it becomes [`ApiError::StorageFull`].
    #[error("no space left for the database: {0}")]
    DatabaseFull(String),
    /// No valid API token came with the request.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A journal cursor (`after`) beyond the journal's last sequence: it was
    /// never handed out by this database (it comes from another one, or from
    /// before a restore), so waiting for it would be waiting in silence.
    #[error(
        "after \"{after}\" is ahead of the journal, whose last sequence is {head}: the cursor \
         comes from another database (or from before a restore). Resume from a sequence of at \
         most {head}, or \"0\" for the whole journal"
    )]
    CursorAhead { after: i64, head: i64 },
    /// `cancelOperation` stopped the operation.
    #[error("{0}")]
    Cancelled(String),
    /// The VM is on a host whose node is offline (or on another node's host,
    /// until mutations are carried to it): nothing was changed.
    #[error("{0}")]
    HostUnavailable(String),
    #[error("internal error")]
    /// The cause is logged on the server and never shown to clients.
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadUserInput(_) => "BAD_USER_INPUT",
            ApiError::NotFound { .. } => "NOT_FOUND",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::InvalidState(_) => "INVALID_STATE",
            ApiError::VmBusy { .. } => "VM_BUSY",
            ApiError::Host(_) => "HOST_ERROR",
            ApiError::Timeout(_) => "TIMEOUT",
            ApiError::NotSupported(_) => "NOT_SUPPORTED",
            ApiError::DatabaseBusy(_) => "DATABASE_BUSY",
            ApiError::StorageFull { .. } | ApiError::DatabaseFull(_) => "STORAGE_FULL",
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::CursorAhead { .. } => "CURSOR_AHEAD",
            ApiError::Cancelled(_) => "CANCELLED",
            ApiError::HostUnavailable(_) => "HOST_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL",
        }
    }

    pub fn bad_input(msg: impl Into<String>) -> Self {
        ApiError::BadUserInput(msg.into())
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        ApiError::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }

    /// Names the database file (and its filesystem's free bytes) in a
    /// database that could not grow.
    pub fn locate(self, config: &crate::config::Config) -> Self {
        match self {
            ApiError::DatabaseFull(detail) => match config.database() {
                crate::db::Location::Sqlite(path) => crate::storage::full(&path, detail),
                crate::db::Location::Postgres(_) => ApiError::DatabaseFull(detail),
            },
            other => other,
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        if crate::db::is_busy(&e) {
            return ApiError::DatabaseBusy(e.to_string());
        }
        if crate::db::is_full(&e) {
            return ApiError::DatabaseFull(e.to_string());
        }
        ApiError::internal(e)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<sea_orm::TransactionError<E>> for ApiError
where
    ApiError: From<E>,
{
    fn from(e: sea_orm::TransactionError<E>) -> Self {
        match e {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(inner) => inner.into(),
        }
    }
}

impl From<crate::host::HostError> for ApiError {
    fn from(e: crate::host::HostError) -> Self {
        match e {
            crate::host::HostError::Timeout(what) => ApiError::Timeout(what),
            crate::host::HostError::Rejected(why) => ApiError::BadUserInput(why),
            crate::host::HostError::NoSpace {
                path,
                free_bytes,
                detail,
            } => ApiError::StorageFull {
                path,
                free_bytes,
                detail,
            },
            other => ApiError::Host(other.to_string()),
        }
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        if let ApiError::Internal(source) = self {
            tracing::error!(error = %source, "internal error");
        }
        async_graphql::Error::new(self.to_string()).extend_with(|_, ext| {
            ext.set("code", self.code());
            if let ApiError::VmBusy {
                operation_id, kind, ..
            } = self
            {
                ext.set("operationId", operation_id.as_str());
                ext.set("operationKind", kind.as_str());
            }
            if let ApiError::CursorAhead { head, .. } = self {
                // A sequence, so a string, as everywhere in the API.
                ext.set("head", head.to_string());
            }
            if let ApiError::StorageFull {
                path, free_bytes, ..
            } = self
            {
                ext.set("path", path.display().to_string());
                ext.set("freeBytes", *free_bytes);
            }
        })
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Why a request was refused before it ran: its document did not parse or
/// did not validate, it broke one of the query limits (the `[graphql]`
/// settings, checked in `api::limits`), or it was a batch. Nothing of such a
/// request is executed. The same over HTTP and both websocket protocols
/// (except `BatchNotSupported`, which only HTTP can see).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    ParseFailed,
    ValidationFailed,
    QueryTooDeep,
    QueryTooComplex,
    TooManyAliases,
    TooManyRootFields,
    BatchNotSupported,
    IntrospectionDisabled,
}

impl RequestError {
    pub fn code(self) -> &'static str {
        match self {
            RequestError::ParseFailed => "GRAPHQL_PARSE_FAILED",
            RequestError::ValidationFailed => "GRAPHQL_VALIDATION_FAILED",
            RequestError::QueryTooDeep => "QUERY_TOO_DEEP",
            RequestError::QueryTooComplex => "QUERY_TOO_COMPLEX",
            RequestError::TooManyAliases => "TOO_MANY_ALIASES",
            RequestError::TooManyRootFields => "TOO_MANY_ROOT_FIELDS",
            RequestError::BatchNotSupported => "BATCH_NOT_SUPPORTED",
            RequestError::IntrospectionDisabled => "INTROSPECTION_DISABLED",
        }
    }

    /// A new error with this code.
    pub fn error(
        self,
        message: impl Into<String>,
        at: Option<async_graphql::Pos>,
    ) -> async_graphql::ServerError {
        self.tag(async_graphql::ServerError::new(message, at))
    }

    /// `error` (its message and locations kept) with this code.
    pub fn tag(self, mut error: async_graphql::ServerError) -> async_graphql::ServerError {
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", self.code());
        error
    }
}

/// Converts a service result into a GraphQL result that keeps the code.
pub trait ResultExt<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> ResultExt<T> for ApiResult<T> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(|e| e.extend())
    }
}
