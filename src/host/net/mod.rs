//! The real network port: bridges, VLAN links and taps through netlink
//! (`rtnetlink`), taps created with the tun ioctls ([`tap`]).
//!
//! It executes the pure plan of [`plan::plan`] step by step. Every step is
//! idempotent (a bridge vman made is kept, a missing link is not an error to
//! delete), so an action can be repeated to repair drift.
//!
//! Ownership. Every link vman creates gets the alias [`OWNER_ALIAS`]
//! (`IFLA_IFALIAS`, shown by `ip link` as `alias vman`). vman enslaves, sets
//! up and deletes only links with that alias, and never reuses a name taken
//! by a link it did not make: nothing ever modifies a host interface vman did
//! not create. (An uplink is only read: its VLAN link is vman's.)

pub mod plan;
pub mod probe;
pub mod tap;

use std::collections::HashMap;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use rtnetlink::{
    LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVlan,
    packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};

use super::{
    HostError, HostNetwork, HostStep, LinkSeen, NetworkAction, NetworkCapabilities, Outcome,
};

/// The alias that marks a link as made by vman.
pub const OWNER_ALIAS: &str = "vman";

/// One link from a netlink reply.
#[derive(Debug, Clone)]
struct Link {
    index: u32,
    name: String,
    up: bool,
    master: Option<u32>,
    kind: Option<String>,
    owned: bool,
}

