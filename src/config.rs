//! One typed configuration: defaults < `vman.toml` < `.env` < `VMAN_*`
//! environment < command-line flags, validated once at start.
//!
//! figment keeps where every value came from, which `vman config check` prints.
//! Environment names are the key in upper case with `VMAN_` in front; keys in
//! a section join with `_` (`observer.interval` is `VMAN_OBSERVER_INTERVAL`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment, Metadata, Profile, Provider,
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Map, Value},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Holds `vman.db`, `storage/`, `run/` and `logs/`.
    pub data_dir: PathBuf,
    /// Plan and record host steps without touching the host.
    pub dry_run: bool,
    /// Where `importImage` may read files from (default `<data_dir>/import`).
    pub import_dir: Option<PathBuf>,
    pub log: LogConfig,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub backup: BackupConfig,
    pub observer: ObserverConfig,
    pub qemu: QemuConfig,
    pub limits: Limits,
    pub network: NetworkConfig,
    pub websocket: WebsocketConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub tls: TlsConfig,
    pub graphql: GraphqlConfig,
    pub cluster: ClusterConfig,
}

/// This node's host among the vman nodes that share one PostgreSQL
/// database (with SQLite there is one host: this one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The host's name in `hosts`, unique in the cluster (default: the
    /// machine's hostname).
    pub host_name: Option<String>,
    /// How often the node writes its heartbeat (and its host's figures).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A host whose heartbeat is older than this is marked `OFFLINE` by the
    /// other nodes, and its VMs `UNKNOWN`.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// The URL of this node's `/graphql` as the other nodes reach it, where
    /// they send the mutations for this host's VMs (default: from `listen`,
    /// unless it is a wildcard address).
    pub advertise_url: Option<String>,
}

/// Who may use the API (see `auth`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `token`: every request needs an API token; `none`: every caller is
    /// `local`, an admin (allowed only on a loopback listen address).
    pub mode: AuthMode,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Token,
}

/// Plain HTTP requests from browsers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins (`https://dash.example:8443`) whose pages may call the API;
    /// CORS preflights from them are answered. None by default.
    pub cors_origins: Vec<String>,
}

/// The `/metrics` endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` without a token (with `auth.mode = "token"`).
    pub public: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// tracing filter directives; `RUST_LOG` wins when set.
    pub level: String,
    /// Rotate a log file when it reaches this many bytes.
    pub max_bytes: u64,
    /// How many rotated files to keep.
    pub keep_files: usize,
}

/// The database: SQLite at `<data_dir>/vman.db` unless `url` names a
/// PostgreSQL server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database` (any option sqlx's
    /// PostgreSQL driver takes, `?sslmode=…` say): the database is there.
    /// Absent: SQLite at `<data_dir>/vman.db`.
    #[serde(default)]
    pub url: Option<DatabaseUrl>,
    /// How long a write waits for SQLite's write lock (PostgreSQL: the
    /// journal lock), and a read for a lock, while another connection holds
    /// it, before the request fails with `DATABASE_BUSY`.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
}

/// A database URL, whose password `Debug`, `Display` and `config check`
/// never show ([`shown_url`]).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    /// The URL with its password, for connecting and for nothing else.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", shown_url(&self.0))
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&shown_url(&self.0))
    }
}

/// `url` as messages, logs and records show it: a password in it, in the
/// user part or as a `password` parameter, is `***`.
pub fn shown_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        // Not a URL: it may still hold a password, so none of it is shown.
        return "(not a URL)".into();
    };
    let in_query = parsed.query_pairs().any(|(k, _)| k == "password");
    if parsed.password().is_none() && !in_query {
        return url.to_string();
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if in_query {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Disks and images under `<data_dir>/storage/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// New disks and imports that would leave less than this free on the
    /// storage filesystem are refused with `STORAGE_FULL`.
    pub min_free_bytes: u64,
    /// How fast a full clone may copy a disk (`qemu-img convert -r`), in
    /// bytes per second; 0: as fast as the disk goes.
    pub copy_bytes_per_second: u64,
    /// The largest image `importImage` downloads from a URL, in bytes.
    pub download_max_bytes: u64,
    /// A download whose server sends nothing for this long is cut off.
    #[serde(with = "humantime_serde")]
    pub download_stall_timeout: Duration,
}

/// Scheduled backups of the database under `<data_dir>/backups/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// How often a serving vman copies the database; `0s`: never.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How many scheduled backups to keep (the oldest go first).
    pub keep: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObserverConfig {
    /// How often the coherence sweep compares the database with the host.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// `report` records drift; `repair` also fixes what is safe to fix.
    pub policy: DriftPolicy,
    /// How long the sweep waits for one VM's QEMU to answer before it calls
    /// the VM `UNKNOWN` (QMP silent). The other VMs are probed meanwhile.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    Report,
    Repair,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub img_binary: PathBuf,
    /// `auto` (kvm when /dev/kvm is usable, else tcg), `kvm` or `tcg`.
    pub accel: Accel,
    /// How long a graceful stop waits for the guest before escalating.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
    pub max_disk_bytes: u64,
    /// How long a mutation waits for another one on the same VM before `VM_BUSY`.
    #[serde(with = "humantime_serde")]
    pub vm_lock_timeout: Duration,
    /// Requests per second one API token may make (a short burst of as many
    /// is allowed); more get 429. 0: no limit.
    pub requests_per_second: u32,
    /// Websocket connections one API token may hold open at once.
    pub websocket_connections_per_token: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Bridges are named `<prefix><vlan>`.
    pub bridge_prefix: String,
    /// The host interface whose `<uplink>.<vlan>` VLAN links join the bridges
    /// of networks created without their own uplink; unset: isolated bridges.
    pub uplink: Option<String>,
}

/// The `/graphql/ws` endpoint (see `api::ws`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebsocketConfig {
    /// How long a new socket may wait before sending `connection_init`.
    #[serde(with = "humantime_serde")]
    pub init_timeout: Duration,
    /// How often the server sends `ping` (graphql-transport-ws) or `ka`
    /// (graphql-ws), so idle sockets survive proxies.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Operations one connection may run at once.
    pub max_subscriptions: usize,
    /// Results queued per connection for a client that reads slower than
    /// they come.
    pub outgoing_buffer: usize,
    /// How long a result may wait for room in a full outgoing buffer before
    /// its subscription ends with a "lagged" error.
    #[serde(with = "humantime_serde")]
    pub lag_timeout: Duration,
    /// Origins whose pages may open a websocket, besides vman's own. An
    /// upgrade without an `Origin` header (not from a browser) is always let in.
    pub allowed_origins: Vec<String>,
}

/// Serving https and wss instead of http and ws: both files or neither.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the server's certificate, then any intermediate certificates.
    pub cert: Option<PathBuf>,
    /// PEM file: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// The certificate and key files when TLS is on (both are set once the
    /// config is validated).
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.cert.as_deref()?, self.key.as_deref()?))
    }
}

