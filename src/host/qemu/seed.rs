//! The cloud-init NoCloud seed: a small vfat volume labelled `cidata` with
//! `meta-data`, `user-data` and, when given, `network-config` at its root,
//! the layout cloud-init's NoCloud source looks for on a block device. It is
//! made in memory by the `fatfs` crate (no mkfs or ISO tool), written under
//! a `.partial` name and renamed, and attached read-only.

use std::{
    io::{Cursor, Write},
    path::Path,
};

use super::files::partial_of;
use crate::host::{HostError, Seed};

/// The volume's size: room for the files' limits (64 KiB of user data, 64
/// KiB of network config, the keys) many times over; FAT12.
const SIZE: usize = 2 << 20;

/// The label cloud-init looks for (the FAT boot sector's 11 bytes).
const LABEL: &[u8; 11] = b"cidata     ";

/// The seed's image, in memory.
pub fn image(seed: &Seed) -> std::io::Result<Vec<u8>> {
    let mut disk = Cursor::new(vec![0u8; SIZE]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(*LABEL)
            .fat_type(fatfs::FatType::Fat12),
    )?;
    disk.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        let mut files = vec![
            ("meta-data", seed.meta_data.as_str()),
            ("user-data", seed.user_data.as_str()),
        ];
        if let Some(network) = &seed.network_config {
            files.push(("network-config", network));
        }
        for (name, content) in files {
            fs.root_dir()
                .create_file(name)?
                .write_all(content.as_bytes())?;
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// Writes the seed's image at `path`, whole or not at all.
pub(super) fn write(path: &Path, seed: &Seed) -> Result<(), HostError> {
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| HostError::Io { what, source }
    };
    let bytes = image(seed).map_err(io("building the cloud-init seed"))?;
    let partial = partial_of(path);
    std::fs::write(&partial, bytes).map_err(io("writing the cloud-init seed"))?;
    std::fs::rename(&partial, path).map_err(|source| {
        let _ = std::fs::remove_file(&partial);
        HostError::Io {
            what: format!("moving {} into place", path.display()),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_seed_is_a_vfat_volume_labelled_cidata_with_its_files() {
        let seed = Seed {
            meta_data: "instance-id: iid-1\nlocal-hostname: \"web-1\"\n".into(),
            user_data: "#cloud-config\n".into(),
            network_config: Some("version: 2\n".into()),
        };
        let image = image(&seed).unwrap();
        assert_eq!(image.len(), SIZE);
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat12);
        assert_eq!(fs.volume_label(), "cidata");
        let read = |name: &str| {
            let mut text = String::new();
            fs.root_dir()
                .open_file(name)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        };
        assert_eq!(read("meta-data"), seed.meta_data);
        assert_eq!(read("user-data"), seed.user_data);
        assert_eq!(read("network-config"), "version: 2\n");
        let names: Vec<String> = fs
            .root_dir()
            .iter()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["meta-data", "user-data", "network-config"]);
    }
}
