//! The kernel's floor under a rate fault: the route netlink changes faultline makes for one
//! (an IFB device brought up, a tbf as its root, a clsact qdisc on the interface, a cls_bpf
//! filter in its egress hook redirecting to the IFB with mirred), sent by this process on one
//! socket it keeps open, in as few exchanges as the kernel allows: the IFB's creation, the
//! lookup of its index (the other requests need it), then the other three as one batch. Pure
//! Rust (netlink-packet-route), so it lives in xtask; the filter's program is the smallest one
//! the kernel accepts, loaded once with bpf(2).

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use netlink_packet_core::{
    DefaultNla, Emitable as _, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    tc::{
        TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
        TcActionOption, TcActionType, TcAttribute, TcFilterBpfOption, TcHandle, TcMessage,
        TcMirror, TcMirrorActionType, TcOption,
    },
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::lab::Netns;

/// The floor's IFB device, in the bench's own namespace.
const IFB: &str = "bench-floor";
const TCA_OPTIONS: u16 = 2;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_BURST: u16 = 6;
const TCA_BPF_ACT: u16 = 1;
const ETH_P_ALL: u16 = 0x0003;
/// The filter's priority, faultline's steering classifier's.
const PRIORITY: u16 = 2;
/// The egress hook of a clsact qdisc (`ffff:fff3`).
const CLSACT_EGRESS: u32 = 0xffff_fff3;

pub struct RateFloor {
    socket: Socket,
    seq: u32,
    dev: u32,
    program: OwnedFd,
    rate_bytes_per_sec: u32,
    burst_bytes: u32,
    latency: Duration,
}

impl RateFloor {
    /// Opens the socket inside `ns` and loads the filter's program; `dev` is the interface the
    /// rate fault shapes.
    pub fn start(
        ns: &Netns,
        dev: &str,
        rate_bps: u64,
        burst_bytes: u32,
        latency: Duration,
    ) -> Result<Self> {
        let dev = dev.to_owned();
        let (socket, index) = ns.run(move || -> Result<(Socket, u32)> {
            let mut socket = Socket::new(NETLINK_ROUTE).context("a route netlink socket")?;
            socket
                .bind_auto()
                .context("binding the route netlink socket")?;
            socket
                .connect(&SocketAddr::new(0, 0))
                .context("connecting the route netlink socket")?;
            let index = nix_index(&dev)?;
            Ok((socket, index))
        })??;
        Ok(Self {
            socket,
            seq: 0,
            dev: index,
            program: load_program()?,
            rate_bytes_per_sec: (rate_bps / 8) as u32,
            burst_bytes,
            latency,
        })
    }

    /// Makes the rate fault's changes; the kernel's time for them, on this socket.
    pub fn apply(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let mut link = LinkMessage::default();
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        link.attributes.push(LinkAttribute::IfName(IFB.to_owned()));
        link.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
        self.exchange(vec![(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        )])?;
        let ifb = self.index(IFB)?;
        let tbf = tc_message(ifb, 0xfa01_0000, TcHandle::ROOT.into(), "tbf", &self.tbf());
        let clsact = self.clsact();
        self.exchange(vec![
            (
                RouteNetlinkMessage::NewQueueDiscipline(tbf),
                NLM_F_CREATE | NLM_F_REPLACE,
            ),
            (
                RouteNetlinkMessage::NewQueueDiscipline(clsact),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            (
                RouteNetlinkMessage::NewTrafficFilter(self.filter(ifb)),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
        ])?;
        Ok(started.elapsed())
    }

    /// Removes the filter, which ends the effect (what faultline's revert answers after); the
    /// kernel's time for it.
    pub fn end(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let mut message = TcMessage::with_index(self.dev as i32);
        message.header.parent = CLSACT_EGRESS.into();
        message.header.handle = 1u32.into();
        message.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
        message.attributes.push(TcAttribute::Kind("bpf".to_owned()));
        self.exchange(vec![(RouteNetlinkMessage::DelTrafficFilter(message), 0)])?;
        Ok(started.elapsed())
    }

    /// Removes the clsact qdisc and the IFB device (not timed).
    pub fn remove(&mut self) -> Result<()> {
        let clsact = self.clsact();
        let mut link = LinkMessage::default();
        link.header.index = self.index(IFB)?;
        self.exchange(vec![
            (RouteNetlinkMessage::DelQueueDiscipline(clsact), 0),
            (RouteNetlinkMessage::DelLink(link), 0),
        ])
    }

    /// The clsact qdisc of the bench's device.
    fn clsact(&self) -> TcMessage {
        tc_message(
            self.dev,
            0xffff_0000,
            TcHandle::CLSACT.into(),
            "clsact",
            &[],
        )
    }

    /// tbf's parameters as `tc` sends them, less the rate table (the kernel computes its own
    /// from the rate).
    fn tbf(&self) -> Vec<u8> {
        // struct tc_tbf_qopt: rate and peakrate (struct tc_ratespec, 12 bytes each), limit,
        // buffer (in ticks of the packet scheduler's clock), mtu.
        let ticks_per_us = psched_ticks_per_us();
        let buffer_us = self.burst_bytes as f64 * 1e6 / f64::from(self.rate_bytes_per_sec);
        let limit =
            (self.rate_bytes_per_sec as f64 * self.latency.as_secs_f64()) as u32 + self.burst_bytes;
        let mut parms = Vec::with_capacity(36);
        // rate: cell_log, linklayer (ethernet), overhead, cell_align, mpu, rate.
        parms.extend_from_slice(&[0, 1]);
        parms.extend_from_slice(&0u16.to_ne_bytes());
        parms.extend_from_slice(&(-1i16).to_ne_bytes());
        parms.extend_from_slice(&0u16.to_ne_bytes());
        parms.extend_from_slice(&self.rate_bytes_per_sec.to_ne_bytes());
        parms.extend_from_slice(&[0; 12]);
        parms.extend_from_slice(&limit.to_ne_bytes());
        parms.extend_from_slice(&((buffer_us * ticks_per_us) as u32).to_ne_bytes());
        parms.extend_from_slice(&0u32.to_ne_bytes());
        let mut options = Vec::new();
        for (kind, value) in [
            (TCA_TBF_PARMS, parms),
            (TCA_TBF_BURST, self.burst_bytes.to_ne_bytes().to_vec()),
        ] {
            options.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            options.extend_from_slice(&kind.to_ne_bytes());
            options.extend_from_slice(&value);
            options.resize(options.len().next_multiple_of(4), 0);
        }
        options
    }

    /// A cls_bpf filter with the program, redirecting what it matches to `ifb` (mirred).
    fn filter(&self, ifb: u32) -> TcMessage {
        let mut options = vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(self.program.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName("bench_floor".to_owned())),
        ];
        let mut mirred = TcMirror::default();
        mirred.generic = TcActionGeneric::default();
        mirred.generic.action = TcActionType::Stolen;
        mirred.eaction = TcMirrorActionType::EgressRedir;
        mirred.ifindex = ifb;
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
        let mut message = TcMessage::with_index(self.dev as i32);
        message.header.parent = CLSACT_EGRESS.into();
        message.header.handle = 1u32.into();
        message.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
        message.attributes.push(TcAttribute::Kind("bpf".to_owned()));
        message.attributes.push(TcAttribute::Options(options));
        message
    }

    /// The index of interface `name`, asked of the kernel on this socket.
    fn index(&mut self, name: &str) -> Result<u32> {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let answers = self.send(vec![(RouteNetlinkMessage::GetLink(link), 0)])?;
        for answer in answers {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = answer.payload
            {
                return Ok(link.header.index);
            }
            if let NetlinkPayload::Error(e) = answer.payload {
                bail!("looking up {name}: {e}");
            }
        }
        bail!("the kernel did not answer the lookup of {name}")
    }

    /// Sends `requests` in one datagram, each acknowledged, and checks every answer.
    fn exchange(&mut self, requests: Vec<(RouteNetlinkMessage, u16)>) -> Result<()> {
        let requests: Vec<_> = requests
            .into_iter()
            .map(|(m, flags)| (m, flags | NLM_F_ACK))
            .collect();
        for answer in self.send(requests)? {
            if let NetlinkPayload::Error(e) = answer.payload {
                ensure!(e.code.is_none(), "the kernel refused a floor request: {e}");
            }
        }
        Ok(())
    }

    /// Sends the messages as one datagram and reads until every one is answered (its ack or
    /// error, or the one reply of a lookup).
    fn send(
        &mut self,
        requests: Vec<(RouteNetlinkMessage, u16)>,
    ) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let mut buffer = Vec::new();
        let first = self.seq + 1;
        for (message, flags) in requests {
            self.seq += 1;
            let mut request = NetlinkMessage::from(message);
            request.header.flags = NLM_F_REQUEST | flags;
            request.header.sequence_number = self.seq;
            request.finalize();
            let at = buffer.len();
            buffer.resize(at + request.buffer_len(), 0);
            request.serialize(&mut buffer[at..]);
        }
        self.socket
            .send(&buffer, 0)
            .context("sending to route netlink")?;
        let mut answers = Vec::new();
        let mut pending: Vec<u32> = (first..=self.seq).collect();
        let mut receive = vec![0u8; 64 * 1024];
        while !pending.is_empty() {
            let n = self
                .socket
                .recv(&mut &mut receive[..], 0)
                .context("reading route netlink")?;
            let mut at = 0;
            while at < n {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[at..n])
                    .context("parsing a route netlink answer")?;
                let len = message.header.length as usize;
                ensure!(len > 0, "an empty route netlink message");
                pending.retain(|s| *s != message.header.sequence_number);
                answers.push(message);
                at += len.next_multiple_of(4);
            }
        }
        Ok(answers)
    }
}

