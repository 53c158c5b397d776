//! One QMP connection per VM, through the `qapi` crate.
//!
//! qapi delivers command replies inside the same stream as events, so a task
//! per VM always reads it: replies go to their waiting command, events are
//! broadcast to whoever watches that VM. Every command has a timeout: a QEMU
//! that stops answering fails that command with `Timeout`, never stalls
//! anything else.
//!
//! A command that timed out is not abandoned: qapi matches replies to
//! commands by position (QEMU does not offer out-of-band ids on this
//! monitor), so a dropped command would leave its reply to the next one. Each
//! command runs in its own task until QEMU answers it or the connection ends;
//! only the caller stops waiting.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use qapi::{
    futures::{QapiService, QmpStreamTokio},
    qmp,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{io::WriteHalf, net::UnixStream, sync::broadcast};

use crate::host::HostError;

/// Replies to status queries should be instant.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Block and device commands may take a moment.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

type Writer = QmpStreamTokio<WriteHalf<UnixStream>>;

/// What a VM's QMP connection reports.
#[derive(Debug, Clone)]
pub enum QmpNotice {
    Event(Box<qmp::Event>),
    /// The connection ended (QEMU exited or closed it).
    Closed,
}

pub struct QmpClient {
    service: QapiService<Writer>,
    notices: broadcast::Sender<QmpNotice>,
    /// A `query-status` QEMU has not answered yet (asked by [`QmpClient::probe_status`]).
    status_pending: Arc<AtomicBool>,
}

impl QmpClient {
    /// Connects, negotiates capabilities and starts the reading task.
    pub async fn connect(socket: &Path) -> Result<QmpClient, HostError> {
        let stream = tokio::time::timeout(COMMAND_TIMEOUT, async {
            QmpStreamTokio::open_uds(socket).await?.negotiate().await
        })
        .await
        .map_err(|_| HostError::Timeout(format!("QMP handshake on {}", socket.display())))?
        .map_err(|source| HostError::Io {
            what: format!("QMP handshake on {}", socket.display()),
            source,
        })?;
        let (service, mut events) = stream.into_parts();
        let (notices, _) = broadcast::channel(64);
        let sender = notices.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let _ = sender.send(QmpNotice::Event(Box::new(event)));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "QMP stream error");
                        break;
                    }
                }
            }
            let _ = sender.send(QmpNotice::Closed);
        });
        Ok(QmpClient {
            service,
            notices,
            status_pending: Arc::default(),
        })
    }

    /// Events and connection loss, from now on.
    pub fn notices(&self) -> broadcast::Receiver<QmpNotice> {
        self.notices.subscribe()
    }

    /// Runs a typed command with a timeout.
    pub async fn execute<C>(&self, command: C, timeout: Duration) -> Result<C::Ok, HostError>
    where
        C: qapi::Command + qapi::qmp::QmpCommand + Send + 'static,
        C::Ok: Send + 'static,
    {
        let name = C::NAME;
        let started = std::time::Instant::now();
        // Runs to its reply even if this caller stops waiting (see the module docs).
        let command = tokio::spawn(self.service.execute(command));
        let result = tokio::time::timeout(timeout, command).await;
        crate::telemetry::qmp_command(name, started.elapsed(), result.is_err());
        let result = match result {
            Err(_) => {
                return Err(HostError::Timeout(format!(
                    "QMP {name} got no reply within {timeout:?}"
                )));
            }
            Ok(Err(join)) => return Err(HostError::Failed(format!("QMP {name}: {join}"))),
            Ok(Ok(result)) => result,
        };
        match result {
            Err(qapi::ExecuteError::Qapi(e)) => {
                Err(HostError::Failed(format!("QMP {name}: {}", e.desc)))
            }
            Err(qapi::ExecuteError::Io(e)) => Err(HostError::Io {
                what: format!("QMP {name}"),
                source: e,
            }),
            Ok(reply) => Ok(reply),
        }
    }

    /// Runs a command given as data (a planned `HostStep::Qmp`), typed through qapi.
    pub async fn execute_json(
        &self,
        command: &str,
        arguments: &serde_json::Value,
    ) -> Result<serde_json::Value, HostError> {
        let args = if arguments.is_null() {
            serde_json::json!({})
        } else {
            arguments.clone()
        };
        match command {
            "cont" => self.json::<qmp::cont>(args, COMMAND_TIMEOUT).await,
            "stop" => self.json::<qmp::stop>(args, COMMAND_TIMEOUT).await,
            "system_powerdown" => {
                self.json::<qmp::system_powerdown>(args, COMMAND_TIMEOUT)
                    .await
            }
            "system_reset" => self.json::<qmp::system_reset>(args, COMMAND_TIMEOUT).await,
            "quit" => self.json::<qmp::quit>(args, COMMAND_TIMEOUT).await,
            "query-status" => self.json::<qmp::query_status>(args, STATUS_TIMEOUT).await,
            "query-block" => self.json::<qmp::query_block>(args, STATUS_TIMEOUT).await,
            "blockdev-add" => self.json::<qmp::blockdev_add>(args, COMMAND_TIMEOUT).await,
            "blockdev-del" => self.json::<qmp::blockdev_del>(args, COMMAND_TIMEOUT).await,
            "device_add" => self.json::<qmp::device_add>(args, COMMAND_TIMEOUT).await,
            "device_del" => self.json::<qmp::device_del>(args, COMMAND_TIMEOUT).await,
            "netdev_add" => self.json::<qmp::netdev_add>(args, COMMAND_TIMEOUT).await,
            "netdev_del" => self.json::<qmp::netdev_del>(args, COMMAND_TIMEOUT).await,
            "block_resize" => self.json::<qmp::block_resize>(args, COMMAND_TIMEOUT).await,
            other => Err(HostError::Failed(format!(
                "QMP command {other} is not supported by vman"
            ))),
        }
    }

    async fn json<C>(
        &self,
        arguments: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, HostError>
    where
        C: qapi::Command + qapi::qmp::QmpCommand + DeserializeOwned + Send + 'static,
        C::Ok: Serialize + Send + 'static,
    {
        let command: C = serde_json::from_value(arguments)
            .map_err(|e| HostError::Failed(format!("QMP {} arguments: {e}", C::NAME)))?;
        let reply = self.execute(command, timeout).await?;
        Ok(serde_json::to_value(reply).unwrap_or_default())
    }

    /// The run state QEMU reports.
    pub async fn status(&self) -> Result<qmp::StatusInfo, HostError> {
        self.execute(qmp::query_status {}, STATUS_TIMEOUT).await
    }

    /// The run state, for the coherence sweep: while QEMU has not answered the
    /// previous probe, it is still silent and no new query piles up behind it.
    pub async fn probe_status(&self, timeout: Duration) -> Result<qmp::StatusInfo, HostError> {
        if self.status_pending.swap(true, Ordering::AcqRel) {
            return Err(HostError::Timeout(
                "QMP has not answered the previous query-status".into(),
            ));
        }
        let pending = self.status_pending.clone();
        let query = self.service.execute(qmp::query_status {});
        let command = tokio::spawn(async move {
            let result = query.await;
            pending.store(false, Ordering::Release);
            result
        });
        match tokio::time::timeout(timeout, command).await {
            Err(_) => Err(HostError::Timeout(format!(
                "QMP query-status got no reply within {timeout:?}"
            ))),
            Ok(Err(join)) => Err(HostError::Failed(format!("QMP query-status: {join}"))),
            Ok(Ok(Err(e))) => Err(HostError::Failed(format!("QMP query-status: {e}"))),
            Ok(Ok(Ok(status))) => Ok(status),
        }
    }
}
