//! What a fault writes into a classifier's configuration map: which packets it matches
//! (`PacketFilter`), the loss threshold, and the deadline after which the classifier stops
//! acting by itself, on the clock `bpf_ktime_get_ns()` reads.

use std::time::Duration;

use faultline_common::{
    Cidr4, Cidr6, PortRange, L4_ANY, L4_TCP, L4_UDP, MAX_CIDRS, MAX_PORT_RANGES,
};
pub(crate) use faultline_common::{LossConfig, PacketFilter, SteerConfig};
use ipnet::IpNet;

use super::{BpfError, TcDirection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L4Filter {
    Any,
    Tcp,
    Udp,
}

/// The `bpf_ktime_get_ns()` value (CLOCK_MONOTONIC) `remaining` from now.
pub(crate) fn monotonic_deadline_ns(remaining: Duration) -> Result<u64, BpfError> {
    use nix::time::{clock_gettime, ClockId};
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(BpfError::Clock)?;
    let now_ns = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
    Ok(now_ns.saturating_add(remaining.as_nanos().min(u64::MAX as u128) as u64))
}

/// The classifier's configuration for one fault. Callers have validated the lists against
/// the same limits (`faults::MAX_PORT_RANGES`, `faults::MAX_CIDRS`); extra entries would be cut.
pub(crate) fn loss_config(
    percent: f64,
    direction: TcDirection,
    l4: L4Filter,
    ports: &[(u16, u16)],
    cidrs: &[IpNet],
    deadline_ns: u64,
) -> LossConfig {
    let mut config = LossConfig::EMPTY;
    config.deadline_ns = deadline_ns;
    // A random u32 below the threshold drops the packet; 100 % is 2^32, above every u32.
    config.threshold = ((percent / 100.0) * 4_294_967_296.0).round() as u64;
    config.filter = packet_filter(direction, l4, ports, cidrs);
    config
}

/// The filter part of a classifier's configuration; `l2_len` is filled in at attach time.
pub(crate) fn packet_filter(
    direction: TcDirection,
    l4: L4Filter,
    ports: &[(u16, u16)],
    cidrs: &[IpNet],
) -> PacketFilter {
    let mut filter = PacketFilter::ANY;
    filter.ingress = u8::from(direction == TcDirection::Ingress);
    filter.l4 = match l4 {
        L4Filter::Any => L4_ANY,
        L4Filter::Tcp => L4_TCP,
        L4Filter::Udp => L4_UDP,
    };
    for (slot, (first, last)) in filter
        .ports
        .iter_mut()
        .zip(ports.iter().take(MAX_PORT_RANGES))
    {
        *slot = PortRange {
            first: *first,
            last: *last,
        };
        filter.n_ports += 1;
    }
    for cidr in cidrs {
        match cidr {
            IpNet::V4(net) if (filter.n_v4 as usize) < MAX_CIDRS => {
                filter.v4[filter.n_v4 as usize] =
                    Cidr4::new(net.network().octets(), net.netmask().octets());
                filter.n_v4 += 1;
            }
            IpNet::V6(net) if (filter.n_v6 as usize) < MAX_CIDRS => {
                filter.v6[filter.n_v6 as usize] =
                    Cidr6::new(net.network().octets(), net.netmask().octets());
                filter.n_v6 += 1;
            }
            _ => {}
        }
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_carries_filters_and_threshold() {
        let c = loss_config(
            25.0,
            TcDirection::Ingress,
            L4Filter::Udp,
            &[(53, 53), (8000, 8100)],
            &["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
            42,
        );
        assert_eq!(c.threshold, 1 << 30);
        let f = &c.filter;
        assert_eq!(
            (f.ingress, f.l4, f.n_ports, f.n_v4, f.n_v6),
            (1, L4_UDP, 2, 1, 1)
        );
        assert_eq!(f.v4[0].addr.to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(f.v4[0].mask.to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(f.v6[0].mask[0].to_ne_bytes(), [0xff, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f.v6[0].mask[1], 0);
        assert_eq!(c.deadline_ns, 42);
        assert_eq!(
            loss_config(100.0, TcDirection::Egress, L4Filter::Any, &[], &[], 1).threshold,
            1 << 32
        );
    }
}
