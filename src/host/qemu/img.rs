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

/// The temporary name a disk is created under before it is renamed into place.
pub fn partial_path(disk: &DiskSpec) -> std::path::PathBuf {
    let mut name = disk.path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    disk.path.with_file_name(name)
}

pub async fn run(argv: &[String]) -> Result<String, HostError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| HostError::Failed("empty argv".into()))?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HostError::Io {
            what: format!("running {program}"),
            source,
        })?;
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
