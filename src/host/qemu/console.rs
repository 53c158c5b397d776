//! Connecting vman to a VM's console socket (`tty.sock`): at start, before
//! the guest runs, and at re-adoption after a vman restart.
//!
//! QEMU writes each byte the guest sends to the serial port to the socket
//! while vman is connected, and to `serial.log` (the chardev's `logfile`)
//! always: also while no vman is connected, when the socket drops it. So the
//! log has everything since QEMU started, and the socket what came after
//! vman connected. [`connect`] lines the two up: offsets are serial.log
//! positions up to the point where vman connected, and counted on from there
//! as bytes come from the socket; the ring starts with the log's tail, so the
//! output of a guest that printed while vman was down is still replayed.
//!
//! Lining up. QEMU takes a connection in its main loop, a moment after
//! `connect` returns, and reports nothing when it does; `query-chardev`
//! shows it (the chardev's `filename` loses its `disconnected:` prefix).
//! Bytes the guest prints in between reach the log but not the socket. Once
//! QEMU has taken the connection, vman reads the log's length: bytes after
//! it will come from the socket; bytes in the log since just before
//! `connect` may have come on the socket too, and are found there by their
//! content ([`overlap`]) so none is counted twice.
//!
//! QEMU writes a byte to the log a second time when the socket would block
//! (its write is retried), so in a long run the log may hold a few bytes
//! more than the socket carried: offsets counted from the socket can then be
//! a little below the same byte's position in the log.

use std::{path::Path, sync::Arc, time::Duration};

use tokio::net::UnixStream;

use super::{argv, files::restrict, qmp};
use crate::host::{
    HostError,
    console::{Console, RING_BYTES, Ring, file_len, read_range},
};

/// How long QEMU may take to accept the console connection.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(2);
/// QEMU reports no event when it accepts a connection: `query-chardev` is polled.
const ACCEPT_POLL: Duration = Duration::from_millis(2);

/// Connects to the console of the QEMU whose QMP is `qmp`, lined up with its
/// serial log (see the module docs).
pub(super) async fn connect(
    run_dir: &Path,
    qmp: &qmp::QmpClient,
) -> Result<Arc<Console>, HostError> {
    let log = argv::serial_log(run_dir);
    let socket = argv::console_socket(run_dir);
    if !socket.exists() {
        return Err(HostError::Failed(format!(
            "{} does not exist: this QEMU has no console socket (an older vman started it); \
             the VM gets one at its next start",
            socket.display()
        )));
    }
    let before = file_len(&log)?;
    let stream = tokio::time::timeout(qmp::COMMAND_TIMEOUT, UnixStream::connect(&socket))
        .await
        .map_err(|_| HostError::Timeout(format!("connecting to {}", socket.display())))?
        .map_err(|source| HostError::Io {
            what: format!("connecting to {}", socket.display()),
            source,
        })?;
    restrict(&socket, 0o600);
    accepted(qmp).await?;
    let connected_at = file_len(&log)?;
    let waiting = waiting(&stream)?;
    let window = read_range(&log, before, connected_at)?;
    let skip = overlap(&window, &waiting);
    let tail_from = connected_at.saturating_sub(RING_BYTES as u64);
    let tail = read_range(&log, tail_from, connected_at)?;
    let mut ring = Ring::new(RING_BYTES, connected_at - tail.len() as u64);
    ring.push(&tail);
    ring.push(&waiting[skip..]);
    tracing::debug!(
        log = %log.display(),
        connected_at,
        printed_meanwhile = connected_at - before,
        on_both = skip,
        "console connected"
    );
    let (reader, writer) = stream.into_split();
    Ok(Console::start(ring, connected_at, reader, writer))
}

/// Waits until QEMU has taken the console connection.
async fn accepted(qmp: &qmp::QmpClient) -> Result<(), HostError> {
    let deadline = tokio::time::Instant::now() + ACCEPT_TIMEOUT;
    loop {
        let chardevs = qmp
            .execute(qapi::qmp::query_chardev {}, qmp::STATUS_TIMEOUT)
            .await?;
        let Some(serial) = chardevs.iter().find(|c| c.label == argv::SERIAL_CHARDEV) else {
            return Err(HostError::Failed(format!(
                "QEMU has no chardev {}",
                argv::SERIAL_CHARDEV
            )));
        };
        if !serial.filename.starts_with("disconnected:") {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HostError::Timeout(format!(
                "QEMU did not take the console connection within {ACCEPT_TIMEOUT:?} \
                 ({} is {})",
                argv::SERIAL_CHARDEV,
                serial.filename
            )));
        }
        tokio::time::sleep(ACCEPT_POLL).await;
    }
}

/// What the socket holds now, without waiting for more.
fn waiting(stream: &UnixStream) -> Result<Vec<u8>, HostError> {
    let mut data = Vec::new();
    loop {
        match stream.try_read_buf(&mut data) {
            Ok(0) => return Ok(data),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(data),
            Err(source) => {
                return Err(HostError::Io {
                    what: "reading the console".into(),
                    source,
                });
            }
        }
    }
}

/// How many bytes at the start of `socket` are the end of `logged`: the
/// longest suffix of `logged` that `socket` starts with. `logged` is what
/// the log got while vman connected; the part QEMU wrote after it took the
/// connection went to the socket too.
pub(crate) fn overlap(logged: &[u8], socket: &[u8]) -> usize {
    (0..=logged.len().min(socket.len()))
        .rev()
        .find(|&n| logged[logged.len() - n..] == socket[..n])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn the_overlap_is_the_longest_end_of_the_log_the_socket_starts_with() {
        // Nothing printed while vman connected.
        assert_eq!(overlap(b"", b"hello"), 0);
        assert_eq!(overlap(b"", b""), 0);
        // "ab" reached only the log, "cd" both, "ef" only the socket (so far).
        assert_eq!(overlap(b"abcd", b"cdef"), 2);
        // All of it came after QEMU took the connection.
        assert_eq!(overlap(b"abcd", b"abcdef"), 4);
        // None of it did.
        assert_eq!(overlap(b"abcd", b"xyz"), 0);
        // The socket holds less than the log got (QEMU is still writing).
        assert_eq!(overlap(b"abcd", b"d"), 1);
        // Repeated bytes: the most that fits is taken.
        assert_eq!(overlap(b"aaaa", b"aab"), 2);
    }
}