fn nix_index(dev: &str) -> Result<u32> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(index != 0, "no interface {dev}");
    Ok(index)
}

fn tc_message(ifindex: u32, handle: u32, parent: u32, kind: &str, options: &[u8]) -> TcMessage {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.handle = handle.into();
    message.header.parent = parent.into();
    message.attributes.push(TcAttribute::Kind(kind.to_owned()));
    if !options.is_empty() {
        message.attributes.push(TcAttribute::Other(DefaultNla::new(
            TCA_OPTIONS,
            options.to_vec(),
        )));
    }
    message
}

/// Ticks of the packet scheduler's clock per microsecond, from /proc/net/psched.
fn psched_ticks_per_us() -> f64 {
    let text = std::fs::read_to_string("/proc/net/psched").unwrap_or_default();
    let words: Vec<u32> = text
        .split_whitespace()
        .filter_map(|w| u32::from_str_radix(w, 16).ok())
        .collect();
    match words.as_slice() {
        [t2us, us2t, ..] if *us2t > 0 => f64::from(*t2us) / f64::from(*us2t),
        _ => 1.0,
    }
}

/// Loads `r0 = 0; exit` as a tc classifier: the smallest program cls_bpf takes.
fn load_program() -> Result<OwnedFd> {
    // BPF_ALU64 | BPF_MOV | BPF_K, r0, imm 0; BPF_JMP | BPF_EXIT.
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = b"GPL\0";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license; the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(BPF_PROG_LOAD) reads the attribute buffer and what it points to, all alive
    // for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, // BPF_PROG_LOAD
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("loading the floor's tc program");
    }
    // SAFETY: the kernel just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