impl Link {
    fn from_message(message: &LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            up: message.header.flags.contains(LinkFlags::Up),
            master: None,
            kind: None,
            owned: false,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Controller(index) => link.master = Some(*index),
                LinkAttribute::IfAlias(alias) => link.owned = alias == OWNER_ALIAS,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    fn is(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

pub struct NetlinkNetwork {
    handle: rtnetlink::Handle,
    capabilities: NetworkCapabilities,
    /// One action at a time: a step reads a link, then changes it.
    busy: tokio::sync::Mutex<()>,
}

fn netlink_error(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> HostError {
    let what = what.into();
    move |e| match e {
        rtnetlink::Error::NetlinkError(message) => HostError::Io {
            what,
            source: message.to_io(),
        },
        other => HostError::Failed(format!("{what}: {other}")),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

fn not_ours(link: &Link) -> HostError {
    HostError::Failed(format!(
        "link {} ({}) exists and was not made by vman (no alias {OWNER_ALIAS:?}); vman leaves it alone",
        link.name,
        link.kind.as_deref().unwrap_or("no kind")
    ))
}

impl NetlinkNetwork {
    /// Opens a netlink socket in vman's network namespace and probes what the
    /// kernel can do (in a throwaway namespace when it may make one).
    pub async fn start() -> Result<NetlinkNetwork, HostError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| HostError::Io {
                what: "opening a netlink socket".into(),
                source,
            })?;
        tokio::spawn(connection);
        let capabilities = probe::capabilities(&handle).await;
        // Information, not an error: a host without 802.1Q is a normal host.
        tracing::info!(
            vlan_links = capabilities.vlan_links.supported,
            taps = capabilities.taps.supported,
            "network capabilities: {}",
            capabilities.summary()
        );
        tracing::debug!(
            vlan_links = %capabilities.vlan_links.detail,
            taps = %capabilities.taps.detail,
            "network capability probes"
        );
        Ok(NetlinkNetwork {
            handle,
            capabilities,
            busy: tokio::sync::Mutex::new(()),
        })
    }

    async fn find(&self, name: &str) -> Result<Option<Link>, HostError> {
        let mut replies = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match replies.try_next().await {
            Ok(message) => Ok(message.as_ref().map(Link::from_message)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(netlink_error(format!("looking up link {name}"))(e)),
        }
    }

    async fn dump(&self) -> Result<Vec<Link>, HostError> {
        let mut replies = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(message) = replies
            .try_next()
            .await
            .map_err(netlink_error("listing links"))?
        {
            links.push(Link::from_message(&message));
        }
        Ok(links)
    }

    /// A link vman made, or an error saying why it cannot be touched.
    async fn owned(&self, name: &str) -> Result<Link, HostError> {
        match self.find(name).await? {
            Some(link) if link.owned => Ok(link),
            Some(link) => Err(not_ours(&link)),
            None => Err(HostError::Failed(format!("link {name} does not exist"))),
        }
    }

    async fn set(&self, what: String, message: LinkMessage) -> Result<(), HostError> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(netlink_error(what))
    }

    /// Marks a link just made as vman's; a link that cannot be marked is deleted again.
    async fn mark_owned(&self, name: &str) -> Result<(), HostError> {
        let Some(link) = self.find(name).await? else {
            return Err(HostError::Failed(format!(
                "link {name} vanished right after it was made"
            )));
        };
        let marked = self
            .set(
                format!("marking {name} as vman's"),
                LinkUnspec::new_with_index(link.index)
                    .alias(OWNER_ALIAS)
                    .build(),
            )
            .await;
        if marked.is_err() {
            let _ = self.handle.link().del(link.index).execute().await;
        }
        marked
    }

    /// Keeps a link vman made of the right kind; true when it must be made.
    async fn needs_making(&self, name: &str, kind: &str) -> Result<bool, HostError> {
        match self.find(name).await? {
            None => Ok(true),
            Some(link) if link.owned && link.is(kind) => Ok(false),
            Some(link) => Err(not_ours(&link)),
        }
    }

    async fn add(&self, name: &str, message: LinkMessage) -> Result<(), HostError> {
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(netlink_error(format!("adding link {name}")))?;
        self.mark_owned(name).await
    }

    async fn run(&self, step: &HostStep) -> Result<(), HostError> {
        match step {
            HostStep::AddBridge { name } => {
                if self.needs_making(name, "bridge").await? {
                    self.add(name, LinkMessageBuilder::<LinkBridge>::new(name).build())
                        .await?;
                }
            }
            HostStep::AddVlanLink {
                name,
                parent,
                vlan_id,
            } => {
                let vlan = &self.capabilities.vlan_links;
                if !vlan.supported {
                    return Err(HostError::Failed(format!(
                        "this host cannot create 802.1Q VLAN links (capability vlanLinks: {}); create the network without an uplink",
                        vlan.detail
                    )));
                }
                if self.needs_making(name, "vlan").await? {
                    let Some(uplink) = self.find(parent).await? else {
                        return Err(HostError::Failed(format!("uplink {parent} does not exist")));
                    };
                    self.add(name, LinkVlan::new(name, uplink.index, *vlan_id).build())
                        .await?;
                }
            }
            HostStep::AddTap { name } => {
                if self.needs_making(name, "tun").await? {
                    tap::create_persistent(name)?;
                    self.mark_owned(name).await?;
                }
            }
            HostStep::SetMaster { name, master } => {
                let link = self.owned(name).await?;
                let bridge = self.owned(master).await?;
                if !bridge.is("bridge") {
                    return Err(HostError::Failed(format!("{master} is not a bridge")));
                }
                if link.master != Some(bridge.index) {
                    self.set(
                        format!("enslaving {name} to {master}"),
                        LinkUnspec::new_with_index(link.index)
                            .controller(bridge.index)
                            .build(),
                    )
                    .await?;
                }
            }
            HostStep::SetUp { name } => {
                let link = self.owned(name).await?;
                if !link.up {
                    self.set(
                        format!("setting {name} up"),
                        LinkUnspec::new_with_index(link.index).up().build(),
                    )
                    .await?;
                }
            }
            HostStep::DeleteLink { name } => match self.find(name).await? {
                None => {}
                Some(link) if !link.owned => return Err(not_ours(&link)),
                Some(link) => match self.handle.link().del(link.index).execute().await {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, libc::ENODEV) => {}
                    Err(e) => return Err(netlink_error(format!("deleting link {name}"))(e)),
                },
            },
            other => {
                return Err(HostError::Failed(format!(
                    "the network port cannot {}",
                    other.summary()
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl HostNetwork for NetlinkNetwork {
    fn plan(&self, action: &NetworkAction) -> Vec<HostStep> {
        plan::plan(action)
    }

    async fn execute(&self, action: &NetworkAction) -> Result<Outcome, HostError> {
        let steps = plan::plan(action);
        let _busy = self.busy.lock().await;
        for step in &steps {
            self.run(step).await?;
        }
        Ok(Outcome {
            steps,
            ..Default::default()
        })
    }

    async fn links(&self) -> Result<HashMap<String, LinkSeen>, HostError> {
        let links = self.dump().await?;
        let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        Ok(links
            .into_iter()
            .map(|l| {
                let seen = LinkSeen {
                    up: l.up,
                    master: l.master.and_then(|i| names.get(&i).cloned()),
                    kind: l.kind,
                    owned: l.owned,
                };
                (l.name, seen)
            })
            .collect())
    }

    fn capabilities(&self) -> NetworkCapabilities {
        self.capabilities.clone()
    }

    /// From `/proc/net/dev`: it shows vman's own network namespace (sysfs
    /// shows the one it was mounted in, which differs under `unshare -n`).
    fn link_counters(&self, name: &str) -> Option<super::LinkCounters> {
        let table = std::fs::read_to_string("/proc/net/dev").ok()?;
        link_counters_in(&table, name)
    }
}

/// One link's row of a `/proc/net/dev` table.
fn link_counters_in(table: &str, name: &str) -> Option<super::LinkCounters> {
    let row = table.lines().find_map(|line| {
        let (link, rest) = line.split_once(':')?;
        (link.trim() == name).then_some(rest)
    })?;
    let n: Vec<u64> = row
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(super::LinkCounters {
        rx_bytes: *n.first()?,
        rx_packets: *n.get(1)?,
        rx_dropped: *n.get(3)?,
        tx_bytes: *n.get(8)?,
        tx_packets: *n.get(9)?,
        tx_dropped: *n.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    //! The netlink port against a real kernel, in a network namespace of the
    //! test's own thread (as the VLAN probe does), so no host link is seen.

    use std::future::Future;

    use rtnetlink::LinkVeth;

    use super::*;
    use crate::host::{Capability, VlanLink};

    /// Runs `body` on a thread moved to a fresh network namespace, or says
    /// why it was skipped when this host does not let the test make one.
    fn in_own_namespace<F, Fut>(test: &str, body: F)
    where
        F: FnOnce(NetlinkNetwork) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let ran: Result<(), nix::Error> = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async { body(NetlinkNetwork::start().await.expect("netlink")).await });
            Ok(())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if let Err(e) = ran {
            println!("SKIPPED {test}: unshare(CLONE_NEWNET) is not permitted here: {e}");
        }
    }

    /// The error `step` fails with.
    async fn refused(network: &NetlinkNetwork, step: HostStep) -> String {
        match network.run(&step).await {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{step:?} succeeded"),
        }
    }

    async fn create_network(network: &NetlinkNetwork, bridge: &str) {
        network
            .execute(&NetworkAction::CreateNetwork {
                bridge: bridge.into(),
                vlan_link: None,
            })
            .await
            .expect("a network");
    }

    async fn ensure_tap(network: &NetlinkNetwork, tap: &str, bridge: &str) -> Outcome {
        network
            .execute(&NetworkAction::EnsureTap {
                tap: tap.into(),
                bridge: bridge.into(),
            })
            .await
            .expect("a tap")
    }

    /// A veth pair made by someone else (no vman alias).
    async fn foreign_veth(network: &NetlinkNetwork, a: &str, b: &str) {
        network
            .handle
            .link()
            .add(LinkVeth::new(a, b).build())
            .execute()
            .await
            .expect("a veth pair");
    }

    #[test]
    fn links_vman_did_not_make_are_never_touched() {
        in_own_namespace(
            "links_vman_did_not_make_are_never_touched",
            |network| async move {
                foreign_veth(&network, "theirs0", "theirs1").await;
                create_network(&network, "vmbr1").await;
                let theirs = String::from("theirs0");
                for step in [
                    HostStep::AddBridge {
                        name: theirs.clone(),
                    },
                    HostStep::SetUp {
                        name: theirs.clone(),
                    },
                    HostStep::DeleteLink {
                        name: theirs.clone(),
                    },
                    HostStep::SetMaster {
                        name: "vmbr1".into(),
                        master: theirs.clone(),
                    },
                ] {
                    let err = refused(&network, step.clone()).await;
                    assert!(
                        err.contains("theirs0 (veth) exists and was not made by vman"),
                        "{step:?}: {err}"
                    );
                }
                let links = network.links().await.unwrap();
                let theirs = &links["theirs0"];
                assert!(!theirs.owned && !theirs.up, "{theirs:?}");
                assert_eq!(theirs.kind.as_deref(), Some("veth"));
            },
        );
    }

    #[test]
    fn steps_on_missing_links_fail_and_deleting_nothing_is_fine() {
        in_own_namespace(
            "steps_on_missing_links_fail_and_deleting_nothing_is_fine",
            |network| async move {
                network
                    .run(&HostStep::DeleteLink {
                        name: "gone0".into(),
                    })
                    .await
                    .expect("deleting a missing link is done already");
                assert_eq!(
                    refused(
                        &network,
                        HostStep::SetUp {
                            name: "gone0".into()
                        }
                    )
                    .await,
                    "link gone0 does not exist"
                );
                assert_eq!(
                    refused(
                        &network,
                        HostStep::CreateDir {
                            path: "/tmp/x".into()
                        }
                    )
                    .await,
                    "the network port cannot create directory /tmp/x"
                );
            },
        );
    }

    #[test]
    fn a_tap_is_enslaved_only_to_a_bridge() {
        in_own_namespace("a_tap_is_enslaved_only_to_a_bridge", |network| async move {
            if !network.capabilities().taps.supported {
                println!("SKIPPED a_tap_is_enslaved_only_to_a_bridge: no taps here");
                return;
            }
            create_network(&network, "vmbr1").await;
            assert_eq!(ensure_tap(&network, "vmtap0", "vmbr1").await.steps.len(), 3);
            let links = network.links().await.unwrap();
            let tap = &links["vmtap0"];
            assert!(tap.owned && tap.up, "{tap:?}");
            assert_eq!(tap.kind.as_deref(), Some("tun"));
            assert_eq!(tap.master.as_deref(), Some("vmbr1"));
            assert!(links["vmbr1"].owned && links["vmbr1"].up);

            // Repeating the action changes nothing and succeeds.
            ensure_tap(&network, "vmtap0", "vmbr1").await;
            let bridge_into_tap = HostStep::SetMaster {
                name: "vmbr1".into(),
                master: "vmtap0".into(),
            };
            assert_eq!(
                refused(&network, bridge_into_tap).await,
                "vmtap0 is not a bridge"
            );
            // A bridge name taken by vman's tap is not made a bridge.
            let err = refused(
                &network,
                HostStep::AddBridge {
                    name: "vmtap0".into(),
                },
            )
            .await;
            assert!(err.contains("vmtap0 (tun)"), "{err}");

            for action in [
                NetworkAction::DeleteTap {
                    tap: "vmtap0".into(),
                },
                NetworkAction::DeleteNetwork {
                    bridge: "vmbr1".into(),
                    vlan_link: None,
                },
            ] {
                network.execute(&action).await.unwrap();
            }
            let links = network.links().await.unwrap();
            assert!(!links.contains_key("vmtap0") && !links.contains_key("vmbr1"));
        });
    }

    #[test]
    fn vlan_links_need_the_capability_and_an_existing_uplink() {
        in_own_namespace(
            "vlan_links_need_the_capability_and_an_existing_uplink",
            |mut network| async move {
                let step = HostStep::AddVlanLink {
                    name: "up0.7".into(),
                    parent: "up0".into(),
                    vlan_id: 7,
                };
                network.capabilities.vlan_links = Capability {
                    supported: false,
                    detail: "no 8021q".into(),
                };
                let err = refused(&network, step.clone()).await;
                assert!(
                    err.contains(
                        "cannot create 802.1Q VLAN links (capability vlanLinks: no 8021q)"
                    ),
                    "{err}"
                );
                network.capabilities.vlan_links.supported = true;
                assert_eq!(refused(&network, step).await, "uplink up0 does not exist");
                // The same through the action a network with an uplink runs.
                let err = network
                    .execute(&NetworkAction::CreateNetwork {
                        bridge: "vmbr7".into(),
                        vlan_link: Some(VlanLink::new("up0", 7)),
                    })
                    .await
                    .unwrap_err();
                assert_eq!(err.to_string(), "uplink up0 does not exist");
            },
        );
    }

    #[test]
    fn link_counters_come_from_the_proc_net_dev_row() {
        let table = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  100   2    0    0    0     0          0         0   100  2    0    0    0     0       0          0\nvmt-ab-0: 5000 40 0 1 0 0 0 0 7000 50 0 2 0 0 0 0\n";
        let counters = super::link_counters_in(table, "vmt-ab-0").expect("a row");
        assert_eq!(
            (counters.rx_bytes, counters.rx_packets, counters.rx_dropped),
            (5000, 40, 1)
        );
        assert_eq!(
            (counters.tx_bytes, counters.tx_packets, counters.tx_dropped),
            (7000, 50, 2)
        );
        assert_eq!(super::link_counters_in(table, "vmt-ab"), None);
    }
}
