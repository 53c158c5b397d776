//! A small filesystem of a test's own: a tmpfs mounted on a temp dir (or on
//! a directory of another one), so a test can fill it to the last byte
//! without touching the host's disks. Unmounted when dropped, also when the
//! test fails; drop one mounted inside another first (declare it later).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

pub struct Tmpfs {
    path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on a temp dir, or says why it cannot
    /// (not root, no `mount`, a container that forbids it): the caller
    /// skips the test.
    pub fn mount(mib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("a temp dir: {e}"))?;
        let mut fs = Tmpfs::mount_at(dir.path(), mib)?;
        fs._dir = Some(dir);
        Ok(fs)
    }

    /// Mounts a tmpfs of `mib` MiB on `path` (made if missing).
    pub fn mount_at(path: &Path, mib: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs is not permitted here ({}); it needs CAP_SYS_ADMIN",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
            _dir: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Free bytes on the filesystem, as an unprivileged writer sees them.
    pub fn free_bytes(&self) -> u64 {
        let stat = rustix::fs::statvfs(self.path()).expect("statvfs");
        stat.f_bavail * stat.f_frsize
    }

    /// Writes a file `filler` until the filesystem has only `leave` bytes
    /// free (0: not one byte); its path, to remove when space should come back.
    pub fn fill_leaving(&self, leave: u64) -> PathBuf {
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
        assert_eq!(self.free_bytes(), 0, "the filesystem is full");
        if leave > 0 {
            let len = file.metadata().unwrap().len();
            file.set_len(len.saturating_sub(leave)).unwrap();
        }
        let _ = file.sync_all();
        assert!(
            self.free_bytes() <= leave.next_multiple_of(4096),
            "{} bytes free",
            self.free_bytes()
        );
        path
    }

    /// Fills the filesystem to the last byte; the filler's path.
    pub fn fill(&self) -> PathBuf {
        self.fill_leaving(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file open (a connection the app keeps
            // until its last handle goes): detach it now; the kernel frees
            // it once let go.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
