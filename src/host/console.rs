//! A VM's serial console as vman holds it: the output read so far, kept in
//! a [`Ring`] addressed by absolute byte offsets, and one writer for input.
//!
//! Two tasks own a console's connection. The reader copies each output byte
//! into the ring as soon as it arrives and moves the end offset on (a
//! `watch` value); the writer sends input in the order it was given. A
//! viewer has no queue of its own: it reads the ring from the offset it
//! needs next and waits for the end to move ([`Console::follow`]). So a slow
//! viewer holds no memory and slows nobody: the reader takes the guest's
//! output whatever the viewers do, and each viewer reads at its own pace. A
//! viewer that falls further behind than the ring holds is told how many
//! bytes it missed and where the output goes on ([`ConsoleItem::Dropped`]).
//!
//! Nothing here knows QEMU: the QEMU port connects the socket, lines its
//! offsets up with the VM's serial log, fills the ring and hands the
//! connection's two halves to [`Console::start`]. It never writes to the
//! guest on its own.

use std::{
    collections::VecDeque,
    io::{Read, Seek, SeekFrom},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, oneshot, watch},
};

use super::HostError;

/// The output vman keeps in memory per VM.
pub const RING_BYTES: usize = 1 << 20;
/// The most output one [`ConsoleItem::Output`] carries.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Inputs that may wait for the writer; a sender waits for room.
const INPUT_QUEUE: usize = 64;

/// What a viewer of a console gets, in offset order: each item starts where
/// the one before ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleItem {
    /// Output the guest wrote; `offset` is that of its first byte.
    Output { offset: u64, data: Bytes },
    /// `length` bytes from `offset` on that this viewer does not get; the
    /// next item starts at `offset + length`.
    Dropped {
        offset: u64,
        length: u64,
        reason: &'static str,
    },
}

impl ConsoleItem {
    /// The offset of the first byte it covers.
    pub fn offset(&self) -> u64 {
        match self {
            ConsoleItem::Output { offset, .. } | ConsoleItem::Dropped { offset, .. } => *offset,
        }
    }

    /// How many bytes it covers (carried, or dropped).
    pub fn length(&self) -> u64 {
        match self {
            ConsoleItem::Output { data, .. } => data.len() as u64,
            ConsoleItem::Dropped { length, .. } => *length,
        }
    }
}

/// Why a viewer did not get bytes that the ring held once.
pub const FELL_BEHIND: &str =
    "no longer in the console buffer: vman keeps the last 1 MiB of output in memory";

/// The last `capacity` bytes of a stream, with the offset of the first one.
#[derive(Debug)]
pub struct Ring {
    bytes: VecDeque<u8>,
    start: u64,
    capacity: usize,
}

/// What [`Ring::read`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Slice {
    /// The bytes from `from` to `to` are no longer kept; `to` is the first kept one.
    Missed { from: u64, to: u64 },
    /// Bytes from `offset` on.
    Bytes { offset: u64, data: Vec<u8> },
    /// Nothing there yet.
    Nothing,
}

impl Ring {
    /// An empty ring whose first byte will have offset `start`.
    pub fn new(capacity: usize, start: u64) -> Ring {
        Ring {
            bytes: VecDeque::with_capacity(capacity.min(64 * 1024)),
            start,
            capacity,
        }
    }

    /// The offset of the oldest byte kept.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The offset the next byte will have.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Appends, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let end = self.end() + data.len() as u64;
        if data.len() >= self.capacity {
            self.bytes.clear();
            self.bytes
                .extend(&data[data.len() - self.capacity..data.len()]);
        } else {
            self.bytes.extend(data);
            let over = self.bytes.len().saturating_sub(self.capacity);
            self.bytes.drain(..over);
        }
        self.start = end - self.bytes.len() as u64;
    }

    /// At most `max` bytes from offset `from` on.
    pub fn read(&self, from: u64, max: usize) -> Slice {
        if from < self.start {
            return Slice::Missed {
                from,
                to: self.start,
            };
        }
        if from >= self.end() || max == 0 {
            return Slice::Nothing;
        }
        let skip = (from - self.start) as usize;
        let take = max.min(self.bytes.len() - skip);
        let (front, back) = self.bytes.as_slices();
        let mut data = Vec::with_capacity(take);
        if skip < front.len() {
            let upto = front.len().min(skip + take);
            data.extend_from_slice(&front[skip..upto]);
            data.extend_from_slice(&back[..take - (upto - skip)]);
        } else {
            let skip = skip - front.len();
            data.extend_from_slice(&back[skip..skip + take]);
        }
        Slice::Bytes { offset: from, data }
    }
}

