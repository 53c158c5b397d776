//! What the kernel can do, found by trying once at start.
//!
//! 802.1Q support is probed by making a veth pair and a VLAN link on it in a
//! throwaway network namespace (a thread that `unshare`s its own, gone with
//! the thread), so vman's namespace sees nothing. Where vman may not make a
//! namespace, the probe uses a vman-owned veth pair in its own namespace and
//! deletes it. The probe never touches a link it did not make.

use futures_util::TryStreamExt;
use rtnetlink::{LinkUnspec, LinkVeth, LinkVlan};

use crate::host::{Capability, NetworkCapabilities};

pub async fn capabilities(handle: &rtnetlink::Handle) -> NetworkCapabilities {
    let taps = match super::tap::usable() {
        Ok(()) => Capability {
            supported: true,
            detail: "/dev/net/tun opens read-write".into(),
        },
        Err(e) => Capability {
            supported: false,
            detail: format!("/dev/net/tun: {e}"),
        },
    };
    NetworkCapabilities {
        vlan_links: vlan_links(handle).await,
        taps,
    }
}

async fn vlan_links(handle: &rtnetlink::Handle) -> Capability {
    let isolated = tokio::task::spawn_blocking(|| {
        std::thread::spawn(probe_in_throwaway_namespace)
            .join()
            .unwrap_or_else(|_| Err("the probe thread panicked".into()))
    })
    .await
    .unwrap_or_else(|e| Err(format!("the probe task failed: {e}")));
    match isolated {
        Ok(result) => result,
        Err(why) => {
            tracing::info!(%why, "probing VLAN links with a vman-owned veth pair instead");
            let pid = std::process::id() % 100_000;
            let (a, b) = (format!("vmprobe{pid}a"), format!("vmprobe{pid}b"));
            let result = try_vlan(handle, &a, &b).await;
            if let Ok(Some(link)) = find_index(handle, &a).await {
                let _ = handle.link().del(link).execute().await;
            }
            result
        }
    }
}

/// Err: no throwaway namespace could be made (the probe did not run).
fn probe_in_throwaway_namespace() -> Result<Capability, String> {
    // The network namespace is per thread: this thread alone moves.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("probe runtime: {e}"))?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
        tokio::spawn(connection);
        Ok(try_vlan(&handle, "probe0", "probe1").await)
    })
}

async fn find_index(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, String> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(message) => Ok(message.map(|m| m.header.index)),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn describe(e: rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

async fn try_vlan(handle: &rtnetlink::Handle, a: &str, b: &str) -> Capability {
    let unsupported = |detail: String| Capability {
        supported: false,
        detail,
    };
    if let Err(e) = handle
        .link()
        .add(LinkVeth::new(a, b).build())
        .execute()
        .await
    {
        return unsupported(format!(
            "not probed: a veth pair to probe on: {}",
            describe(e)
        ));
    }
    let parent = match find_index(handle, a).await {
        Ok(Some(index)) => index,
        Ok(None) => return unsupported("not probed: the probe's veth vanished".into()),
        Err(e) => return unsupported(format!("not probed: {e}")),
    };
    // Mark it, so even a probe link left by a crash reads as vman's.
    let _ = handle
        .link()
        .set(
            LinkUnspec::new_with_index(parent)
                .alias(super::OWNER_ALIAS)
                .build(),
        )
        .execute()
        .await;
    let vlan = format!("{a}.7");
    match handle
        .link()
        .add(LinkVlan::new(&vlan, parent, 7).build())
        .execute()
        .await
    {
        Ok(()) => Capability {
            supported: true,
            detail: "a VLAN link was created on a probe veth".into(),
        },
        Err(e) => unsupported(format!(
            "the kernel refused an 802.1Q VLAN link (is the 8021q module available?): {}",
            describe(e)
        )),
    }
}
