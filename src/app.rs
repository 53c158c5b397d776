//! The composition root: one [`App`] holds the services' context ([`Ctx`]),
//! the observer and what re-adoption found. The GraphQL schema, the HTTP
//! router and the tests all start from [`App::start`], which builds the app
//! ([`App::build`]: touches no VM, spawns nothing) and then starts its
//! background work ([`App::run_background`]).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    auth::Auth,
    config::Config,
    context::Ctx,
    events::EventBus,
    host::{
        HostNetwork, Hypervisor,
        dry_run::{DryRunHypervisor, DryRunNetwork},
        net::NetlinkNetwork,
        qemu::{Qemu, QemuHypervisor, argv::QemuOptions},
    },
    observer::Observer,
    vm::{adopt::AdoptionProblems, lock::VmLocks},
};

pub struct App {
    /// What services take: database, event bus, locks, host ports, config.
    pub ctx: Ctx,
    /// The push path and the coherence sweep.
    pub observer: Arc<Observer>,
    /// What could not be re-adopted at start, for `health` (never silently dropped).
    pub adoption_problems: AdoptionProblems,
    /// Who may use the API.
    pub auth: Arc<Auth>,
    /// The per-VM samplers of `vmStats`.
    pub stats: Arc<crate::stats::Samplers>,
    /// Every statement the app's database pools run (counted; recorded on demand).
    pub statements: Arc<crate::db::Statements>,
    _lock: DataDirLock,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating data directories under {dir}: {source}")]
    Dirs {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// The data directory cannot be used (another vman holds it, or it is unfit).
    #[error("{0}")]
    Locked(String),
    /// The database is damaged: the message says which backup to restore.
    #[error("{0}")]
    Damaged(String),
    /// This node's host could not be registered (its name is another's).
    #[error("registering this node's host: {0}")]
    Host(String),
    /// The network port could not start (no netlink socket).
    #[error("network port: {0}")]
    Network(#[source] crate::host::HostError),
}

/// QEMU refuses a Unix socket path of 108 bytes or more, and every VM's QMP
/// socket is `<data_dir>/run/<uuid>/qmp.sock` (its console socket,
/// `tty.sock`, is as long): a data dir too long for that is refused at
/// start, not at the first `startVm`.
fn check_socket_room(config: &Config) -> Result<(), StartError> {
    use crate::host::qemu::argv::{console_socket, qmp_socket};
    const SUN_PATH_MAX: usize = 107;
    let run = config.run_dir().join(uuid::Uuid::nil().to_string());
    let len = [qmp_socket(&run), console_socket(&run)]
        .iter()
        .map(|socket| socket.as_os_str().len())
        .max()
        .unwrap_or_default();
    if len > SUN_PATH_MAX {
        return Err(StartError::Locked(format!(
            "data_dir {} is too long: QMP sockets under it would be {len} bytes, QEMU allows {SUN_PATH_MAX}; use a data_dir of at most {} bytes",
            config.data_dir.display(),
            config.data_dir.as_os_str().len() - (len - SUN_PATH_MAX)
        )));
    }
    Ok(())
}

/// Holds `<data_dir>/vman.lock` for the life of a serving vman: two vman
/// processes driving the same VMs would fight over them.
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// Takes the lock, or says which vman (pid) holds it.
    pub fn take(config: &Config) -> Result<DataDirLock, StartError> {
        use std::io::Write;
        let path = config.data_dir.join("vman.lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&path)
            .map_err(|source| StartError::Dirs {
                dir: path.clone(),
                source,
            })?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(StartError::Locked(format!(
                "another vman (pid {}) serves {}; stop it first",
                holder.trim(),
                config.data_dir.display()
            )));
        }
        // Who holds it, for the message above.
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        Ok(DataDirLock { _file: file })
    }
}

impl App {
    /// Opens the database and applies migrations; touches no VM (for `vman migrate`).
    pub async fn migrate(config: &Config) -> Result<(), StartError> {
        crate::config::ensure_dirs(config).map_err(|source| StartError::Dirs {
            dir: config.data_dir.clone(),
            source,
        })?;
        let db = crate::db::connect(config.database(), config.database.busy_timeout).await?;
        crate::db::migrate(&db).await?;
        Ok(())
    }

    /// Builds the app and starts its background work: see [`App::build`]
    /// and [`App::run_background`].
    pub async fn start(config: Config) -> Result<Arc<App>, StartError> {
        let app = Arc::new(App::build(config).await?);
        app.run_background().await;
        Ok(app)
    }

