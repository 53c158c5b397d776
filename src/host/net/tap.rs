//! Persistent taps through `/dev/net/tun`: netlink cannot create a tap, the
//! `TUNSETIFF` ioctl can, and `TUNSETPERSIST` keeps it after the file closes,
//! so it exists before QEMU opens it (by name) and outlives vman restarts.
//! Deleting, enslaving and setting up a tap are plain netlink (see `super`).

use std::{fs::OpenOptions, os::fd::AsRawFd};

use crate::host::HostError;

const TUN: &str = "/dev/net/tun";

// Both take an int-sized argument in their request code; TUNSETIFF really
// takes a pointer to `struct ifreq`.
nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_int_bad!(tun_set_persist, libc::TUNSETPERSIST);

/// Creates the persistent tap `name` (`IFF_TAP | IFF_NO_PI`). Fails if a
/// non-tap link has that name; a tap of that name is attached to, not changed.
pub fn create_persistent(name: &str) -> Result<(), HostError> {
    let io = |what: &str| {
        let what = format!("{what} tap {name}");
        move |source| HostError::Io { what, source }
    };
    if name.is_empty() || name.len() > 15 {
        return Err(HostError::Failed(format!(
            "tap name {name:?} must be 1 to 15 bytes"
        )));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN)
        .map_err(io("opening /dev/net/tun for"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: the fd is open for the whole call and `request` outlives it.
    unsafe { tun_set_iff(tun.as_raw_fd(), &request) }
        .map_err(|e| io("creating")(std::io::Error::from(e)))?;
    // SAFETY: as above; 1 turns persistence on.
    unsafe { tun_set_persist(tun.as_raw_fd(), 1) }
        .map_err(|e| io("making persistent")(std::io::Error::from(e)))?;
    Ok(())
}

/// Whether this host lets vman make taps: `/dev/net/tun` opens read-write.
pub fn usable() -> Result<(), std::io::Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN)
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_must_fit_the_kernel() {
        for bad in ["", "sixteen-chars-xx"] {
            match create_persistent(bad) {
                Err(HostError::Failed(why)) => {
                    assert!(why.contains("must be 1 to 15 bytes"), "{why}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
