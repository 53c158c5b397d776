//! Input checks shared by every service. Everything a user sends is checked
//! here before it reaches the database or the host; failures are
//! `BAD_USER_INPUT` naming the field and the value.

use std::sync::LazyLock;

use regex::Regex;

use crate::{
    config::Limits,
    error::{ApiError, ApiResult},
};

static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[a-z][a-z0-9-]{0,62}$").expect("name regex"));

pub fn name(field: &str, value: &str) -> ApiResult<()> {
    if NAME.is_match(value) {
        Ok(())
    } else {
        Err(ApiError::bad_input(format!(
            "{field} {:?} is not a valid name: use 1-63 characters, a lowercase letter first, then lowercase letters, digits or '-'",
            shorten(value)
        )))
    }
}

/// Parses an ID argument; a malformed ID is bad input, a well-formed unknown one is NOT_FOUND later.
pub fn id(field: &str, value: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(value)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiError::bad_input(format!("{field} {:?} is not a valid ID", shorten(value))))
}

pub fn vcpus(limits: &Limits, value: i32) -> ApiResult<u32> {
    if value >= 1 && value as u32 <= limits.max_vcpus {
        Ok(value as u32)
    } else {
        Err(ApiError::bad_input(format!(
            "vcpus {value} is out of range: 1 to {} on this host",
            limits.max_vcpus
        )))
    }
}

pub fn memory_mib(limits: &Limits, value: i64) -> ApiResult<u64> {
    if value >= 16 && value as u64 <= limits.max_memory_mib {
        Ok(value as u64)
    } else {
        Err(ApiError::bad_input(format!(
            "memoryMib {value} is out of range: 16 to {} on this host",
            limits.max_memory_mib
        )))
    }
}

pub fn size_bytes(limits: &Limits, field: &str, value: i64) -> ApiResult<u64> {
    const MIB: i64 = 1 << 20;
    if value >= MIB && value as u64 <= limits.max_disk_bytes && value % 512 == 0 {
        Ok(value as u64)
    } else {
        Err(ApiError::bad_input(format!(
            "{field} {value} is out of range: a multiple of 512 from 1 MiB to {} bytes",
            limits.max_disk_bytes
        )))
    }
}

pub fn vlan_id(value: i32) -> ApiResult<u16> {
    if (1..=4094).contains(&value) {
        Ok(value as u16)
    } else {
        Err(ApiError::bad_input(format!(
            "vlanId {value} is out of range: 1 to 4094"
        )))
    }
}

/// An uplink: a host interface name, short enough that `<uplink>.<vlan>`
/// fits the kernel's 15 bytes. Err is the reason, for the caller to wrap.
pub fn uplink_name(value: &str) -> Result<(), String> {
    static IFNAME: LazyLock<Regex> =
        LazyLock::new(|| Regex::new("^[A-Za-z0-9][A-Za-z0-9_-]{0,9}$").expect("ifname regex"));
    if IFNAME.is_match(value) {
        Ok(())
    } else {
        Err("must be an interface name of 1-10 characters of letters, digits, '_' or '-' (its VLAN link <uplink>.<vlan> must fit 15 bytes)".into())
    }
}

pub fn uplink(value: &str) -> ApiResult<()> {
    uplink_name(value)
        .map_err(|reason| ApiError::bad_input(format!("uplink {:?} {reason}", shorten(value))))
}

/// A MAC address: six hex pairs joined by `:`, unicast, not all zeros.
/// Returns it in lower case.
pub fn mac(value: &str) -> ApiResult<String> {
    static MAC: LazyLock<Regex> =
        LazyLock::new(|| Regex::new("^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$").expect("mac regex"));
    let bad = |why: &str| ApiError::bad_input(format!("mac {:?} {why}", shorten(value)));
    if !MAC.is_match(value) {
        return Err(bad("is not a MAC address: use six hex pairs joined by ':'"));
    }
    let mac = value.to_ascii_lowercase();
    let first = u8::from_str_radix(&mac[..2], 16).expect("checked hex");
    if first & 1 == 1 {
        return Err(bad("is a multicast address: a NIC needs a unicast one"));
    }
    if mac == "00:00:00:00:00:00" {
        return Err(bad("is all zeros"));
    }
    Ok(mac)
}

/// The NIC device models vman offers (each hot-pluggable on a PCIe root port).
pub const NIC_MODELS: &[&str] = &["virtio-net-pci", "e1000e"];

pub fn nic_model(value: &str) -> ApiResult<()> {
    if NIC_MODELS.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::bad_input(format!(
            "model {:?} is not offered: use one of {}",
            shorten(value),
            NIC_MODELS.join(", ")
        )))
    }
}

