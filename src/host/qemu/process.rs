//! QEMU processes: started detached from vman, watched through a pidfd.
//!
//! Each QEMU runs in its own session (`setsid`), so signals to vman's process
//! group and vman's own death never reach it. Liveness is judged by pidfd
//! readiness (or `/proc/<pid>/stat` for a zombie), never by `kill(pid, 0)`:
//! an orphaned QEMU that died may linger unreaped for a while.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::ffi::OsStringExt,
    },
    path::Path,
};

use nix::{
    spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawnp},
    sys::signal::{SigSet, Signal as NixSignal},
};

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::io::unix::AsyncFd;

/// How a watched process ended, when vman could learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// Not vman's child (adopted after a restart): the kernel reports the
    /// status to its real parent, not to us.
    Unknown,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s} ({})", signal_name(*s)),
            ExitStatus::Unknown => f.write_str("exit status unknown (not vman's child)"),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        _ => "other",
    }
}

/// A QEMU process vman started or adopted.
pub struct QemuProcess {
    pub pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    /// Whether vman is the parent (and so can collect the exit status).
    own_child: bool,
}

/// Starts `argv` in its own session with stdout and stderr appended to `log`.
///
/// Through `posix_spawn`, not `fork`: a forked vman would share its memory
/// with the child copy-on-write, and every page vman writes afterwards would
/// fault once more (68 faults per `attachDisk` after a VM start, measured in
/// docs/BENCHMARKS.md). glibc's `posix_spawn` starts the child on the
/// parent's memory, as `vfork` does, until it execs.
pub fn spawn(argv: &[String], log: &Path) -> io::Result<QemuProcess> {
    let argv = argv
        .iter()
        .map(|arg| CString::new(arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let program = argv.first().ok_or_else(|| io::Error::other("empty argv"))?;
    let env = std::env::vars_os()
        .map(|(key, value)| {
            let mut pair = key.into_vec();
            pair.push(b'=');
            pair.extend(value.into_vec());
            CString::new(pair)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let null = File::open("/dev/null")?;
    let log_file = File::options().create(true).append(true).open(log)?;
    let mut actions = PosixSpawnFileActions::init()?;
    actions.add_dup2(null.as_raw_fd(), libc::STDIN_FILENO)?;
    actions.add_dup2(log_file.as_raw_fd(), libc::STDOUT_FILENO)?;
    actions.add_dup2(log_file.as_raw_fd(), libc::STDERR_FILENO)?;
    let mut attr = PosixSpawnAttr::init()?;
    // vman (as every Rust program) ignores SIGPIPE, and an ignored signal
    // stays ignored across exec: QEMU gets the default back, and no blocked
    // signals, as `std::process::Command` does for its children.
    let mut sigpipe = SigSet::empty();
    sigpipe.add(NixSignal::SIGPIPE);
    attr.set_sigdefault(&sigpipe)?;
    attr.set_sigmask(&SigSet::empty())?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            // glibc's flag (since 2.26) for `setsid` in the child; nix does not name it.
            | PosixSpawnFlags::from_bits_retain(libc::POSIX_SPAWN_SETSID.into()),
    )?;
    let pid = posix_spawnp(program, &actions, &attr, &argv, &env)?;
    // Reaping happens through the pidfd.
    QemuProcess::open(pid.as_raw(), true)
}

impl QemuProcess {
    /// Watches an existing process. `own_child` is false for adopted ones.
    pub fn open(pid: i32, own_child: bool) -> io::Result<QemuProcess> {
        let pid_t =
            Pid::from_raw(pid).ok_or_else(|| io::Error::other(format!("invalid pid {pid}")))?;
        let fd = pidfd_open(pid_t, PidfdFlags::NONBLOCK)?;
        // SAFETY: the AsyncFd owns the pidfd, so it stays open while registered.
        let pidfd = unsafe { AsyncFd::register(fd)? };
        Ok(QemuProcess {
            pid,
            pidfd,
            own_child,
        })
    }

    /// Resolves when the process has exited, with its status when known. Reaps our own children.
    pub async fn exited(&self) -> ExitStatus {
        // A pidfd becomes readable once, when the process exits.
        if let Err(e) = self
            .pidfd
            .readable()
            .await
            .map(|mut guard| guard.retain_ready())
        {
            tracing::warn!(pid = self.pid, error = %e, "waiting on a pidfd failed; polling /proc instead");
            while is_alive(self.pid) {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        if self.own_child {
            self.reap()
        } else {
            ExitStatus::Unknown
        }
    }

    /// How the process is ending, once it has begun to exit; `None` while
    /// it runs. A process that begins to exit is flagged `PF_EXITING`, sets
    /// its exit code and closes its files (QEMU's QMP socket among them)
    /// first; the pidfd says it has exited only when the last of its
    /// threads is gone, after the kernel has torn down its memory: for a
    /// QEMU with a guest, 10-25 ms later on the benchmark host
    /// (docs/BENCHMARKS.md, issue 22). The status is the main thread's exit
    /// code (proc(5)'s `exit_code`, as `waitpid` encodes it); for a process
    /// that is not vman's child it is unknown, as [`Self::exited`] says.
    pub fn exiting(&self) -> Option<ExitStatus> {
        /// `PF_EXITING` in `/proc/<pid>/stat`'s `flags`.
        const PF_EXITING: u64 = 0x4;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (state, flags) = (*fields.first()?, fields.get(6)?.parse::<u64>().ok()?);
        if !matches!(state, "Z" | "X") && flags & PF_EXITING == 0 {
            return None;
        }
        if !self.own_child {
            return Some(ExitStatus::Unknown);
        }
        let code: i32 = fields.get(49)?.parse().ok()?;
        Some(match code & 0x7f {
            0 => ExitStatus::Code((code >> 8) & 0xff),
            signal => ExitStatus::Signal(signal),
        })
    }

    /// Whether the process has exited (non-blocking).
    pub fn has_exited(&self) -> bool {
        let fd = self.pidfd.get_ref().as_fd();
        let mut poll = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let now = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut poll, Some(&now)), Ok(n) if n > 0)
    }

    fn reap(&self) -> ExitStatus {
        // waitid(P_PIDFD, …, WEXITED) collects our child's status without racing on its pid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if rc != 0 {
            return ExitStatus::Unknown;
        }
        // SAFETY: waitid filled a CLD_* siginfo.
        let status = unsafe { info.si_status() };
        match info.si_code {
            libc::CLD_EXITED => ExitStatus::Code(status),
            libc::CLD_KILLED | libc::CLD_DUMPED => ExitStatus::Signal(status),
            _ => ExitStatus::Unknown,
        }
    }

    pub fn kill(&self) -> io::Result<()> {
        match pidfd_send_signal(self.pidfd.get_ref(), Signal::KILL) {
            Ok(()) => Ok(()),
            // Already gone is what we wanted.
            Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Alive means: the process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    stat_field(pid, 0).is_some_and(|state| state != "Z" && state != "X")
}

/// Field `n` of `/proc/<pid>/stat`, counted from 0 after the parenthesised
/// command name (which may contain spaces and parentheses): 0 is the state,
/// 1 the parent's pid, and so on (proc(5) numbers them from 3). `None` when
/// there is no such process.
pub fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n).map(str::to_string)
}

/// The command line of a live process (`None`: no such process).
pub fn command_line(pid: i32) -> Option<Vec<String>> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    // The list ends with a NUL.
    if args.last().is_some_and(String::is_empty) {
        args.pop();
    }
    Some(args)
}

/// Whether `pid` is the QEMU of VM `vm_id`: its command line carries `-uuid <vm_id>`.
pub fn is_qemu_of(pid: i32, vm_id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|pair| pair[0] == b"-uuid" && pair[1] == vm_id.as_bytes())
}

