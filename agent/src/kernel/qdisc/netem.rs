//! The netem qdisc's `TCA_OPTIONS` payload: a bare `struct tc_netem_qopt` followed by netlink
//! attributes (not a proper nest; sch_netem's `parse_attr()` skips the struct and parses the
//! rest as attributes). Attribute order as tc sends it: `TCA_NETEM_CORR`, `TCA_NETEM_REORDER`,
//! `TCA_NETEM_CORRUPT`, `TCA_NETEM_RATE64`, `TCA_NETEM_RATE`, then `TCA_NETEM_DELAY_DIST`. tc 6.1
//! never sends `TCA_NETEM_LATENCY64` / `TCA_NETEM_JITTER64` (it refuses delays above ~274 s
//! instead); we add them, just before the distribution table, only when a delay does not fit
//! the 32-bit tick field.
//!
//! The payload is for a new qdisc: the kernel keeps an existing netem's old correlation,
//! reorder, corrupt and rate state when an attribute is absent, so a `change` would need
//! explicit zeros, which faultline never sends (every fault gets a qdisc of its own).

use std::time::Duration;

pub(crate) use super::dist::Distribution;
use super::{
    dist::cached_table,
    nla::{
        duration_ns_i64, duration_to_ticks, percent_to_u32, put_attr, put_u32, saturate_u32, u32s,
    },
};

const TCA_NETEM_CORR: u16 = 1;
const TCA_NETEM_DELAY_DIST: u16 = 2;
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_CORRUPT: u16 = 4;
const TCA_NETEM_RATE: u16 = 6;
const TCA_NETEM_RATE64: u16 = 8;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;
/// `sizeof(struct tc_netem_qopt)`.
const NETEM_QOPT_LEN: usize = 24;
/// iproute2's default netem limit, in packets.
const NETEM_DEFAULT_LIMIT: u32 = 1000;

/// Parameters of a netem qdisc, in the units a human gives `tc`.
///
/// Probabilities and correlations are percentages (0.0..=100.0, clamped).
/// Durations are truncated to whole microseconds and then to 64 ns psched
/// ticks, exactly as tc does.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct NetemOptions {
    /// Queue limit in packets; 0 means iproute2's default of 1000.
    pub(crate) limit: u32,
    /// Mean added delay.
    pub(crate) delay: Duration,
    /// Delay variation around `delay`. Recent kernels cap it at `i32::MAX`
    /// nanoseconds (about 2.15 s) because `tabledist()` works in 32 bits.
    pub(crate) jitter: Duration,
    /// Correlation of successive delays, percent.
    pub(crate) delay_correlation: f64,
    /// Shape of the jitter; only sent when `jitter` is non-zero.
    pub(crate) distribution: Distribution,
    /// Random loss probability, percent.
    pub(crate) loss: f64,
    /// Loss correlation, percent.
    pub(crate) loss_correlation: f64,
    /// Duplication probability, percent.
    pub(crate) duplicate: f64,
    /// Duplication correlation, percent.
    pub(crate) duplicate_correlation: f64,
    /// Bit-corruption probability, percent.
    pub(crate) corrupt: f64,
    /// Corruption correlation, percent.
    pub(crate) corrupt_correlation: f64,
    /// Probability that a packet skips the delay (is reordered), percent.
    pub(crate) reorder: f64,
    /// Reorder correlation, percent.
    pub(crate) reorder_correlation: f64,
    /// Reorder every `gap`-th packet; 0 with `reorder` set means 1 (tc's default).
    pub(crate) gap: u32,
    /// Rate limit in bytes per second; `None` means unlimited.
    pub(crate) rate_bytes_per_sec: Option<u64>,
}

impl NetemOptions {
    /// Encodes the netem `TCA_OPTIONS` payload as `tc qdisc add ... netem`
    /// would, omitting attributes whose values are all zero.
    ///
    /// Differences from tc 6.1, all deliberate:
    /// - tc drops a duplicate correlation unless another correlation was
    ///   given (it never marks `TCA_NETEM_CORR` present for it); we send it.
    /// - a `gap` without `reorder` is sent as 0, because the kernel would
    ///   treat it as 100 % reordering (tc rejects that combination).
    /// - delays above ~274 s (more than `u32::MAX` ticks), which tc rejects,
    ///   saturate the tick fields and travel in `TCA_NETEM_LATENCY64` /
    ///   `TCA_NETEM_JITTER64`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let latency = duration_to_ticks(self.delay);
        let jitter = duration_to_ticks(self.jitter);
        let reorder = percent_to_u32(self.reorder);
        let gap = if reorder == 0 { 0 } else { self.gap.max(1) };
        let limit = if self.limit == 0 {
            NETEM_DEFAULT_LIMIT
        } else {
            self.limit
        };

