//! `vman console VM`: the VM's serial console in this terminal. Output comes
//! from the `vmConsole` subscription; what is typed goes, byte for byte, to
//! `sendConsoleInput`. The terminal is raw while attached (keys reach the
//! guest as typed) and restored on every way out; Ctrl-] leaves.

use std::{
    io::{IsTerminal, Read, Write},
    os::fd::AsFd,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::StreamExt;
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use super::{
    client::{Client, Failure, server_error},
    queries::*,
};

/// Ctrl-]: leaves the console, as telnet's escape does.
const ESCAPE: u8 = 0x1d;

/// Raw mode on stdin while it lives.
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// Raw mode, when stdin is a terminal.
    fn enter() -> Option<RawTerminal> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Attaches to VM `id` (called `shown` by the user) until Ctrl-], the end of
/// stdin, or the end of the console.
pub async fn attach(client: &Client, id: &str, shown: &str, replay: i64) -> Result<(), Failure> {
    let variables = console_feed::Variables {
        vm_id: id.to_string(),
        replay_bytes: replay,
    };
    let mut output = client.subscribe::<ConsoleFeed>(variables).await?;
    // stdin is read on a thread of its own: a blocking read that the process
    // exit ends (a runtime's blocking task would be waited for).
    let (keys, mut typed) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = [0u8; 1024];
        while let Ok(n @ 1..) = stdin.read(&mut buffer) {
            if keys.blocking_send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let raw = RawTerminal::enter();
    eprint!("vman: connected to {shown}'s console; Ctrl-] leaves.\r\n");
    let mut stdout = std::io::stdout();
    let ended = loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(response)) => {
                    if let Some(error) = response.errors.unwrap_or_default().first() {
                        break Err(server_error(error));
                    }
                    let Some(chunk) = response.data.map(|d| d.vm_console) else { continue };
                    if let Ok(bytes) = STANDARD.decode(chunk.data.as_bytes()) {
                        let _ = stdout.write_all(&bytes).and_then(|()| stdout.flush());
                    }
                }
                Some(Err(e)) => break Err(Failure::Unreachable(format!("the console: {e}"))),
                None => break Ok(()),
            },
            key = typed.recv() => {
                let Some(bytes) = key else { break Ok(()) };
                let (send, leave) = match bytes.iter().position(|b| *b == ESCAPE) {
                    Some(at) => (&bytes[..at], true),
                    None => (&bytes[..], false),
                };
                if !send.is_empty() {
                    let variables = console_input::Variables {
                        vm_id: id.to_string(),
                        data: STANDARD.encode(send),
                    };
                    if let Err(e) = client.run::<ConsoleInput>(variables).await {
                        break Err(e);
                    }
                }
                if leave {
                    break Ok(());
                }
            }
        }
    };
    drop(raw);
    eprintln!("\nvman: left {shown}'s console");
    ended
}
