//! VM consoles: watching what a guest prints on its first serial port
//! ([`watch`]) and typing into it ([`send_input`]).
//!
//! The console itself, its ring of output and its tasks, belong to the
//! hypervisor port ([`crate::host::console`]); this service checks the
//! request, picks the source (the live console, or the serial log of a VM
//! whose QEMU is gone) and stitches replay and live output into one stream
//! of items in offset order.
//!
//! Offsets count the bytes the guest wrote to its serial port since its
//! QEMU started (a new start, not a guest reboot, begins again at 0). Up to
//! where vman connected to the console (at the start, or after a vman
//! restart) they are positions in the VM's `serial.log`; from there on they
//! are counted as the output arrives.
//!
//! Console input records no operation. An operation is a record of a change
//! vman made to what it manages; a keystroke changes nothing vman records,
//! and a terminal sends one request per keystroke, so a journal of them
//! would be mostly typing. Each input is logged at debug level (VM, actor,
//! bytes) instead. It takes no VM lock either: the console has one writer,
//! which keeps inputs in order, and typing must not fail with `VM_BUSY`
//! while a stop or a hot-plug holds the lock. What it does check is the VM's
//! recorded state (RUNNING or PAUSED) and that vman holds its console.

pub mod graphql;

use std::{path::PathBuf, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::{Stream, StreamExt, stream::BoxStream};

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    events::find_in,
    host::{
        ConsoleAccess,
        console::{CHUNK_BYTES, ConsoleItem, file_len, read_range},
    },
    validate,
    vm::{self, Vm, VmState, model},
};

/// The most `replayBytes` may ask for: what the ring holds. More of a
/// running VM's log comes with `after`.
pub const MAX_REPLAY_BYTES: i64 = crate::host::console::RING_BYTES as i64;
/// The most one `sendConsoleInput` may carry (decoded).
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
/// How long `sendConsoleInput` waits for the guest to take its bytes.
pub const INPUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why bytes the serial log should hold are not there (it was removed or
/// truncated by hand).
const NOT_IN_LOG: &str = "not in the VM's serial.log any more";

/// Where a viewer starts: the last `replay_bytes` of output, or `after` (an
/// offset it had: the `nextOffset` of the last chunk it got).
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    pub replay_bytes: i64,
    pub after: Option<i64>,
}

/// A VM's console output from where `replay` says: the replay, then live
/// output until its QEMU exits (or vman stops). A VM whose QEMU is not
/// running gets the replay of its last run from its serial log, and the
/// stream ends.
pub async fn watch(
    ctx: &Ctx,
    vm_id: &str,
    replay: Replay,
) -> ApiResult<impl Stream<Item = ConsoleItem> + Send + use<>> {
    let id = validate::id("vmId", vm_id)?;
    if !(0..=MAX_REPLAY_BYTES).contains(&replay.replay_bytes) {
        return Err(ApiError::bad_input(format!(
            "replayBytes must be from 0 to {MAX_REPLAY_BYTES}; use after: 0 for all of a run's output"
        )));
    }
    let after = replay
        .after
        .map(|a| {
            u64::try_from(a)
                .map_err(|_| ApiError::bad_input(format!("after {a} is not an offset (≥ 0)")))
        })
        .transpose()?;
    let vm = find_in::<model::Entity, _>(&ctx.db, "VM", &id).await?;
    // The console is its host's: on another node's, say where.
    crate::cluster::check_local(ctx, &vm).await?;
    let start = |end: u64| -> ApiResult<u64> {
        match after {
            Some(after) if after > end => Err(ApiError::bad_input(format!(
                "after {after} is past the end of VM {:?}'s console output ({end} bytes): \
                 offsets begin again at each start of the VM; subscribe without after",
                vm.name
            ))),
            Some(after) => Ok(after),
            None => Ok(end.saturating_sub(replay.replay_bytes as u64)),
        }
    };
    let cancelled = ctx.cancel.clone().cancelled_owned();
    let items: BoxStream<'static, ConsoleItem> = match console(ctx, &vm)? {
        Source::Log(log) => {
            let end = file_len(&log)?;
            log_items(log, start(end)?, end).boxed()
        }
        Source::Live { console, log } => {
            let from = start(console.end())?;
            // What the ring no longer holds comes from the log, as far as
            // offsets are log positions.
            let logged = console.start_offset().min(console.connected_at());
            if from < logged {
                log_items(log, from, logged)
                    .chain(console.follow(logged))
                    .boxed()
            } else {
                console.follow(from).boxed()
            }
        }
    };
    Ok(items.take_until(cancelled))
}

