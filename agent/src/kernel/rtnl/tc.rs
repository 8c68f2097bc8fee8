//! Traffic control over route netlink: qdiscs, clsact hooks and cls_bpf filters.

use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    packet_core::{DefaultNla, Emitable, Nla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE},
    packet_route::{
        tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
        RouteNetlinkMessage,
    },
};
use serde::{Deserialize, Serialize};

use super::{
    batch::{exchange, Request},
    Rtnl, RtnlError,
};

const TCA_OPTIONS: u16 = 2;
/// The parent of a clsact qdisc's ingress hook (`ffff:fff2`).
pub(crate) const CLSACT_INGRESS: u32 = 0xffff_fff2;
/// The parent of a clsact qdisc's egress hook (`ffff:fff3`).
pub(crate) const CLSACT_EGRESS: u32 = 0xffff_fff3;

/// One qdisc as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QdiscRecord {
    pub(crate) kind: String,
    pub(crate) handle: u32,
    pub(crate) parent: u32,
    /// The `TCA_OPTIONS` payload, byte for byte; empty when the qdisc has none.
    #[serde(default)]
    pub(crate) options: Vec<u8>,
}

impl QdiscRecord {
    /// `tbf fa01: parent fa00:2` -- handles as tc prints them.
    pub(crate) fn describe(&self) -> String {
        let parent = if self.parent == u32::from(TcHandle::ROOT) {
            "root".to_owned()
        } else {
            format!("parent {}", show_handle(self.parent))
        };
        format!("{} {} {parent}", self.kind, show_handle(self.handle))
    }
}

/// A qdisc's own counters (`tc -s qdisc`): what it sent, dropped, held back and holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QdiscStats {
    pub(crate) bytes: u64,
    pub(crate) packets: u64,
    pub(crate) drops: u64,
    pub(crate) overlimits: u64,
    pub(crate) backlog_bytes: u64,
}

/// `fa00:` or `fa00:2`, as tc prints handles.
pub(crate) fn show_handle(handle: u32) -> String {
    let (major, minor) = (handle >> 16, handle & 0xffff);
    if minor == 0 {
        format!("{major:x}:")
    } else {
        format!("{major:x}:{minor:x}")
    }
}

pub(crate) fn handle(major: u16, minor: u16) -> u32 {
    (u32::from(major) << 16) | u32::from(minor)
}

/// A steering filter to add: where, which loaded program, and the IFB its matches go to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BpfFilter<'a> {
    /// A clsact hook ([`CLSACT_INGRESS`] or [`CLSACT_EGRESS`]).
    pub(crate) parent: u32,
    pub(crate) priority: u16,
    pub(crate) prog_fd: u32,
    pub(crate) name: &'a str,
    /// The interface index of the IFB the matched packets are redirected to (mirred).
    pub(crate) redirect_to: u32,
}

impl Rtnl {
    /// The qdiscs of `ifindex` (egress and ingress), as the kernel lists them.
    pub(crate) fn qdiscs(&self, ifindex: u32) -> Result<Vec<QdiscRecord>, RtnlError> {
        Ok(self.qdisc_messages(ifindex)?.iter().map(record).collect())
    }

    /// The counters of every qdisc of `ifindex`: `(handle, parent, stats)`.
    pub(crate) fn qdisc_stats(
        &self,
        ifindex: u32,
    ) -> Result<Vec<(u32, u32, QdiscStats)>, RtnlError> {
        Ok(self
            .qdisc_messages(ifindex)?
            .iter()
            .filter_map(|message| {
                message.attributes.iter().find_map(|a| match a {
                    TcAttribute::Stats(s) => Some((
                        message.header.handle.into(),
                        message.header.parent.into(),
                        QdiscStats {
                            bytes: s.bytes,
                            packets: u64::from(s.packets),
                            drops: u64::from(s.drops),
                            overlimits: u64::from(s.overlimits),
                            backlog_bytes: u64::from(s.backlog),
                        },
                    )),
                    _ => None,
                })
            })
            .collect())
    }

