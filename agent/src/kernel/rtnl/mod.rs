//! Route netlink: the agent's one path to links, qdiscs and tc filters. Every adapter that
//! changes an interface's traffic control (shaping trees, IFB devices, clsact hooks, cls_bpf
//! filters) goes through [`Rtnl`]; only the loading and TCX attaching of eBPF programs stay with
//! the eBPF library, which owns those objects.
//!
//! The adapters are synchronous (the engine calls them from blocking sections); rtnetlink is
//! async, so `Rtnl` bridges the two in one place: each call runs to completion on the agent's
//! runtime when there is one, else on a small runtime of the socket's own.
//!
//! Messages are typed (`netlink-packet-route`) except the `TCA_OPTIONS` payloads of netem and
//! tbf, for which that crate has no types: those come as bytes from `kernel::qdisc`, and
//! a snapshot of another tool's qdisc goes back byte for byte.

use std::future::Future;

use futures_util::StreamExt as _;
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST},
    packet_route::RouteNetlinkMessage,
    LinkIfb,
};
use thiserror::Error;

mod batch;
mod tc;

pub(crate) use batch::{exchange, Request};
pub(crate) use tc::{
    bpf_filter_request, clsact_request, handle, replace_root, show_handle, BpfFilter, QdiscRecord,
    QdiscStats, CLSACT_EGRESS, CLSACT_INGRESS,
};

#[derive(Debug, Error)]
pub(crate) enum RtnlError {
    #[error("cannot open a route netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what} on {device}: {source}")]
    Netlink {
        what: String,
        device: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no interface {0} in the agent's network namespace")]
    NoDevice(String),
}

impl RtnlError {
    /// The object was not there (or its interface is gone): a removal has nothing to do.
    pub(super) fn is_gone(&self) -> bool {
        matches!(self, RtnlError::Netlink { source: rtnetlink::Error::NetlinkError(e), .. }
            if matches!(e.raw_code().abs(), libc::ENOENT | libc::EINVAL | libc::ENODEV))
    }
}

/// Creates IFB device `name` and brings it up; returns its index. One exchange on the apply
/// path's socket: the creation and the lookup of the new device's index in one datagram.
pub(crate) fn create_ifb(name: &str) -> Result<u32, RtnlError> {
    use rtnetlink::{
        packet_core::{NLM_F_CREATE, NLM_F_EXCL},
        packet_route::link::{LinkAttribute, LinkMessage},
    };
    let mut lookup = LinkMessage::default();
    lookup
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    let replies = exchange(vec![
        Request {
            message: RouteNetlinkMessage::NewLink(LinkIfb::new(name).up().build()),
            flags: NLM_F_CREATE | NLM_F_EXCL,
            what: "cannot create the IFB device".to_owned(),
            device: name.to_owned(),
            done_if: None,
        },
        Request {
            message: RouteNetlinkMessage::GetLink(lookup),
            flags: 0,
            what: "cannot look up the interface".to_owned(),
            device: name.to_owned(),
            done_if: None,
        },
    ])?;
    replies
        .into_iter()
        .flatten()
        .find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
            _ => None,
        })
        .ok_or_else(|| RtnlError::NoDevice(name.to_owned()))
}

/// A route netlink socket, and the runtime its answers are read on.
pub(crate) struct Rtnl {
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
    /// A runtime of its own when the caller runs on none.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Rtnl {
    pub(crate) fn open() -> Result<Self, RtnlError> {
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(_) => None,
            Err(_) => Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(RtnlError::Socket)?,
            ),
        };
        let entered = runtime.as_ref().map(|r| r.enter());
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RtnlError::Socket)?;
        let connection = tokio::spawn(connection);
        drop(entered);
        Ok(Self {
            handle,
            connection,
            runtime,
        })
    }

    /// Runs one netlink exchange to its end. On the agent's runtime the caller is a blocking
    /// section (`block_in_place`, `spawn_blocking`), where waiting is allowed.
    pub(super) fn run<T>(&self, future: impl Future<Output = T>) -> T {
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            None => tokio::runtime::Handle::current().block_on(future),
        }
    }

    pub(super) async fn send(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: impl Into<String>,
        device: &str,
    ) -> Result<(), RtnlError> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let what = what.into();
        let error = |source| RtnlError::Netlink {
            what: what.clone(),
            device: device.to_owned(),
            source,
        };
        let mut handle = self.handle.clone();
        let mut responses = handle.request(request).map_err(error)?;
        while let Some(message) = responses.next().await {
            if let NetlinkPayload::Error(e) = message.payload {
                if e.code.is_some() {
                    return Err(error(rtnetlink::Error::NetlinkError(e)));
                }
            }
        }
        Ok(())
    }

    /// The index of interface `name`, if there is one.
    async fn find_link(&self, name: &str) -> Result<Option<u32>, RtnlError> {
        {
            let mut links = self
                .handle
                .link()
                .get()
                .match_name(name.to_owned())
                .execute();
            match links.next().await {
                Some(Ok(link)) => Ok(Some(link.header.index)),
                Some(Err(rtnetlink::Error::NetlinkError(e)))
                    if e.raw_code().abs() == libc::ENODEV =>
                {
                    Ok(None)
                }
                Some(Err(source)) => Err(RtnlError::Netlink {
                    what: "cannot look up the interface".to_owned(),
                    device: name.to_owned(),
                    source,
                }),
                None => Ok(None),
            }
        }
    }

    /// Deletes interface `name` (an IFB faultline made); gone already is fine.
    pub(crate) fn delete_link(&self, name: &str) -> Result<(), RtnlError> {
        self.run(async {
            let Some(index) = self.find_link(name).await? else {
                return Ok(());
            };
            match self.handle.link().del(index).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                    Ok(())
                }
                Err(source) => Err(RtnlError::Netlink {
                    what: "cannot delete the interface".to_owned(),
                    device: name.to_owned(),
                    source,
                }),
            }
        })
    }

    /// Names of every IFB device.
    pub(crate) fn ifbs(&self) -> Result<Vec<String>, RtnlError> {
        self.run(async {
            use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
            let mut links = self.handle.link().get().execute();
            let mut found = Vec::new();
            while let Some(link) = links.next().await {
                let link = link.map_err(|source| RtnlError::Netlink {
                    what: "cannot list the interfaces".to_owned(),
                    device: "(all)".to_owned(),
                    source,
                })?;
                let mut name = None;
                let mut ifb = false;
                for attribute in &link.attributes {
                    match attribute {
                        LinkAttribute::IfName(n) => name = Some(n.clone()),
                        LinkAttribute::LinkInfo(infos) => {
                            ifb = infos
                                .iter()
                                .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Ifb)))
                        }
                        _ => {}
                    }
                }
                found.extend(name.filter(|_| ifb));
            }
            Ok(found)
        })
    }
}
