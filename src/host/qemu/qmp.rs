//! One QMP connection per VM, through the `qapi` crate.
//!
//! qapi delivers command replies inside the same stream as events, so a task
//! per VM always reads it: replies go to their waiting command, events are
//! broadcast to whoever watches that VM. Every command has a timeout: a QEMU
//! that stops answering fails that command with `Timeout`, never stalls
//! anything else.
//!
//! A command that timed out is not abandoned: each command (or batch) runs in
//! a task of its own until QEMU answers it or the connection ends; only the
//! caller stops waiting. qapi would match a reply to its command by id when
//! QEMU offers the `oob` capability, but qapi 0.15 never sees it: QEMU 7.2
//! does offer it on a socket monitor, and qapi-qmp's untagged
//! `QmpCapability` reads the greeting's `"oob"` as `Unknown`. So qapi sends
//! no ids, matches replies by position and holds the connection's writer
//! until each reply: commands go one at a time, and a command dropped
//! half-way would leave its reply to the next one (qapi panics on the
//! duplicate id). `tests::qapi_sends_one_command_at_a_time` holds this.
//!
//! qapi reads each line as a reply or as an event of the QEMU schema it was
//! built from, and a line it cannot read ends its stream: one event of a
//! newer QEMU (or of an older one whose fields differ) would cost vman the
//! VM's connection. [`readable`] drops such events before qapi sees them;
//! vman acts on none of them.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, Bytes};
use futures_util::{StreamExt, TryStreamExt};
use qapi::{
    futures::{QapiService, QmpStreamTokio},
    qmp,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    io::{AsyncRead, ReadHalf, WriteHalf},
    net::UnixStream,
    sync::broadcast,
};
use tokio_util::{
    codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead},
    io::StreamReader,
};

use crate::host::{HostError, HostStep};

/// Replies to status queries should be instant.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Block and device commands may take a moment.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// An internal snapshot of every disk at once (`transaction`) writes metadata only.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

type Writer = QmpStreamTokio<WriteHalf<UnixStream>>;

