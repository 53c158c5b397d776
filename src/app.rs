//! The composition root: one [`App`] holds the database, the event bus, the
//! host ports and the per-VM locks. The GraphQL schema, the HTTP router and
//! the tests all start from [`App::start`].

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    events::EventBus,
    host::{
        HostNetwork, Hypervisor,
        dry_run::{DryRunHypervisor, DryRunNetwork},
        qemu::{Qemu, QemuHypervisor, argv::QemuOptions},
    },
    vm::lock::VmLocks,
};

pub struct App {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub bus: Arc<EventBus>,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub network: Arc<dyn HostNetwork>,
    pub locks: VmLocks,
    /// Ends the server, subscriptions and background tasks.
    pub cancel: CancellationToken,
    /// What could not be re-adopted at start, for `health` (never silently dropped).
    pub adoption_problems: std::sync::Mutex<Vec<String>>,
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
    #[error("{0}")]
    Locked(String),
}

/// Holds `<data_dir>/vman.lock` for the life of a serving vman: two vman
/// processes driving the same VMs would fight over them.
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    fn take(config: &Config) -> Result<DataDirLock, StartError> {
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
        let db = crate::db::connect(&config.db_path()).await?;
        crate::db::migrate(&db).await?;
        Ok(())
    }

    /// Opens the database, runs migrations and picks the host ports.
    pub async fn start(mut config: Config) -> Result<Arc<App>, StartError> {
        let dirs_error = |source| StartError::Dirs {
            dir: config.data_dir.clone(),
            source,
        };
        crate::config::ensure_dirs(&config).map_err(dirs_error)?;
        // Host paths handed to QEMU and qemu-img must not depend on vman's working directory.
        let data_dir = std::fs::canonicalize(&config.data_dir).map_err(dirs_error)?;
        config.data_dir = data_dir;
        let lock = DataDirLock::take(&config)?;
        let db = crate::db::connect(&config.db_path()).await?;
        crate::db::migrate(&db).await?;
        let options = QemuOptions::from_config(&config);
        let hypervisor: Arc<dyn Hypervisor> = if config.dry_run {
            Arc::new(DryRunHypervisor::new(options))
        } else {
            tracing::info!(accel = ?options.accel, binary = %options.binary.display(), "driving QEMU");
            Arc::new(Qemu(Arc::new(QemuHypervisor::new(options))))
        };
        let cancel = CancellationToken::new();
        let app = Arc::new(App {
            bus: Arc::new(EventBus::new(db.clone(), cancel.clone())),
            db,
            hypervisor,
            network: Arc::new(DryRunNetwork),
            locks: VmLocks::new(config.limits.vm_lock_timeout),
            config: Arc::new(config),
            cancel,
            adoption_problems: Default::default(),
            _lock: lock,
        });
        // Metrics count from the start, not from the first scrape.
        crate::telemetry::prometheus();
        // Watch first, so nothing the host reports during re-adoption is missed.
        crate::observer::spawn(app.clone());
        if app.hypervisor.is_dry_run() {
            // A dry run sees no host: it must not judge the VMs a real vman runs.
            tracing::info!("dry-run: VMs are not re-adopted and their states are left as they are");
        } else {
            crate::vm::adopt_all(&app).await;
        }
        Ok(app)
    }
}
