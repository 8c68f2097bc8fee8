//! Qdisc trees of shaping faults (netem, rate) over rtnetlink, and the record of what they
//! replaced.
//!
//! faultline's qdiscs carry handles from one reserved range (majors `fa00`-`fa0f`), so they are
//! always recognisable as its own. On egress a fault's tree is an htb root `fa00:` with a default
//! class `fa00:1` that leaves traffic alone and a class `fa00:2` whose leaf `fa01:` is the fault's
//! netem or tbf; faultline's steering classifier in the root picks the packets for `fa00:2`. On
//! ingress, the leaf is the root of the fault's own IFB device, to which the steering classifier
//! redirects the targeted packets (see `kernel::tc`).
//!
//! Before the root of an interface is replaced, what was there is inspected and recorded (see
//! [`Prior`]); the record is written and fsynced under the state directory, so that a revert after
//! a crash restores exactly the same qdisc. Replacing a root is one netlink request, so traffic
//! never goes without a qdisc.

use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

use futures_util::StreamExt as _;
use rtnetlink::{
    packet_core::{
        DefaultNla, Emitable, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_CREATE,
        NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    },
    packet_route::{
        tc::{TcAttribute, TcHandle, TcMessage, TcOption},
        RouteNetlinkMessage,
    },
    LinkIfb,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The root of faultline's egress tree.
pub const ROOT_MAJOR: u16 = 0xfa00;
/// The fault's own qdisc (netem or tbf).
pub const LEAF_MAJOR: u16 = 0xfa01;
/// Class of the traffic the fault leaves alone (the htb default).
pub const DEFAULT_MINOR: u16 = 1;
/// Class of the traffic the fault applies to.
pub const TARGET_MINOR: u16 = 2;
const RESERVED_MAJORS: std::ops::RangeInclusive<u16> = 0xfa00..=0xfa0f;
/// Interfaces faultline creates are named `fl-<fault id>`.
pub const IFB_PREFIX: &str = "fl-";

const TCA_OPTIONS: u16 = 2;

/// Whether a qdisc handle is in faultline's reserved range.
pub fn is_ours(handle: u32) -> bool {
    RESERVED_MAJORS.contains(&((handle >> 16) as u16))
}

pub fn handle(major: u16, minor: u16) -> u32 {
    (u32::from(major) << 16) | u32::from(minor)
}

#[derive(Debug, Error)]
pub enum QdiscError {
    #[error("cannot open a route netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{what} on {device}: {source}")]
    Netlink {
        what: String,
        device: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the qdisc record {path} is unreadable: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no interface {0} in the agent's network namespace")]
    NoDevice(String),
}

/// One qdisc as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscRecord {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// The `TCA_OPTIONS` payload, byte for byte; empty when the qdisc has none.
    #[serde(default)]
    pub options: Vec<u8>,
}

impl QdiscRecord {
    /// `tbf fa01: parent fa00:2` -- handles as tc prints them.
    pub fn describe(&self) -> String {
        let parent = if self.parent == u32::from(TcHandle::ROOT) {
            "root".to_owned()
        } else {
            format!("parent {}", show_handle(self.parent))
        };
        format!("{} {} {parent}", self.kind, show_handle(self.handle))
    }
}

/// `fa00:` or `fa00:2`, as tc prints handles.
pub fn show_handle(handle: u32) -> String {
    let (major, minor) = (handle >> 16, handle & 0xffff);
    if minor == 0 {
        format!("{major:x}:")
    } else {
        format!("{major:x}:{minor:x}")
    }
}

/// What an interface's root held before a fault replaced it, and so what revert puts back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "prior", rename_all = "snake_case")]
pub enum Prior {
    /// The kernel's own default (handle 0: noqueue, pfifo_fast, mq with its default children):
    /// deleting faultline's root brings it back.
    KernelDefault { kind: String },
    /// A qdisc somebody installed; it is put back with the same kind, handle and options.
    Installed(QdiscRecord),
}

/// Why an interface's root may not be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another fault's tree is there already.
    Ours(QdiscRecord),
    /// Another tool's qdisc, which `force` may replace (it is restored on revert).
    Foreign(QdiscRecord),
    /// A tree faultline could not restore exactly (classes, child qdiscs); never replaced.
    Tree {
        root: QdiscRecord,
        children: Vec<QdiscRecord>,
    },
}

