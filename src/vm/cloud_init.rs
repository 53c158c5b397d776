//! cloud-init NoCloud data of a VM: hostname, SSH keys, user data and
//! network config, kept in a table of their own (lists of VMs never read
//! them), and the seed built from them at each start ([`seed`]): `meta-data`
//! with an `instance-id` that changes with every change of the data, so
//! cloud-init in the guest runs again; `user-data`; `network-config`.
//!
//! User data may hold secrets: it is limited in size, shown only as its
//! length, and never logged, recorded in events or put in a plan.

use sea_orm::{ActiveValue::Set, ConnectionTrait, entity::prelude::*};
use serde::{Deserialize, Serialize};

use crate::{
    error::{ApiError, ApiResult},
    host::Seed,
};

/// The most user data (and network config) a VM may have, in bytes.
pub const MAX_USER_DATA: usize = 64 << 10;
/// The most SSH keys, and the longest one.
const MAX_KEYS: usize = 100;
const MAX_KEY: usize = 16 << 10;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "vm_cloud_init")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub vm_id: String,
    /// `iid-<uuid>`: new with every change.
    pub instance_id: String,
    /// [`CloudInit`] as JSON.
    pub data: Json,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// What the user gave; `hostname` defaults to the VM's name.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudInit {
    pub hostname: Option<String>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    pub user_data: Option<String>,
    pub network_config: Option<String>,
}

impl std::fmt::Debug for CloudInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudInit")
            .field("hostname", &self.hostname)
            .field("ssh_authorized_keys", &self.ssh_authorized_keys.len())
            .field(
                "user_data",
                &self
                    .user_data
                    .as_ref()
                    .map(|u| format!("({} bytes)", u.len())),
            )
            .field("network_config", &self.network_config.is_some())
            .finish()
    }
}

impl CloudInit {
    /// Refuses what cloud-init could not use or vman will not keep.
    pub fn check(&self) -> ApiResult<()> {
        if let Some(hostname) = &self.hostname {
            check_hostname(hostname)?;
        }
        if self.ssh_authorized_keys.len() > MAX_KEYS {
            return Err(ApiError::bad_input(format!(
                "cloudInit.sshAuthorizedKeys has {} keys; at most {MAX_KEYS}",
                self.ssh_authorized_keys.len()
            )));
        }
        for key in &self.ssh_authorized_keys {
            check_key(key)?;
        }
        for (field, text) in [
            ("userData", &self.user_data),
            ("networkConfig", &self.network_config),
        ] {
            if let Some(text) = text
                && text.len() > MAX_USER_DATA
            {
                return Err(ApiError::bad_input(format!(
                    "cloudInit.{field} is {} bytes; at most {MAX_USER_DATA}",
                    text.len()
                )));
            }
        }
        Ok(())
    }
}

/// A hostname as cloud-init sets it: dot-separated labels of letters,
/// digits and `-`, each 1 to 63 long, not starting or ending with `-`.
fn check_hostname(hostname: &str) -> ApiResult<()> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if hostname.len() > 253 || !hostname.split('.').all(label_ok) {
        return Err(ApiError::bad_input(format!(
            "cloudInit.hostname {hostname:?} is not a hostname (labels of letters, digits and '-', 1 to 63 each)"
        )));
    }
    Ok(())
}

/// One line of `authorized_keys`: `<type> <base64> [comment]`.
fn check_key(key: &str) -> ApiResult<()> {
    let types = ["ssh-", "ecdsa-", "sk-"];
    let mut parts = key.split_ascii_whitespace();
    let well_formed = key.len() <= MAX_KEY
        && !key.contains(['\n', '\r'])
        && parts
            .next()
            .is_some_and(|t| types.iter().any(|p| t.starts_with(p)))
        && parts.next().is_some_and(|b| {
            b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c))
        });
    if !well_formed {
        let shown: String = key.chars().take(40).collect();
        return Err(ApiError::bad_input(format!(
            "cloudInit.sshAuthorizedKeys: {shown:?} is not an SSH public key (one line: type, base64 key, comment)"
        )));
    }
    Ok(())
}

/// A new instance-id.
pub fn new_instance_id() -> String {
    format!("iid-{}", uuid::Uuid::now_v7())
}

/// The VM's cloud-init row, if it has one.
pub async fn of(db: &impl ConnectionTrait, vm_id: &str) -> ApiResult<Option<Model>> {
    Ok(Entity::find_by_id(vm_id.to_string()).one(db).await?)
}