    /// The kernel's dump of `ifindex`'s qdiscs, message by message.
    fn qdisc_messages(&self, ifindex: u32) -> Result<Vec<TcMessage>, RtnlError> {
        self.run(async {
            let mut dump = self
                .handle
                .clone()
                .qdisc()
                .get()
                .index(ifindex as i32)
                .execute();
            let mut all = Vec::new();
            while let Some(message) = dump.next().await {
                let message = message.map_err(|source| RtnlError::Netlink {
                    what: "cannot list the qdiscs".to_owned(),
                    device: format!("interface #{ifindex}"),
                    source,
                })?;
                if message.header.index as u32 == ifindex {
                    all.push(message);
                }
            }
            Ok(all)
        })
    }

    /// The root qdisc of every interface: `(name, ifindex, qdisc)`.
    pub(crate) fn roots(&self) -> Result<Vec<(String, u32, QdiscRecord)>, RtnlError> {
        self.run(async {
            let mut dump = self.handle.clone().qdisc().get().execute();
            let mut roots = Vec::new();
            while let Some(message) = dump.next().await {
                let message = message.map_err(|source| RtnlError::Netlink {
                    what: "cannot list the qdiscs".to_owned(),
                    device: "(all)".to_owned(),
                    source,
                })?;
                let q = record(&message);
                if q.parent == u32::from(TcHandle::ROOT) {
                    let index = message.header.index as u32;
                    let name = nix::net::if_::if_indextoname(index)
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| format!("#{index}"));
                    roots.push((name, index, q));
                }
            }
            Ok(roots)
        })
    }

    /// Deletes the root qdisc of `ifindex` if it is `handle`; the kernel then installs its
    /// default. Gone already is fine.
    pub(crate) fn delete_root(
        &self,
        device: &str,
        ifindex: u32,
        handle: u32,
    ) -> Result<(), RtnlError> {
        self.run(async {
            let mut message = TcMessage::with_index(ifindex as i32);
            message.header.parent = TcHandle::ROOT;
            message.header.handle = handle.into();
            match self
                .send(
                    RouteNetlinkMessage::DelQueueDiscipline(message),
                    0,
                    format!("cannot delete root qdisc {}", show_handle(handle)),
                    device,
                )
                .await
            {
                Err(e) if e.is_gone() => Ok(()),
                other => other,
            }
        })
    }

    /// Removes every cls_bpf filter named `name` from clsact hook `parent` ([`CLSACT_INGRESS`]
    /// or [`CLSACT_EGRESS`]) of `device`; none there, or no such interface, is fine.
    pub(crate) fn delete_bpf_filters(
        &self,
        device: &str,
        parent: u32,
        name: &str,
    ) -> Result<(), RtnlError> {
        let Ok(ifindex) = nix::net::if_::if_nametoindex(device) else {
            // The interface went away, and its filters with it.
            return Ok(());
        };
        self.run(async {
            let named = |m: &TcMessage| {
                m.attributes.iter().any(|a| match a {
                    TcAttribute::Options(options) => options.iter().any(
                        |o| matches!(o, TcOption::Bpf(TcFilterBpfOption::ProgName(n)) if n == name),
                    ),
                    _ => false,
                })
            };
            let filters: Vec<TcMessage> = match self.filters(device, ifindex, parent).await {
                Ok(filters) => filters.into_iter().filter(named).collect(),
                Err(e) if e.is_gone() => return Ok(()),
                Err(e) => return Err(e),
            };
            for filter in filters {
                let mut message = TcMessage::with_index(ifindex as i32);
                message.header.parent = filter.header.parent;
                message.header.handle = filter.header.handle;
                message.header.info = filter.header.info;
                message.attributes.push(TcAttribute::Kind("bpf".to_owned()));
                match self
                    .send(
                        RouteNetlinkMessage::DelTrafficFilter(message),
                        0,
                        format!("cannot remove the classifier {name}"),
                        device,
                    )
                    .await
                {
                    Err(e) if !e.is_gone() => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })
    }

    /// Removes the clsact qdisc of `device` when no filter is left on either of its hooks.
    ///
    /// faultline adds the qdisc when an interface has none, and a clsact without filters does
    /// nothing, so taking it away leaves the interface as the fault found it. A qdisc that still
    /// holds anyone's filter stays.
    pub(crate) fn remove_idle_clsact(&self, device: &str) -> Result<(), RtnlError> {
        let Ok(ifindex) = nix::net::if_::if_nametoindex(device) else {
            return Ok(());
        };
        self.run(async {
            for hook in [CLSACT_INGRESS, CLSACT_EGRESS] {
                match self.filters(device, ifindex, hook).await {
                    Ok(filters) if !filters.is_empty() => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.is_gone() => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            let mut message = TcMessage::with_index(ifindex as i32);
            message.header.parent = TcHandle::CLSACT;
            message.header.handle = TcHandle {
                major: 0xffff,
                minor: 0,
            };
            // Only a clsact: an `ingress` qdisc is somebody else's, and the kernel refuses a
            // delete whose kind does not match.
            message
                .attributes
                .push(TcAttribute::Kind("clsact".to_owned()));
            match self
                .send(
                    RouteNetlinkMessage::DelQueueDiscipline(message),
                    0,
                    "cannot remove the idle clsact qdisc",
                    device,
                )
                .await
            {
                Err(e) if e.is_gone() => Ok(()),
                other => other,
            }
        })
    }

    /// The filters on clsact hook `parent` of `ifindex`.
    async fn filters(
        &self,
        device: &str,
        ifindex: u32,
        parent: u32,
    ) -> Result<Vec<TcMessage>, RtnlError> {
        let request = self.handle.traffic_filter(ifindex as i32).get();
        let request = if parent == CLSACT_INGRESS {
            request.ingress()
        } else {
            request.egress()
        };
        request
            .execute()
            .try_collect()
            .await
            .map_err(|source| RtnlError::Netlink {
                what: "cannot list the tc filters".to_owned(),
                device: device.to_owned(),
                source,
            })
    }
}

/// Puts `kind` with `options` at the root of `ifindex`, replacing what is there: one request
/// on the apply path's socket.
pub(crate) fn replace_root(
    device: &str,
    ifindex: u32,
    kind: &str,
    handle: u32,
    options: &[u8],
) -> Result<(), RtnlError> {
    exchange(vec![root_request(device, ifindex, kind, handle, options)]).map(drop)
}

/// The request that puts `kind` with `options` at the root of `ifindex`, replacing what is
/// there.
fn root_request(device: &str, ifindex: u32, kind: &str, handle: u32, options: &[u8]) -> Request {
    Request {
        message: RouteNetlinkMessage::NewQueueDiscipline(tc_message(
            ifindex,
            handle,
            TcHandle::ROOT.into(),
            kind,
            options,
        )),
        flags: NLM_F_CREATE | NLM_F_REPLACE,
        what: format!(
            "cannot install {kind} {} as the root qdisc",
            show_handle(handle)
        ),
        device: device.to_owned(),
        done_if: None,
    }
}

/// The request that adds a clsact qdisc to `device`; one there already is fine.
pub(crate) fn clsact_request(device: &str, ifindex: u32) -> Request {
    Request {
        message: RouteNetlinkMessage::NewQueueDiscipline(tc_message(
            ifindex,
            0xffff_0000,
            TcHandle::CLSACT.into(),
            "clsact",
            &[],
        )),
        flags: NLM_F_CREATE | NLM_F_EXCL,
        what: "cannot add a clsact qdisc".to_owned(),
        device: device.to_owned(),
        done_if: Some(libc::EEXIST),
    }
}

/// The request that attaches the loaded eBPF classifier `prog_fd` to clsact hook `parent` as
/// a classic cls_bpf filter whose action redirects the packets it matches to an IFB (mirred).
///
/// A request of our own rather than the eBPF library's attach, which cannot set a filter's
/// actions.
pub(crate) fn bpf_filter_request(device: &str, ifindex: u32, filter: &BpfFilter<'_>) -> Request {
    use rtnetlink::packet_route::tc::{
        TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
        TcActionOption, TcActionType, TcMirror, TcMirrorActionType,
    };
    const ETH_P_ALL: u16 = 0x0003;
    const TCA_BPF_ACT: u16 = 1;
    let BpfFilter {
        parent,
        priority,
        prog_fd,
        name,
        redirect_to,
    } = *filter;
    let mut options = vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_owned())),
    ];
    let mut mirred = TcMirror::default();
    mirred.generic = TcActionGeneric::default();
    mirred.generic.action = TcActionType::Stolen;
    mirred.eaction = TcMirrorActionType::EgressRedir;
    mirred.ifindex = redirect_to;
    let mut act = TcAction::default();
    act.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_owned()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirred,
        ))]),
    ];
    let actions = vec![act];
    let mut bytes = vec![0; actions.as_slice().buffer_len()];
    actions.as_slice().emit(&mut bytes);
    options.push(TcOption::Bpf(TcFilterBpfOption::Other(DefaultNla::new(
        TCA_BPF_ACT,
        bytes,
    ))));
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = parent.into();
    message.header.handle = 1u32.into();
    message.header.info = (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be());
    message.attributes.push(TcAttribute::Kind("bpf".to_owned()));
    message.attributes.push(TcAttribute::Options(options));
    Request {
        message: RouteNetlinkMessage::NewTrafficFilter(message),
        flags: NLM_F_CREATE | NLM_F_EXCL,
        what: format!(
            "cannot attach the classifier {name} at {}",
            show_handle(parent)
        ),
        device: device.to_owned(),
        done_if: None,
    }
}