        let mut out = Vec::with_capacity(NETEM_QOPT_LEN + 64);
        put_u32(&mut out, saturate_u32(latency));
        put_u32(&mut out, limit);
        put_u32(&mut out, percent_to_u32(self.loss));
        put_u32(&mut out, gap);
        put_u32(&mut out, percent_to_u32(self.duplicate));
        put_u32(&mut out, saturate_u32(jitter));

        let corr = [
            percent_to_u32(self.delay_correlation),
            percent_to_u32(self.loss_correlation),
            percent_to_u32(self.duplicate_correlation),
        ];
        let corrupt = percent_to_u32(self.corrupt);
        let corrupt_corr = percent_to_u32(self.corrupt_correlation);
        let reorder_corr = percent_to_u32(self.reorder_correlation);

        // tc marks TCA_NETEM_CORR present whenever a delay, loss, corrupt or
        // reorder correlation is given, even though the latter two live in
        // their own attributes; mirroring that keeps the bytes identical.
        if corr.iter().any(|&c| c != 0) || corrupt_corr != 0 || reorder_corr != 0 {
            put_attr(&mut out, TCA_NETEM_CORR, &u32s(&corr));
        }
        if reorder != 0 {
            put_attr(&mut out, TCA_NETEM_REORDER, &u32s(&[reorder, reorder_corr]));
        }
        if corrupt != 0 {
            put_attr(&mut out, TCA_NETEM_CORRUPT, &u32s(&[corrupt, corrupt_corr]));
        }
        if let Some(rate) = self.rate_bytes_per_sec {
            if rate > u64::from(u32::MAX) {
                put_attr(&mut out, TCA_NETEM_RATE64, &rate.to_ne_bytes());
            }
            // tc_netem_rate: rate, packet_overhead, cell_size, cell_overhead.
            put_attr(
                &mut out,
                TCA_NETEM_RATE,
                &u32s(&[saturate_u32(rate), 0, 0, 0]),
            );
        }
        if latency > u64::from(u32::MAX) {
            put_attr(
                &mut out,
                TCA_NETEM_LATENCY64,
                &duration_ns_i64(self.delay).to_ne_bytes(),
            );
        }
        if jitter > u64::from(u32::MAX) {
            put_attr(
                &mut out,
                TCA_NETEM_JITTER64,
                &duration_ns_i64(self.jitter).to_ne_bytes(),
            );
        }
        // Without jitter the kernel never consults the table, and tc refuses
        // to send one.
        if jitter != 0 {
            if let Some(table) = cached_table(self.distribution) {
                let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_ne_bytes()).collect();
                put_attr(&mut out, TCA_NETEM_DELAY_DIST, &bytes);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Field `i` of the `tc_netem_qopt` at the payload's start: latency, limit, loss, gap,
    /// duplicate, jitter.
    fn qopt(b: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
    }

    #[test]
    fn encode_applies_tc_defaults() {
        let x = NetemOptions {
            delay: ms(10),
            reorder: 25.0,
            ..NetemOptions::default()
        };
        let b = x.encode();
        assert_eq!(qopt(&b, 1), 1000, "limit");
        assert_eq!(qopt(&b, 3), 1, "gap");
        // A gap without reorder would mean 100 % reordering to the kernel.
        let x = NetemOptions {
            delay: ms(10),
            gap: 5,
            ..NetemOptions::default()
        };
        assert_eq!(qopt(&x.encode(), 3), 0);
    }

    #[test]
    fn sub_microsecond_and_out_of_range_inputs() {
        let x = NetemOptions {
            delay: Duration::from_nanos(1999),
            loss: 250.0,
            duplicate: -3.0,
            corrupt: f64::NAN,
            ..NetemOptions::default()
        };
        let b = x.encode();
        assert_eq!(qopt(&b, 0), 15, "1 µs is 15 ticks");
        assert_eq!(qopt(&b, 2), u32::MAX, "loss clamps at 100 %");
        assert_eq!(qopt(&b, 4), 0, "duplicate clamps at 0");
        assert_eq!(b.len(), NETEM_QOPT_LEN, "no corrupt attribute for NaN");
    }

    #[test]
    fn long_delay_uses_64bit_attributes() {
        let x = NetemOptions {
            delay: Duration::from_secs(300),
            jitter: ms(1),
            ..NetemOptions::default()
        };
        let b = x.encode();
        assert_eq!(qopt(&b, 0), u32::MAX, "legacy latency saturates");
        assert_eq!(qopt(&b, 5), 15625, "jitter still fits in ticks");
        assert_eq!(b.len(), NETEM_QOPT_LEN + 12);
        assert_eq!(u16::from_ne_bytes([b[24], b[25]]), 12);
        assert_eq!(u16::from_ne_bytes([b[26], b[27]]), TCA_NETEM_LATENCY64);
        assert_eq!(
            u64::from_ne_bytes(b[28..36].try_into().unwrap()),
            300_000_000_000
        );
    }

    #[test]
    fn distribution_needs_jitter() {
        let x = NetemOptions {
            delay: ms(10),
            distribution: Distribution::Normal,
            ..NetemOptions::default()
        };
        assert_eq!(x.encode().len(), NETEM_QOPT_LEN);
        assert_eq!(cached_table(Distribution::Uniform), None);
    }
}

/// Byte-for-byte comparisons with payloads captured from iproute2 6.1.0: see
/// [`super::golden`] for how they were captured.
#[cfg(all(test, target_endian = "little"))]
mod golden {
    use std::time::Duration;

