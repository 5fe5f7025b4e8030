//! The `shoal-dns` dummy interface that carries the cluster DNS address in the node's network
//! namespace, so the server can bind it and pods reach it through their default route (the
//! node delivers packets for its own addresses locally, whatever interface holds them).
//! Made through rtnetlink; idempotent, so an agent restart finds it as it left it. Kernels
//! built without the dummy driver (some VMs' and sandboxes') get a bridge without ports
//! instead: to the node it is the same, a link that is up and holds a local address.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkDummy, LinkUnspec};

/// The interface's name.
pub const INTERFACE: &str = "shoal-dns";

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EOPNOTSUPP: i32 = 95;

/// Why the interface could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct InterfaceError {
    context: String,
    #[source]
    source: std::io::Error,
}

fn failed(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> InterfaceError {
    let context = context.into();
    move |err| InterfaceError {
        context,
        source: std::io::Error::other(err.to_string()),
    }
}

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, InterfaceError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(failed(format!("looking up {name}"))(e)),
    }
}

/// Makes sure the dummy interface `name` exists in the calling thread's network namespace,
/// is up and holds `ip` as a host address (/32 or /128). Must run inside a tokio runtime.
pub async fn ensure(name: &str, ip: IpAddr) -> Result<(), InterfaceError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| InterfaceError {
        context: "opening a netlink socket".into(),
        source,
    })?;
    let conn = tokio::spawn(conn);
    let result = ensure_with(&handle, name, ip).await;
    conn.abort();
    result
}

async fn ensure_with(handle: &Handle, name: &str, ip: IpAddr) -> Result<(), InterfaceError> {
    let index = match link_index(handle, name).await? {
        Some(index) => index,
        None => {
            let mut created = handle
                .link()
                .add(LinkDummy::new(name).up().build())
                .execute()
                .await;
            if matches!(&created, Err(e) if errno(e) == Some(EOPNOTSUPP)) {
                tracing::info!(
                    interface = name,
                    "no dummy links on this kernel: using a bridge without ports"
                );
                created = handle
                    .link()
                    .add(LinkBridge::new(name).up().build())
                    .execute()
                    .await;
            }
            match created {
                Err(e) if errno(&e) != Some(EEXIST) => {
                    return Err(failed(format!("creating {name}"))(e))
                }
                _ => {}
            }
            link_index(handle, name)
                .await?
                .ok_or_else(|| InterfaceError {
                    context: format!("creating {name}"),
                    source: std::io::Error::other("the new link is not there"),
                })?
        }
    };
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    match handle.address().add(index, ip, prefix).execute().await {
        Err(e) if errno(&e) != Some(EEXIST) => {
            return Err(failed(format!("adding {ip}/{prefix} to {name}"))(e))
        }
        _ => {}
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(failed(format!("setting {name} up")))
}

/// Deletes the interface `name`; returns whether it was there.
pub async fn remove(name: &str) -> Result<bool, InterfaceError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| InterfaceError {
        context: "opening a netlink socket".into(),
        source,
    })?;
    let conn = tokio::spawn(conn);
    let result = async {
        let Some(index) = link_index(&handle, name).await? else {
            return Ok(false);
        };
        match handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(failed(format!("deleting {name}"))(e)),
        }
    }
    .await;
    conn.abort();
    result
}