/// How far the reader got, and whether the connection still reads.
#[derive(Debug, Clone, Copy)]
struct Progress {
    end: u64,
    open: bool,
}

struct Input {
    bytes: Vec<u8>,
    /// The output's end offset once the bytes were written, or why not.
    written: oneshot::Sender<Result<u64, String>>,
}

/// One VM's console: what it printed, who waits for more, and its input queue.
pub struct Console {
    ring: Mutex<Ring>,
    progress: watch::Sender<Progress>,
    input: mpsc::Sender<Input>,
    /// The offset where the connection's output begins: the bytes before it
    /// were read from the VM's serial log (see [`Console::connected_at`]).
    connected_at: u64,
}

impl Console {
    /// Takes over a connected console: `ring` holds what came before (its
    /// end is where `reader`'s first byte goes), `connected_at` is where the
    /// output read from the connection begins. Spawns the reader and the
    /// writer; both end when the connection does.
    pub fn start<R, W>(ring: Ring, connected_at: u64, reader: R, writer: W) -> Arc<Console>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (progress, watching) = watch::channel(Progress {
            end: ring.end(),
            open: true,
        });
        let (input, queue) = mpsc::channel(INPUT_QUEUE);
        let console = Arc::new(Console {
            ring: Mutex::new(ring),
            progress,
            input,
            connected_at,
        });
        tokio::spawn(read_output(console.clone(), reader));
        tokio::spawn(write_input(queue, writer, watching));
        console
    }

    /// The offset the next output byte will have.
    pub fn end(&self) -> u64 {
        self.ring.lock().expect("console ring").end()
    }

    /// The offset of the oldest output byte in memory.
    pub fn start_offset(&self) -> u64 {
        self.ring.lock().expect("console ring").start()
    }

    /// Where the output read from the connection begins. Before it, offsets
    /// are positions in the VM's serial log (what the guest printed before
    /// this vman connected, while no vman was running included), which can
    /// serve what the ring no longer holds.
    pub fn connected_at(&self) -> u64 {
        self.connected_at
    }

    /// Whether the connection still reads (QEMU runs).
    pub fn is_open(&self) -> bool {
        self.progress.borrow().open
    }

    fn append(&self, data: &[u8]) {
        let end = {
            let mut ring = self.ring.lock().expect("console ring");
            ring.push(data);
            ring.end()
        };
        self.progress.send_modify(|p| p.end = end);
    }

    /// The output from `from` on: what the ring holds, then what comes, until
    /// the connection ends. A viewer that falls behind the ring gets a
    /// [`ConsoleItem::Dropped`] and goes on from the oldest byte kept.
    pub fn follow(self: &Arc<Self>, from: u64) -> impl Stream<Item = ConsoleItem> + Send + use<> {
        let console = self.clone();
        async_stream::stream! {
            let mut progress = console.progress.subscribe();
            let mut next = from;
            loop {
                // Read before looking at the ring: an append after this is a change.
                let open = progress.borrow_and_update().open;
                let slice = console.ring.lock().expect("console ring").read(next, CHUNK_BYTES);
                match slice {
                    Slice::Missed { from, to } => {
                        next = to;
                        yield ConsoleItem::Dropped { offset: from, length: to - from, reason: FELL_BEHIND };
                    }
                    Slice::Bytes { offset, data } => {
                        next = offset + data.len() as u64;
                        yield ConsoleItem::Output { offset, data: data.into() };
                    }
                    // The reader appends everything before it says it closed.
                    Slice::Nothing if !open => return,
                    Slice::Nothing => {
                        if progress.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Writes `bytes` to the guest after every input sent before; the
    /// output's end offset once they are written. A caller that stops
    /// waiting does not take them back: queued input is written in order.
    pub async fn send(&self, bytes: Vec<u8>, timeout: Duration) -> Result<u64, HostError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (written, done) = oneshot::channel();
        match tokio::time::timeout_at(deadline, self.input.send(Input { bytes, written })).await {
            Err(_) => {
                return Err(HostError::Timeout(format!(
                    "console input waited {timeout:?} behind earlier input the guest did not take"
                )));
            }
            Ok(Err(_)) => return Err(closed()),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, done).await {
            Err(_) => Err(HostError::Timeout(format!(
                "the guest did not take the console input within {timeout:?}; it is still queued"
            ))),
            Ok(Err(_)) => Err(closed()),
            Ok(Ok(result)) => result.map_err(|e| HostError::Failed(format!("console input: {e}"))),
        }
    }
}

fn closed() -> HostError {
    HostError::Failed("the console connection is closed (QEMU exited)".into())
}

/// Copies the connection's output into the ring until it ends.
async fn read_output<R: AsyncRead + Unpin>(console: Arc<Console>, mut reader: R) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) => break,
            Ok(n) => console.append(&buffer[..n]),
            Err(e) => {
                tracing::debug!(error = %e, "console read failed");
                break;
            }
        }
    }
    console.progress.send_modify(|p| p.open = false);
}

