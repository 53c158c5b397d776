//! qemu-img: creating disk files and reading what a file really is.

use std::{path::Path, process::Stdio, time::Duration};

use serde::Deserialize;
use tokio::process::Command;

use crate::host::{DiskSpec, HostError};

/// How long one qemu-img run may take.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(120);

/// The `qemu-img create` argv for a disk, written to `target` (a temporary name).
pub fn create_argv(qemu_img: &Path, disk: &DiskSpec, target: &Path) -> Vec<String> {
    let mut argv = vec![
        qemu_img.display().to_string(),
        "create".into(),
        "-q".into(),
        "-f".into(),
        disk.format.qemu_name().into(),
    ];
    if let Some(base) = &disk.backing {
        // An explicit backing format: qemu-img never probes.
        argv.extend([
            "-b".into(),
            base.path.display().to_string(),
            "-F".into(),
            base.format.qemu_name().into(),
        ]);
    }
    argv.extend([target.display().to_string(), disk.size_bytes.to_string()]);
    argv
}

/// The `qemu-img convert` argv that copies `from` into a standalone file of
/// `to`'s format at `target` (a temporary name), printing its progress.
pub fn convert_argv(
    options: &super::argv::QemuOptions,
    from: &DiskSpec,
    to: &DiskSpec,
    target: &Path,
) -> Vec<String> {
    let mut argv = vec![
        options.img_binary.display().to_string(),
        "convert".into(),
        "-p".into(),
        // An explicit source format: qemu-img never probes.
        "-f".into(),
        from.format.qemu_name().into(),
        "-O".into(),
        to.format.qemu_name().into(),
    ];
    if options.copy_bytes_per_second > 0 {
        argv.extend(["-r".into(), options.copy_bytes_per_second.to_string()]);
    }
    argv.extend([
        from.path.display().to_string(),
        target.display().to_string(),
    ]);
    argv
}

/// The fractions (0 to 1) in what `qemu-img -p` printed: `    (12.34/100%)`
/// items separated by carriage returns.
pub fn progress_fractions(printed: &str) -> impl Iterator<Item = f64> + '_ {
    printed.split(['\r', '\n']).filter_map(|item| {
        let percent = item.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
        let percent: f64 = percent.parse().ok()?;
        Some((percent / 100.0).clamp(0.0, 1.0))
    })
}

/// Runs a long qemu-img (`convert -p`) to completion, with no time limit,
/// calling `report` with each fraction it prints. Dropping the future kills
/// qemu-img.
pub async fn run_reporting(
    argv: &[String],
    report: &(dyn Fn(f64) + Send + Sync),
) -> Result<(), HostError> {
    use tokio::io::AsyncReadExt;
    let (program, mut child) = spawn(argv)?;
    let io = |source| HostError::Io {
        what: format!("running {program}"),
        source,
    };
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut buf = [0u8; 4096];
    let mut pending = String::new();
    loop {
        let n = stdout.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        // Only whole items: the last one may be cut.
        if let Some(end) = pending.rfind(['\r', '\n']) {
            if let Some(fraction) = progress_fractions(&pending[..end]).last() {
                report(fraction);
            }
            pending.drain(..=end);
        }
    }
    let status = child.wait().await.map_err(io)?;
    let errors = errors.await.unwrap_or_default();
    if status.success() {
        report(1.0);
        Ok(())
    } else {
        Err(HostError::Failed(format!(
            "{} failed ({status}): {}",
            argv.join(" "),
            errors.trim()
        )))
    }
}

/// The temporary name a disk is created under before it is renamed into place.
pub fn partial_path(disk: &DiskSpec) -> std::path::PathBuf {
    let mut name = disk.path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    disk.path.with_file_name(name)
}

/// Starts `argv` with its output piped; dropping the child kills it.
fn spawn(argv: &[String]) -> Result<(&String, tokio::process::Child), HostError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| HostError::Failed("empty argv".into()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // qemu-img dies with vman: a vman killed (SIGKILL) in the middle of a
    // long copy must not leave one writing on. (kill_on_drop covers the rest.)
    // SAFETY: the closure makes one raw system call (prctl), which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let child = command.spawn().map_err(|source| HostError::Io {
        what: format!("running {program}"),
        source,
    })?;
    Ok((program, child))
}

