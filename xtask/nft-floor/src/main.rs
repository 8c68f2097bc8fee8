//! `faultline-nft-floor`: the kernel's floor under a block fault, for `cargo xtask bench`. It
//! sends the nf_tables changes faultline makes for `block --dir in --proto tcp --port <port>`
//! (its table, its live set with a timeout and two elements, an input base chain at priority
//! -10, one rule: `meta nfproto @live meta l4proto tcp tcp dport <port> counter drop`) as one
//! batch on a netlink socket it keeps open, so that neither a process start nor a socket's
//! close is counted (closing a netfilter socket after a deletion waits for an RCU grace
//! period). The revert's floor is the batch that ends the block: the flush of the chain.
//!
//! A program of its own rather than a module of xtask: it links libnftnl and libmnl (as the
//! agent does, since no crate sends nf_tables batches on its own), and xtask must build on a
//! machine where `cargo xtask prereqs` has not yet installed their headers. The bench starts
//! it once inside its namespace and drives it over stdin, a line per request:
//!
//! ```text
//! apply <port> <lifetime_ms>   ->  ok <nanoseconds from send to the last acknowledgement>
//! end                          ->  ok <nanoseconds>
//! remove                       ->  ok 0       (deletes the table; not timed)
//! ```
//!
//! A failure answers `error <what>` and the program goes on reading.

use std::{
    io::{BufRead as _, Write as _},
    ptr::NonNull,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use nftnl::{
    expr::{Cmp, CmpOp, Counter, Expression, Meta, Payload, TcpHeaderField, TransportHeaderField},
    nftnl_sys as sys,
    set::{Set, SetKey},
    Batch, Chain, ChainType, FinalizedBatch, MsgType, Policy, ProtoFamily, Rule, Table,
};

const TABLE: &std::ffi::CStr = c"flr_floor";
const CHAIN: &std::ffi::CStr = c"flr-in";
const SET: &std::ffi::CStr = c"flr-live";

/// An open netfilter netlink socket, in the namespace the program was started in.
struct NftFloor {
    socket: mnl::Socket,
}

/// A set key of type `nf_proto` (one byte), as the agent's live set has.
struct NfProto(u8);

impl SetKey for NfProto {
    /// nftables' `nf_proto` data type.
    const TYPE: u32 = 2;
    const LEN: u32 = 1;

    fn data(&self) -> Box<[u8]> {
        Box::new([self.0])
    }
}

/// `meta l4proto`, which the `nftnl` crate has no variant for.
struct MetaL4Proto;

impl Expression for MetaL4Proto {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: a fresh expression, configured with attributes the "meta" type takes.
        unsafe {
            let expr = sys::nftnl_expr_alloc(c"meta".as_ptr());
            let expr = NonNull::new(expr).expect("libnftnl failed to allocate an expression");
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_META_DREG as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_META_KEY as u16,
                libc::NFT_META_L4PROTO as u32,
            );
            expr
        }
    }
}

impl NftFloor {
    fn open() -> Result<Self> {
        let socket =
            mnl::Socket::new(mnl::Bus::Netfilter).context("opening a netfilter netlink socket")?;
        Ok(Self { socket })
    }