/// Writes queued input in order, until the queue or the connection ends.
async fn write_input<W: AsyncWrite + Unpin>(
    mut queue: mpsc::Receiver<Input>,
    mut writer: W,
    mut progress: watch::Receiver<Progress>,
) {
    loop {
        let input = tokio::select! {
            input = queue.recv() => match input {
                Some(input) => input,
                None => return,
            },
            _ = progress.wait_for(|p| !p.open) => return,
        };
        let result = async {
            writer.write_all(&input.bytes).await?;
            writer.flush().await
        }
        .await;
        let failed = result.is_err();
        let end = progress.borrow().end;
        let _ = input
            .written
            .send(result.map(|()| end).map_err(|e| e.to_string()));
        if failed {
            return;
        }
    }
}

/// A file's length; 0 when it does not exist.
pub fn file_len(path: &Path) -> Result<u64, HostError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(HostError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// The bytes of a file from `from` up to `to` (fewer when it is shorter).
pub fn read_range(path: &Path, from: u64, to: u64) -> Result<Vec<u8>, HostError> {
    let io = |source| HostError::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    if to <= from {
        return Ok(Vec::new());
    }
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut data = Vec::new();
    file.take(to - from).read_to_end(&mut data).map_err(io)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn bytes(slice: Slice) -> (u64, Vec<u8>) {
        match slice {
            Slice::Bytes { offset, data } => (offset, data),
            other => panic!("expected bytes, got {other:?}"),
        }
    }

    #[test]
    fn a_ring_keeps_the_last_bytes_at_their_absolute_offsets() {
        let mut ring = Ring::new(8, 100);
        assert_eq!((ring.start(), ring.end()), (100, 100));
        assert_eq!(ring.read(100, 4), Slice::Nothing);
        ring.push(b"abcdef");
        assert_eq!((ring.start(), ring.end()), (100, 106));
        assert_eq!(bytes(ring.read(102, 3)), (102, b"cde".to_vec()));
        assert_eq!(bytes(ring.read(104, 100)), (104, b"ef".to_vec()));
        ring.push(b"ghij");
        // 10 bytes pushed into 8: the first two went.
        assert_eq!((ring.start(), ring.end()), (102, 110));
        assert_eq!(ring.read(100, 4), Slice::Missed { from: 100, to: 102 });
        assert_eq!(bytes(ring.read(102, 100)), (102, b"cdefghij".to_vec()));
        assert_eq!(ring.read(110, 4), Slice::Nothing);
        // One push longer than the ring keeps its tail.
        ring.push(b"0123456789ABC");
        assert_eq!((ring.start(), ring.end()), (115, 123));
        assert_eq!(bytes(ring.read(115, 100)), (115, b"56789ABC".to_vec()));
    }

    #[test]
    fn a_read_across_the_rings_wrap_is_whole() {
        let mut ring = Ring::new(6, 0);
        for chunk in [&b"abcd"[..], b"efgh", b"ij"] {
            ring.push(chunk);
        }
        assert_eq!((ring.start(), ring.end()), (4, 10));
        for from in 4..10 {
            for max in 1..8 {
                let (offset, data) = bytes(ring.read(from, max));
                let want = &b"abcdefghij"[from as usize..(from as usize + max).min(10)];
                assert_eq!((offset, data.as_slice()), (from, want), "{from} {max}");
            }
        }
    }

    /// A console on one end of a socket pair; the test holds the other end,
    /// as QEMU would.
    fn console(capacity: usize) -> (Arc<Console>, tokio::net::UnixStream) {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (reader, writer) = ours.into_split();
        (
            Console::start(Ring::new(capacity, 0), 0, reader, writer),
            theirs,
        )
    }

    async fn next(stream: &mut (impl Stream<Item = ConsoleItem> + Unpin)) -> ConsoleItem {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an item within the wait")
            .expect("the stream goes on")
    }

    async fn output_until(
        stream: &mut (impl Stream<Item = ConsoleItem> + Unpin),
        end: u64,
    ) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut at = None;
        while at != Some(end) {
            match next(stream).await {
                ConsoleItem::Output { offset, data } => {
                    assert_eq!(at.unwrap_or(offset), offset, "items follow each other");
                    seen.extend_from_slice(&data);
                    at = Some(offset + data.len() as u64);
                }
                dropped => panic!("nothing was dropped, got {dropped:?}"),
            }
        }
        seen
    }

    #[tokio::test]
    async fn viewers_get_the_replay_then_live_output_with_offsets() {
        let (console, mut qemu) = console(1024);
        qemu.write_all(b"boot line\r\n").await.unwrap();
        let mut first = Box::pin(console.follow(0));
        assert_eq!(output_until(&mut first, 11).await, b"boot line\r\n");
        // A second viewer asks for the last 6 bytes.
        let mut second = Box::pin(console.follow(console.end() - 6));
        assert_eq!(output_until(&mut second, 11).await, b"line\r\n");
        qemu.write_all(b"$ ").await.unwrap();
        for viewer in [&mut first, &mut second] {
            assert_eq!(
                next(viewer).await,
                ConsoleItem::Output {
                    offset: 11,
                    data: Bytes::from_static(b"$ ")
                }
            );
        }
        // QEMU exits: each viewer ends after the last byte.
        qemu.write_all(b"bye").await.unwrap();
        drop(qemu);
        for viewer in [&mut first, &mut second] {
            assert_eq!(output_until(viewer, 16).await, b"bye");
            let end = tokio::time::timeout(Duration::from_secs(5), viewer.next()).await;
            assert_eq!(end.unwrap(), None);
        }
        assert!(!console.is_open());
    }

    #[tokio::test]
    async fn a_viewer_behind_the_ring_is_told_what_it_missed_and_where_output_resumes() {
        let (console, mut qemu) = console(16);
        let mut slow = Box::pin(console.follow(0));
        let mut fast = Box::pin(console.follow(0));
        let all: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        // The fast viewer keeps up: it reads each piece as it comes.
        let mut seen = Vec::new();
        for (piece, end) in all.chunks(8).zip((8..).step_by(8)) {
            qemu.write_all(piece).await.unwrap();
            seen.extend(output_until(&mut fast, end).await);
        }
        assert_eq!(seen, all);
        // The slow one was never polled: 24 bytes are gone, the last 16 are there.
        assert_eq!(
            next(&mut slow).await,
            ConsoleItem::Dropped {
                offset: 0,
                length: 24,
                reason: FELL_BEHIND
            }
        );
        assert_eq!(output_until(&mut slow, 40).await, &all[24..]);
        // Neither holds the other back: both see what comes next.
        qemu.write_all(b"!").await.unwrap();
        for viewer in [&mut slow, &mut fast] {
            assert_eq!(next(viewer).await.offset(), 40);
        }
    }

    #[tokio::test]
    async fn input_reaches_the_guest_in_order_and_says_where_the_output_was() {
        let (console, mut qemu) = console(1024);
        qemu.write_all(b"login: ").await.unwrap();
        let mut viewer = Box::pin(console.follow(0));
        output_until(&mut viewer, 7).await;
        let sends = (0..20).map(|i| {
            let console = console.clone();
            // Each one is queued before the next is sent.
            async move {
                console
                    .send(format!("{i},").into_bytes(), Duration::from_secs(5))
                    .await
            }
        });
        for offset in futures_util::future::join_all(sends).await {
            assert_eq!(offset.unwrap(), 7);
        }
        let want: String = (0..20).map(|i| format!("{i},")).collect();
        let mut got = vec![0; want.len()];
        tokio::io::AsyncReadExt::read_exact(&mut qemu, &mut got)
            .await
            .unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), want);
        drop(qemu);
        let end = tokio::time::timeout(Duration::from_secs(5), viewer.next()).await;
        assert_eq!(end.unwrap(), None, "QEMU gone, the output ends");
        let refused = console.send(b"x".to_vec(), Duration::from_secs(5)).await;
        assert!(refused.is_err(), "{refused:?}");
    }

    #[test]
    fn a_files_range_is_read_up_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        assert_eq!(file_len(&path).unwrap(), 0);
        assert!(read_range(&path, 0, 10).unwrap().is_empty());
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(file_len(&path).unwrap(), 10);
        assert_eq!(read_range(&path, 2, 5).unwrap(), b"234");
        assert_eq!(read_range(&path, 8, 100).unwrap(), b"89");
        assert!(read_range(&path, 5, 5).unwrap().is_empty());
    }
}