pub async fn run(argv: &[String]) -> Result<String, HostError> {
    let (program, child) = spawn(argv)?;
    let output = tokio::time::timeout(QEMU_IMG_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            HostError::Timeout(format!(
                "{program} did not finish within {QEMU_IMG_TIMEOUT:?}"
            ))
        })?
        .map_err(|source| HostError::Io {
            what: format!("running {program}"),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(HostError::Failed(format!(
            "{} failed ({}): {}",
            argv.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// What `qemu-img info --output=json` says about a file.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "backing-filename")]
    pub backing_filename: Option<String>,
    #[serde(rename = "format-specific", default)]
    pub format_specific: Option<serde_json::Value>,
    /// Its internal snapshots (qcow2); absent when it has none.
    #[serde(default)]
    pub snapshots: Vec<InternalSnapshot>,
}

/// One internal snapshot of a qcow2 file, as `qemu-img info` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct InternalSnapshot {
    /// Its tag (vman tags a snapshot with the id of its row).
    pub name: String,
    /// Bytes of saved memory (0: disk only).
    #[serde(rename = "vm-state-size", default)]
    pub vm_state_size: u64,
}

impl ImageInfo {
    /// The tags of its internal snapshots.
    pub fn snapshot_tags(&self) -> Vec<String> {
        self.snapshots.iter().map(|s| s.name.clone()).collect()
    }
}

/// What `qemu-img snapshot` does to one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOp {
    /// `-c`: create.
    Create,
    /// `-a`: apply (revert the disk to it).
    Apply,
    /// `-d`: delete.
    Delete,
}

/// The `qemu-img snapshot` argv for one disk.
pub fn snapshot_argv(qemu_img: &Path, op: SnapshotOp, tag: &str, disk: &DiskSpec) -> Vec<String> {
    let flag = match op {
        SnapshotOp::Create => "-c",
        SnapshotOp::Apply => "-a",
        SnapshotOp::Delete => "-d",
    };
    // `qemu-img snapshot` takes no `-f`: the format is given as image
    // options, so that it is never probed.
    vec![
        qemu_img.display().to_string(),
        "snapshot".into(),
        "-q".into(),
        flag.into(),
        tag.into(),
        "--image-opts".into(),
        format!(
            "driver={},file.driver=file,file.filename={}",
            disk.format.qemu_name(),
            super::argv::escape(&disk.path.display().to_string())
        ),
    ]
}

impl ImageInfo {
    /// A qcow2 external data file (another way to point at a host file).
    pub fn data_file(&self) -> Option<String> {
        self.format_specific
            .as_ref()?
            .get("data")?
            .get("data-file")?
            .as_str()
            .map(str::to_string)
    }
}

pub fn info_argv(qemu_img: &Path, path: &Path) -> Vec<String> {
    vec![
        qemu_img.display().to_string(),
        "info".into(),
        "--output=json".into(),
        // Reading a file must not take a lock a running VM holds.
        "--force-share".into(),
        path.display().to_string(),
    ]
}

pub async fn info(qemu_img: &Path, path: &Path) -> Result<ImageInfo, HostError> {
    let out = run(&info_argv(qemu_img, path)).await?;
    serde_json::from_str(&out).map_err(|e| HostError::Failed(format!("qemu-img info: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_img_progress_is_read_item_by_item() {
        let printed = "    (0.00/100%)\r    (1.17/100%)\r    (50.00/100%)\r\n    (100.00/100%)\r";
        let fractions: Vec<f64> = progress_fractions(printed).collect();
        let expected = [0.0, 0.0117, 0.5, 1.0];
        assert_eq!(fractions.len(), expected.len(), "{fractions:?}");
        for (got, want) in fractions.iter().zip(expected) {
            assert!((got - want).abs() < 1e-9, "{fractions:?}");
        }
        // A cut item, and other output, are no fraction.
        assert_eq!(progress_fractions("    (12.3").count(), 0);
        assert_eq!(progress_fractions("qemu-img: warning\n").count(), 0);
    }
}