/// The data of a row (a row vman wrote; an unreadable one reads as none).
pub fn data(row: &Model) -> CloudInit {
    serde_json::from_value(row.data.clone()).unwrap_or_default()
}

/// Replaces (`Some`) or removes (`None`) a VM's cloud-init data; a change
/// gets a new instance-id. Whether anything changed.
pub async fn set(
    db: &impl ConnectionTrait,
    vm_id: &str,
    new: Option<&CloudInit>,
) -> ApiResult<bool> {
    let old = of(db, vm_id).await?;
    match (old, new) {
        (None, None) => Ok(false),
        (Some(old), None) => {
            old.delete(db).await?;
            Ok(true)
        }
        (Some(old), Some(new)) if data(&old) == *new => Ok(false),
        (old, Some(new)) => {
            let row = ActiveModel {
                vm_id: Set(vm_id.to_string()),
                instance_id: Set(new_instance_id()),
                data: Set(serde_json::to_value(new).expect("cloud-init data serializes")),
            };
            match old {
                Some(_) => row.update(db).await?,
                None => row.insert(db).await?,
            };
            Ok(true)
        }
    }
}

/// The seed files of `row` for the VM named `vm_name`.
pub fn seed(row: &Model, vm_name: &str) -> Seed {
    let data = data(row);
    // JSON strings are YAML strings: nothing the user gave can break out.
    let quoted = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut meta = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        quoted(&row.instance_id),
        quoted(data.hostname.as_deref().unwrap_or(vm_name))
    );
    if !data.ssh_authorized_keys.is_empty() {
        meta.push_str("public-keys:\n");
        for key in &data.ssh_authorized_keys {
            meta.push_str(&format!("  - {}\n", quoted(key)));
        }
    }
    Seed {
        meta_data: meta,
        user_data: data
            .user_data
            .clone()
            .unwrap_or_else(|| "#cloud-config\n{}\n".into()),
        network_config: data.network_config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(data: CloudInit) -> Model {
        Model {
            vm_id: "vm-1".into(),
            instance_id: "iid-1".into(),
            data: serde_json::to_value(data).unwrap(),
        }
    }

    #[test]
    fn meta_data_names_the_instance_the_host_and_the_keys_quoted() {
        let seed = seed(
            &row(CloudInit {
                hostname: Some("web-1".into()),
                ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3Nz me@host: \"x\"".into()],
                ..Default::default()
            }),
            "web",
        );
        assert_eq!(
            seed.meta_data,
            "instance-id: \"iid-1\"\nlocal-hostname: \"web-1\"\npublic-keys:\n  - \"ssh-ed25519 AAAAC3Nz me@host: \\\"x\\\"\"\n"
        );
        assert_eq!(seed.user_data, "#cloud-config\n{}\n");
        assert_eq!(seed.network_config, None);
        // Without a hostname: the VM's name.
        let seed = super::seed(&row(CloudInit::default()), "web");
        assert!(seed.meta_data.contains("local-hostname: \"web\"\n"));
    }

    #[test]
    fn bad_data_is_refused_naming_the_field() {
        let refused = |data: CloudInit, says: &str| {
            let e = data.check().unwrap_err();
            assert_eq!(e.code(), "BAD_USER_INPUT");
            assert!(e.to_string().contains(says), "{e}");
        };
        refused(
            CloudInit {
                hostname: Some("-web".into()),
                ..Default::default()
            },
            "hostname",
        );
        refused(
            CloudInit {
                hostname: Some("a b".into()),
                ..Default::default()
            },
            "hostname",
        );
        refused(
            CloudInit {
                ssh_authorized_keys: vec!["not a key".into()],
                ..Default::default()
            },
            "sshAuthorizedKeys",
        );
        refused(
            CloudInit {
                ssh_authorized_keys: vec!["ssh-rsa AAAA\nssh-rsa BBBB".into()],
                ..Default::default()
            },
            "sshAuthorizedKeys",
        );
        refused(
            CloudInit {
                user_data: Some("x".repeat(MAX_USER_DATA + 1)),
                ..Default::default()
            },
            "userData",
        );
        assert!(
            CloudInit {
                hostname: Some("web-1.example.org".into()),
                ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA me@host".into()],
                user_data: Some("#cloud-config\n".into()),
                network_config: Some("version: 2\n".into()),
            }
            .check()
            .is_ok()
        );
    }

    #[test]
    fn debug_shows_no_user_data() {
        let data = CloudInit {
            user_data: Some("password: hunter2".into()),
            ..Default::default()
        };
        let shown = format!("{data:?} {:?}", seed(&row(data.clone()), "web"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