    use super::*;
    use crate::kernel::qdisc::golden::{assert_bytes, assert_same, hex};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn netem() -> NetemOptions {
        NetemOptions::default()
    }

    /// Everything but the 8192 table bytes, which
    /// `tests::tables_match_iproute2_dist_files` checks.
    #[track_caller]
    fn assert_dist_payload(ours: &[u8], header: &str, total_len: usize, d: Distribution) {
        let header = hex(header);
        assert_eq!(ours.len(), total_len);
        assert_same(&ours[..header.len()], &header);
        let table = &ours[header.len()..];
        let expect: Vec<u8> = crate::kernel::qdisc::dist::cached_table(d)
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(table, expect.as_slice());
    }

    #[test]
    fn netem_delay() {
        let x = NetemOptions {
            delay: ms(100),
            ..netem()
        };
        assert_bytes(&x.encode(), NETEM_DELAY);
    }

    #[test]
    fn netem_delay_jitter_correlation() {
        let x = NetemOptions {
            delay: ms(100),
            jitter: ms(10),
            delay_correlation: 25.0,
            ..netem()
        };
        assert_bytes(&x.encode(), NETEM_DELAY_JITTER_CORR);
        let x = NetemOptions { loss: 10.0, ..x };
        assert_bytes(&x.encode(), NETEM_DELAY_CORR_LOSS);
    }

    #[test]
    fn netem_limit_and_fractional_delay() {
        let x = NetemOptions {
            limit: 5000,
            delay: Duration::from_micros(1500),
            ..netem()
        };
        assert_bytes(&x.encode(), NETEM_LIMIT_FRACTIONAL_DELAY);
    }

    #[test]
    fn netem_long_delays() {
        let x = NetemOptions {
            delay: Duration::from_secs(5),
            jitter: Duration::from_secs(1),
            ..netem()
        };
        assert_bytes(&x.encode(), NETEM_DELAY_5S);
        let x = NetemOptions {
            delay: Duration::from_secs(274),
            ..netem()
        };
        assert_bytes(&x.encode(), NETEM_DELAY_274S);
    }

    #[test]
    fn netem_loss() {
        for (loss, golden) in [
            (10.0, NETEM_LOSS_10),
            (0.1, NETEM_LOSS_0_1),
            (100.0, NETEM_LOSS_100),
        ] {
            assert_bytes(&NetemOptions { loss, ..netem() }.encode(), golden);
        }
    }

    #[test]
    fn netem_loss_correlation() {
        let x = NetemOptions {
            loss: 33.3,
            loss_correlation: 25.0,
            ..netem()
        };
        assert_bytes(&x.encode(), NETEM_LOSS_33_3_CORR);
    }

