//! A small filesystem of a test's own: a tmpfs mounted on a temp dir, so a
//! test can fill it to the last byte without touching the host's disks.
//! Unmounted when dropped, also when the test fails.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB, or says why it cannot (not root, no
    /// `mount`, a container that forbids it): the caller skips the test.
    pub fn mount(mib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("a temp dir: {e}"))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs is not permitted here ({}); it needs CAP_SYS_ADMIN",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Free bytes on the filesystem, as an unprivileged writer sees them.
    pub fn free_bytes(&self) -> u64 {
        let stat = rustix::fs::statvfs(self.path()).expect("statvfs");
        stat.f_bavail * stat.f_frsize
    }

    /// Writes `filler` until the filesystem has not one byte left; its path.
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("the filler file");
        let mut chunk = 1 << 20;
        let block = vec![0xa5u8; chunk];
        while chunk > 0 {
            match file.write(&block[..chunk]) {
                Ok(0) => chunk /= 2,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => chunk /= 2,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        let _ = file.sync_all();
        assert_eq!(self.free_bytes(), 0, "the filesystem is full");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.dir.path();
        let unmounted = Command::new("umount")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file open (a connection a failed test
            // left behind): detach it now, the kernel frees it when let go.
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
    }
}