/// Reads a pidfile QEMU wrote.
/// Whether a live process is a QEMU whose command line names `path` (its
/// pidfile or QMP socket in a run directory, say).
pub fn is_qemu_using(pid: i32, path: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let is_qemu = args
        .next()
        .and_then(|argv0| argv0.rsplit(|b| *b == b'/').next())
        .is_some_and(|name| name.starts_with(b"qemu"));
    let needle = path.as_os_str().as_encoded_bytes();
    is_qemu
        && args.any(|arg| {
            arg.windows(needle.len().max(1))
                .any(|window| window == needle)
        })
}

pub fn read_pidfile(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The last `lines` lines of a log file (for error messages and crash forensics).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spawned_process_is_watched_reaped_and_its_signal_known() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let process = spawn(&["sleep".into(), "30".into()], &log).unwrap();
        assert!(is_alive(process.pid));
        assert!(!process.has_exited());
        // In its own session, not vman's.
        let sid = unsafe { libc::getsid(process.pid) };
        assert_eq!(sid, process.pid);
        process.kill().unwrap();
        let status = tokio::time::timeout(std::time::Duration::from_secs(5), process.exited())
            .await
            .unwrap();
        assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
        assert!(!is_alive(process.pid));
    }

    /// A process that has begun to exit says how, before its pidfd is
    /// read (the window a QEMU spends tearing down its guest's memory; a
    /// zombie not yet reaped stands in for it here), and its pidfd still
    /// collects it afterwards.
    #[tokio::test]
    async fn a_process_that_is_exiting_says_how_before_it_is_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let wait = std::time::Duration::from_secs(5);
        for (argv, expected) in [
            (vec!["sh", "-c", "exit 3"], ExitStatus::Code(3)),
            (
                vec!["sh", "-c", "kill -TERM $$"],
                ExitStatus::Signal(libc::SIGTERM),
            ),
        ] {
            let argv: Vec<String> = argv.into_iter().map(String::from).collect();
            let process = spawn(&argv, &log).unwrap();
            tokio::time::timeout(wait, process.pidfd.readable())
                .await
                .unwrap()
                .unwrap()
                .retain_ready();
            assert_eq!(process.exiting(), Some(expected.clone()), "{argv:?}");
            assert_eq!(
                tokio::time::timeout(wait, process.exited()).await.unwrap(),
                expected
            );
        }
        let running = spawn(&["sleep".into(), "30".into()], &log).unwrap();
        assert_eq!(running.exiting(), None);
        running.kill().unwrap();
        tokio::time::timeout(wait, running.exited()).await.unwrap();
    }

    /// What `std::process::Command` would have given the child, without its
    /// `fork`: SIGPIPE back to its default (vman ignores it), no blocked
    /// signals, stdin on /dev/null, stdout and stderr on the log, none of
    /// vman's own descriptors.
    #[tokio::test]
    async fn a_spawned_process_starts_clean() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        // An open descriptor of vman's (close-on-exec, as Rust opens them all).
        let _held = File::open("/dev/zero").unwrap();
        assert_eq!(
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) },
            libc::SIG_IGN,
            "the test harness, as any Rust program, ignores SIGPIPE"
        );
        let process = spawn(&["sleep".into(), "30".into()], &log).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid)).unwrap();
        let mask = |name: &str| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim();
            u64::from_str_radix(hex, 16).unwrap()
        };
        assert_eq!(mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "{status}");
        assert_eq!(mask("SigBlk:"), 0, "{status}");
        process.kill().unwrap();
        process.exited().await;
        // The descriptors, as the program itself sees them once it runs (the
        // kernel closes vman's close-on-exec ones just after exec returns).
        let fds = spawn(
            &[
                "sh".into(),
                "-c".into(),
                // Then how many point to /dev/zero (the glob's own directory
                // descriptor is gone by the time readlink looks).
                "readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2; \
                 readlink /proc/$$/fd/* 2>/dev/null | grep -c /dev/zero; true"
                    .into(),
            ],
            &log,
        )
        .unwrap();
        assert_eq!(fds.exited().await, ExitStatus::Code(0));
        let log_name = log.to_str().unwrap();
        assert_eq!(
            tail(&log, 10),
            format!("/dev/null\n{log_name}\n{log_name}\n0"),
            "stdin, stdout and stderr; none of vman's own descriptors"
        );
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let missing = spawn(&["/nonexistent/qemu".into()], &log).err().unwrap();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let nul = spawn(&["sleep\0".into()], &log).err().unwrap();
        assert_eq!(nul.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn exit_codes_and_logs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let process = spawn(
            &[
                "sh".into(),
                "-c".into(),
                "echo one; echo two >&2; exit 3".into(),
            ],
            &log,
        )
        .unwrap();
        assert_eq!(process.exited().await, ExitStatus::Code(3));
        assert_eq!(tail(&log, 1), "two");
        assert_eq!(tail(&log, 5), "one\ntwo");
    }

    #[test]
    fn qemu_identity_is_read_from_the_command_line() {
        let me = std::process::id() as i32;
        assert!(!is_qemu_of(me, "0194f0a0-0000-7000-8000-000000000000"));
        assert!(is_alive(me));
        assert!(!is_alive(i32::MAX));
    }
}