    #[test]
    fn netem_duplicate() {
        let x = NetemOptions {
            duplicate: 5.0,
            ..netem()
        };
        assert_bytes(&x.encode(), NETEM_DUPLICATE);
        // tc 6.1 silently drops a lone duplicate correlation (the golden
        // equals NETEM_DUPLICATE); we keep it in TCA_NETEM_CORR instead.
        assert_eq!(hex(NETEM_DUPLICATE_CORR), hex(NETEM_DUPLICATE));
        let x = NetemOptions {
            duplicate_correlation: 10.0,
            ..x
        };
        let mut expect = hex(NETEM_DUPLICATE);
        put_attr(&mut expect, TCA_NETEM_CORR, &u32s(&[0, 0, 0x1999_999a]));
        assert_eq!(x.encode(), expect);
    }

    #[test]
    fn netem_corrupt() {
        let x = NetemOptions {
            corrupt: 0.5,
            ..netem()
        };
        assert_bytes(&x.encode(), NETEM_CORRUPT);
        let x = NetemOptions {
            corrupt_correlation: 20.0,
            ..x
        };
        assert_bytes(&x.encode(), NETEM_CORRUPT_CORR);
    }

    #[test]
    fn netem_reorder_with_gap() {
        let x = NetemOptions {
            delay: ms(10),
            reorder: 25.0,
            reorder_correlation: 50.0,
            gap: 5,
            ..netem()
        };
        assert_bytes(&x.encode(), NETEM_REORDER_GAP);
        let x = NetemOptions {
            delay: ms(10),
            reorder: 25.0,
            ..netem()
        };
        assert_bytes(&x.encode(), NETEM_REORDER_DEFAULT_GAP);
    }

    #[test]
    fn netem_rate() {
        for (rate, golden) in [
            (125_000, NETEM_RATE_1MBIT),
            (u64::from(u32::MAX), NETEM_RATE_U32_MAX),
            (12_500_000_000, NETEM_RATE_100GBIT),
        ] {
            let x = NetemOptions {
                rate_bytes_per_sec: Some(rate),
                ..netem()
            };
            assert_bytes(&x.encode(), golden);
        }
    }

    #[test]
    fn netem_combination() {
        let x = NetemOptions {
            limit: 2000,
            delay: ms(50),
            jitter: ms(20),
            delay_correlation: 30.0,
            loss: 2.0,
            loss_correlation: 40.0,
            duplicate: 1.0,
            duplicate_correlation: 5.0,
            corrupt: 0.2,
            corrupt_correlation: 15.0,
            reorder: 10.0,
            reorder_correlation: 60.0,
            gap: 3,
            rate_bytes_per_sec: Some(12_500_000),
            distribution: Distribution::Uniform,
        };
        assert_bytes(&x.encode(), NETEM_COMBINED);
    }

    #[test]
    fn netem_distribution_attribute() {
        // `tc qdisc add dev lo root netem delay 10ms 5ms distribution normal`:
        // 8220 bytes, qopt then TCA_NETEM_DELAY_DIST (nla_len 8196).
        let x = NetemOptions {
            delay: ms(10),
            jitter: ms(5),
            distribution: Distribution::Normal,
            ..netem()
        };
        let header = "5a620200e80300000000000000000000000000002d31010004200200";
        assert_dist_payload(&x.encode(), header, 8220, Distribution::Normal);

        // `tc qdisc add dev lo root netem delay 50ms 20ms 30% distribution pareto
        //  loss 2% corrupt 0.2% reorder 10% rate 100gbit`: 8292 bytes; the
        // table comes last, after RATE64 and RATE.
        let x = NetemOptions {
            delay: ms(50),
            jitter: ms(20),
            delay_correlation: 30.0,
            distribution: Distribution::Pareto,
            loss: 2.0,
            corrupt: 0.2,
            reorder: 10.0,
            rate_bytes_per_sec: Some(12_500_000_000),
            ..netem()
        };
        let header = "\
            c2eb0b00e803000052b81e050100000000000000b4c4040010000100cccccc4c\
            00000000000000000c0003009a999919000000000c0004006f12830000000000\
            0c00080000dd0ee90200000014000600ffffffff000000000000000000000000\
            04200200";
        assert_dist_payload(&x.encode(), header, 8292, Distribution::Pareto);
    }