/// Limits on GraphQL documents, the same over HTTP and websockets (see
/// `api::limits`). A document beyond one is refused before anything of it
/// runs, with its own `extensions.code`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GraphqlConfig {
    /// Deepest field nesting (`QUERY_TOO_DEEP`).
    pub max_depth: usize,
    /// Most fields a document selects, fragments expanded (`QUERY_TOO_COMPLEX`).
    pub max_complexity: usize,
    /// Most aliases written in a document (`TOO_MANY_ALIASES`).
    pub max_aliases: usize,
    /// Most root fields one operation selects (`TOO_MANY_ROOT_FIELDS`).
    pub max_root_fields: usize,
    /// Whether `__schema` and `__type` are served (`INTROSPECTION_DISABLED`).
    pub introspection: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            data_dir: PathBuf::from("./vman-data"),
            dry_run: false,
            import_dir: None,
            log: LogConfig {
                level: "info".into(),
                max_bytes: 10 * 1024 * 1024,
                keep_files: 5,
            },
            database: DatabaseConfig {
                url: None,
                busy_timeout: Duration::from_secs(5),
            },
            storage: StorageConfig {
                min_free_bytes: 0,
                copy_bytes_per_second: 0,
                download_max_bytes: 64 << 30,
                download_stall_timeout: Duration::from_secs(30),
            },
            backup: BackupConfig {
                interval: Duration::from_secs(24 * 60 * 60),
                keep: 7,
            },
            cluster: ClusterConfig {
                host_name: None,
                heartbeat_interval: Duration::from_secs(2),
                offline_after: Duration::from_secs(10),
                advertise_url: None,
            },
            observer: ObserverConfig {
                interval: Duration::from_secs(5),
                policy: DriftPolicy::Report,
                probe_timeout: Duration::from_secs(2),
            },
            qemu: QemuConfig {
                binary: PathBuf::from("qemu-system-x86_64"),
                img_binary: PathBuf::from("qemu-img"),
                accel: Accel::Auto,
                stop_timeout: Duration::from_secs(30),
            },
            limits: Limits {
                max_vcpus: default_max_vcpus(),
                max_memory_mib: default_max_memory_mib(),
                max_disk_bytes: 16 << 40,
                vm_lock_timeout: Duration::from_secs(2),
                requests_per_second: 100,
                websocket_connections_per_token: 100,
            },
            network: NetworkConfig {
                bridge_prefix: "vmbr".into(),
                uplink: None,
            },
            websocket: WebsocketConfig {
                init_timeout: Duration::from_secs(10),
                keepalive_interval: Duration::from_secs(15),
                max_subscriptions: 100,
                outgoing_buffer: 256,
                lag_timeout: Duration::from_secs(5),
                allowed_origins: Vec::new(),
            },
            auth: AuthConfig {
                mode: AuthMode::None,
            },
            http: HttpConfig {
                cors_origins: Vec::new(),
            },
            metrics: MetricsConfig { public: false },
            tls: TlsConfig::default(),
            graphql: GraphqlConfig {
                max_depth: 16,
                max_complexity: 5000,
                max_aliases: 30,
                max_root_fields: 20,
                introspection: true,
            },
        }
    }
}

fn default_max_vcpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn default_max_memory_mib() -> u64 {
    // MemTotal from /proc/meminfo; a VM may not ask for more than the host has.
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4096, |kib| kib / 1024)
}

/// An exact browser origin: `http(s)://host[:port]`, nothing after.
fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && http::uri::Authority::try_from(rest).is_ok()
}

/// Sections whose keys are joined with `_` in environment names.
const SECTIONS: &[&str] = &[
    "log",
    "database",
    "storage",
    "backup",
    "observer",
    "qemu",
    "limits",
    "network",
    "websocket",
    "auth",
    "http",
    "metrics",
    "tls",
    "graphql",
    "cluster",
];

fn env_key_to_path(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    for section in SECTIONS {
        if let Some(rest) = key.strip_prefix(section).and_then(|r| r.strip_prefix('_')) {
            return format!("{section}.{rest}");
        }
    }
    key
}

/// Values given on the command line, highest precedence.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CliOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// `VMAN_*` environment variables that are not server settings: the config
/// file's own (`VMAN_CONFIG`) and the command-line client's (`VMAN_SERVER`,
/// `VMAN_TOKEN`, `VMAN_CLIENT_CONFIG`, docs/CLI.md), so a shell set up for the
/// client can still `vman serve`. In `.env` they are keys like any other.
const NOT_SETTINGS: &[&str] = &["config", "server", "token", "client_config"];