/// The bytes `data` stands for: text as UTF-8, or base64 when `base64`.
pub fn input_bytes(data: &str, base64: bool) -> ApiResult<Vec<u8>> {
    let bytes = if base64 {
        STANDARD
            .decode(data)
            .map_err(|e| ApiError::bad_input(format!("data is not base64: {e}")))?
    } else {
        data.as_bytes().to_vec()
    };
    if bytes.is_empty() {
        return Err(ApiError::bad_input("data is empty"));
    }
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(ApiError::bad_input(format!(
            "data is {} bytes; at most {MAX_INPUT_BYTES} may be sent at once",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// What [`send_input`] did.
pub struct InputSent {
    pub vm: Vm,
    pub bytes: usize,
    /// The output's end offset once the bytes were written: what the guest
    /// prints in reply comes at or after it.
    pub output_offset: u64,
}

/// Writes `bytes` to the VM's serial port, after any input sent before.
pub async fn send_input(ctx: &Ctx, vm_id: &str, bytes: Vec<u8>) -> ApiResult<InputSent> {
    let id = validate::id("vmId", vm_id)?;
    let vm = find_in::<model::Entity, _>(&ctx.db, "VM", &id).await?;
    crate::cluster::check_local(ctx, &vm).await?;
    if !matches!(vm.state, VmState::Running | VmState::Paused) {
        return Err(ApiError::InvalidState(format!(
            "cannot send console input to VM {:?}: it is {}",
            vm.name, vm.state
        )));
    }
    let Source::Live { console, .. } = console(ctx, &vm)? else {
        return Err(ApiError::InvalidState(format!(
            "cannot send console input to VM {:?}: vman runs no QEMU of it",
            vm.name
        )));
    };
    let count = bytes.len();
    let output_offset = console.send(bytes, INPUT_TIMEOUT).await?;
    tracing::debug!(vm = %vm.name, actor = %ctx.actor, bytes = count, output_offset, "console input");
    Ok(InputSent {
        vm,
        bytes: count,
        output_offset,
    })
}

enum Source {
    Live {
        console: std::sync::Arc<crate::host::console::Console>,
        log: PathBuf,
    },
    Log(PathBuf),
}

/// The VM's console as the hypervisor has it; an error when there is none.
fn console(ctx: &Ctx, vm: &Vm) -> ApiResult<Source> {
    match ctx.hypervisor.console(&vm.id, &vm::run_dir(ctx, &vm.id)) {
        ConsoleAccess::Live { console, log } => Ok(Source::Live { console, log }),
        ConsoleAccess::Log(log) => Ok(Source::Log(log)),
        ConsoleAccess::Unavailable(why) => Err(ApiError::Host(format!(
            "VM {:?} has no console: {why}",
            vm.name
        ))),
        ConsoleAccess::Unsupported => Err(ApiError::NotSupported(format!(
            "VM {:?} has no console: vman runs with --dry-run, which starts no QEMU",
            vm.name
        ))),
    }
}

/// The serial log's bytes from `from` up to `to`, in chunks; what the log
/// no longer has is one `Dropped` item.
fn log_items(log: PathBuf, from: u64, to: u64) -> impl Stream<Item = ConsoleItem> + Send {
    async_stream::stream! {
        let mut next = from;
        while next < to {
            let upto = to.min(next + CHUNK_BYTES as u64);
            let (path, at) = (log.clone(), next);
            let read = tokio::task::spawn_blocking(move || read_range(&path, at, upto)).await;
            let data = match read {
                Ok(Ok(data)) if !data.is_empty() => data,
                Ok(Ok(_)) => Vec::new(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading a console log");
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading a console log");
                    Vec::new()
                }
            };
            if data.is_empty() {
                yield ConsoleItem::Dropped { offset: next, length: to - next, reason: NOT_IN_LOG };
                return;
            }
            let offset = next;
            next += data.len() as u64;
            yield ConsoleItem::Output { offset, data: data.into() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_text_or_base64_and_bounded() {
        assert_eq!(input_bytes("ls\r", false).unwrap(), b"ls\r");
        assert_eq!(input_bytes("AwQ=", true).unwrap(), [3, 4]);
        for (data, base64) in [("", false), ("", true), ("not base64!", true)] {
            let e = input_bytes(data, base64).unwrap_err();
            assert_eq!(e.code(), "BAD_USER_INPUT", "{data:?}: {e}");
        }
        let long = "x".repeat(MAX_INPUT_BYTES + 1);
        assert_eq!(
            input_bytes(&long, false).unwrap_err().code(),
            "BAD_USER_INPUT"
        );
        assert!(input_bytes(&long[1..], false).is_ok());
    }

    #[tokio::test]
    async fn the_log_is_replayed_in_chunks_and_what_it_lacks_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let text: Vec<u8> = (0..CHUNK_BYTES * 2 + 10).map(|i| (i % 251) as u8).collect();
        std::fs::write(&log, &text).unwrap();
        let items: Vec<ConsoleItem> = log_items(log.clone(), 5, text.len() as u64 + 7)
            .collect()
            .await;
        let mut seen = Vec::new();
        let mut next = 5;
        for item in &items[..items.len() - 1] {
            let ConsoleItem::Output { offset, data } = item else {
                panic!("{item:?}")
            };
            assert_eq!(*offset, next);
            assert!(data.len() <= CHUNK_BYTES);
            next += data.len() as u64;
            seen.extend_from_slice(data);
        }
        assert_eq!(seen, text[5..]);
        assert_eq!(
            items.last().unwrap(),
            &ConsoleItem::Dropped {
                offset: text.len() as u64,
                length: 7,
                reason: NOT_IN_LOG
            }
        );
        // No log at all: the run printed nothing.
        let none: Vec<ConsoleItem> = log_items(dir.path().join("missing"), 0, 0).collect().await;
        assert!(none.is_empty());
    }
}