    // `tc qdisc add dev lo root netem delay 100ms 10ms 25%`
    const NETEM_DELAY_JITTER_CORR: &str = "\
        84d71700e80300000000000000000000000000005a62020010000100000000400000000000000000";

    // `tc qdisc add dev lo root netem delay 100ms 10ms 25% loss 10%`
    const NETEM_DELAY_CORR_LOSS: &str = "\
        84d71700e80300009a99991900000000000000005a62020010000100000000400000000000000000";

    // `tc qdisc add dev lo root netem delay 100ms`
    const NETEM_DELAY: &str = "\
        84d71700e803000000000000000000000000000000000000";

    // `tc qdisc add dev lo root netem limit 5000 delay 1.5ms`
    const NETEM_LIMIT_FRACTIONAL_DELAY: &str = "\
        8d5b00008813000000000000000000000000000000000000";

    // `tc qdisc add dev lo root netem delay 5s 1s`
    const NETEM_DELAY_5S: &str = "\
        c817a804e8030000000000000000000000000000286bee00";

    // `tc qdisc add dev lo root netem delay 274s`
    const NETEM_DELAY_274S: &str = "\
        d0b02effe803000000000000000000000000000000000000";

    // `tc qdisc add dev lo root netem loss 10%`
    const NETEM_LOSS_10: &str = "\
        00000000e80300009a999919000000000000000000000000";

    // `tc qdisc add dev lo root netem loss 33.3% 25%`
    const NETEM_LOSS_33_3_CORR: &str = "\
        00000000e8030000ed7c3f5500000000000000000000000010000100000000000000004000000000";

    // `tc qdisc add dev lo root netem loss 0.1%`
    const NETEM_LOSS_0_1: &str = "\
        00000000e803000037894100000000000000000000000000";

    // `tc qdisc add dev lo root netem loss 100%`
    const NETEM_LOSS_100: &str = "\
        00000000e8030000ffffffff000000000000000000000000";

    // `tc qdisc add dev lo root netem duplicate 5%`
    const NETEM_DUPLICATE: &str = "\
        00000000e80300000000000000000000cdcccc0c00000000";

    // `tc qdisc add dev lo root netem duplicate 5% 10%`
    const NETEM_DUPLICATE_CORR: &str = "\
        00000000e80300000000000000000000cdcccc0c00000000";

    // `tc qdisc add dev lo root netem corrupt 0.5%`
    const NETEM_CORRUPT: &str = "\
        00000000e8030000000000000000000000000000000000000c00040014ae470100000000";

    // `tc qdisc add dev lo root netem corrupt 0.5% 20%`
    const NETEM_CORRUPT_CORR: &str = "\
        00000000e803000000000000000000000000000000000000100001000000000000000000000000000c00040014ae4701\
        33333333";

    // `tc qdisc add dev lo root netem delay 10ms reorder 25% 50% gap 5`
    const NETEM_REORDER_GAP: &str = "\
        5a620200e803000000000000050000000000000000000000100001000000000000000000000000000c00030000000040\
        00000080";

    // `tc qdisc add dev lo root netem delay 10ms reorder 25%`
    const NETEM_REORDER_DEFAULT_GAP: &str = "\
        5a620200e8030000000000000100000000000000000000000c0003000000004000000000";

    // `tc qdisc add dev lo root netem rate 1mbit`
    const NETEM_RATE_1MBIT: &str = "\
        00000000e8030000000000000000000000000000000000001400060048e80100000000000000000000000000";

    // `tc qdisc add dev lo root netem rate 4294967295bps`
    const NETEM_RATE_U32_MAX: &str = "\
        00000000e80300000000000000000000000000000000000014000600ffffffff000000000000000000000000";

    // `tc qdisc add dev lo root netem rate 100gbit`
    const NETEM_RATE_100GBIT: &str = "\
        00000000e8030000000000000000000000000000000000000c00080000dd0ee90200000014000600ffffffff00000000\
        0000000000000000";

    // `tc qdisc add dev lo root netem limit 2000 delay 50ms 20ms 30% loss 2% 40% duplicate 1% 5% corrupt 0.2% 15% reorder 10% 60% gap 3 rate 100mbit`
    const NETEM_COMBINED: &str = "\
        c2eb0b00d007000052b81e0503000000295c8f02b4c4040010000100cccccc4c66666666cdcccc0c0c0003009a999919\
        999999990c0004006f128300666666261400060020bcbe00000000000000000000000000";
}