/// Qdiscs whose whole state is the root's own options, so that kind, handle and options restore
/// them exactly. tbf's queue is an invisible default child that it recreates itself.
const RESTORABLE: &[&str] = &[
    "pfifo",
    "bfifo",
    "pfifo_head_drop",
    "pfifo_fast",
    "tbf",
    "sfq",
    "fq_codel",
    "codel",
    "fq",
    "fq_pie",
    "pie",
    "cake",
    "red",
    "choke",
    "netem",
    "noqueue",
];

/// The qdiscs of one interface's egress tree: the root and every visible qdisc below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub root: Option<QdiscRecord>,
    pub children: Vec<QdiscRecord>,
}

impl Tree {
    /// What replacing the root would have to restore, or why it must not be replaced.
    pub fn prior(&self, force: bool) -> Result<Prior, Refusal> {
        let Some(root) = &self.root else {
            return Ok(Prior::KernelDefault {
                kind: "noqueue".to_owned(),
            });
        };
        if is_ours(root.handle) {
            return Err(Refusal::Ours(root.clone()));
        }
        // Children the kernel made have handle 0 too; a child with a handle was put there.
        let installed: Vec<QdiscRecord> = self
            .children
            .iter()
            .filter(|c| c.handle != 0)
            .cloned()
            .collect();
        if !installed.is_empty() || (root.handle != 0 && !RESTORABLE.contains(&root.kind.as_str()))
        {
            return Err(Refusal::Tree {
                root: root.clone(),
                children: installed,
            });
        }
        if root.handle == 0 {
            return Ok(Prior::KernelDefault {
                kind: root.kind.clone(),
            });
        }
        if !force {
            return Err(Refusal::Foreign(root.clone()));
        }
        Ok(Prior::Installed(root.clone()))
    }
}

/// A cls_bpf filter to add: where, which loaded program, and what it does.
#[derive(Debug, Clone, Copy)]
pub struct BpfFilter<'a> {
    /// A qdisc handle, or a clsact hook (`ffff:fff2` for ingress).
    pub parent: u32,
    pub priority: u16,
    pub prog_fd: u32,
    pub name: &'a str,
    pub action: FilterAction,
}

/// What a steering filter does with the packets its program matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAction {
    /// Send them to the class the program names (direct action, in faultline's htb).
    Classify,
    /// Redirect them to the egress of interface `ifindex` (mirred), an IFB.
    Redirect { ifindex: u32 },
}

/// A leaf qdisc: its kind and encoded `TCA_OPTIONS` (see `kernel::qdisc_opts`).
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    pub kind: &'static str,
    pub options: Vec<u8>,
}

/// htb parameters of the two classes of faultline's egress tree. Neither is meant to limit
/// anything (a rate fault's cap is its tbf leaf), so both may use far more than any link has.
pub struct HtbParts {
    pub qdisc: Vec<u8>,
    pub class: Vec<u8>,
}

