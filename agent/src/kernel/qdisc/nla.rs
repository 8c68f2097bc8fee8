//! What the qdisc encoders share: netlink attribute layout, tc's psched time and rate
//! conversions (iproute2 6.1's arithmetic, so that the bytes equal what `tc` sends), and the
//! constants of the kernel uapi `linux/pkt_sched.h` they rest on.
//!
//! psched time: the legacy fields are in psched ticks of 64 ns. tc derives the conversion from
//! `/proc/net/psched`, which every kernel since 2.6.3x (PSCHED_SHIFT = 6, high-resolution timers)
//! reports as `000003e8 00000040 000f4240 3b9aca00`; that gives tc's `tick_in_usec` of
//! 1000 / 64 = 15.625. Those values are hard-coded here instead of reading `/proc`, so encoding
//! is pure and does not depend on the agent's mount namespace. Netlink carries everything in host byte order (`to_ne_bytes`).

use std::time::Duration;

/// Bytes of a netlink attribute header.
const NLA_HDRLEN: usize = 4;
/// `TC_LINKLAYER_ETHERNET`.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// The mtu tc assumes for a rate table when none is given.
const RTAB_DEFAULT_MTU: u32 = 2047;
/// Microseconds per second (`TIME_UNITS_PER_SEC`).
pub(super) const TIME_UNITS_PER_SEC: f64 = 1_000_000.0;
/// psched ticks per microsecond.
const TICKS_PER_USEC: f64 = 15.625;

/// tc's `get_percent`: `rint(percent / 100 * UINT32_MAX)`, ties to even.
pub(super) fn percent_to_u32(percent: f64) -> u32 {
    if percent.is_nan() {
        return 0;
    }
    let fraction = percent.clamp(0.0, 100.0) / 100.0;
    (fraction * f64::from(u32::MAX)).round_ties_even() as u32
}

/// tc's `get_ticks`: whole microseconds, then `floor(us * 15.625)`; done in
/// integers (15.625 = 125 / 8) since the double product is exact anyway.
pub(super) fn duration_to_ticks(d: Duration) -> u64 {
    let us = u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(u64::MAX / 125);
    us * 125 / 8
}

pub(super) fn duration_ns_i64(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// tc's `tc_calc_xmittime`: microseconds to send `size` bytes at `rate`,
/// truncated to whole microseconds and then to whole ticks.
pub(super) fn xmit_ticks(rate: u64, size: u32) -> u32 {
    let us = f64_to_u32(TIME_UNITS_PER_SEC * (f64::from(size) / rate as f64));
    f64_to_u32(f64::from(us) * TICKS_PER_USEC)
}

/// tc's `tc_calc_rtable` for an ethernet link layer with no mpu/overhead:
/// the cell size is the smallest power of two that covers `mtu` in 256
/// cells, and entry i is the time to send (i + 1) cells.
pub(super) fn rate_table(rate: u32, mtu: u32) -> (u8, [u32; 256]) {
    let mtu = if mtu == 0 { RTAB_DEFAULT_MTU } else { mtu };
    let mut cell_log = 0u8;
    while (mtu >> cell_log) > 255 {
        cell_log += 1;
    }
    let mut table = [0u32; 256];
    for (i, slot) in (1u32..).zip(table.iter_mut()) {
        // Like tc's unsigned arithmetic, sizes wrap for absurd mtus.
        *slot = xmit_ticks(u64::from(rate), i << cell_log);
    }
    (cell_log, table)
}

/// `struct tc_ratespec` as tc fills it: ethernet, `cell_align = -1`.
pub(super) fn put_ratespec(out: &mut Vec<u8>, cell_log: u8, rate: u32) {
    out.push(cell_log);
    out.push(TC_LINKLAYER_ETHERNET);
    out.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    out.extend_from_slice(&(-1i16).to_ne_bytes()); // cell_align
    out.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    put_u32(out, rate);
}

pub(super) fn put_ratespec_zero(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 12]);
}

/// Appends one netlink attribute, padded to 4 bytes like `addattr_l`.
pub(super) fn put_attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = u16::try_from(NLA_HDRLEN + data.len()).expect("netlink attribute over 64 KiB");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
}

pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

pub(super) fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

pub(super) fn align4(len: usize) -> usize {
    (len + 3) & !3
}

pub(super) fn saturate_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// C's double-to-unsigned conversion (truncation), saturating where C would
/// be undefined.
pub(super) fn f64_to_u32(v: f64) -> u32 {
    v as u32
}

/// C's `(int) rint(v)` in the default round-to-nearest-even mode.
pub(super) fn rint_i32(v: f64) -> i32 {
    v.round_ties_even() as i32
}

pub(super) fn clamp_i16(v: i32) -> i16 {
    v.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_conversion_matches_tc() {
        // Values captured from tc: `loss 10%`, `loss 33.3%`, `loss 0.1%`,
        // `loss 100%`, `delay ... 25%`, `duplicate 5%`, `corrupt 0.5%`.
        for (pct, wire) in [
            (10.0, 0x1999_999a),
            (33.3, 0x553f_7ced),
            (0.1, 0x0041_8937),
            (100.0, 0xffff_ffff),
            (25.0, 0x4000_0000),
            (5.0, 0x0ccc_cccd),
            (0.5, 0x0147_ae14),
            (0.0, 0),
        ] {
            assert_eq!(percent_to_u32(pct), wire, "{pct}%");
        }
    }

    #[test]
    fn tick_conversion_matches_tc() {
        for (d, ticks) in [
            (Duration::from_millis(100), 1_562_500),
            (Duration::from_micros(1500), 23_437),
            (Duration::from_secs(5), 78_125_000),
            (Duration::from_secs(274), 4_281_250_000),
        ] {
            assert_eq!(duration_to_ticks(d), ticks, "{d:?}");
        }
    }
}
