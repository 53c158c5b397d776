//! The console over GraphQL: the `vmConsole` subscription and the
//! `sendConsoleInput` mutation. Thin: the service checks and streams.

use async_graphql::{Context, Enum, ID, Object, SimpleObject, Subscription};
use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::{Stream, StreamExt};

use super::{InputSent, Replay};
use crate::{
    api::{self, Bytes},
    error::ResultExt,
    host::console::ConsoleItem,
    vm::graphql::VmObject,
};

/// What a console chunk is.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConsoleChunkKind {
    /// Output the guest wrote to its serial port.
    Output,
    /// Output this subscription does not get (`length` bytes from `offset`):
    /// it fell behind further than vman keeps, or the replay asked for
    /// output no longer kept. The next chunk starts at `nextOffset`.
    Dropped,
}

/// A piece of a VM's console output, or a note that some was dropped. Chunks
/// come in offset order, each starting where the one before ended.
#[derive(SimpleObject)]
pub struct ConsoleChunk {
    /// Output, or a note of dropped output.
    pub kind: ConsoleChunkKind,
    /// The offset of its first byte: the number of bytes the guest wrote to
    /// its serial port before it, since its QEMU started.
    pub offset: Bytes,
    /// How many bytes it carries (`OUTPUT`) or stands for (`DROPPED`).
    pub length: Bytes,
    /// `offset + length`, where the next chunk starts: pass the last one you
    /// got as `after` to resume without a gap or a repeat.
    pub next_offset: Bytes,
    /// The bytes, base64 (standard alphabet, padded); empty for `DROPPED`.
    pub data: String,
    /// The bytes as UTF-8, each invalid sequence replaced by U+FFFD (a
    /// character split between two chunks shows as two of them: use `data`
    /// for a terminal); empty for `DROPPED`.
    pub text: String,
    /// Why the output was dropped; null for `OUTPUT`.
    pub reason: Option<String>,
}

impl From<ConsoleItem> for ConsoleChunk {
    fn from(item: ConsoleItem) -> Self {
        let (offset, length) = (item.offset(), item.length());
        let (kind, data, text, reason) = match item {
            ConsoleItem::Output { data, .. } => (
                ConsoleChunkKind::Output,
                STANDARD.encode(&data),
                String::from_utf8_lossy(&data).into_owned(),
                None,
            ),
            ConsoleItem::Dropped { reason, .. } => (
                ConsoleChunkKind::Dropped,
                String::new(),
                String::new(),
                Some(reason.to_string()),
            ),
        };
        ConsoleChunk {
            kind,
            offset: Bytes(offset as i64),
            length: Bytes(length as i64),
            next_offset: Bytes((offset + length) as i64),
            data,
            text,
            reason,
        }
    }
}

/// What `sendConsoleInput` did.
#[derive(SimpleObject)]
pub struct ConsoleInputPayload {
    /// The VM.
    pub vm: VmObject,
    /// How many bytes were written to its serial port.
    pub bytes: i32,
    /// The console output's end offset once the bytes were written: what the
    /// guest prints in reply comes at or after it.
    pub output_offset: Bytes,
}

impl From<InputSent> for ConsoleInputPayload {
    fn from(sent: InputSent) -> Self {
        ConsoleInputPayload {
            vm: VmObject(sent.vm),
            bytes: sent.bytes as i32,
            output_offset: Bytes(sent.output_offset as i64),
        }
    }
}

#[derive(Default)]
pub struct ConsoleSubscription;

#[Subscription]
impl ConsoleSubscription {
    /// A VM's serial console (its ttyS0): first the last `replayBytes` of
    /// output (or, with `after`, the output from that offset on), then output
    /// as it comes, until the VM's QEMU exits. For a VM that is not running,
    /// the replay of its last run, then the subscription completes.
    async fn vm_console(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID.")] vm_id: ID,
        #[graphql(
            default = 65536,
            desc = "How much of the output so far to send first, in bytes (0 to 1048576)."
        )]
        replay_bytes: i32,
        #[graphql(
            desc = "Resume: send the output from this offset on (the `nextOffset` of the last chunk received) instead of `replayBytes`."
        )]
        after: Option<Bytes>,
    ) -> async_graphql::Result<impl Stream<Item = ConsoleChunk> + use<>> {
        let replay = Replay {
            replay_bytes: replay_bytes.into(),
            after: after.map(|a| a.0),
        };
        let items = super::watch(api::services(ctx), &vm_id, replay)
            .await
            .gql()?;
        Ok(items.map(ConsoleChunk::from))
    }
}

#[derive(Default)]
pub struct ConsoleMutation;

#[Object]
impl ConsoleMutation {
    /// Types into a RUNNING or PAUSED VM's serial console: the bytes reach the
    /// guest in the order they were sent. Records no operation (a terminal
    /// sends one per keystroke) and takes no VM lock.
    async fn send_console_input(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID.")] vm_id: ID,
        #[graphql(
            desc = "What to send: text (UTF-8), or with `base64: true` base64 bytes. 1 to 65536 bytes."
        )]
        data: String,
        #[graphql(
            default = false,
            desc = "`data` is base64 (for bytes that are not UTF-8)."
        )]
        base64: bool,
    ) -> async_graphql::Result<ConsoleInputPayload> {
        let bytes = super::input_bytes(&data, base64).gql()?;
        Ok(super::send_input(api::services(ctx), &vm_id, bytes)
            .await
            .gql()?
            .into())
    }
}