/// Free text (descriptions): bounded, no control characters.
pub fn text(field: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.len() > max {
        return Err(ApiError::bad_input(format!(
            "{field} is longer than {max} bytes"
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::bad_input(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

/// A kernel command line: printable ASCII, bounded.
pub fn cmdline(value: &str) -> ApiResult<()> {
    if value.len() > 2048 || !value.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(ApiError::bad_input(
            "cmdline must be at most 2048 printable ASCII characters".to_string(),
        ));
    }
    Ok(())
}

pub fn timeout_seconds(value: i32) -> ApiResult<u64> {
    if (1..=3600).contains(&value) {
        Ok(value as u64)
    } else {
        Err(ApiError::bad_input(format!(
            "timeoutSeconds {value} is out of range: 1 to 3600"
        )))
    }
}

/// Keeps error messages short when the input is huge.
fn shorten(value: &str) -> String {
    if value.len() <= 80 {
        value.to_string()
    } else {
        let cut = (0..=80)
            .rev()
            .find(|i| value.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}…", &value[..cut])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "vm-1", &format!("a{}", "b".repeat(62))] {
            assert!(name("name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1vm",
            "Vm",
            "vm_1",
            "vm,if=x",
            "../etc",
            &format!("a{}", "b".repeat(63)),
            "vm 1",
            "vm\n",
        ] {
            assert!(name("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_vlans_ids() {
        let limits = crate::config::Config::default().limits;
        assert!(size_bytes(&limits, "sizeBytes", 0).is_err());
        assert!(size_bytes(&limits, "sizeBytes", -512).is_err());
        assert!(size_bytes(&limits, "sizeBytes", 10 << 50).is_err());
        assert!(size_bytes(&limits, "sizeBytes", 1 << 30).is_ok());
        assert!(
            vlan_id(0).is_err()
                && vlan_id(4095).is_err()
                && vlan_id(1).is_ok()
                && vlan_id(4094).is_ok()
        );
        assert!(id("id", "nope").is_err());
        assert_eq!(mac("02:AB:cd:00:00:01").unwrap(), "02:ab:cd:00:00:01");
        for bad in [
            "",
            "02:ab:cd:00:00",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "02-ab-cd-00-00-01",
            "02:ab:cd:00:00:01,x",
        ] {
            assert!(mac(bad).is_err(), "{bad:?}");
        }
        assert!(uplink("eth0").is_ok() && uplink("enp0s31f6").is_ok());
        for bad in ["", "eth0.10", "a b", "../x", "abcdefghijk", "-x"] {
            assert!(uplink(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            id("id", "0194F0A0-0000-7000-8000-000000000000").unwrap(),
            "0194f0a0-0000-7000-8000-000000000000"
        );
        let long = "x".repeat(4096);
        let err = name("name", &long).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;
    use crate::config::Config;

    fn message(result: ApiResult<impl std::fmt::Debug>) -> String {
        let err = result.expect_err("bad input");
        assert_eq!(err.code(), "BAD_USER_INPUT", "{err}");
        err.to_string()
    }

    #[test]
    fn vcpus_and_memory_are_bounded_by_the_host_limits() {
        let mut limits = Config::default().limits;
        limits.max_vcpus = 4;
        limits.max_memory_mib = 1024;
        assert_eq!(vcpus(&limits, 1).unwrap(), 1);
        assert_eq!(vcpus(&limits, 4).unwrap(), 4);
        for bad in [0, -1, 5, i32::MIN] {
            assert!(message(vcpus(&limits, bad)).contains("1 to 4"));
        }
        assert_eq!(memory_mib(&limits, 16).unwrap(), 16);
        assert_eq!(memory_mib(&limits, 1024).unwrap(), 1024);
        for bad in [15, 0, -16, 1025, i64::MIN] {
            assert!(message(memory_mib(&limits, bad)).contains("16 to 1024"));
        }
    }

    #[test]
    fn disk_sizes_are_whole_sectors() {
        let limits = Config::default().limits;
        assert_eq!(size_bytes(&limits, "sizeBytes", 1 << 20).unwrap(), 1 << 20);
        let err = message(size_bytes(&limits, "sizeBytes", (1 << 20) + 1));
        assert!(err.contains("multiple of 512"), "{err}");
        assert!(message(size_bytes(&limits, "newSize", (1 << 20) - 512)).starts_with("newSize"));
        assert!(size_bytes(&limits, "sizeBytes", limits.max_disk_bytes as i64).is_ok());
    }

    #[test]
    fn nic_models_are_the_offered_ones() {
        for model in NIC_MODELS {
            nic_model(model).unwrap();
        }
        let err = message(nic_model("rtl8139"));
        assert!(
            err.contains("rtl8139") && err.contains("virtio-net-pci, e1000e"),
            "{err}"
        );
    }

    #[test]
    fn text_is_bounded_and_has_no_control_characters() {
        text("description", "two\nlines\tand a tab", 100).unwrap();
        text("description", &"x".repeat(10), 10).unwrap();
        assert!(message(text("description", &"x".repeat(11), 10)).contains("longer than 10"));
        for bad in ["bell\u{7}", "nul\0", "esc\u{1b}[0m", "cr\r"] {
            assert!(message(text("description", bad, 100)).contains("control characters"));
        }
    }

    #[test]
    fn kernel_command_lines_are_printable_ascii() {
        cmdline("").unwrap();
        cmdline("console=ttyS0 root=/dev/vda quiet").unwrap();
        cmdline(&"x".repeat(2048)).unwrap();
        for bad in ["x".repeat(2049), "a\tb".into(), "a\nb".into(), "é".into()] {
            assert!(
                message(cmdline(&bad)).contains("2048 printable ASCII"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn timeouts_are_one_second_to_one_hour() {
        assert_eq!(timeout_seconds(1).unwrap(), 1);
        assert_eq!(timeout_seconds(3600).unwrap(), 3600);
        for bad in [0, -5, 3601] {
            assert!(message(timeout_seconds(bad)).contains("1 to 3600"));
        }
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        assert_eq!(shorten("short"), "short");
        let exact = "x".repeat(80);
        assert_eq!(shorten(&exact), exact);
        // 79 ASCII bytes then a 2-byte character straddling byte 80.
        let straddling = format!("{}é{}", "x".repeat(79), "y".repeat(10));
        assert_eq!(shorten(&straddling), format!("{}…", "x".repeat(79)));
        let err = message(id("vmId", &straddling));
        assert!(err.contains(&format!("{}…", "x".repeat(79))), "{err}");
    }
}