/// Route-netlink operations on qdiscs, classes and IFB devices, on the agent's runtime.
pub struct Netlink {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    pub fn open() -> Result<Self, QdiscError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(QdiscError::Socket)?;
        let task = tokio::spawn(connection);
        Ok(Self { handle, task })
    }

    async fn send(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: impl Into<String>,
        device: &str,
    ) -> Result<(), QdiscError> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let what = what.into();
        let error = |source| QdiscError::Netlink {
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

    /// The egress tree of `ifindex`.
    pub async fn tree(&self, ifindex: u32) -> Result<Tree, QdiscError> {
        let mut dump = self
            .handle
            .clone()
            .qdisc()
            .get()
            .index(ifindex as i32)
            .execute();
        let mut all = Vec::new();
        while let Some(message) = dump.next().await {
            let message = message.map_err(|source| QdiscError::Netlink {
                what: "cannot list the qdiscs".to_owned(),
                device: format!("interface #{ifindex}"),
                source,
            })?;
            if message.header.index as u32 == ifindex {
                all.push(record(&message));
            }
        }
        let root_id: u32 = TcHandle::ROOT.into();
        let ingress_id: u32 = TcHandle::INGRESS.into();
        let root = all.iter().find(|q| q.parent == root_id).cloned();
        let children = all
            .into_iter()
            .filter(|q| q.parent != root_id && q.parent != ingress_id)
            .collect();
        Ok(Tree { root, children })
    }

    /// Puts `kind` with `options` at the root of `ifindex` in one request, replacing what is
    /// there.
    pub async fn replace_root(
        &self,
        device: &str,
        ifindex: u32,
        kind: &str,
        handle: u32,
        options: &[u8],
    ) -> Result<(), QdiscError> {
        let message = tc_message(ifindex, handle, TcHandle::ROOT.into(), kind, options);
        self.send(
            RouteNetlinkMessage::NewQueueDiscipline(message),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!(
                "cannot install {kind} {} as the root qdisc",
                show_handle(handle)
            ),
            device,
        )
        .await
    }

    /// Adds a qdisc below class `parent`.
    pub async fn add_qdisc(
        &self,
        device: &str,
        ifindex: u32,
        parent: u32,
        handle: u32,
        leaf: &Leaf,
    ) -> Result<(), QdiscError> {
        let message = tc_message(ifindex, handle, parent, leaf.kind, &leaf.options);
        self.send(
            RouteNetlinkMessage::NewQueueDiscipline(message),
            NLM_F_CREATE | NLM_F_EXCL,
            format!(
                "cannot add {} {} under {}",
                leaf.kind,
                show_handle(handle),
                show_handle(parent)
            ),
            device,
        )
        .await
    }

    /// Adds an htb class.
    pub async fn add_class(
        &self,
        device: &str,
        ifindex: u32,
        parent: u32,
        classid: u32,
        options: &[u8],
    ) -> Result<(), QdiscError> {
        let message = tc_message(ifindex, classid, parent, "htb", options);
        self.send(
            RouteNetlinkMessage::NewTrafficClass(message),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("cannot add htb class {}", show_handle(classid)),
            device,
        )
        .await
    }

    /// Attaches the loaded eBPF classifier `prog_fd` to `parent` (a qdisc, or a clsact hook) as
    /// a cls_bpf filter that does `action` with the packets it matches.
    ///
    /// A request of our own rather than the eBPF library's attach, which cannot set a filter's
    /// class id or actions.
    pub async fn add_bpf_filter(
        &self,
        device: &str,
        ifindex: u32,
        filter: &BpfFilter<'_>,
    ) -> Result<(), QdiscError> {
        let BpfFilter {
            parent,
            priority,
            prog_fd,
            name,
            action,
        } = *filter;
        use rtnetlink::packet_route::tc::{
            TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
            TcActionOption, TcActionType, TcBpfFlags, TcFilterBpfOption, TcMirror,
            TcMirrorActionType,
        };
        const ETH_P_ALL: u16 = 0x0003;
        const TCA_BPF_ACT: u16 = 1;
        let mut options = vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_owned())),
        ];
        match action {
            FilterAction::Classify => {
                // The kernel keeps only 16 bits of the class a program writes (the minor)
                // and takes the major from the filter's class id.
                options.push(TcOption::Bpf(TcFilterBpfOption::Flags(
                    TcBpfFlags::DirectAction,
                )));
                options.push(TcOption::Bpf(TcFilterBpfOption::ClassId(parent.into())));
            }
            FilterAction::Redirect { ifindex } => {
                let mut mirred = TcMirror::default();
                mirred.generic = TcActionGeneric::default();
                mirred.generic.action = TcActionType::Stolen;
                mirred.eaction = TcMirrorActionType::EgressRedir;
                mirred.ifindex = ifindex;
                let mut act = TcAction::default();
                act.attributes = vec![
                    TcActionAttribute::Kind(TcActionMirror::KIND.to_owned()),
                    TcActionAttribute::Options(vec![TcActionOption::Mirror(
                        TcActionMirrorOption::Parms(mirred),
                    )]),
                ];
                let actions = vec![act];
                let mut bytes = vec![0; actions.as_slice().buffer_len()];
                actions.as_slice().emit(&mut bytes);
                options.push(TcOption::Bpf(TcFilterBpfOption::Other(DefaultNla::new(
                    TCA_BPF_ACT,
                    bytes,
                ))));
            }
        }
        let mut message = TcMessage::with_index(ifindex as i32);
        message.header.parent = parent.into();
        message.header.handle = 1u32.into();
        message.header.info = (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be());
        message.attributes.push(TcAttribute::Kind("bpf".to_owned()));
        message.attributes.push(TcAttribute::Options(options));
        self.send(
            RouteNetlinkMessage::NewTrafficFilter(message),
            NLM_F_CREATE | NLM_F_EXCL,
            format!(
                "cannot attach the classifier {name} at {}",
                show_handle(parent)
            ),
            device,
        )
        .await
    }

    /// Deletes the root qdisc of `ifindex` if it is `handle`; the kernel then installs its
    /// default. Gone already is fine.
    pub async fn delete_root(
        &self,
        device: &str,
        ifindex: u32,
        handle: u32,
    ) -> Result<(), QdiscError> {
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
            Err(QdiscError::Netlink {
                source: rtnetlink::Error::NetlinkError(e),
                ..
            }) if matches!(
                e.raw_code().abs(),
                libc::ENOENT | libc::EINVAL | libc::ENODEV
            ) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Creates an IFB device and brings it up; returns its index.
    pub async fn create_ifb(&self, name: &str) -> Result<u32, QdiscError> {
        let error = |what: &str, source| QdiscError::Netlink {
            what: what.to_owned(),
            device: name.to_owned(),
            source,
        };
        self.handle
            .link()
            .add(LinkIfb::new(name).up().build())
            .execute()
            .await
            .map_err(|e| error("cannot create the IFB device", e))?;
        self.ifindex(name)
            .await?
            .ok_or_else(|| QdiscError::NoDevice(name.to_owned()))
    }

    /// The index of interface `name`, if there is one.
    pub async fn ifindex(&self, name: &str) -> Result<Option<u32>, QdiscError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.next().await {
            Some(Ok(link)) => Ok(Some(link.header.index)),
            Some(Err(rtnetlink::Error::NetlinkError(e))) if e.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Some(Err(source)) => Err(QdiscError::Netlink {
                what: "cannot look up the interface".to_owned(),
                device: name.to_owned(),
                source,
            }),
            None => Ok(None),
        }
    }

    /// Deletes interface `name` (an IFB faultline made); gone already is fine.
    pub async fn delete_link(&self, name: &str) -> Result<(), QdiscError> {
        let Some(index) = self.ifindex(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => Ok(()),
            Err(source) => Err(QdiscError::Netlink {
                what: "cannot delete the interface".to_owned(),
                device: name.to_owned(),
                source,
            }),
        }
    }

    /// Names of the IFB devices faultline made (`fl-<id>`), with their fault ids.
    pub async fn faultline_ifbs(&self) -> Result<Vec<(String, String)>, QdiscError> {
        use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
        let mut links = self.handle.link().get().execute();
        let mut found = Vec::new();
        while let Some(link) = links.next().await {
            let link = link.map_err(|source| QdiscError::Netlink {
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
            if let Some(name) = name.filter(|_| ifb) {
                if let Some(id) = name.strip_prefix(IFB_PREFIX) {
                    found.push((id.to_owned(), name.clone()));
                }
            }
        }
        Ok(found)
    }

    /// Every interface whose root qdisc is faultline's: `(name, ifindex, root handle)`.
    pub async fn faultline_roots(&self) -> Result<Vec<(String, u32, u32)>, QdiscError> {
        let mut dump = self.handle.clone().qdisc().get().execute();
        let mut roots = Vec::new();
        while let Some(message) = dump.next().await {
            let message = message.map_err(|source| QdiscError::Netlink {
                what: "cannot list the qdiscs".to_owned(),
                device: "(all)".to_owned(),
                source,
            })?;
            let q = record(&message);
            if q.parent == u32::from(TcHandle::ROOT) && is_ours(q.handle) {
                let index = message.header.index as u32;
                let name = nix::net::if_::if_indextoname(index)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| format!("#{index}"));
                roots.push((name, index, q.handle));
            }
        }
        Ok(roots)
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

/// Where each shaping fault's [`Prior`] is kept until its revert has put it back.
#[derive(Debug)]
pub struct Records {
    dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub device: String,
    pub prior: Prior,
}

impl Records {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("qdisc"),
        }
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes and fsyncs the record before the root is touched.
    pub fn save(&self, id: &str, record: &Record) -> Result<(), QdiscError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| QdiscError::Io { what, path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io("cannot create", &self.dir))?;
        let path = self.path(id);
        let partial = path.with_extension("json.partial");
        let mut file = fs::File::create(&partial).map_err(io("cannot create", &partial))?;
        let text = serde_json::to_vec_pretty(record).expect("records serialise");
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(io("cannot write", &partial))?;
        fs::rename(&partial, &path).map_err(io("cannot rename into", &path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync", &self.dir))
    }

    pub fn load(&self, id: &str) -> Result<Option<Record>, QdiscError> {
        let path = self.path(id);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| QdiscError::Record { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(QdiscError::Io {
                what: "cannot read",
                path,
                source,
            }),
        }
    }

    pub fn remove(&self, id: &str) -> Result<(), QdiscError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(QdiscError::Io {
                what: "cannot remove",
                path,
                source,
            }),
        }
    }

    /// Fault ids that have a record.
    pub fn ids(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(kind: &str, handle: u32, parent: u32) -> QdiscRecord {
        QdiscRecord {
            kind: kind.to_owned(),
            handle,
            parent,
            options: vec![1, 2, 3],
        }
    }

    const ROOT: u32 = 0xffff_ffff;

    #[test]
    fn kernel_defaults_are_restored_by_deleting() {
        let veth = Tree {
            root: Some(q("noqueue", 0, ROOT)),
            children: vec![],
        };
        assert_eq!(
            veth.prior(false),
            Ok(Prior::KernelDefault {
                kind: "noqueue".to_owned()
            })
        );
        let nic = Tree {
            root: Some(q("mq", 0, ROOT)),
            children: vec![q("fq_codel", 0, 1), q("fq_codel", 0, 2)],
        };
        assert!(matches!(nic.prior(false), Ok(Prior::KernelDefault { .. })));
    }

    #[test]
    fn another_tools_root_needs_force_and_is_recorded_whole() {
        let tbf = Tree {
            root: Some(q("tbf", 0x8001_0000, ROOT)),
            children: vec![],
        };
        assert!(matches!(tbf.prior(false), Err(Refusal::Foreign(_))));
        assert_eq!(
            tbf.prior(true),
            Ok(Prior::Installed(q("tbf", 0x8001_0000, ROOT)))
        );
    }

    #[test]
    fn trees_and_our_own_roots_are_never_replaced() {
        let htb = Tree {
            root: Some(q("htb", 0x0001_0000, ROOT)),
            children: vec![],
        };
        assert!(matches!(htb.prior(true), Err(Refusal::Tree { .. })));
        let changed_mq = Tree {
            root: Some(q("mq", 0, ROOT)),
            children: vec![q("fq", 0x8002_0000, 0x0000_0001)],
        };
        assert!(matches!(changed_mq.prior(true), Err(Refusal::Tree { .. })));
        let ours = Tree {
            root: Some(q("htb", 0xfa00_0000, ROOT)),
            children: vec![],
        };
        assert!(matches!(ours.prior(true), Err(Refusal::Ours(_))));
    }

    #[test]
    fn handles_print_as_tc_prints_them() {
        assert_eq!(show_handle(0xfa00_0000), "fa00:");
        assert_eq!(show_handle(0xfa00_0002), "fa00:2");
        assert!(is_ours(handle(LEAF_MAJOR, 0)));
        assert!(!is_ours(0x8001_0000));
    }

    #[test]
    fn records_round_trip_through_the_state_directory() {
        let dir = std::env::temp_dir().join(format!("fl-qdisc-records-{}", std::process::id()));
        let records = Records::new(&dir);
        let record = Record {
            device: "eth0".to_owned(),
            prior: Prior::Installed(q("tbf", 0x8001_0000, ROOT)),
        };
        records.save("abc", &record).unwrap();
        assert_eq!(records.ids(), vec!["abc".to_owned()]);
        assert_eq!(records.load("abc").unwrap(), Some(record));
        records.remove("abc").unwrap();
        assert_eq!(records.load("abc").unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