    /// Sends the block's objects in one batch; returns the kernel's time for it.
    fn apply(&self, port: u16, lifetime_ms: u64) -> Result<Duration> {
        let table = Table::new(TABLE, ProtoFamily::Inet);
        let mut live = Set::<NfProto>::new_named(SET, 1, &table, ProtoFamily::Inet);
        // SAFETY: the set is alive for the borrow; both attributes are plain integers.
        unsafe {
            let raw = live.as_ptr().as_ptr();
            sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_FLAGS as u16, 0x10);
            sys::nftnl_set_set_u64(raw, sys::NFTNL_SET_TIMEOUT as u16, lifetime_ms);
        }
        live.add(&NfProto(libc::NFPROTO_IPV4 as u8));
        live.add(&NfProto(libc::NFPROTO_IPV6 as u8));
        let mut chain = Chain::new(CHAIN, &table);
        chain.set_hook(nftnl::Hook::In, -10);
        chain.set_type(ChainType::Filter);
        chain.set_policy(Policy::Accept);
        let mut rule = Rule::new(&chain);
        rule.add_expr(&Meta::NfProto);
        rule.add_expr(&nftnl::expr::Lookup::new(&live));
        rule.add_expr(&MetaL4Proto);
        rule.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_TCP as u8));
        rule.add_expr(&Payload::Transport(TransportHeaderField::Tcp(
            TcpHeaderField::Dport,
        )));
        rule.add_expr(&Cmp::new(CmpOp::Eq, &port.to_be_bytes()[..]));
        rule.add_expr(&Counter);
        rule.add_expr(&nftnl::expr::Verdict::Drop);
        let mut batch = Batch::new();
        batch.add(&table, MsgType::Add);
        batch.add(&live, MsgType::Add);
        batch.add_iter(live.elems_iter(), MsgType::Add);
        batch.add(&chain, MsgType::Add);
        batch.add(&rule, MsgType::Add);
        self.send(batch.finalize())
    }

    /// Flushes the chain's rules, which ends the block; returns the kernel's time for it.
    fn end(&self) -> Result<Duration> {
        let table = Table::new(TABLE, ProtoFamily::Inet);
        let chain = Chain::new(CHAIN, &table);
        let mut batch = Batch::new();
        batch.add(&Rule::new(&chain), MsgType::Del);
        self.send(batch.finalize())
    }

    /// Deletes the table (not timed).
    fn remove(&self) -> Result<()> {
        let table = Table::new(TABLE, ProtoFamily::Inet);
        let mut batch = Batch::new();
        batch.add(&table, MsgType::Del);
        self.send(batch.finalize()).map(drop)
    }

    /// Sends a batch and reads every acknowledgement; the time from the send to the last one.
    fn send(&self, batch: FinalizedBatch) -> Result<Duration> {
        let portid = self.socket.portid();
        let started = Instant::now();
        self.socket
            .send_all(&batch)
            .context("sending an nf_tables batch")?;
        let mut buffer = vec![0u64; 8192];
        let mut expected = batch.sequence_numbers();
        while !expected.is_empty() {
            // SAFETY: a u64 buffer viewed as bytes, same allocation and length in bytes (libmnl
            // wants it aligned for nlmsghdr).
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(buffer.as_mut_ptr().cast::<u8>(), buffer.len() * 8)
            };
            let n = self
                .socket
                .recv_raw(bytes)
                .context("reading nf_tables' answer")?;
            if n == 0 {
                bail!("nf_tables closed the socket");
            }
            for message in mnl::NlMessages::new(&bytes[..n]) {
                let message = message.context("reading nf_tables' answer")?;
                let Some(seq) = expected.next() else { break };
                mnl::cb_run(message, seq, portid).context("nf_tables refused the batch")?;
            }
        }
        Ok(started.elapsed())
    }
}

fn main() -> Result<()> {
    let floor = NftFloor::open()?;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading a request")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["apply", port, lifetime_ms] => port
                .parse()
                .context("the port")
                .and_then(|port| Ok((port, lifetime_ms.parse().context("the lifetime")?)))
                .and_then(|(port, lifetime_ms)| floor.apply(port, lifetime_ms)),
            ["end"] => floor.end(),
            ["remove"] => floor.remove().map(|()| Duration::ZERO),
            _ => Err(anyhow::anyhow!(
                "unknown request {line:?}: `apply <port> <lifetime_ms>`, `end` or `remove`"
            )),
        };
        match answer {
            Ok(took) => writeln!(out, "ok {}", took.as_nanos()),
            Err(e) => writeln!(out, "error {e:#}"),
        }
        .and_then(|()| out.flush())
        .context("answering")?;
    }
    Ok(())
}