/// `.env` entries that start with `VMAN_`, below the real environment.
struct DotEnv {
    path: PathBuf,
}

impl Provider for DotEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!(".env file {}", self.path.display()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        if self.path.exists() {
            let entries = dotenvy::from_path_iter(&self.path)
                .map_err(|e| figment::Error::from(format!("{}: {e}", self.path.display())))?;
            for entry in entries {
                let (key, value) = entry
                    .map_err(|e| figment::Error::from(format!("{}: {e}", self.path.display())))?;
                if let Some(key) = key.strip_prefix("VMAN_") {
                    insert_path(
                        &mut dict,
                        &env_key_to_path(key),
                        value.parse::<Value>().unwrap_or(Value::from(value)),
                    );
                }
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
        None => {
            dict.insert(path.to_string(), value);
        }
    }
}

/// Where the config file and `.env` are looked for.
#[derive(Debug, Clone)]
pub struct Sources {
    pub config_file: PathBuf,
    pub dotenv_file: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            config_file: PathBuf::from("vman.toml"),
            dotenv_file: PathBuf::from(".env"),
        }
    }
}

/// Gives a provider the name `config check` shows as a value's source.
struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

pub fn figment(sources: &Sources, cli: &CliOverrides) -> Figment {
    Figment::from(Named {
        name: "default",
        inner: Serialized::defaults(Config::default()),
    })
    .merge(Toml::file(&sources.config_file))
    .merge(DotEnv {
        path: sources.dotenv_file.clone(),
    })
    .merge(
        Env::prefixed("VMAN_")
            .map(|k| env_key_to_path(k.as_str()).into())
            .ignore(NOT_SETTINGS),
    )
    .merge(Named {
        name: "command line",
        inner: Serialized::defaults(cli),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid config: {key} = {value}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// Extracts the config, turning figment's error into one that names the key,
/// the bad value and where it came from.
fn extract(figment: &Figment) -> Result<Config, ConfigError> {
    figment.extract().map_err(|error| {
        let Some(first) = error.clone().into_iter().next() else {
            return ConfigError::Load(Box::new(error));
        };
        if first.path.is_empty() {
            return ConfigError::Load(Box::new(error));
        }
        let key = first.path.join(".");
        let value = figment
            .find_value(&key)
            .ok()
            .map(|v| serde_json::to_string(&v).unwrap_or_default())
            .unwrap_or_default();
        let source = first
            .metadata
            .as_ref()
            .map(|m| match &m.source {
                Some(src) => format!(" (from {} {src})", m.name),
                None => format!(" (from {})", m.name),
            })
            .unwrap_or_default();
        ConfigError::Invalid {
            key,
            value,
            reason: format!("{}{source}", first.kind),
        }
    })
}

impl Config {
    pub fn load(sources: &Sources, cli: &CliOverrides) -> Result<Config, ConfigError> {
        let config = extract(&figment(sources, cli))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, value: impl std::fmt::Debug, reason: &str) -> ConfigError {
            ConfigError::Invalid {
                key: key.to_string(),
                value: format!("{value:?}"),
                reason: reason.into(),
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir", &self.data_dir, "must not be empty"));
        }
        if self.database.busy_timeout < Duration::from_millis(10)
            || self.database.busy_timeout > Duration::from_secs(600)
        {
            return Err(bad(
                "database.busy_timeout",
                self.database.busy_timeout,
                "must be between 10ms and 10m",
            ));
        }
        if let Some(url) = &self.database.url {
            crate::db::Location::postgres(url)
                .map_err(|reason| bad("database.url", url, &reason))?;
        }
        if !self.backup.interval.is_zero()
            && (self.backup.interval < Duration::from_secs(1)
                || self.backup.interval > Duration::from_secs(366 * 24 * 60 * 60))
        {
            return Err(bad(
                "backup.interval",
                self.backup.interval,
                "must be 0s (no scheduled backups) or between 1s and 366d",
            ));
        }
        if self.backup.keep == 0 || self.backup.keep > 10_000 {
            return Err(bad(
                "backup.keep",
                self.backup.keep,
                "must be between 1 and 10000",
            ));
        }
        if self.cluster.heartbeat_interval < Duration::from_millis(100)
            || self.cluster.heartbeat_interval > Duration::from_secs(600)
        {
            return Err(bad(
                "cluster.heartbeat_interval",
                self.cluster.heartbeat_interval,
                "must be between 100ms and 10m",
            ));
        }
        if self.cluster.offline_after < self.cluster.heartbeat_interval * 3 {
            return Err(bad(
                "cluster.offline_after",
                self.cluster.offline_after,
                "must be at least three heartbeat intervals (cluster.heartbeat_interval)",
            ));
        }
        if let Some(url) = &self.cluster.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(bad(
                "cluster.advertise_url",
                url,
                "must be an http:// or https:// URL of this node's /graphql",
            ));
        }
        if let Some(name) = &self.cluster.host_name
            && (name.is_empty()
                || name.len() > 63
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        {
            return Err(bad(
                "cluster.host_name",
                name,
                "must be 1 to 63 letters, digits, '-' or '.'",
            ));
        }
        if self.observer.interval < Duration::from_millis(100)
            || self.observer.interval > Duration::from_secs(3600)
        {
            return Err(bad(
                "observer.interval",
                self.observer.interval,
                "must be between 100ms and 1h",
            ));
        }
        if self.storage.download_max_bytes == 0 {
            return Err(bad(
                "storage.download_max_bytes",
                self.storage.download_max_bytes,
                "must be at least 1",
            ));
        }
        if self.storage.download_stall_timeout < Duration::from_millis(100)
            || self.storage.download_stall_timeout > Duration::from_secs(3600)
        {
            return Err(bad(
                "storage.download_stall_timeout",
                self.storage.download_stall_timeout,
                "must be between 100ms and 1h",
            ));
        }
        if self.observer.probe_timeout < Duration::from_millis(10)
            || self.observer.probe_timeout > Duration::from_secs(60)
        {
            return Err(bad(
                "observer.probe_timeout",
                self.observer.probe_timeout,
                "must be between 10ms and 60s",
            ));
        }
        if self.qemu.stop_timeout.is_zero() || self.qemu.stop_timeout > Duration::from_secs(3600) {
            return Err(bad(
                "qemu.stop_timeout",
                self.qemu.stop_timeout,
                "must be between 1s and 1h",
            ));
        }
        if self.limits.max_vcpus == 0 || self.limits.max_vcpus > 1024 {
            return Err(bad(
                "limits.max_vcpus",
                self.limits.max_vcpus,
                "must be between 1 and 1024",
            ));
        }
        if self.limits.max_memory_mib < 16 {
            return Err(bad(
                "limits.max_memory_mib",
                self.limits.max_memory_mib,
                "must be at least 16",
            ));
        }
        if self.limits.max_disk_bytes < 1 << 20 || self.limits.max_disk_bytes > 1 << 50 {
            return Err(bad(
                "limits.max_disk_bytes",
                self.limits.max_disk_bytes,
                "must be between 1 MiB and 1 PiB",
            ));
        }
        if self.limits.vm_lock_timeout.is_zero()
            || self.limits.vm_lock_timeout > Duration::from_secs(600)
        {
            return Err(bad(
                "limits.vm_lock_timeout",
                self.limits.vm_lock_timeout,
                "must be between 1ms and 10m",
            ));
        }
        if self.log.max_bytes < 4096 {
            return Err(bad(
                "log.max_bytes",
                self.log.max_bytes,
                "must be at least 4096",
            ));
        }
        if self.log.keep_files == 0 {
            return Err(bad(
                "log.keep_files",
                self.log.keep_files,
                "must be at least 1",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(bad(
                "log.level",
                &self.log.level,
                "is not a tracing filter (e.g. info, vman=debug)",
            ));
        }
        let prefix = &self.network.bridge_prefix;
        if prefix.is_empty()
            || prefix.len() > 11
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad(
                "network.bridge_prefix",
                prefix,
                "must be 1-11 characters of a-z, 0-9 or '-' (bridge names are at most 15 characters)",
            ));
        }
        if let Some(uplink) = &self.network.uplink
            && let Err(reason) = crate::validate::uplink_name(uplink)
        {
            return Err(bad("network.uplink", uplink, &reason));
        }
        let ws = &self.websocket;
        if ws.init_timeout < Duration::from_millis(10) || ws.init_timeout > Duration::from_secs(600)
        {
            return Err(bad(
                "websocket.init_timeout",
                ws.init_timeout,
                "must be between 10ms and 10m",
            ));
        }
        if ws.keepalive_interval < Duration::from_millis(10)
            || ws.keepalive_interval > Duration::from_secs(3600)
        {
            return Err(bad(
                "websocket.keepalive_interval",
                ws.keepalive_interval,
                "must be between 10ms and 1h",
            ));
        }
        if ws.max_subscriptions == 0 || ws.max_subscriptions > 10_000 {
            return Err(bad(
                "websocket.max_subscriptions",
                ws.max_subscriptions,
                "must be between 1 and 10000",
            ));
        }
        if ws.outgoing_buffer == 0 || ws.outgoing_buffer > 65_536 {
            return Err(bad(
                "websocket.outgoing_buffer",
                ws.outgoing_buffer,
                "must be between 1 and 65536",
            ));
        }
        if ws.lag_timeout < Duration::from_millis(10) || ws.lag_timeout > Duration::from_secs(600) {
            return Err(bad(
                "websocket.lag_timeout",
                ws.lag_timeout,
                "must be between 10ms and 10m",
            ));
        }
        for (key, origins) in [
            ("http.cors_origins", &self.http.cors_origins),
            ("websocket.allowed_origins", &ws.allowed_origins),
        ] {
            if let Some(origin) = origins.iter().find(|origin| !is_origin(origin)) {
                return Err(bad(
                    key,
                    origin,
                    "each must be an exact origin: http:// or https://, a host and maybe a port, no path (https://dash.example:8443)",
                ));
            }
        }
        if self.limits.websocket_connections_per_token == 0 {
            return Err(bad(
                "limits.websocket_connections_per_token",
                self.limits.websocket_connections_per_token,
                "must be at least 1",
            ));
        }
        match (&self.tls.cert, &self.tls.key) {
            (None, None) => {}
            (Some(cert), None) => {
                return Err(bad(
                    "tls.cert",
                    cert,
                    "is set but tls.key is not: set both or neither",
                ));
            }
            (None, Some(key)) => {
                return Err(bad(
                    "tls.key",
                    key,
                    "is set but tls.cert is not: set both or neither",
                ));
            }
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::tls::load(cert, key) {
                    return Err(bad(e.key, &e.path, &e.reason));
                }
            }
        }
        let graphql = &self.graphql;
        if graphql.max_depth == 0 || graphql.max_depth > crate::api::limits::NESTING_LIMIT {
            return Err(bad(
                "graphql.max_depth",
                graphql.max_depth,
                "must be between 1 and 32",
            ));
        }
        if graphql.max_complexity == 0 || graphql.max_complexity > 1_000_000 {
            return Err(bad(
                "graphql.max_complexity",
                graphql.max_complexity,
                "must be between 1 and 1000000",
            ));
        }
        if graphql.max_aliases > 100_000 {
            return Err(bad(
                "graphql.max_aliases",
                graphql.max_aliases,
                "must be between 0 and 100000",
            ));
        }
        if graphql.max_root_fields == 0 || graphql.max_root_fields > 10_000 {
            return Err(bad(
                "graphql.max_root_fields",
                graphql.max_root_fields,
                "must be between 1 and 10000",
            ));
        }
        Ok(())
    }

    /// What `vman serve` checks beyond [`Config::validate`]: without auth,
    /// vman listens only on a loopback address. (Kept apart so that `vman
    /// token create` works with the config that will need the token.)
    pub fn check_serving(&self) -> Result<(), ConfigError> {
        if self.auth.mode == AuthMode::None && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "auth.mode".into(),
                value: "\"none\"".into(),
                reason: format!(
                    "is allowed only on a loopback listen address, and listen = {}: anyone who can reach it could create and delete VMs. Set auth.mode = \"token\" (VMAN_AUTH_MODE=token) and create a token with `vman token create --name NAME --role admin`, or listen on 127.0.0.1",
                    self.listen
                ),
            });
        }
        Ok(())
    }

    /// Whether vman serves TLS: `https` (and `wss`) with `[tls]` set, else
    /// `http` (and `ws`).
    pub fn scheme(&self) -> &'static str {
        if self.tls.files().is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Where the other nodes reach this node's `/graphql`:
    /// `cluster.advertise_url`, or else `listen` unless it is a wildcard
    /// address (or port 0) that says nothing to another machine.
    pub fn advertise_url(&self) -> Option<String> {
        if let Some(url) = &self.cluster.advertise_url {
            return Some(url.clone());
        }
        (!self.listen.ip().is_unspecified() && self.listen.port() != 0)
            .then(|| format!("{}://{}/graphql", self.scheme(), self.listen))
    }

    /// The websocket scheme that goes with [`Config::scheme`]: `wss` or `ws`.
    pub fn ws_scheme(&self) -> &'static str {
        if self.tls.files().is_some() {
            "wss"
        } else {
            "ws"
        }
    }

    /// Where SQLite's database file is (when there is no `database.url`).
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("vman.db")
    }

    /// Where the database is: `database.url`'s PostgreSQL, or SQLite at
    /// [`Config::db_path`].
    pub fn database(&self) -> crate::db::Location {
        match &self.database.url {
            Some(url) => crate::db::Location::Postgres(url.clone()),
            None => crate::db::Location::Sqlite(self.db_path()),
        }
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.data_dir.join("storage")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
    /// Where scheduled backups go (made when the first is taken).
    pub fn backup_dir(&self) -> PathBuf {
        self.data_dir.join("backups")
    }
    pub fn import_dir(&self) -> PathBuf {
        self.import_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("import"))
    }

    /// Every directory vman writes to, created on demand.
    pub fn data_dirs(&self) -> [PathBuf; 5] {
        [
            self.data_dir.clone(),
            self.storage_dir(),
            self.storage_dir().join("images"),
            self.run_dir(),
            self.log_dir(),
        ]
    }

    pub fn bridge_name(&self, vlan_id: u16) -> String {
        format!("{}{vlan_id}", self.network.bridge_prefix)
    }
}

