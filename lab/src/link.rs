//! Two test hosts joined by a veth link ([`Lab`]): host `a` at 10.<net>.X.1 / fd<net>:X::1 and
//! host `b` at 10.<net>.X.2 / fd<net>:X::2, where X is a subnet number unique to the run. The
//! integration tests use net 77 ([`Lab::new`]), the bench net 78, so the two never meet.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{process, unique, Netns};

/// One end of the lab's link: a namespace, its veth interface and its addresses.
#[derive(Debug)]
pub struct Host {
    pub ns: Netns,
    /// The veth interface, e.g. `veth42a`.
    pub dev: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// Two hosts `a` and `b` joined by a veth pair, with a subnet number X unique to the run.
#[derive(Debug)]
pub struct Lab {
    pub a: Host,
    pub b: Host,
    pub subnet: u8,
}

/// How a [`Lab`]'s link is named and addressed.
#[derive(Debug, Clone, Copy)]
pub struct Addressing<'a> {
    /// The interfaces are `<prefix><subnet>a` and `<prefix><subnet>b`.
    pub dev_prefix: &'a str,
    /// The second octet of the IPv4 addresses (and the IPv6 prefix `fd<net>:`).
    pub net: u8,
    /// X, 1..=250.
    pub subnet: u8,
}

impl Lab {
    /// The integration tests' lab: namespaces `fl-<pid>-<n>-a|b`, veth `veth<X>a|b`, net 77.
    pub fn new() -> Result<Self> {
        Self::named("fl")
    }

    /// [`Lab::new`] with namespaces named `<prefix>-<pid>-<n>-a` and `-b`.
    pub fn named(prefix: &str) -> Result<Self> {
        let n = unique();
        let pid = std::process::id();
        let subnet = ((pid.wrapping_mul(31).wrapping_add(n)) % 250 + 1) as u8;
        let a = Netns::create(&format!("{prefix}-{pid}-{n}-a"))?;
        let b = Netns::create(&format!("{prefix}-{pid}-{n}-b"))?;
        Self::join(
            a,
            b,
            Addressing {
                dev_prefix: "veth",
                net: 77,
                subnet,
            },
        )
    }

    /// Joins two namespaces with a veth pair addressed as `addressing` says, and checks that
    /// `a` reaches `b` over IPv4 and IPv6 (which also fills the neighbour caches before any
    /// fault). The namespaces are the lab's from here on, and deleted with it.
    pub fn join(a: Netns, b: Netns, addressing: Addressing<'_>) -> Result<Self> {
        Self::join_with_queues(a, b, addressing, None)
    }

    /// [`Lab::join`] with `queues` TX and RX queues on each end of the veth pair (a multi-queue
    /// device, as most NICs are), or the kernel's default of one when `None`.
    pub fn join_with_queues(
        a: Netns,
        b: Netns,
        addressing: Addressing<'_>,
        queues: Option<u16>,
    ) -> Result<Self> {
        let Addressing {
            dev_prefix,
            net,
            subnet,
        } = addressing;
        let host = |ns: Netns, side: char, last: u8| -> Result<Host> {
            Ok(Host {
                ns,
                dev: format!("{dev_prefix}{subnet}{side}"),
                v4: Ipv4Addr::new(10, net, subnet, last),
                v6: format!("fd{net}:{subnet}::{last}").parse()?,
            })
        };
        let (a, b) = (host(a, 'a', 1)?, host(b, 'b', 2)?);
        // Both ends are created inside their namespaces, so the names cannot collide with
        // interfaces of the host or of other tests.
        let mut ip = Command::new("ip");
        let queues = queues.map(|n| n.to_string());
        let queue_args = |ip: &mut Command| {
            if let Some(n) = &queues {
                ip.args(["numtxqueues", n, "numrxqueues", n]);
            }
        };
        ip.args(["link", "add", &a.dev, "netns", a.ns.name()]);
        queue_args(&mut ip);
        ip.args(["type", "veth", "peer", "name", &b.dev, "netns", b.ns.name()]);
        queue_args(&mut ip);
        process::run_ok(ip)?;
        for host in [&a, &b] {
            let v4 = format!("{}/24", host.v4);
            let v6 = format!("{}/64", host.v6);
            host.ns
                .exec_ok(&["ip", "addr", "add", &v4, "dev", &host.dev])?;
            host.ns
                .exec_ok(&["ip", "-6", "addr", "add", &v6, "dev", &host.dev, "nodad"])?;
            host.ns.exec_ok(&["ip", "link", "set", &host.dev, "up"])?;
        }
        let lab = Self { a, b, subnet };
        lab.wait_reachable()?;
        Ok(lab)
    }

    fn wait_reachable(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for target in [self.b.v4.to_string(), self.b.v6.to_string()] {
            loop {
                if self
                    .a
                    .ns
                    .exec_succeeds(&["ping", "-c", "1", "-W", "1", &target])?
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} does not answer ping from {}", target, self.a.ns.name());
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}