/// A command ready to send: `reply` sends it when first polled.
struct Prepared {
    name: &'static str,
    timeout: Duration,
    reply: futures_util::future::BoxFuture<'static, Result<serde_json::Value, HostError>>,
}

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
        Ok(Self::connect_watched(socket).await?.0)
    }

    /// [`QmpClient::connect`], with a receiver of its notices subscribed
    /// before the reading task starts: nothing QEMU sends is missed.
    pub async fn connect_watched(
        socket: &Path,
    ) -> Result<(QmpClient, broadcast::Receiver<QmpNotice>), HostError> {
        let stream = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let (read, write) = tokio::io::split(UnixStream::connect(socket).await?);
            QmpStreamTokio::open_split(readable(read), write)
                .await?
                .negotiate()
                .await
        })
        .await
        .map_err(|_| HostError::Timeout(format!("QMP handshake on {}", socket.display())))?
        .map_err(|source| HostError::Io {
            what: format!("QMP handshake on {}", socket.display()),
            source,
        })?;
        let (service, mut events) = stream.into_parts();
        let (notices, first) = broadcast::channel(64);
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
        Ok((
            QmpClient {
                service,
                notices,
                status_pending: Arc::default(),
            },
            first,
        ))
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
        let reply = self.service.execute(command);
        spawned(name, timeout, async move {
            reply.await.map_err(|e| failed(name, e))
        })
        .await
    }

    /// Runs a command given as data (a planned `HostStep::Qmp`), typed through qapi.
    pub async fn execute_json(
        &self,
        command: &str,
        arguments: &serde_json::Value,
    ) -> Result<serde_json::Value, HostError> {
        let command = self.prepare(command, arguments)?;
        spawned(command.name, command.timeout, command.reply).await
    }

    /// Runs `commands` in order from one task, under one timeout (the
    /// longest of theirs). qapi sends each when QEMU has answered the one
    /// before (see the module docs), so this saves only the hand-backs to the
    /// caller between commands. Nothing ties them together: a command after a
    /// failed one still runs (and usually fails too), so the caller undoes
    /// what succeeded. One result per command, in order; `Err` only when none
    /// could be sent (an unsupported command).
    pub async fn execute_all(
        &self,
        commands: &[(&str, &serde_json::Value)],
    ) -> Result<Vec<Result<serde_json::Value, HostError>>, HostError> {
        let prepared = commands
            .iter()
            .map(|(command, arguments)| self.prepare(command, arguments))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<&'static str> = prepared.iter().map(|c| c.name).collect();
        let timeout = prepared.iter().map(|c| c.timeout).max().unwrap_or_default();
        let started = std::time::Instant::now();
        // One task polls them in order, so they are sent in order (qapi
        // sends a command when its future first gets the writer); like a
        // single command, they run to their replies even if this caller
        // stops waiting.
        let replies = futures_util::future::join_all(prepared.into_iter().map(|c| c.reply));
        let result = tokio::time::timeout(timeout, tokio::spawn(replies)).await;
        for name in &names {
            crate::telemetry::qmp_command(name, started.elapsed(), result.is_err());
        }
        match result {
            Err(_) => Ok(names
                .iter()
                .map(|name| Err(no_reply(name, timeout)))
                .collect()),
            Ok(Err(join)) => Err(HostError::Failed(format!(
                "QMP {}: {join}",
                names.join(", ")
            ))),
            Ok(Ok(replies)) => Ok(replies),
        }
    }

    /// Runs the QMP commands among `steps`, in order; the first failure ends the run.
    pub(super) async fn run_steps(&self, steps: &[HostStep]) -> Result<(), HostError> {
        for (command, arguments) in HostStep::qmp_commands(steps) {
            self.execute_json(command, arguments).await?;
        }
        Ok(())
    }

    /// A command given as data, typed through qapi; sent when its reply is first polled.
    fn prepare(&self, command: &str, arguments: &serde_json::Value) -> Result<Prepared, HostError> {
        let args = if arguments.is_null() {
            serde_json::json!({})
        } else {
            arguments.clone()
        };
        match command {
            "cont" => self.typed::<qmp::cont>(args, COMMAND_TIMEOUT),
            "stop" => self.typed::<qmp::stop>(args, COMMAND_TIMEOUT),
            "system_powerdown" => self.typed::<qmp::system_powerdown>(args, COMMAND_TIMEOUT),
            "system_reset" => self.typed::<qmp::system_reset>(args, COMMAND_TIMEOUT),
            "quit" => self.typed::<qmp::quit>(args, COMMAND_TIMEOUT),
            "query-status" => self.typed::<qmp::query_status>(args, STATUS_TIMEOUT),
            "query-block" => self.typed::<qmp::query_block>(args, STATUS_TIMEOUT),
            "query-blockstats" => self.typed::<QueryBlockstats>(args, STATUS_TIMEOUT),
            "blockdev-add" => self.typed::<qmp::blockdev_add>(args, COMMAND_TIMEOUT),
            "blockdev-del" => self.typed::<qmp::blockdev_del>(args, COMMAND_TIMEOUT),
            "device_add" => self.typed::<qmp::device_add>(args, COMMAND_TIMEOUT),
            "device_del" => self.typed::<qmp::device_del>(args, COMMAND_TIMEOUT),
            "netdev_add" => self.typed::<qmp::netdev_add>(args, COMMAND_TIMEOUT),
            "netdev_del" => self.typed::<qmp::netdev_del>(args, COMMAND_TIMEOUT),
            "block_resize" => self.typed::<qmp::block_resize>(args, COMMAND_TIMEOUT),
            // The snapshot jobs answer at once; their end is awaited apart
            // (JOB_STATUS_CHANGE). An internal snapshot of every disk in one
            // transaction writes each disk's snapshot table.
            "snapshot-save" => self.typed::<qmp::snapshot_save>(args, COMMAND_TIMEOUT),
            "snapshot-load" => self.typed::<qmp::snapshot_load>(args, COMMAND_TIMEOUT),
            "snapshot-delete" => self.typed::<qmp::snapshot_delete>(args, COMMAND_TIMEOUT),
            "query-jobs" => self.typed::<qmp::query_jobs>(args, STATUS_TIMEOUT),
            "job-dismiss" => self.typed::<qmp::job_dismiss>(args, COMMAND_TIMEOUT),
            "transaction" => self.typed::<qmp::transaction>(args, SNAPSHOT_TIMEOUT),
            "blockdev-change-medium" => {
                self.typed::<qmp::blockdev_change_medium>(args, COMMAND_TIMEOUT)
            }
            "eject" => self.typed::<qmp::eject>(args, COMMAND_TIMEOUT),
            other => Err(HostError::Failed(format!(
                "QMP command {other} is not supported by vman"
            ))),
        }
    }

    fn typed<C>(
        &self,
        arguments: serde_json::Value,
        timeout: Duration,
    ) -> Result<Prepared, HostError>
    where
        C: qapi::Command + qapi::qmp::QmpCommand + DeserializeOwned + Send + 'static,
        C::Ok: Serialize + Send + 'static,
    {
        let name = C::NAME;
        let command: C = serde_json::from_value(arguments)
            .map_err(|e| HostError::Failed(format!("QMP {name} arguments: {e}")))?;
        let reply = self.service.execute(command);
        Ok(Prepared {
            name,
            timeout,
            reply: Box::pin(async move {
                let reply = reply.await.map_err(|e| failed(name, e))?;
                Ok(serde_json::to_value(reply).unwrap_or_default())
            }),
        })
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

/// A run state as QEMU spells it (`running`, `paused`, …).
/// `query-blockstats` with its reply left as JSON: the `qapi` crate's
/// `BlockDeviceStats` is of a newer QEMU and requires fields QEMU 7.2 does
/// not send (`failed_zone_append_operations`), so its typed reply fails to
/// decode here.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct QueryBlockstats {}

impl qapi::Command for QueryBlockstats {
    type Ok = serde_json::Value;
    const NAME: &'static str = "query-blockstats";
    const ALLOW_OOB: bool = false;
}

impl qapi::qmp::QmpCommand for QueryBlockstats {}

pub(super) fn run_state_name(state: &qapi::qmp::RunState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{state:?}"))
}

/// QEMU's side of the connection as qapi gets to read it: line by line,
/// without the events qapi cannot read (see the module docs).
fn readable(read: ReadHalf<UnixStream>) -> impl AsyncRead + Unpin + Send + 'static {
    let lines = FramedRead::new(read, AnyDelimiterCodec::new(b"\n".to_vec(), b"\n".to_vec()))
        .map_err(|e| match e {
            AnyDelimiterCodecError::Io(e) => e,
            e => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
        .try_filter_map(|line| std::future::ready(Ok(keep(line))));
    StreamReader::new(lines)
}

/// A line for qapi, its newline put back; `None` for an event qapi cannot
/// read. Only lines that mention `"event"` are parsed here.
fn keep(line: Bytes) -> Option<impl Buf> {
    let mentions_event = line.windows(7).any(|w| w == b"\"event\"");
    if mentions_event && serde_json::from_slice::<qmp::QmpMessageAny>(&line).is_err() {
        let event = serde_json::from_slice::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| Some(v.get("event")?.as_str()?.to_owned()));
        if let Some(event) = event {
            tracing::debug!(%event, "QMP event that qapi cannot read: skipped");
            return None;
        }
    }
    Some(line.chain(&b"\n"[..]))
}

/// What a command's error reply (or the connection's failure) means to vman.
fn failed(name: &str, e: qapi::ExecuteError) -> HostError {
    match e {
        qapi::ExecuteError::Qapi(e) => HostError::Failed(format!("QMP {name}: {}", e.desc)),
        qapi::ExecuteError::Io(e) => HostError::Io {
            what: format!("QMP {name}"),
            source: e,
        },
    }
}

/// A command QEMU did not answer in time.
fn no_reply(name: &str, timeout: Duration) -> HostError {
    HostError::Timeout(format!("QMP {name} got no reply within {timeout:?}"))
}

/// Waits up to `timeout` for a command that runs in a task of its own, to
/// its reply, even if this caller stops waiting (see the module docs).
async fn spawned<T: Send + 'static>(
    name: &'static str,
    timeout: Duration,
    reply: impl std::future::Future<Output = Result<T, HostError>> + Send + 'static,
) -> Result<T, HostError> {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(timeout, tokio::spawn(reply)).await;
    crate::telemetry::qmp_command(name, started.elapsed(), result.is_err());
    match result {
        Err(_) => Err(no_reply(name, timeout)),
        Ok(Err(join)) => Err(HostError::Failed(format!("QMP {name}: {join}"))),
        Ok(Ok(result)) => result,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    const RUNNING: &str =
        r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#;

    /// A QMP peer on a socket in `dir`: greets offering `capabilities` (as
    /// QEMU 7.2 does), then reads one command per answer and writes that
    /// answer (one or more lines) after it. Gives back each command read and
    /// whether more was already buffered behind it (a client that pipelines).
    fn fake_qemu(
        dir: &Path,
        capabilities: &'static str,
        answers: Vec<String>,
    ) -> (
        PathBuf,
        tokio::task::JoinHandle<Vec<(serde_json::Value, bool)>>,
    ) {
        let socket = dir.join("qmp.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let peer = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            let greeting = format!(
                r#"{{"QMP": {{"version": {{"qemu": {{"micro": 0, "minor": 2, "major": 7}}, "package": ""}}, "capabilities": [{capabilities}]}}}}"#
            );
            write
                .write_all(format!("{greeting}\r\n").as_bytes())
                .await
                .unwrap();
            let mut commands = Vec::new();
            for answer in answers {
                let mut line = String::new();
                read.read_line(&mut line).await.unwrap();
                let command: serde_json::Value = serde_json::from_str(&line).unwrap();
                commands.push((command, !read.buffer().is_empty()));
                write
                    .write_all(format!("{answer}\r\n").as_bytes())
                    .await
                    .unwrap();
            }
            commands
        });
        (socket, peer)
    }

    /// What the module docs say of qapi 0.15, checked against a QMP peer that
    /// offers `oob` as QEMU 7.2 does: no command carries an id, and the
    /// second of a batch is not sent before the first is answered. A qapi
    /// that reads the capability would fail this: then replies are matched
    /// by id and `execute_all` pipelines, and the docs must say so.
    #[tokio::test(flavor = "current_thread")]
    async fn qapi_sends_one_command_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let answers = vec![r#"{"return": {}}"#.into(), RUNNING.into(), RUNNING.into()];
        let (socket, peer) = fake_qemu(dir.path(), r#""oob""#, answers);
        let qmp = QmpClient::connect(&socket).await.unwrap();
        let null = serde_json::Value::Null;
        let replies = qmp
            .execute_all(&[("query-status", &null), ("query-status", &null)])
            .await
            .unwrap();
        assert_eq!(replies.len(), 2);
        for reply in replies {
            assert_eq!(reply.unwrap()["status"], "running");
        }
        let commands = peer.await.unwrap();
        let names: Vec<_> = commands.iter().map(|(c, _)| c["execute"].clone()).collect();
        assert_eq!(names, ["qmp_capabilities", "query-status", "query-status"]);
        for (command, more) in &commands {
            assert!(command.get("id").is_none(), "{command} carries an id");
            // Pipelined, the next command would have been written in the
            // same poll as this one, before the client task yielded.
            assert!(!more, "a command was sent before {command} was answered");
        }
    }

    /// An event qapi cannot read (a name its schema lacks, or a known name
    /// with fields it does not expect) is skipped; what follows still
    /// arrives, and commands still get their replies.
    #[tokio::test(flavor = "current_thread")]
    async fn an_event_qapi_cannot_read_does_not_end_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let event = |name: &str, data: &str| {
            format!(
                r#"{{"event": "{name}", {data}"timestamp": {{"seconds": 1, "microseconds": 2}}}}"#
            )
        };
        let paused = [
            event("SOME_LATER_EVENT", r#""data": {}, "#),
            event("RTC_CHANGE", r#""data": {"offset": 78}, "#),
            event("STOP", ""),
            r#"{"return": {"status": "paused", "singlestep": false, "running": false}}"#.into(),
        ];
        let answers = vec![
            r#"{"return": {}}"#.into(),
            paused.join("\r\n"),
            RUNNING.into(),
        ];
        let (socket, peer) = fake_qemu(dir.path(), "", answers);
        let qmp = QmpClient::connect(&socket).await.unwrap();
        let mut notices = qmp.notices();
        assert!(!qmp.status().await.unwrap().running);
        // Read in order by one task: the events came before that reply.
        match notices.try_recv() {
            Ok(QmpNotice::Event(event)) => {
                assert!(matches!(*event, qmp::Event::STOP { .. }), "{event:?}")
            }
            other => panic!("expected the STOP event, got {other:?}"),
        }
        assert!(notices.try_recv().is_err(), "nothing else, no Closed");
        assert!(qmp.status().await.unwrap().running);
        peer.await.unwrap();
    }
}