/// One line per effective value with the source it came from.
pub fn describe(sources: &Sources, cli: &CliOverrides) -> Result<String, ConfigError> {
    let figment = figment(sources, cli);
    let config = extract(&figment)?;
    config.validate()?;
    config.check_serving()?;
    let value =
        Value::serialize(&config).map_err(|e| Box::new(figment::Error::from(e.to_string())))?;
    let mut lines = Vec::new();
    collect(&figment, "", &value, &mut lines);
    Ok(lines.join("\n"))
}

fn collect(figment: &Figment, prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Dict(_, dict) => {
            for (k, v) in dict {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect(figment, &path, v, out);
            }
        }
        leaf => {
            let source = figment
                .find_metadata(prefix)
                .map(|m| match &m.source {
                    Some(src) => format!("{} ({src})", m.name),
                    None => m.name.to_string(),
                })
                .unwrap_or_else(|| "default".into());
            let shown = match (prefix, leaf) {
                ("database.url", Value::String(_, url)) => {
                    serde_json::to_string(&shown_url(url)).unwrap_or_default()
                }
                _ => serde_json::to_string(leaf).unwrap_or_default(),
            };
            out.push(format!("{prefix} = {shown}    # from {source}"));
        }
    }
}

pub fn ensure_dirs(config: &Config) -> std::io::Result<()> {
    for dir in config.data_dirs().iter().chain([&config.import_dir()]) {
        std::fs::create_dir_all(dir)?;
    }
    set_mode(&config.run_dir(), 0o700)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
// figment's `Jail` returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn with_files(toml: &str, dotenv: &str) -> (tempfile::TempDir, Sources) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vman.toml"), toml).unwrap();
        std::fs::write(dir.path().join(".env"), dotenv).unwrap();
        let sources = Sources {
            config_file: dir.path().join("vman.toml"),
            dotenv_file: dir.path().join(".env"),
        };
        (dir, sources)
    }

    #[test]
    fn layers_apply_in_order_and_name_their_source() {
        figment::Jail::expect_with(|jail| {
            let (_dir, sources) = with_files(
                "data_dir = \"/from/toml\"\nlisten = \"127.0.0.1:9000\"\n[observer]\ninterval = \"2s\"\n",
                "VMAN_DATA_DIR=/from/dotenv\nVMAN_OBSERVER_INTERVAL=3s\n",
            );
            jail.set_env("VMAN_OBSERVER_INTERVAL", "4s");
            let config = Config::load(&sources, &CliOverrides::default()).unwrap();
            assert_eq!(config.data_dir, PathBuf::from("/from/dotenv"));
            assert_eq!(config.observer.interval, Duration::from_secs(4));
            assert_eq!(config.listen.port(), 9000);

            let cli = CliOverrides {
                data_dir: Some("/from/cli".into()),
                ..Default::default()
            };
            let config = Config::load(&sources, &cli).unwrap();
            assert_eq!(config.data_dir, PathBuf::from("/from/cli"));

            let text = describe(&sources, &cli).unwrap();
            assert!(
                text.contains("data_dir = \"/from/cli\"    # from command line"),
                "{text}"
            );
            assert!(text.contains("observer.interval = \"4s\""), "{text}");
            assert!(
                text.contains("# from `VMAN_` environment variable(s)")
                    || text.contains("environment"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn websocket_settings_have_their_own_section() {
        figment::Jail::expect_with(|jail| {
            let (_dir, sources) = with_files(
                "[websocket]\ninit_timeout = \"3s\"\nmax_subscriptions = 7\n",
                "",
            );
            jail.set_env("VMAN_WEBSOCKET_LAG_TIMEOUT", "250ms");
            let config = Config::load(&sources, &CliOverrides::default()).unwrap();
            assert_eq!(config.websocket.init_timeout, Duration::from_secs(3));
            assert_eq!(config.websocket.max_subscriptions, 7);
            assert_eq!(config.websocket.lag_timeout, Duration::from_millis(250));
            assert_eq!(config.websocket.keepalive_interval, Duration::from_secs(15));

            let (_dir, sources) = with_files("[websocket]\noutgoing_buffer = 0\n", "");
            let err = Config::load(&sources, &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("websocket.outgoing_buffer"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn graphql_settings_have_their_own_section() {
        figment::Jail::expect_with(|jail| {
            let (_dir, sources) = with_files(
                "[graphql]\nmax_depth = 10\nintrospection = false\n",
                "VMAN_GRAPHQL_MAX_ALIASES=5\n",
            );
            jail.set_env("VMAN_GRAPHQL_MAX_ROOT_FIELDS", "3");
            let config = Config::load(&sources, &CliOverrides::default()).unwrap();
            assert_eq!(config.graphql.max_depth, 10);
            assert!(!config.graphql.introspection);
            assert_eq!(config.graphql.max_aliases, 5);
            assert_eq!(config.graphql.max_root_fields, 3);
            assert_eq!(config.graphql.max_complexity, 5000);

            let text = describe(&sources, &CliOverrides::default()).unwrap();
            assert!(text.contains("graphql.introspection = false"), "{text}");
            assert!(text.contains("graphql.max_complexity = 5000"), "{text}");

            let (_dir, sources) = with_files("[graphql]\nmax_depth = 100\n", "");
            let err = Config::load(&sources, &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("graphql.max_depth"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_key_and_value() {
        figment::Jail::expect_with(|_jail| {
            let (_dir, sources) = with_files("[observer]\ninterval = \"1ms\"\n", "");
            let err = Config::load(&sources, &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("observer.interval") && err.contains("1ms"),
                "{err}"
            );

            let (_dir, sources) = with_files("listen = \"not an address\"\n", "");
            let err = Config::load(&sources, &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("listen") && err.contains("not an address"),
                "{err}"
            );

            let (_dir, sources) = with_files("[qemu]\naccel = \"hvf\"\n", "");
            let err = Config::load(&sources, &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("accel") && err.contains("hvf"), "{err}");

            let (_dir, sources) = with_files("[network]\nuplink = \"eth0.10\"\n", "");
            let err = Config::load(&sources, &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("network.uplink") && err.contains("eth0.10"),
                "{err}"
            );
            Ok(())
        });
    }
    /// `VMAN_DATABASE_URL` selects PostgreSQL; `config check` shows it with
    /// its password masked, and so do `Debug` and `Display`.
    #[test]
    fn a_database_url_is_read_from_the_environment_and_shown_masked() {
        figment::Jail::expect_with(|jail| {
            let (_dir, sources) = with_files("", "");
            let cli = CliOverrides::default();
            let config = Config::load(&sources, &cli).unwrap();
            assert_eq!(config.database.url, None);
            assert!(
                matches!(config.database(), crate::db::Location::Sqlite(p) if p == config.db_path())
            );

            jail.set_env(
                "VMAN_DATABASE_URL",
                "postgres://vman:s3cret@db.example:5432/vman?sslmode=require",
            );
            let config = Config::load(&sources, &cli).unwrap();
            assert!(config.database().is_postgres());
            let text = describe(&sources, &cli).unwrap();
            assert!(
                text.contains(
                    "database.url = \"postgres://vman:***@db.example:5432/vman?sslmode=require\""
                ),
                "{text}"
            );
            for shown in [text, format!("{config:?}"), config.database().to_string()] {
                assert!(!shown.contains("s3cret"), "{shown}");
            }
            Ok(())
        });
    }

    #[test]
    fn passwords_in_urls_are_masked_wherever_they_are() {
        for (url, shown) in [
            ("postgres://u:p@h/d", "postgres://u:***@h/d"),
            (
                "postgres://u@h/d?password=p&sslmode=disable",
                "postgres://u@h/d?password=***&sslmode=disable",
            ),
            ("postgres://u@h/d", "postgres://u@h/d"),
            ("not a url with p", "(not a URL)"),
        ] {
            assert_eq!(shown_url(url), shown);
        }
    }
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    /// Every bound `validate` checks, each broken alone on the defaults: the
    /// error names the key.
    #[test]
    fn each_bound_is_checked_and_named() {
        type Break = fn(&mut Config);
        let cases: &[(&str, Break)] = &[
            ("data_dir", |c| c.data_dir = PathBuf::new()),
            ("observer.interval", |c| {
                c.observer.interval = Duration::from_secs(7200)
            }),
            ("database.busy_timeout", |c| {
                c.database.busy_timeout = Duration::from_millis(9)
            }),
            ("backup.interval", |c| {
                c.backup.interval = Duration::from_millis(500)
            }),
            ("backup.keep", |c| c.backup.keep = 0),
            ("database.busy_timeout", |c| {
                c.database.busy_timeout = Duration::from_secs(601)
            }),
            ("database.url", |c| {
                c.database.url = Some(DatabaseUrl::new("mysql://u:p@h/d"))
            }),
            ("database.url", |c| {
                c.database.url = Some(DatabaseUrl::new("postgres://u:p@h:port/d"))
            }),
            ("observer.probe_timeout", |c| {
                c.observer.probe_timeout = Duration::from_millis(1)
            }),
            ("observer.probe_timeout", |c| {
                c.observer.probe_timeout = Duration::from_secs(61)
            }),
            ("qemu.stop_timeout", |c| {
                c.qemu.stop_timeout = Duration::ZERO
            }),
            ("qemu.stop_timeout", |c| {
                c.qemu.stop_timeout = Duration::from_secs(3601)
            }),
            ("limits.max_vcpus", |c| c.limits.max_vcpus = 0),
            ("limits.max_vcpus", |c| c.limits.max_vcpus = 1025),
            ("limits.max_memory_mib", |c| c.limits.max_memory_mib = 15),
            ("limits.max_disk_bytes", |c| {
                c.limits.max_disk_bytes = (1 << 20) - 1
            }),
            ("limits.max_disk_bytes", |c| {
                c.limits.max_disk_bytes = (1 << 50) + 1
            }),
            ("limits.vm_lock_timeout", |c| {
                c.limits.vm_lock_timeout = Duration::ZERO
            }),
            ("limits.vm_lock_timeout", |c| {
                c.limits.vm_lock_timeout = Duration::from_secs(601)
            }),
            ("log.max_bytes", |c| c.log.max_bytes = 4095),
            ("log.keep_files", |c| c.log.keep_files = 0),
            ("log.level", |c| c.log.level = "vman=[".into()),
            ("network.bridge_prefix", |c| {
                c.network.bridge_prefix = String::new()
            }),
            ("network.bridge_prefix", |c| {
                c.network.bridge_prefix = "a".repeat(12)
            }),
            ("network.bridge_prefix", |c| {
                c.network.bridge_prefix = "VMBR".into()
            }),
            ("network.uplink", |c| c.network.uplink = Some("a b".into())),
            ("websocket.init_timeout", |c| {
                c.websocket.init_timeout = Duration::from_millis(9)
            }),
            ("websocket.init_timeout", |c| {
                c.websocket.init_timeout = Duration::from_secs(601)
            }),
            ("websocket.keepalive_interval", |c| {
                c.websocket.keepalive_interval = Duration::from_millis(9)
            }),
            ("websocket.keepalive_interval", |c| {
                c.websocket.keepalive_interval = Duration::from_secs(3601)
            }),
            ("websocket.max_subscriptions", |c| {
                c.websocket.max_subscriptions = 0
            }),
            ("websocket.max_subscriptions", |c| {
                c.websocket.max_subscriptions = 10_001
            }),
            ("websocket.outgoing_buffer", |c| {
                c.websocket.outgoing_buffer = 65_537
            }),
            ("websocket.lag_timeout", |c| {
                c.websocket.lag_timeout = Duration::from_millis(9)
            }),
            ("websocket.lag_timeout", |c| {
                c.websocket.lag_timeout = Duration::from_secs(601)
            }),
            ("tls.cert", |c| c.tls.cert = Some("cert.pem".into())),
            ("tls.key", |c| c.tls.key = Some("key.pem".into())),
            ("tls.cert", |c| {
                c.tls.cert = Some("/nonexistent/cert.pem".into());
                c.tls.key = Some("/nonexistent/key.pem".into());
            }),
            ("graphql.max_depth", |c| c.graphql.max_depth = 0),
            ("graphql.max_depth", |c| c.graphql.max_depth = 33),
            ("graphql.max_complexity", |c| c.graphql.max_complexity = 0),
            ("graphql.max_complexity", |c| {
                c.graphql.max_complexity = 1_000_001
            }),
            ("graphql.max_aliases", |c| c.graphql.max_aliases = 100_001),
            ("graphql.max_root_fields", |c| c.graphql.max_root_fields = 0),
            ("graphql.max_root_fields", |c| {
                c.graphql.max_root_fields = 10_001
            }),
        ];
        assert!(Config::default().validate().is_ok());
        for (key, break_it) in cases {
            let mut config = Config::default();
            break_it(&mut config);
            match config.validate() {
                Err(ConfigError::Invalid { key: named, .. }) => assert_eq!(named, *key),
                other => panic!("{key}: expected Invalid, got {other:?}"),
            }
        }
    }

    /// The edges of each range are allowed.
    #[test]
    fn the_edges_of_each_range_are_valid() {
        let mut config = Config::default();
        config.observer.interval = Duration::from_millis(100);
        config.database.busy_timeout = Duration::from_secs(600);
        config.backup.interval = Duration::ZERO;
        config.backup.keep = 10_000;
        config.observer.probe_timeout = Duration::from_secs(60);
        config.qemu.stop_timeout = Duration::from_secs(3600);
        config.limits.max_vcpus = 1024;
        config.limits.max_memory_mib = 16;
        config.limits.max_disk_bytes = 1 << 50;
        config.log.max_bytes = 4096;
        config.log.keep_files = 1;
        config.log.level = "warn,vman=trace".into();
        config.network.bridge_prefix = "br-0123456".into();
        config.network.uplink = Some("enp0s31f6".into());
        config.websocket.max_subscriptions = 10_000;
        config.websocket.outgoing_buffer = 65_536;
        config.websocket.lag_timeout = Duration::from_millis(10);
        config.graphql.max_depth = 32;
        config.graphql.max_complexity = 1_000_000;
        config.graphql.max_aliases = 0;
        config.graphql.max_root_fields = 10_000;
        config.validate().unwrap();
        config.graphql.max_depth = 1;
        config.graphql.max_complexity = 1;
        config.graphql.max_aliases = 100_000;
        config.graphql.max_root_fields = 1;
        config.validate().unwrap();
    }

    #[test]
    fn derived_paths_and_names() {
        let config = Config {
            data_dir: PathBuf::from("/d"),
            ..Config::default()
        };
        assert_eq!(config.db_path(), PathBuf::from("/d/vman.db"));
        assert_eq!(config.import_dir(), PathBuf::from("/d/import"));
        assert_eq!(
            config.data_dirs(),
            ["/d", "/d/storage", "/d/storage/images", "/d/run", "/d/logs"].map(PathBuf::from)
        );
        assert_eq!(config.bridge_name(42), "vmbr42");
        assert_eq!((config.scheme(), config.ws_scheme()), ("http", "ws"));
        let tls = Config {
            tls: TlsConfig {
                cert: Some("c.pem".into()),
                key: Some("k.pem".into()),
            },
            ..config.clone()
        };
        assert_eq!((tls.scheme(), tls.ws_scheme()), ("https", "wss"));
        let config = Config {
            import_dir: Some("/elsewhere".into()),
            ..config
        };
        assert_eq!(config.import_dir(), PathBuf::from("/elsewhere"));
    }

    #[test]
    fn ensure_dirs_makes_every_directory_and_keeps_run_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        ensure_dirs(&config).unwrap();
        for d in config.data_dirs().iter().chain([&config.import_dir()]) {
            assert!(d.is_dir(), "{}", d.display());
        }
        let mode = std::fs::metadata(config.run_dir())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // A second call finds everything there.
        ensure_dirs(&config).unwrap();
    }

    #[test]
    fn environment_keys_map_to_sections() {
        assert_eq!(
            env_key_to_path("OBSERVER_PROBE_TIMEOUT"),
            "observer.probe_timeout"
        );
        assert_eq!(
            env_key_to_path("WEBSOCKET_LAG_TIMEOUT"),
            "websocket.lag_timeout"
        );
        assert_eq!(env_key_to_path("TLS_CERT"), "tls.cert");
        assert_eq!(
            env_key_to_path("GRAPHQL_MAX_ROOT_FIELDS"),
            "graphql.max_root_fields"
        );
        assert_eq!(env_key_to_path("DATA_DIR"), "data_dir");
        assert_eq!(env_key_to_path("DRY_RUN"), "dry_run");
        // A section name without `_` after it is a top-level key.
        assert_eq!(env_key_to_path("LOGX"), "logx");

        let mut dict = Dict::new();
        insert_path(&mut dict, "limits.max_vcpus", Value::from(4));
        insert_path(&mut dict, "limits.max_memory_mib", Value::from(64));
        insert_path(&mut dict, "dry_run", Value::from(true));
        let Some(Value::Dict(_, limits)) = dict.get("limits") else {
            panic!("a limits section: {dict:?}");
        };
        assert_eq!(limits.len(), 2);
        assert_eq!(dict.get("dry_run").and_then(Value::to_bool), Some(true));
        // A path through a value that is not a section is dropped.
        insert_path(&mut dict, "dry_run.x", Value::from(1));
        assert_eq!(dict.get("dry_run").and_then(Value::to_bool), Some(true));
    }

    #[test]
    fn dotenv_reads_only_vman_keys_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "OTHER=1\nVMAN_LIMITS_MAX_VCPUS=3\nVMAN_NETWORK_BRIDGE_PREFIX=br\n",
        )
        .unwrap();
        let env = DotEnv { path: path.clone() };
        assert!(env.metadata().name.contains(".env file"));
        let data = env.data().unwrap();
        let dict = &data[&Profile::Default];
        assert!(!dict.contains_key("other"));
        let Some(Value::Dict(_, limits)) = dict.get("limits") else {
            panic!("limits from .env: {dict:?}");
        };
        assert_eq!(limits.get("max_vcpus").and_then(Value::to_u128), Some(3));

        std::fs::write(&path, "VMAN_X='unterminated\n").unwrap();
        let err = DotEnv { path: path.clone() }
            .data()
            .unwrap_err()
            .to_string();
        assert!(err.contains(".env"), "{err}");

        // An absent file is no values.
        let absent = DotEnv {
            path: dir.path().join("none"),
        };
        assert!(absent.data().unwrap()[&Profile::Default].is_empty());
    }

    fn toml_file(toml: &str) -> (tempfile::TempDir, Sources) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vman.toml"), toml).unwrap();
        let sources = Sources {
            config_file: dir.path().join("vman.toml"),
            dotenv_file: dir.path().join(".env"),
        };
        (dir, sources)
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn load_errors_say_where_the_value_came_from() {
        figment::Jail::expect_with(|jail| {
            // A file that is not TOML: no key to name.
            let (_dir, sources) = toml_file("data_dir = ");
            match Config::load(&sources, &CliOverrides::default()) {
                Err(ConfigError::Load(e)) => assert!(e.to_string().contains("vman.toml"), "{e}"),
                other => panic!("expected a load error, got {other:?}"),
            }
            // A bad value from the environment names the variable's source.
            let (_dir, sources) = toml_file("");
            jail.set_env("VMAN_LIMITS_MAX_VCPUS", "many");
            let err = Config::load(&sources, &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("limits.max_vcpus")
                    && err.contains("many")
                    && err.contains("environment"),
                "{err}"
            );
            Ok(())
        });
    }
}