    /// Opens the database, runs migrations and picks the host ports. Touches
    /// no VM and spawns nothing.
    pub async fn build(mut config: Config) -> Result<App, StartError> {
        let dirs_error = |source| StartError::Dirs {
            dir: config.data_dir.clone(),
            source,
        };
        crate::config::ensure_dirs(&config).map_err(dirs_error)?;
        // Host paths handed to QEMU and qemu-img must not depend on vman's working directory.
        let data_dir = std::fs::canonicalize(&config.data_dir).map_err(dirs_error)?;
        config.data_dir = data_dir;
        check_socket_room(&config)?;
        let lock = DataDirLock::take(&config)?;
        let location = config.database();
        // A PostgreSQL server keeps its own files whole: only SQLite's is read here.
        if let crate::db::Location::Sqlite(path) = &location {
            match crate::db::check_file(path, crate::db::Check::Quick, false).await? {
                crate::db::FileCheck::Missing | crate::db::FileCheck::Ok => {}
                crate::db::FileCheck::Damaged(detail) => {
                    return Err(StartError::Damaged(crate::backup::damaged_message(
                        &config, &detail,
                    )));
                }
            }
        }
        let statements = Arc::new(crate::db::Statements::default());
        let db = crate::db::observed(
            crate::db::connect(&location, config.database.busy_timeout),
            &statements,
        )
        .await?;
        crate::db::migrate(&db).await?;
        let writes = crate::db::observed(crate::db::connect_writes(&location), &statements).await?;
        let options = QemuOptions::from_config(&config);
        let hypervisor: Arc<dyn Hypervisor> = if config.dry_run {
            Arc::new(DryRunHypervisor::new(options))
        } else {
            tracing::info!(accel = ?options.accel, binary = %options.binary.display(), "driving QEMU");
            Arc::new(Qemu(Arc::new(QemuHypervisor::new(options))))
        };
        let network: Arc<dyn HostNetwork> = if config.dry_run {
            Arc::new(DryRunNetwork::new())
        } else {
            Arc::new(NetlinkNetwork::start().await.map_err(StartError::Network)?)
        };
        let cancel = CancellationToken::new();
        let bus = Arc::new(EventBus::new(
            db.clone(),
            writes,
            config.database.busy_timeout,
            cancel.clone(),
        ));
        let host_id = crate::cluster::register(&config, &bus).await.map_err(|e| {
            StartError::Host(match e {
                // Said in full: this stops the start, and nobody else will log it.
                crate::error::ApiError::Internal(source) => source.to_string(),
                other => other.to_string(),
            })
        })?;
        let ctx = Ctx {
            bus,
            db,
            hypervisor,
            network,
            locks: Arc::new(VmLocks::new(config.limits.vm_lock_timeout)),
            long: Default::default(),
            config: Arc::new(config),
            cancel,
            actor: crate::auth::VMAN.into(),
            host_id: host_id.into(),
        };
        Ok(App {
            auth: Arc::new(Auth::new(&ctx.config, ctx.db.clone())),
            stats: Arc::new(crate::stats::Samplers::new(ctx.clone())),
            observer: Arc::new(Observer::new(ctx.clone())),
            ctx,
            statements,
            adoption_problems: Default::default(),
            _lock: lock,
        })
    }

    /// What a serving vman does once built: ends the operations a previous
    /// vman left unfinished (and removes their partial files), watches the host, re-adopts running VMs and
    /// sweeps for drift.
    pub async fn run_background(&self) {
        // Metrics count from the start, not from the first scrape.
        crate::telemetry::prometheus();
        if let Err(e) = crate::operation::fail_interrupted(&self.ctx).await {
            tracing::error!(error = %e, "ending the operations a previous vman left unfinished");
        }
        // Those operations' half-written files: no operation runs yet, so
        // every partial file is a leftover.
        let partials = self
            .ctx
            .hypervisor
            .remove_partials(&self.ctx.config.storage_dir())
            .await;
        if !partials.is_empty() {
            let names: Vec<String> = partials.iter().map(|p| p.display().to_string()).collect();
            tracing::warn!(
                files = ?names,
                "removed the partial files of operations a previous vman left unfinished"
            );
        }
        tokio::spawn(self.auth.clone().watch_revocations(self.ctx.cancel.clone()));
        crate::cluster::spawn(self.ctx.clone());
        if let Err(e) = self.ctx.bus.spawn_relay().await {
            tracing::error!(error = %e, "starting to relay the other nodes' events");
        }
        crate::backup::spawn_schedule(
            self.ctx.config.clone(),
            self.ctx.db.clone(),
            self.ctx.cancel.clone(),
        );
        // Watch first, so nothing the host reports during re-adoption is missed.
        self.observer.clone().spawn();
        if self.ctx.hypervisor.is_dry_run() {
            // A dry run sees no host: it must not judge the VMs a real vman runs.
            tracing::info!("dry-run: VMs are not re-adopted and their states are left as they are");
        } else {
            crate::vm::adopt::adopt_all(&self.ctx, &self.adoption_problems).await;
            // The sweep judges the host only once vman has taken over what runs.
            self.observer.clone().spawn_sweeps();
        }
    }
}