fn tc_message(ifindex: u32, handle: u32, parent: u32, kind: &str, options: &[u8]) -> TcMessage {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.handle = handle.into();
    message.header.parent = parent.into();
    message.attributes.push(TcAttribute::Kind(kind.to_owned()));
    if !options.is_empty() {
        // Raw bytes: the route-netlink crate has no types for most qdiscs' options, and the
        // bytes of a snapshot must go back exactly as they came.
        message.attributes.push(TcAttribute::Other(DefaultNla::new(
            TCA_OPTIONS,
            options.to_vec(),
        )));
    }
    message
}

/// The kind, handles and raw options of a dumped qdisc.
fn record(message: &TcMessage) -> QdiscRecord {
    let mut kind = String::new();
    let mut options = Vec::new();
    for attribute in &message.attributes {
        match attribute {
            TcAttribute::Kind(k) => kind = k.clone(),
            TcAttribute::Options(parsed) => options = options_bytes(parsed),
            TcAttribute::Other(nla) if nla.kind() == TCA_OPTIONS => {
                let mut bytes = vec![0; nla.value_len()];
                nla.emit_value(&mut bytes);
                options = bytes;
            }
            _ => {}
        }
    }
    QdiscRecord {
        kind,
        handle: message.header.handle.into(),
        parent: message.header.parent.into(),
        options,
    }
}

/// `TCA_OPTIONS` payload bytes from the crate's parsed form. For kinds it does not know, the
/// crate keeps the whole attribute as one unparsed entry; for the kinds it knows, the payload is
/// a list of attributes, which emits back to the same bytes.
fn options_bytes(parsed: &[TcOption]) -> Vec<u8> {
    if let [TcOption::Other(nla)] = parsed {
        if nla.kind() == TCA_OPTIONS {
            let mut bytes = vec![0; nla.value_len()];
            nla.emit_value(&mut bytes);
            return bytes;
        }
    }
    let mut bytes = vec![0; parsed.buffer_len()];
    parsed.emit(&mut bytes);
    bytes
}
