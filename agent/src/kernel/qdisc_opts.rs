//! `TCA_OPTIONS` payloads for the netem, tbf and htb qdiscs (and htb classes).
//!
//! netlink-packet-route 0.34, the netlink crate the agent uses, has no option
//! types for netem, tbf or htb, so this module builds the raw `TCA_OPTIONS`
//! payload by hand: the caller puts the returned bytes into a `TCA_OPTIONS`
//! attribute (type 2) of an `RTM_NEWQDISC` / `RTM_NEWTCLASS` request.
//!
//! The bytes mirror what iproute2's `tc` (6.1.0, Debian 12) sends, which is
//! what the kernel's parsers have been exercised with for years. The unit tests
//! compare against payloads captured from real `tc` invocations with
//! `strace -e trace=sendmsg`. Struct layouts come from the kernel uapi header
//! `linux/pkt_sched.h`.
//!
//! Payload shapes:
//! - netem: a bare `struct tc_netem_qopt` followed by netlink attributes (not a
//!   proper nest; sch_netem's `parse_attr()` skips the struct and parses the
//!   rest as attributes). Attribute order as tc sends it: `TCA_NETEM_CORR`,
//!   `TCA_NETEM_REORDER`, `TCA_NETEM_CORRUPT`, `TCA_NETEM_RATE64`,
//!   `TCA_NETEM_RATE`, then `TCA_NETEM_DELAY_DIST`. tc 6.1 never sends
//!   `TCA_NETEM_LATENCY64` / `TCA_NETEM_JITTER64` (it refuses delays above
//!   ~274 s instead); we add them, just before the distribution table, only
//!   when a delay does not fit the 32-bit tick field.
//! - tbf: nested attributes `TCA_TBF_PARMS`, `TCA_TBF_BURST`,
//!   `TCA_TBF_RATE64` (rates >= 2^32 bytes/s only), `TCA_TBF_RTAB`.
//! - htb qdisc: `TCA_HTB_INIT` only.
//! - htb class: `TCA_HTB_RATE64`, `TCA_HTB_CEIL64` (when >= 2^32 bytes/s),
//!   `TCA_HTB_PARMS`, `TCA_HTB_RTAB`, `TCA_HTB_CTAB`.
//!
//! Netlink carries everything in host byte order, so all integers are
//! written with `to_ne_bytes`; the captured goldens are little-endian
//! (x86_64) and those tests only run on little-endian targets.
//!
//! psched time: the legacy fields are in psched ticks of 64 ns. tc derives
//! the conversion from `/proc/net/psched`, which every kernel since 2.6.3x
//! (PSCHED_SHIFT = 6, high-resolution timers) reports as
//! `000003e8 00000040 000f4240 3b9aca00`; that gives tc's `tick_in_usec` of
//! 1000 / 64 = 15.625 and a "HZ" of 10^9 for htb's default burst. Those
//! values are hard-coded here instead of reading `/proc`, so encoding is pure
//! and does not depend on the agent's mount namespace.
//!
//! Caveat for `change`/`replace` of an existing netem qdisc: the kernel keeps
//! its previous correlation, reorder, corrupt, rate and distribution state
//! when the corresponding attribute is absent, and tc omits them when zero.
//! [`NetemOptions::encode_for_change`] sends explicit zeros instead. A delay
//! distribution table can never be removed that way; delete and re-add the
//! qdisc to return to the uniform distribution.

use std::{sync::OnceLock, time::Duration};

/// `TCA_NETEM_*` attribute types (uapi `linux/pkt_sched.h`).
const TCA_NETEM_CORR: u16 = 1;
const TCA_NETEM_DELAY_DIST: u16 = 2;
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_CORRUPT: u16 = 4;
const TCA_NETEM_RATE: u16 = 6;
const TCA_NETEM_RATE64: u16 = 8;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;

/// `TCA_TBF_*` attribute types.
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RTAB: u16 = 2;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;

/// `TCA_HTB_*` attribute types.
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_CTAB: u16 = 3;
const TCA_HTB_RTAB: u16 = 4;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;

/// `sizeof(struct tc_netem_qopt)`.
const NETEM_QOPT_LEN: usize = 24;
/// Netlink attribute header size (`struct nlattr`).
const NLA_HDRLEN: usize = 4;
/// Strips `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` from an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// netem's default queue length; tc always sends it explicitly.
const NETEM_DEFAULT_LIMIT: u32 = 1000;
/// Fixed-point scale of the delay distribution table (`NETEM_DIST_SCALE`).
pub const NETEM_DIST_SCALE: i32 = 8192;
/// Largest table the kernel accepts (`NETEM_DIST_MAX`).
pub const NETEM_DIST_MAX: usize = 16384;

/// `TC_LINKLAYER_ETHERNET`: tc's default link layer for rate tables.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// `TC_HTB_PROTOVER`, the htb protocol version tc announces.
const TC_HTB_PROTOVER: u32 = 3;
/// tc's default `r2q` for htb.
const HTB_RATE2QUANTUM: u32 = 10;
/// tc's default mtu for htb rate tables and default bursts.
const HTB_DEFAULT_MTU: u32 = 1600;
/// What tc's `tc_calc_rtable` substitutes for an unset mtu.
const RTAB_DEFAULT_MTU: u32 = 2047;

/// tc's `TIME_UNITS_PER_SEC`: its time values are microseconds.
const TIME_UNITS_PER_SEC: f64 = 1_000_000.0;
/// tc's `tick_in_usec` from the `/proc/net/psched` values in the module doc.
const TICKS_PER_USEC: f64 = 15.625;
/// `get_hz()` with high-resolution timers (4th `/proc/net/psched` field).
const PSCHED_HZ: u64 = 1_000_000_000;
/// `PSCHED_TICKS2NS(1)`.
const NS_PER_TICK: u64 = 64;

/// Shape of netem's random delay around the mean (`tc ... distribution`).
///
/// Percent values elsewhere in this module are 0.0..=100.0; durations are
/// [`std::time::Duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Distribution {
    /// The kernel's built-in uniform jitter; no table is sent.
    #[default]
    Uniform,
    /// Gaussian (iproute2 `normal.dist`).
    Normal,
    /// Pareto with shape 3 (iproute2 `pareto.dist`).
    Pareto,
    /// 1/4 normal + 3/4 pareto (iproute2 `paretonormal.dist`).
    ParetoNormal,
}

/// Parameters of a netem qdisc, in the units a human gives `tc`.
///
/// Probabilities and correlations are percentages (0.0..=100.0, clamped).
/// Durations are truncated to whole microseconds and then to 64 ns psched
/// ticks, exactly as tc does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetemOptions {
    /// Queue limit in packets; 0 means iproute2's default of 1000.
    pub limit: u32,
    /// Mean added delay.
    pub delay: Duration,
    /// Delay variation around `delay`. Recent kernels cap it at `i32::MAX`
    /// nanoseconds (about 2.15 s) because `tabledist()` works in 32 bits.
    pub jitter: Duration,
    /// Correlation of successive delays, percent.
    pub delay_correlation: f64,
    /// Shape of the jitter; only sent when `jitter` is non-zero.
    pub distribution: Distribution,
    /// Random loss probability, percent.
    pub loss: f64,
    /// Loss correlation, percent.
    pub loss_correlation: f64,
    /// Duplication probability, percent.
    pub duplicate: f64,
    /// Duplication correlation, percent.
    pub duplicate_correlation: f64,
    /// Bit-corruption probability, percent.
    pub corrupt: f64,
    /// Corruption correlation, percent.
    pub corrupt_correlation: f64,
    /// Probability that a packet skips the delay (is reordered), percent.
    pub reorder: f64,
    /// Reorder correlation, percent.
    pub reorder_correlation: f64,
    /// Reorder every `gap`-th packet; 0 with `reorder` set means 1 (tc's default).
    pub gap: u32,
    /// Rate limit in bytes per second; `None` means unlimited.
    pub rate_bytes_per_sec: Option<u64>,
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
    pub fn encode(&self) -> Vec<u8> {
        self.encode_inner(false)
    }

    /// Like [`encode`](Self::encode) but always sends the correlation,
    /// reorder, corrupt and rate attributes, zeroed when unused.
    ///
    /// Use this for `change`/`replace` of an existing netem qdisc: the kernel
    /// keeps the old values of any attribute left out, so tc's encoding would
    /// silently keep e.g. a previous corrupt probability.
    pub fn encode_for_change(&self) -> Vec<u8> {
        self.encode_inner(true)
    }

    fn encode_inner(&self, explicit: bool) -> Vec<u8> {
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
        if explicit || corr.iter().any(|&c| c != 0) || corrupt_corr != 0 || reorder_corr != 0 {
            put_attr(&mut out, TCA_NETEM_CORR, &u32s(&corr));
        }
        if explicit || reorder != 0 {
            put_attr(&mut out, TCA_NETEM_REORDER, &u32s(&[reorder, reorder_corr]));
        }
        if explicit || corrupt != 0 {
            put_attr(&mut out, TCA_NETEM_CORRUPT, &u32s(&[corrupt, corrupt_corr]));
        }
        match self.rate_bytes_per_sec {
            Some(rate) => {
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
            None if explicit => put_attr(&mut out, TCA_NETEM_RATE, &[0; 16]),
            None => {}
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

/// Parameters of a tbf (token bucket filter) qdisc.
#[derive(Debug, Clone, PartialEq)]
pub struct TbfOptions {
    /// Sustained rate in bytes per second.
    pub rate_bytes_per_sec: u64,
    /// Bucket size in bytes (`burst`).
    pub burst_bytes: u32,
    /// Longest time a packet may wait; tc turns it into the byte limit.
    pub latency: Duration,
    /// Only selects the rate table's cell size (no peak rate is configured,
    /// so tc sends 0 in `tc_tbf_qopt.mtu`); 0 means tc's default.
    pub mtu: u32,
}

impl TbfOptions {
    /// Encodes the tbf `TCA_OPTIONS` payload as
    /// `tc qdisc add ... tbf rate R burst B latency L [mtu M]` would.
    ///
    /// tc computes the rate table and `tc_tbf_qopt.buffer` from the rate
    /// clamped to 32 bits even when it also sends `TCA_TBF_RATE64`; that is
    /// mirrored. It is harmless: the kernel derives the bucket from
    /// `TCA_TBF_BURST` and the 64-bit rate, and consults the rate table only
    /// to guess the link layer for old tc versions that leave it unset.
    pub fn encode(&self) -> Vec<u8> {
        let rate64 = self.rate_bytes_per_sec;
        let rate = saturate_u32(rate64);
        let (cell_log, rtab) = rate_table(rate, self.mtu);
        let latency_us = saturate_u32(u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX));
        // tc: limit = rate * latency / TIME_UNITS_PER_SEC + buffer, in doubles.
        let limit = f64_to_u32(
            rate64 as f64 * f64::from(latency_us) / TIME_UNITS_PER_SEC
                + f64::from(self.burst_bytes),
        );

        let mut parms = Vec::with_capacity(36);
        put_ratespec(&mut parms, cell_log, rate);
        put_ratespec_zero(&mut parms); // peakrate
        put_u32(&mut parms, limit);
        put_u32(&mut parms, xmit_ticks(u64::from(rate), self.burst_bytes));
        put_u32(&mut parms, 0); // mtu: only used with a peak rate

        let mut out = Vec::with_capacity(1100);
        put_attr(&mut out, TCA_TBF_PARMS, &parms);
        put_attr(&mut out, TCA_TBF_BURST, &self.burst_bytes.to_ne_bytes());
        if rate64 > u64::from(u32::MAX) {
            put_attr(&mut out, TCA_TBF_RATE64, &rate64.to_ne_bytes());
        }
        put_attr(&mut out, TCA_TBF_RTAB, &u32s(&rtab));
        out
    }
}

/// Parameters of an htb root qdisc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HtbQdiscOptions {
    /// Minor number of the class unclassified traffic goes to (0 = none).
    /// Note tc parses its `default` argument as hex: `default 30` is 0x30.
    pub default_minor: u32,
}

impl HtbQdiscOptions {
    /// Encodes `TCA_HTB_INIT` with r2q 10 and protocol version 3, as
    /// `tc qdisc add ... htb default N` sends it.
    pub fn encode(&self) -> Vec<u8> {
        // tc_htb_glob: version, rate2quantum, defcls, debug, direct_pkts.
        let glob = u32s(&[TC_HTB_PROTOVER, HTB_RATE2QUANTUM, self.default_minor, 0, 0]);
        let mut out = Vec::with_capacity(24);
        put_attr(&mut out, TCA_HTB_INIT, &glob);
        out
    }
}

/// Parameters of an htb class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HtbClassOptions {
    /// Guaranteed rate in bytes per second.
    pub rate_bytes_per_sec: u64,
    /// Maximum rate in bytes per second; 0 means equal to the rate (tc's default).
    pub ceil_bytes_per_sec: u64,
    /// Burst at `rate` in bytes; 0 means tc's default `rate / HZ + mtu`.
    pub burst_bytes: u32,
    /// Burst at `ceil` in bytes; 0 means tc's default `ceil / HZ + mtu`.
    pub cburst_bytes: u32,
    /// Bytes served per round; 0 lets the kernel derive it from r2q.
    pub quantum: u32,
    /// Priority (0 is highest).
    pub prio: u32,
}

impl HtbClassOptions {
    /// Encodes the htb class `TCA_OPTIONS` payload as
    /// `tc class add ... htb rate R [ceil C] [burst B] [cburst CB]
    /// [quantum Q] [prio P]` would (mtu 1600, ethernet link layer).
    pub fn encode(&self) -> Vec<u8> {
        let rate64 = self.rate_bytes_per_sec;
        let ceil64 = if self.ceil_bytes_per_sec == 0 {
            rate64
        } else {
            self.ceil_bytes_per_sec
        };
        let rate = saturate_u32(rate64);
        let ceil = saturate_u32(ceil64);
        // tc stores these sums in an unsigned int, hence the wrapping cast.
        let default_burst = |r: u64| (r / PSCHED_HZ + u64::from(HTB_DEFAULT_MTU)) as u32;
        let burst = match self.burst_bytes {
            0 => default_burst(rate64),
            b => b,
        };
        let cburst = match self.cburst_bytes {
            0 => default_burst(ceil64),
            b => b,
        };
        // Unlike tbf, htb converts the bursts to ticks with the 64-bit rates.
        let (rate_cell_log, rtab) = rate_table(rate, HTB_DEFAULT_MTU);
        let (ceil_cell_log, ctab) = rate_table(ceil, HTB_DEFAULT_MTU);

        let mut parms = Vec::with_capacity(44);
        put_ratespec(&mut parms, rate_cell_log, rate);
        put_ratespec(&mut parms, ceil_cell_log, ceil);
        put_u32(&mut parms, xmit_ticks(rate64, burst));
        put_u32(&mut parms, xmit_ticks(ceil64, cburst));
        put_u32(&mut parms, self.quantum);
        put_u32(&mut parms, 0); // level: computed by the kernel
        put_u32(&mut parms, self.prio);

        let mut out = Vec::with_capacity(2130);
        if rate64 > u64::from(u32::MAX) {
            put_attr(&mut out, TCA_HTB_RATE64, &rate64.to_ne_bytes());
        }
        if ceil64 > u64::from(u32::MAX) {
            put_attr(&mut out, TCA_HTB_CEIL64, &ceil64.to_ne_bytes());
        }
        put_attr(&mut out, TCA_HTB_PARMS, &parms);
        put_attr(&mut out, TCA_HTB_RTAB, &u32s(&rtab));
        put_attr(&mut out, TCA_HTB_CTAB, &u32s(&ctab));
        out
    }
}

/// Errors from [`decode_netem`].
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The payload cannot even hold `struct tc_netem_qopt`.
    #[error("netem options are {len} bytes, shorter than the {expected}-byte tc_netem_qopt")]
    Truncated {
        /// Payload length.
        len: usize,
        /// Required length.
        expected: usize,
    },
    /// An attribute header claims a length that does not fit.
    #[error(
        "malformed netlink attribute at offset {offset}: nla_len {nla_len}, {remaining} bytes left"
    )]
    MalformedAttribute {
        /// Offset of the attribute within the payload.
        offset: usize,
        /// The attribute's claimed length.
        nla_len: u16,
        /// Bytes left in the payload at that offset.
        remaining: usize,
    },
    /// A known attribute is shorter than its struct.
    #[error("netem attribute type {kind} has {len} bytes, expected at least {expected}")]
    AttributeTooShort {
        /// Attribute type.
        kind: u16,
        /// Payload length found.
        len: usize,
        /// Minimum payload length.
        expected: usize,
    },
    /// A `TCA_NETEM_DELAY_DIST` table that none of [`Distribution`]'s tables match.
    #[error("delay distribution table with {entries} entries matches no built-in distribution")]
    UnknownDistribution {
        /// Number of s16 entries in the table.
        entries: usize,
    },
}

/// Decodes a netem `TCA_OPTIONS` payload, either one built by
/// [`NetemOptions::encode`] or one dumped by the kernel.
///
/// Tick-based delays come back as the whole microsecond value tc would have
/// been given, so `decode_netem(&x.encode())` reproduces `x`'s delays exactly
/// when they are whole microseconds; `TCA_NETEM_LATENCY64` / `JITTER64`
/// (always present in kernel dumps) are used when they carry more precision
/// than the tick fields. Percentages come back within the 2^-32 resolution of
/// the wire format. A rate of 0 decodes as `None`. Unknown attributes (ECN,
/// slot, loss models, padding, PRNG seed) are skipped.
pub fn decode_netem(payload: &[u8]) -> Result<NetemOptions, OptionsError> {
    if payload.len() < NETEM_QOPT_LEN {
        return Err(OptionsError::Truncated {
            len: payload.len(),
            expected: NETEM_QOPT_LEN,
        });
    }
    let q = |i: usize| get_u32(payload, i * 4);
    let (latency_ticks, limit, loss, gap, duplicate, jitter_ticks) =
        (q(0), q(1), q(2), q(3), q(4), q(5));

    let mut opts = NetemOptions {
        limit,
        loss: u32_to_percent(loss),
        gap,
        duplicate: u32_to_percent(duplicate),
        ..NetemOptions::default()
    };
    let mut latency64 = None;
    let mut jitter64 = None;
    let mut rate32 = None;
    let mut rate64 = None;

    let mut offset = NETEM_QOPT_LEN;
    while payload.len() - offset >= NLA_HDRLEN {
        let remaining = payload.len() - offset;
        let nla_len = u16::from_ne_bytes([payload[offset], payload[offset + 1]]);
        let kind = u16::from_ne_bytes([payload[offset + 2], payload[offset + 3]]) & NLA_TYPE_MASK;
        if usize::from(nla_len) < NLA_HDRLEN || usize::from(nla_len) > remaining {
            return Err(OptionsError::MalformedAttribute {
                offset,
                nla_len,
                remaining,
            });
        }
        let data = &payload[offset + NLA_HDRLEN..offset + usize::from(nla_len)];
        let need = |expected: usize| {
            if data.len() < expected {
                Err(OptionsError::AttributeTooShort {
                    kind,
                    len: data.len(),
                    expected,
                })
            } else {
                Ok(())
            }
        };
        match kind {
            TCA_NETEM_CORR => {
                need(12)?;
                opts.delay_correlation = u32_to_percent(get_u32(data, 0));
                opts.loss_correlation = u32_to_percent(get_u32(data, 4));
                opts.duplicate_correlation = u32_to_percent(get_u32(data, 8));
            }
            TCA_NETEM_REORDER => {
                need(8)?;
                opts.reorder = u32_to_percent(get_u32(data, 0));
                opts.reorder_correlation = u32_to_percent(get_u32(data, 4));
            }
            TCA_NETEM_CORRUPT => {
                need(8)?;
                opts.corrupt = u32_to_percent(get_u32(data, 0));
                opts.corrupt_correlation = u32_to_percent(get_u32(data, 4));
            }
            TCA_NETEM_RATE => {
                need(16)?;
                rate32 = Some(get_u32(data, 0));
            }
            TCA_NETEM_RATE64 => {
                need(8)?;
                rate64 = Some(get_u64(data, 0));
            }
            TCA_NETEM_LATENCY64 => {
                need(8)?;
                latency64 = Some(get_u64(data, 0) as i64);
            }
            TCA_NETEM_JITTER64 => {
                need(8)?;
                jitter64 = Some(get_u64(data, 0) as i64);
            }
            TCA_NETEM_DELAY_DIST => {
                let table: Vec<i16> = data
                    .chunks_exact(2)
                    .map(|c| i16::from_ne_bytes([c[0], c[1]]))
                    .collect();
                opts.distribution = [
                    Distribution::Normal,
                    Distribution::Pareto,
                    Distribution::ParetoNormal,
                ]
                .into_iter()
                .find(|&d| cached_table(d) == Some(table.as_slice()))
                .ok_or(OptionsError::UnknownDistribution {
                    entries: table.len(),
                })?;
            }
            _ => {}
        }
        offset += align4(usize::from(nla_len)).min(remaining);
    }

    opts.delay = decode_delay(latency_ticks, latency64);
    opts.jitter = decode_delay(jitter_ticks, jitter64);
    // The kernel applies max(rate, rate64).
    opts.rate_bytes_per_sec = match (rate32, rate64) {
        (Some(0), None) => None,
        (Some(r), None) => Some(u64::from(r)),
        (r, Some(r64)) => Some(r64.max(u64::from(r.unwrap_or(0)))),
        (None, None) => None,
    };
    Ok(opts)
}

/// The netem delay distribution table for `d`, as iproute2 ships it in
/// `/usr/lib/tc/<name>.dist`: 4096 inverse-CDF samples in units of
/// sigma * [`NETEM_DIST_SCALE`], the form the kernel's `tabledist()` expects.
///
/// The tables are computed (not read from disk) with the same numerics as
/// iproute2's generators, so they match the shipped files value for value:
/// - normal: the CDF is scanned on iproute2's grid (x from -10 in steps of
///   0.00005, accumulated in f64) and each of 16384 quantile slots keeps the
///   last x that rounds into it; every 4th slot is emitted.
/// - pareto: shape a = 3, x_m = 1, shifted by the mean 1.5 and scaled by
///   4/3 (iproute2's choice), clamped at 32767.
/// - paretonormal: (normal + 3 * pareto) / 4 with C integer division.
///
/// Returns `None` for [`Distribution::Uniform`], which needs no table.
pub fn distribution_table(d: Distribution) -> Option<Vec<i16>> {
    cached_table(d).map(<[i16]>::to_vec)
}

/// Number of quantile slots iproute2's generators work with (`TABLESIZE`).
const QUANTILE_SLOTS: usize = 16384;
/// iproute2 keeps every 4th slot, giving 4096-entry tables.
const SLOT_STRIDE: usize = 4;

fn cached_table(d: Distribution) -> Option<&'static [i16]> {
    // A table takes a few hundred thousand erf evaluations; decode compares
    // against all of them, so build each once.
    static NORMAL: OnceLock<Vec<i16>> = OnceLock::new();
    static PARETO: OnceLock<Vec<i16>> = OnceLock::new();
    static PARETO_NORMAL: OnceLock<Vec<i16>> = OnceLock::new();
    let table = match d {
        Distribution::Uniform => return None,
        Distribution::Normal => NORMAL.get_or_init(normal_table),
        Distribution::Pareto => PARETO.get_or_init(pareto_table),
        Distribution::ParetoNormal => PARETO_NORMAL.get_or_init(pareto_normal_table),
    };
    Some(table.as_slice())
}

fn normal_table() -> Vec<i16> {
    normal_quantile_slots()
        .iter()
        .step_by(SLOT_STRIDE)
        .map(|&x| clamp_i16(rint_i32(x * f64::from(NETEM_DIST_SCALE))))
        .collect()
}

fn pareto_table() -> Vec<i16> {
    (0..QUANTILE_SLOTS / SLOT_STRIDE)
        .map(|k| clamp_i16(pareto_value(k)))
        .collect()
}

fn pareto_normal_table() -> Vec<i16> {
    normal_quantile_slots()
        .iter()
        .step_by(SLOT_STRIDE)
        .enumerate()
        .map(|(k, &x)| {
            let normal = rint_i32(x * f64::from(NETEM_DIST_SCALE));
            // Rust's i32 division truncates toward zero like C's.
            clamp_i16((normal + 3 * pareto_value(k)) / 4)
        })
        .collect()
}

/// Standard normal quantiles for the 16384 slots, found the way iproute2's
/// generator does it (see [`distribution_table`]) so that rounding agrees.
fn normal_quantile_slots() -> Vec<f64> {
    let mut slots = vec![0.0; QUANTILE_SLOTS + 1];
    let mut x: f64 = -10.0;
    while x < 10.05 {
        let cdf = 0.5 + 0.5 * erf(x / std::f64::consts::SQRT_2);
        let slot = (QUANTILE_SLOTS as f64 * cdf).round_ties_even() as usize;
        slots[slot.min(QUANTILE_SLOTS)] = x;
        x += 0.00005;
    }
    slots.truncate(QUANTILE_SLOTS);
    slots
}

/// Entry `k` of the pareto table: the (1 - k/4096) survival quantile of a
/// pareto(x_m = 1, a = 3), centred on its mean 1.5 and scaled by 4/3.
fn pareto_value(k: usize) -> i32 {
    const SHAPE: f64 = 3.0;
    // k < 4096, so the conversion is exact.
    let survival = (65536 - 16 * k as u32) as f64 / 65536.0;
    let mut v = 1.0 / survival.powf(1.0 / SHAPE);
    v -= 1.5;
    v *= (4.0 / 3.0) * f64::from(NETEM_DIST_SCALE);
    rint_i32(v.min(32767.0))
}

/// The error function, accurate to a few ulp where it matters here.
///
/// Uses erf(z) = 2/sqrt(pi) * exp(-z^2) * sum_{n>=0} (2z^2)^n z / (2n+1)!!,
/// whose terms are all positive, so nothing cancels and the result stays
/// close enough to libm's erf that the quantile scan lands in the same slots.
/// Beyond |z| = 6, erf is 1 to double precision.
fn erf(z: f64) -> f64 {
    let a = z.abs();
    if a == 0.0 {
        return z;
    }
    if a >= 6.0 {
        return 1.0f64.copysign(z);
    }
    let w = a * a;
    let mut term = a;
    let mut sum = a;
    for n in 1..1000 {
        term *= 2.0 * w / f64::from(2 * n + 1);
        sum += term;
        if term <= sum * 1e-17 {
            break;
        }
    }
    (std::f64::consts::FRAC_2_SQRT_PI * (-w).exp() * sum).copysign(z)
}

/// tc's `get_percent`: `rint(percent / 100 * UINT32_MAX)`, ties to even.
fn percent_to_u32(percent: f64) -> u32 {
    if percent.is_nan() {
        return 0;
    }
    let fraction = percent.clamp(0.0, 100.0) / 100.0;
    (fraction * f64::from(u32::MAX)).round_ties_even() as u32
}

fn u32_to_percent(v: u32) -> f64 {
    f64::from(v) * 100.0 / f64::from(u32::MAX)
}

/// tc's `get_ticks`: whole microseconds, then `floor(us * 15.625)`; done in
/// integers (15.625 = 125 / 8) since the double product is exact anyway.
fn duration_to_ticks(d: Duration) -> u64 {
    let us = u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(u64::MAX / 125);
    us * 125 / 8
}

fn duration_ns_i64(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Inverse of [`duration_to_ticks`] where possible.
fn decode_delay(ticks: u32, ns64: Option<i64>) -> Duration {
    if let Some(ns) = ns64 {
        let from_ticks = ns >= 0 && ns as u64 == u64::from(ticks) * NS_PER_TICK;
        if !from_ticks {
            return Duration::from_nanos(ns.max(0) as u64);
        }
    }
    // The smallest whole microsecond that tc maps to this tick count; ticks
    // no whole microsecond produces are reported exactly instead.
    let ticks = u64::from(ticks);
    let us = (ticks * 8).div_ceil(125);
    if us * 125 / 8 == ticks {
        Duration::from_micros(us)
    } else {
        Duration::from_nanos(ticks * NS_PER_TICK)
    }
}

/// tc's `tc_calc_xmittime`: microseconds to send `size` bytes at `rate`,
/// truncated to whole microseconds and then to whole ticks.
fn xmit_ticks(rate: u64, size: u32) -> u32 {
    let us = f64_to_u32(TIME_UNITS_PER_SEC * (f64::from(size) / rate as f64));
    f64_to_u32(f64::from(us) * TICKS_PER_USEC)
}

/// tc's `tc_calc_rtable` for an ethernet link layer with no mpu/overhead:
/// the cell size is the smallest power of two that covers `mtu` in 256
/// cells, and entry i is the time to send (i + 1) cells.
fn rate_table(rate: u32, mtu: u32) -> (u8, [u32; 256]) {
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
fn put_ratespec(out: &mut Vec<u8>, cell_log: u8, rate: u32) {
    out.push(cell_log);
    out.push(TC_LINKLAYER_ETHERNET);
    out.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    out.extend_from_slice(&(-1i16).to_ne_bytes()); // cell_align
    out.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    put_u32(out, rate);
}

fn put_ratespec_zero(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 12]);
}

/// Appends one netlink attribute, padded to 4 bytes like `addattr_l`.
fn put_attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = u16::try_from(NLA_HDRLEN + data.len()).expect("netlink attribute over 64 KiB");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_ne_bytes(b)
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(b)
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn saturate_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// C's double-to-unsigned conversion (truncation), saturating where C would
/// be undefined.
fn f64_to_u32(v: f64) -> u32 {
    v as u32
}

/// C's `(int) rint(v)` in the default round-to-nearest-even mode.
fn rint_i32(v: f64) -> i32 {
    v.round_ties_even() as i32
}

fn clamp_i16(v: i32) -> i16 {
    v.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn assert_close(a: f64, b: f64, what: &str) {
        assert!((a - b).abs() < 1e-7, "{what}: {a} != {b}");
    }

    /// decode(encode(x)) == x, with percentages compared at wire resolution.
    fn assert_roundtrip(x: &NetemOptions) {
        let y = decode_netem(&x.encode()).expect("decode");
        assert_eq!(y.limit, x.limit, "limit");
        assert_eq!(y.delay, x.delay, "delay");
        assert_eq!(y.jitter, x.jitter, "jitter");
        assert_eq!(y.distribution, x.distribution, "distribution");
        assert_eq!(y.gap, x.gap, "gap");
        assert_eq!(y.rate_bytes_per_sec, x.rate_bytes_per_sec, "rate");
        let pairs = [
            (
                y.delay_correlation,
                x.delay_correlation,
                "delay_correlation",
            ),
            (y.loss, x.loss, "loss"),
            (y.loss_correlation, x.loss_correlation, "loss_correlation"),
            (y.duplicate, x.duplicate, "duplicate"),
            (
                y.duplicate_correlation,
                x.duplicate_correlation,
                "duplicate_correlation",
            ),
            (y.corrupt, x.corrupt, "corrupt"),
            (
                y.corrupt_correlation,
                x.corrupt_correlation,
                "corrupt_correlation",
            ),
            (y.reorder, x.reorder, "reorder"),
            (
                y.reorder_correlation,
                x.reorder_correlation,
                "reorder_correlation",
            ),
        ];
        for (a, b, what) in pairs {
            assert_close(a, b, what);
        }
    }

    #[test]
    fn roundtrip_all_fields() {
        assert_roundtrip(&NetemOptions {
            limit: 2000,
            delay: ms(50),
            jitter: Duration::from_micros(20_001),
            delay_correlation: 30.0,
            distribution: Distribution::ParetoNormal,
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
        });
    }

    #[test]
    fn roundtrip_edge_values() {
        // Fractional milliseconds (1.5 ms is 23437.5 ticks, truncated).
        assert_roundtrip(&NetemOptions {
            limit: 1000,
            delay: Duration::from_micros(1500),
            jitter: Duration::from_micros(1),
            distribution: Distribution::Normal,
            loss: 100.0,
            ..NetemOptions::default()
        });
        // Largest delay tc accepts, 64-bit delays, 64-bit rate.
        assert_roundtrip(&NetemOptions {
            limit: 1,
            delay: Duration::from_secs(274),
            jitter: Duration::from_secs(3600) + Duration::from_nanos(7),
            distribution: Distribution::Pareto,
            rate_bytes_per_sec: Some(12_500_000_000),
            ..NetemOptions::default()
        });
        assert_roundtrip(&NetemOptions {
            limit: 5,
            delay: Duration::from_secs(1_000_000),
            rate_bytes_per_sec: Some(u64::from(u32::MAX)),
            ..NetemOptions::default()
        });
    }

    #[test]
    fn encode_applies_tc_defaults() {
        let x = NetemOptions {
            delay: ms(10),
            reorder: 25.0,
            ..NetemOptions::default()
        };
        let y = decode_netem(&x.encode()).unwrap();
        assert_eq!(y.limit, 1000);
        assert_eq!(y.gap, 1);
        // A gap without reorder would mean 100 % reordering to the kernel.
        let x = NetemOptions {
            delay: ms(10),
            gap: 5,
            ..NetemOptions::default()
        };
        assert_eq!(decode_netem(&x.encode()).unwrap().gap, 0);
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
        let y = decode_netem(&x.encode()).unwrap();
        assert_eq!(y.delay, Duration::from_micros(1));
        assert_eq!(y.loss, 100.0);
        assert_eq!(y.duplicate, 0.0);
        assert_eq!(y.corrupt, 0.0);
    }

    #[test]
    fn long_delay_uses_64bit_attributes() {
        let x = NetemOptions {
            delay: Duration::from_secs(300),
            jitter: ms(1),
            ..NetemOptions::default()
        };
        let b = x.encode();
        assert_eq!(get_u32(&b, 0), u32::MAX, "legacy latency saturates");
        assert_eq!(get_u32(&b, 20), 15625, "jitter still fits in ticks");
        assert_eq!(b.len(), NETEM_QOPT_LEN + 12);
        assert_eq!(u16::from_ne_bytes([b[24], b[25]]), 12);
        assert_eq!(u16::from_ne_bytes([b[26], b[27]]), TCA_NETEM_LATENCY64);
        assert_eq!(get_u64(&b, 28), 300_000_000_000);
    }

    #[test]
    fn distribution_needs_jitter() {
        let x = NetemOptions {
            delay: ms(10),
            distribution: Distribution::Normal,
            ..NetemOptions::default()
        };
        assert_eq!(x.encode().len(), NETEM_QOPT_LEN);
        assert_eq!(distribution_table(Distribution::Uniform), None);
    }

    /// (type, payload) of each attribute after the qopt struct.
    fn netem_attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        let mut at = NETEM_QOPT_LEN;
        while at < b.len() {
            let len = usize::from(u16::from_ne_bytes([b[at], b[at + 1]]));
            out.push((
                u16::from_ne_bytes([b[at + 2], b[at + 3]]),
                &b[at + 4..at + len],
            ));
            at += align4(len);
        }
        out
    }

    #[test]
    fn encode_for_change_sends_explicit_zeros() {
        let x = NetemOptions {
            delay: ms(100),
            ..NetemOptions::default()
        };
        let b = x.encode_for_change();
        let attrs = netem_attrs(&b);
        let kinds: Vec<u16> = attrs.iter().map(|a| a.0).collect();
        assert_eq!(
            kinds,
            [
                TCA_NETEM_CORR,
                TCA_NETEM_REORDER,
                TCA_NETEM_CORRUPT,
                TCA_NETEM_RATE
            ]
        );
        assert!(attrs.iter().all(|(_, data)| data.iter().all(|&v| v == 0)));
        assert_eq!(
            decode_netem(&b).unwrap(),
            decode_netem(&x.encode()).unwrap()
        );
        assert!(netem_attrs(&x.encode()).is_empty());
    }

    #[test]
    fn decode_kernel_style_dump() {
        // netem_dump always appends LATENCY64, JITTER64, CORR, REORDER,
        // CORRUPT and RATE, and may add ECN/SLOT/PAD attributes.
        let mut b = u32s(&[1_562_500, 1000, 0, 0, 0, 0]);
        put_attr(&mut b, TCA_NETEM_LATENCY64, &100_000_000i64.to_ne_bytes());
        put_attr(&mut b, TCA_NETEM_JITTER64, &1_000_001i64.to_ne_bytes());
        put_attr(&mut b, TCA_NETEM_CORR, &[0; 12]);
        put_attr(&mut b, 9 /* PAD */, &[]);
        put_attr(&mut b, TCA_NETEM_REORDER, &[0; 8]);
        put_attr(&mut b, TCA_NETEM_CORRUPT, &[0; 8]);
        put_attr(&mut b, TCA_NETEM_RATE, &[0; 16]);
        put_attr(&mut b, 7 /* ECN */, &1u32.to_ne_bytes());
        let y = decode_netem(&b).unwrap();
        assert_eq!(y.delay, ms(100));
        assert_eq!(y.jitter, Duration::from_nanos(1_000_001));
        assert_eq!(y.rate_bytes_per_sec, None);
        assert_eq!(y.limit, 1000);
    }

    #[test]
    fn decode_rejects_malformed_payloads() {
        assert!(matches!(
            decode_netem(&[0; 20]),
            Err(OptionsError::Truncated { len: 20, .. })
        ));
        let mut b = u32s(&[0; 6]);
        b.extend_from_slice(&40u16.to_ne_bytes());
        b.extend_from_slice(&TCA_NETEM_CORR.to_ne_bytes());
        b.extend_from_slice(&[0; 12]);
        assert!(matches!(
            decode_netem(&b),
            Err(OptionsError::MalformedAttribute {
                offset: 24,
                nla_len: 40,
                ..
            })
        ));
        let mut b = u32s(&[0; 6]);
        put_attr(&mut b, TCA_NETEM_RATE, &[0; 8]);
        assert!(matches!(
            decode_netem(&b),
            Err(OptionsError::AttributeTooShort {
                kind: TCA_NETEM_RATE,
                len: 8,
                expected: 16
            })
        ));
        let mut b = u32s(&[0; 6]);
        put_attr(&mut b, TCA_NETEM_DELAY_DIST, &[1, 0, 2, 0]);
        assert!(matches!(
            decode_netem(&b),
            Err(OptionsError::UnknownDistribution { entries: 2 })
        ));
    }

    fn stats(t: &[i16]) -> (f64, f64) {
        let n = t.len() as f64;
        let mean = t.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = t
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    #[test]
    fn normal_table_statistics() {
        let t = distribution_table(Distribution::Normal).unwrap();
        assert_eq!(t.len(), 4096);
        assert!(t.len() <= NETEM_DIST_MAX);
        assert!(
            t.windows(2).all(|w| w[0] <= w[1]),
            "inverse CDF is monotone"
        );
        let (mean, sd) = stats(&t);
        let scale = f64::from(NETEM_DIST_SCALE);
        assert!(mean.abs() < 0.005 * scale, "mean {mean}");
        assert!((sd - scale).abs() < 0.01 * scale, "sd {sd}");
        // Median at 0; the 84.1 % point (k = 3446) near +1 sigma.
        assert!(t[2048].abs() <= 2, "median {}", t[2048]);
        assert!((f64::from(t[3446]) - scale).abs() < 0.01 * scale);
        assert_eq!(t[0], i16::MIN, "left tail clamps at s16 minimum");
    }

    #[test]
    fn pareto_table_statistics() {
        let t = distribution_table(Distribution::Pareto).unwrap();
        assert_eq!(t.len(), 4096);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        let scale = f64::from(NETEM_DIST_SCALE);
        let (mean, _) = stats(&t);
        assert!(mean.abs() < 0.05 * scale, "mean {mean}");
        // Closed form: entry k is (u^(-1/3) - 1.5) * 4/3 * scale, u = 1 - k/4096.
        for k in [0usize, 1, 1000, 2048, 3000, 4000] {
            let u = 1.0 - k as f64 / 4096.0;
            let expect = (u.powf(-1.0 / 3.0) - 1.5) * 4.0 / 3.0 * scale;
            assert!((f64::from(t[k]) - expect).abs() <= 0.5, "k={k}");
        }
        assert_eq!(t[0], -5461, "x_m = 1 maps to -0.5 * 4/3 sigma");
        assert_eq!(*t.last().unwrap(), i16::MAX, "tail clamps");
        // Heavy right tail: median well below the mean.
        assert!(f64::from(t[2048]) < mean - 0.2 * scale);
    }

    #[test]
    fn pareto_normal_table_statistics() {
        let n = distribution_table(Distribution::Normal).unwrap();
        let p = distribution_table(Distribution::Pareto).unwrap();
        let t = distribution_table(Distribution::ParetoNormal).unwrap();
        assert_eq!(t.len(), 4096);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        let (mean, _) = stats(&t);
        assert!(
            mean.abs() < 0.05 * f64::from(NETEM_DIST_SCALE),
            "mean {mean}"
        );
        // Away from the clamped tails it is the 1:3 mix.
        for k in [100usize, 1024, 2048, 3072, 4000] {
            let mix = (i32::from(n[k]) + 3 * i32::from(p[k])) / 4;
            assert!((i32::from(t[k]) - mix).abs() <= 1, "k={k}");
        }
    }

    fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
        bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// The tables equal iproute2 6.1's shipped .dist files value for value:
    /// FNV-1a 64 over the TCA_NETEM_DELAY_DIST payload tc sent for
    /// `tc qdisc add dev lo root netem delay 10ms 5ms distribution <name>`
    /// (8192 bytes, s16 little-endian; hashed as values, so host-independent).
    #[test]
    fn tables_match_iproute2_dist_files() {
        for (d, hash) in [
            (Distribution::Normal, 0x3f19_8b60_14c3_b3b8_u64),
            (Distribution::Pareto, 0x209e_1d3c_8618_19fa),
            (Distribution::ParetoNormal, 0x468c_e9c9_62a5_ecf9),
        ] {
            let t = distribution_table(d).unwrap();
            assert_eq!(fnv1a(t.iter().flat_map(|v| v.to_le_bytes())), hash, "{d:?}");
        }
    }

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
            (ms(100), 1_562_500),
            (Duration::from_micros(1500), 23_437),
            (Duration::from_secs(5), 78_125_000),
            (Duration::from_secs(274), 4_281_250_000),
        ] {
            assert_eq!(duration_to_ticks(d), ticks, "{d:?}");
        }
    }
}

/// Byte-for-byte comparisons with payloads captured from iproute2 6.1.0
/// (`tc -V`: "tc utility, iproute2-6.1.0, libbpf 1.1.2", Debian 12) via
/// `strace -f -e trace=sendmsg -xx -s 65536 tc ...` in a scratch network
/// namespace on an x86_64 6.18 kernel. Each constant is the TCA_OPTIONS
/// payload of the RTM_NEWQDISC / RTM_NEWTCLASS request for the command in
/// its comment (netem captured from the request alone: the kernel lacked
/// sch_netem, which does not affect what tc sends).
#[cfg(all(test, target_endian = "little"))]
mod golden {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2));
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[track_caller]
    fn assert_bytes(ours: &[u8], golden: &str) {
        assert_same(ours, &hex(golden));
    }

    #[track_caller]
    fn assert_same(ours: &[u8], golden: &[u8]) {
        assert_eq!(ours.len(), golden.len(), "payload length");
        if let Some(i) = ours.iter().zip(golden).position(|(a, b)| a != b) {
            panic!(
                "first difference at byte {i}: ours {:02x?} tc {:02x?}",
                &ours[i..(i + 16).min(ours.len())],
                &golden[i..(i + 16).min(golden.len())]
            );
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn netem() -> NetemOptions {
        NetemOptions::default()
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

    /// Everything but the 8192 table bytes, which
    /// `tests::tables_match_iproute2_dist_files` checks.
    #[track_caller]
    fn assert_dist_payload(ours: &[u8], header: &str, total_len: usize, d: Distribution) {
        let header = hex(header);
        assert_eq!(ours.len(), total_len);
        assert_same(&ours[..header.len()], &header);
        let table = &ours[header.len()..];
        let expect: Vec<u8> = distribution_table(d)
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(table, expect.as_slice());
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
        let y = decode_netem(&x.encode()).unwrap();
        assert_eq!(y.distribution, Distribution::Normal);

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

    #[test]
    fn netem_goldens_survive_decode_and_reencode() {
        for golden in [
            NETEM_DELAY_JITTER_CORR,
            NETEM_DELAY_CORR_LOSS,
            NETEM_DELAY,
            NETEM_LIMIT_FRACTIONAL_DELAY,
            NETEM_DELAY_5S,
            NETEM_DELAY_274S,
            NETEM_LOSS_10,
            NETEM_LOSS_33_3_CORR,
            NETEM_LOSS_0_1,
            NETEM_LOSS_100,
            NETEM_DUPLICATE,
            NETEM_CORRUPT,
            NETEM_CORRUPT_CORR,
            NETEM_REORDER_GAP,
            NETEM_REORDER_DEFAULT_GAP,
            NETEM_RATE_1MBIT,
            NETEM_RATE_U32_MAX,
            NETEM_RATE_100GBIT,
            NETEM_COMBINED,
        ] {
            let decoded = decode_netem(&hex(golden)).unwrap();
            assert_bytes(&decoded.encode(), golden);
        }
    }

    #[test]
    fn tbf_10mbit() {
        let x = TbfOptions {
            rate_bytes_per_sec: 1_250_000,
            burst_bytes: 32 * 1024,
            latency: ms(50),
            mtu: 0,
        };
        assert_bytes(&x.encode(), TBF_10MBIT);
        let x = TbfOptions { mtu: 9000, ..x };
        assert_bytes(&x.encode(), TBF_10MBIT_MTU_9000);
    }

    #[test]
    fn tbf_40gbit_rate64() {
        let x = TbfOptions {
            rate_bytes_per_sec: 5_000_000_000,
            burst_bytes: 1024 * 1024,
            latency: ms(10),
            mtu: 0,
        };
        assert_bytes(&x.encode(), TBF_40GBIT);
        // A large mtu shows tc builds the rate table from the clamped rate.
        let x = TbfOptions { mtu: 65535, ..x };
        assert_bytes(&x.encode(), TBF_40GBIT_MTU_65535);
    }

    #[test]
    fn tbf_rate64_threshold() {
        let x = TbfOptions {
            rate_bytes_per_sec: u64::from(u32::MAX),
            burst_bytes: 10 * 1024,
            latency: ms(70),
            mtu: 0,
        };
        assert_bytes(&x.encode(), TBF_RATE_U32_MAX);
        let x = TbfOptions {
            rate_bytes_per_sec: 1 << 32,
            ..x
        };
        assert_bytes(&x.encode(), TBF_RATE_2_POW_32);
    }

    #[test]
    fn htb_qdisc() {
        for (default_minor, golden) in [
            (1, HTB_QDISC_DEFAULT_1),
            (0x30, HTB_QDISC_DEFAULT_30),
            (0, HTB_QDISC_NO_DEFAULT),
        ] {
            assert_bytes(&HtbQdiscOptions { default_minor }.encode(), golden);
        }
    }

    #[test]
    fn htb_class_1gbit() {
        let x = HtbClassOptions {
            rate_bytes_per_sec: 125_000_000,
            ..HtbClassOptions::default()
        };
        assert_bytes(&x.encode(), HTB_CLASS_1GBIT);
    }

    #[test]
    fn htb_class_100gbit_rate64() {
        let x = HtbClassOptions {
            rate_bytes_per_sec: 12_500_000_000,
            ..HtbClassOptions::default()
        };
        assert_bytes(&x.encode(), HTB_CLASS_100GBIT);
    }

    #[test]
    fn htb_class_all_parameters() {
        let x = HtbClassOptions {
            rate_bytes_per_sec: 1_250_000,
            ceil_bytes_per_sec: 12_500_000,
            burst_bytes: 15 * 1024,
            cburst_bytes: 20 * 1024,
            quantum: 3000,
            prio: 2,
        };
        assert_bytes(&x.encode(), HTB_CLASS_ALL_PARAMS);
    }

    #[test]
    fn htb_class_bursts_use_64bit_rates() {
        let x = HtbClassOptions {
            rate_bytes_per_sec: 5_000_000_000,
            ceil_bytes_per_sec: 12_500_000_000,
            burst_bytes: 64 * 1024,
            cburst_bytes: 128 * 1024,
            ..HtbClassOptions::default()
        };
        assert_bytes(&x.encode(), HTB_CLASS_40GBIT_CEIL_100GBIT);
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

    // `tc qdisc replace dev lo root tbf rate 10mbit burst 32kb latency 50ms`
    const TBF_10MBIT: &str = "\
        2800010003010000ffff0000d012130000000000000000000000000024740100f93f0600000000000800060000800000\
        040402005d000000bb0000002801000086010000f401000051020000af0200001c0300007a030000e803000045040000\
        a3040000100500006e050000dc05000039060000970600000407000062070000d00700002d0800008b080000f8080000\
        56090000c4090000210a00007f0a0000ec0a00004a0b0000b80b0000150c0000730c0000e00c00003e0d0000ac0d0000\
        090e0000670e0000d40e0000320f0000a00f0000fd0f00005b100000c81000002611000094110000f11100004f120000\
        bc1200001a13000088130000e513000043140000b01400000e1500007c150000d915000037160000a416000002170000\
        70170000cd1700002b18000098180000f618000064190000c11900001f1a00008c1a0000ea1a0000581b0000b51b0000\
        131c0000801c0000de1c00004c1d0000a91d0000071e0000741e0000d21e0000401f00009d1f0000fb1f000068200000\
        c62000003421000091210000ef2100005c220000ba2200002823000085230000e323000050240000ae2400001c250000\
        79250000d725000044260000a2260000102700006d270000cb27000038280000962800000429000061290000bf290000\
        2c2a00008a2a0000f82a0000552b0000b32b0000202c00007e2c0000ec2c0000492d0000a72d0000142e0000722e0000\
        e02e00003d2f00009b2f00000830000066300000d4300000313100008f310000fc3100005a320000c832000025330000\
        83330000f03300004e340000bc3400001935000077350000e435000042360000b03600000d3700006b370000d8370000\
        36380000a4380000013900005f390000cc3900002a3a0000983a0000f53a0000533b0000c03b00001e3c00008c3c0000\
        e93c0000473d0000b43d0000123e0000803e0000dd3e00003b3f0000a83f00000640000074400000d14000002f410000\
        9c410000fa41000068420000c54200002343000090430000ee4300005c440000b94400001745000084450000e2450000\
        50460000ad4600000b47000078470000d647000044480000a1480000ff4800006c490000ca490000384a0000954a0000\
        f34a0000604b0000be4b00002c4c0000894c0000e74c0000544d0000b24d0000204e00007d4e0000db4e0000484f0000\
        a64f00001450000071500000cf5000003c5100009a5100000852000065520000c3520000305300008e530000fc530000\
        59540000b75400002455000082550000f05500004d560000ab5600001857000076570000e4570000415800009f580000\
        0c5900006a590000d8590000355a0000935a0000005b00005e5b0000cc5b0000295c0000875c0000f45c0000525d0000\
        c05d00001d5e00007b5e0000e85e0000465f0000b45f0000116000006f600000dc6000003a610000a861000005620000\
        63620000d06200002e6300009c630000f9630000";

    // `tc qdisc replace dev lo root tbf rate 10mbit burst 32kb latency 50ms mtu 9000`
    const TBF_10MBIT_MTU_9000: &str = "\
        2800010006010000ffff0000d012130000000000000000000000000024740100f93f0600000000000800060000800000\
        040402001c0300003906000056090000730c0000a00f0000bc120000d9150000f6180000131c0000401f00005c220000\
        7925000096280000b32b0000e02e0000fc3100001935000036380000533b0000803e00009c410000b9440000d6470000\
        f34a0000204e00003c5100005954000076570000935a0000c05d0000dc600000f963000016670000336a0000606d0000\
        7c70000099730000b6760000d3790000007d00001c800000398300005686000073890000a08c0000bc8f0000d9920000\
        f695000013990000409c00005c9f000079a2000096a50000b3a80000e0ab0000fcae000019b2000036b5000053b80000\
        80bb00009cbe0000b9c10000d6c40000f3c7000020cb00003cce000059d1000076d4000093d70000c0da0000dcdd0000\
        f9e0000016e4000033e7000060ea00007ced000099f00000b6f30000d3f6000000fa00001cfd00003900010056030100\
        73060100a0090100bc0c0100d90f0100f612010013160100401901005c1c0100791f010096220100b3250100e0280100\
        fc2b0100192f01003632010053350100803801009c3b0100b93e0100d6410100f3440100204801003c4b0100594e0100\
        7651010093540100c0570100dc5a0100f95d01001661010033640100606701007c6a0100996d0100b6700100d3730100\
        007701001c7a0100397d01005680010073830100a0860100bc890100d98c0100f68f010013930100409601005c990100\
        799c0100969f0100b3a20100e0a50100fca8010019ac010036af010053b2010080b501009cb80100b9bb0100d6be0100\
        f3c1010020c501003cc8010059cb010076ce010093d10100c0d40100dcd70100f9da010016de010033e1010060e40100\
        7ce7010099ea0100b6ed0100d3f0010000f401001cf7010039fa010056fd010073000200a0030200bc060200d9090200\
        f60c020013100200401302005c16020079190200961c0200b31f0200e0220200fc25020019290200362c0200532f0200\
        803202009c350200b9380200d63b0200f33e0200204202003c45020059480200764b0200934e0200c0510200dc540200\
        f9570200165b0200335e0200606102007c64020099670200b66a0200d36d0200007102001c74020039770200567a0200\
        737d0200a0800200bc830200d9860200f6890200138d0200409002005c9302007996020096990200b39c0200e09f0200\
        fca2020019a6020036a9020053ac020080af02009cb20200b9b50200d6b80200f3bb020020bf02003cc2020059c50200\
        76c8020093cb0200c0ce0200dcd10200f9d4020016d8020033db020060de02007ce1020099e40200b6e70200d3ea0200\
        00ee02001cf1020039f4020056f7020073fa0200a0fd0200bc000300d9030300f6060300130a0300400d03005c100300\
        7913030096160300b3190300e01c0300fc1f0300";

    // `tc qdisc replace dev lo root tbf rate 40gbit burst 1mb latency 10ms`
    const TBF_40GBIT: &str = "\
        2800010003010000ffff0000ffffffff00000000000000000000000080f00a03e40e0000000000000800060000001000\
        0c00040000f2052a01000000040402000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        0000000000000000000000000000000000000000000000000000000000000000";

    // `tc qdisc replace dev lo root tbf rate 40gbit burst 1mb latency 10ms mtu 65535`
    const TBF_40GBIT_MTU_65535: &str = "\
        2800010008010000ffff0000ffffffff00000000000000000000000080f00a03e40e0000000000000800060000001000\
        0c00040000f2052a01000000040402000000000000000000000000000000000000000000000000000000000000000000\
        00000000000000000000000000000000000000000000000000000000000000000f0000000f0000000f0000000f000000\
        0f0000000f0000000f0000000f0000000f0000000f0000000f0000000f0000000f0000000f0000000f0000000f000000\
        0f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f000000\
        1f0000001f0000001f0000001f0000001f0000001f0000002e0000002e0000002e0000002e0000002e0000002e000000\
        2e0000002e0000002e0000002e0000002e0000002e0000002e0000002e0000002e0000002e0000002e0000003e000000\
        3e0000003e0000003e0000003e0000003e0000003e0000003e0000003e0000003e0000003e0000003e0000003e000000\
        3e0000003e0000003e0000004e0000004e0000004e0000004e0000004e0000004e0000004e0000004e0000004e000000\
        4e0000004e0000004e0000004e0000004e0000004e0000004e0000004e0000005d0000005d0000005d0000005d000000\
        5d0000005d0000005d0000005d0000005d0000005d0000005d0000005d0000005d0000005d0000005d0000005d000000\
        5d0000006d0000006d0000006d0000006d0000006d0000006d0000006d0000006d0000006d0000006d0000006d000000\
        6d0000006d0000006d0000006d0000006d0000006d0000007d0000007d0000007d0000007d0000007d0000007d000000\
        7d0000007d0000007d0000007d0000007d0000007d0000007d0000007d0000007d0000007d0000008c0000008c000000\
        8c0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c000000\
        8c0000008c0000008c0000009c0000009c0000009c0000009c0000009c0000009c0000009c0000009c0000009c000000\
        9c0000009c0000009c0000009c0000009c0000009c0000009c0000009c000000ab000000ab000000ab000000ab000000\
        ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000\
        ab000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000\
        bb000000bb000000bb000000bb000000bb000000bb000000cb000000cb000000cb000000cb000000cb000000cb000000\
        cb000000cb000000cb000000cb000000cb000000cb000000cb000000cb000000cb000000cb000000da000000da000000\
        da000000da000000da000000da000000da000000da000000da000000da000000da000000da000000da000000da000000\
        da000000da000000da000000ea000000ea000000ea000000ea000000ea000000";

    // `tc qdisc replace dev lo root tbf rate 4294967295bps burst 10kb latency 70ms`
    const TBF_RATE_U32_MAX: &str = "\
        2800010003010000ffff0000ffffffff0000000000000000000000001eadeb111f000000000000000800060000280000\
        040402000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        0000000000000000000000000000000000000000";

    // `tc qdisc replace dev lo root tbf rate 4294967296bps burst 10kb latency 70ms`
    const TBF_RATE_2_POW_32: &str = "\
        2800010003010000ffff0000ffffffff0000000000000000000000001eadeb111f000000000000000800060000280000\
        0c0004000000000001000000040402000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        0000000000000000000000000000000000000000000000000000000000000000";

    // `tc qdisc add dev lo root handle 1: htb default 1`
    const HTB_QDISC_DEFAULT_1: &str = "\
        18000200030000000a000000010000000000000000000000";

    // `tc qdisc add dev lo root handle 1: htb default 30`
    const HTB_QDISC_DEFAULT_30: &str = "\
        18000200030000000a000000300000000000000000000000";

    // `tc qdisc add dev lo root handle 1: htb`
    const HTB_QDISC_NO_DEFAULT: &str = "\
        18000200030000000a000000000000000000000000000000";

    // `tc class add dev lo parent 1: classid 1:1 htb rate 1gbit`
    const HTB_CLASS_1GBIT: &str = "\
        3000010003010000ffff00004059730703010000ffff000040597307bb000000bb000000000000000000000000000000\
        040404000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000f0000000f0000000f0000000f0000000f0000000f0000000f0000000f000000\
        0f0000000f0000000f0000000f0000000f0000000f0000000f0000000f0000001f0000001f0000001f0000001f000000\
        1f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000002e000000\
        2e0000002e0000002e0000002e0000002e0000002e0000002e0000002e0000002e0000002e0000002e0000002e000000\
        2e0000002e0000002e0000003e0000003e0000003e0000003e0000003e0000003e0000003e0000003e0000003e000000\
        3e0000003e0000003e0000003e0000003e0000003e0000003e0000004e0000004e0000004e0000004e0000004e000000\
        4e0000004e0000004e0000004e0000004e0000004e0000004e0000004e0000004e0000004e0000005d0000005d000000\
        5d0000005d0000005d0000005d0000005d0000005d0000005d0000005d0000005d0000005d0000005d0000005d000000\
        5d0000005d0000006d0000006d0000006d0000006d0000006d0000006d0000006d0000006d0000006d0000006d000000\
        6d0000006d0000006d0000006d0000006d0000007d0000007d0000007d0000007d0000007d0000007d0000007d000000\
        7d0000007d0000007d0000007d0000007d0000007d0000007d0000007d0000007d0000008c0000008c0000008c000000\
        8c0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c000000\
        8c0000009c0000009c0000009c0000009c0000009c0000009c0000009c0000009c0000009c0000009c0000009c000000\
        9c0000009c0000009c0000009c000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000\
        ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000bb000000bb000000bb000000bb000000\
        bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000\
        cb000000cb000000cb000000cb000000cb000000cb000000cb000000cb000000cb000000cb000000cb000000cb000000\
        cb000000cb000000cb000000da000000da000000da000000da000000da000000da000000da000000da000000da000000\
        da000000da000000da000000da000000da000000da000000da000000ea000000ea000000ea000000ea000000ea000000\
        ea000000ea000000ea000000ea000000ea000000ea000000ea000000ea000000ea000000ea000000fa000000fa000000\
        fa000000fa000000fa000000fa000000fa00000004040300000000000000000000000000000000000000000000000000\
        0000000000000000000000000000000000000000000000000000000000000000000000000f0000000f0000000f000000\
        0f0000000f0000000f0000000f0000000f0000000f0000000f0000000f0000000f0000000f0000000f0000000f000000\
        0f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f0000001f000000\
        1f0000001f0000001f0000001f0000002e0000002e0000002e0000002e0000002e0000002e0000002e0000002e000000\
        2e0000002e0000002e0000002e0000002e0000002e0000002e0000002e0000003e0000003e0000003e0000003e000000\
        3e0000003e0000003e0000003e0000003e0000003e0000003e0000003e0000003e0000003e0000003e0000003e000000\
        4e0000004e0000004e0000004e0000004e0000004e0000004e0000004e0000004e0000004e0000004e0000004e000000\
        4e0000004e0000004e0000005d0000005d0000005d0000005d0000005d0000005d0000005d0000005d0000005d000000\
        5d0000005d0000005d0000005d0000005d0000005d0000005d0000006d0000006d0000006d0000006d0000006d000000\
        6d0000006d0000006d0000006d0000006d0000006d0000006d0000006d0000006d0000006d0000007d0000007d000000\
        7d0000007d0000007d0000007d0000007d0000007d0000007d0000007d0000007d0000007d0000007d0000007d000000\
        7d0000007d0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c0000008c000000\
        8c0000008c0000008c0000008c0000008c0000008c0000009c0000009c0000009c0000009c0000009c0000009c000000\
        9c0000009c0000009c0000009c0000009c0000009c0000009c0000009c0000009c000000ab000000ab000000ab000000\
        ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000ab000000\
        ab000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000bb000000\
        bb000000bb000000bb000000bb000000bb000000cb000000cb000000cb000000cb000000cb000000cb000000cb000000\
        cb000000cb000000cb000000cb000000cb000000cb000000cb000000cb000000da000000da000000da000000da000000\
        da000000da000000da000000da000000da000000da000000da000000da000000da000000da000000da000000da000000\
        ea000000ea000000ea000000ea000000ea000000ea000000ea000000ea000000ea000000ea000000ea000000ea000000\
        ea000000ea000000ea000000fa000000fa000000fa000000fa000000fa000000fa000000fa000000";

    // `tc class add dev lo parent 1: classid 1:1 htb rate 100gbit`
    const HTB_CLASS_100GBIT: &str = "\
        0c00060000dd0ee9020000000c00070000dd0ee9020000003000010003010000ffff0000ffffffff03010000ffff0000\
        ffffffff0000000000000000000000000000000000000000040404000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000004040300\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        00000000000000000000000000000000";

    // `tc class add dev lo parent 1: classid 1:1 htb rate 10mbit ceil 100mbit burst 15k cburst 20k quantum 3000 prio 2`
    const HTB_CLASS_ALL_PARAMS: &str = "\
        3000010003010000ffff0000d012130003010000ffff000020bcbe0000ee0200f9630000b80b00000000000002000000\
        040404005d000000bb0000002801000086010000f401000051020000af0200001c0300007a030000e803000045040000\
        a3040000100500006e050000dc05000039060000970600000407000062070000d00700002d0800008b080000f8080000\
        56090000c4090000210a00007f0a0000ec0a00004a0b0000b80b0000150c0000730c0000e00c00003e0d0000ac0d0000\
        090e0000670e0000d40e0000320f0000a00f0000fd0f00005b100000c81000002611000094110000f11100004f120000\
        bc1200001a13000088130000e513000043140000b01400000e1500007c150000d915000037160000a416000002170000\
        70170000cd1700002b18000098180000f618000064190000c11900001f1a00008c1a0000ea1a0000581b0000b51b0000\
        131c0000801c0000de1c00004c1d0000a91d0000071e0000741e0000d21e0000401f00009d1f0000fb1f000068200000\
        c62000003421000091210000ef2100005c220000ba2200002823000085230000e323000050240000ae2400001c250000\
        79250000d725000044260000a2260000102700006d270000cb27000038280000962800000429000061290000bf290000\
        2c2a00008a2a0000f82a0000552b0000b32b0000202c00007e2c0000ec2c0000492d0000a72d0000142e0000722e0000\
        e02e00003d2f00009b2f00000830000066300000d4300000313100008f310000fc3100005a320000c832000025330000\
        83330000f03300004e340000bc3400001935000077350000e435000042360000b03600000d3700006b370000d8370000\
        36380000a4380000013900005f390000cc3900002a3a0000983a0000f53a0000533b0000c03b00001e3c00008c3c0000\
        e93c0000473d0000b43d0000123e0000803e0000dd3e00003b3f0000a83f00000640000074400000d14000002f410000\
        9c410000fa41000068420000c54200002343000090430000ee4300005c440000b94400001745000084450000e2450000\
        50460000ad4600000b47000078470000d647000044480000a1480000ff4800006c490000ca490000384a0000954a0000\
        f34a0000604b0000be4b00002c4c0000894c0000e74c0000544d0000b24d0000204e00007d4e0000db4e0000484f0000\
        a64f00001450000071500000cf5000003c5100009a5100000852000065520000c3520000305300008e530000fc530000\
        59540000b75400002455000082550000f05500004d560000ab5600001857000076570000e4570000415800009f580000\
        0c5900006a590000d8590000355a0000935a0000005b00005e5b0000cc5b0000295c0000875c0000f45c0000525d0000\
        c05d00001d5e00007b5e0000e85e0000465f0000b45f0000116000006f600000dc6000003a610000a861000005620000\
        63620000d06200002e6300009c630000f963000004040300000000000f0000000f0000001f0000002e0000002e000000\
        3e0000004e0000004e0000005d0000006d0000006d0000007d0000007d0000008c0000009c0000009c000000ab000000\
        bb000000bb000000cb000000da000000da000000ea000000fa000000fa00000009010000090100001901000028010000\
        280100003801000048010000480100005701000067010000670100007701000077010000860100009601000096010000\
        a5010000b5010000b5010000c5010000d4010000d4010000e4010000f4010000f4010000030200000302000013020000\
        220200002202000032020000420200004202000051020000610200006102000071020000710200008002000090020000\
        900200009f020000af020000af020000bf020000ce020000ce020000de020000ee020000ee020000fd020000fd020000\
        0d0300001c0300001c0300002c0300003c0300003c0300004b0300005b0300005b0300006b0300006b0300007a030000\
        8a0300008a03000099030000a9030000a9030000b9030000c8030000c8030000d8030000e8030000e8030000f7030000\
        f70300000704000016040000160400002604000036040000360400004504000055040000550400006504000065040000\
        74040000840400008404000093040000a3040000a3040000b3040000c2040000c2040000d2040000e2040000e2040000\
        f1040000f10400000105000010050000100500002005000030050000300500003f0500004f0500004f0500005f050000\
        5f0500006e0500007e0500007e0500008d0500009d0500009d050000ad050000bc050000bc050000cc050000dc050000\
        dc050000eb050000eb050000fb0500000a0600000a0600001a0600002a0600002a060000390600004906000049060000\
        5906000059060000680600007806000078060000870600009706000097060000a7060000b6060000b6060000c6060000\
        d6060000d6060000e5060000e5060000f506000004070000040700001407000024070000240700003307000043070000\
        430700005307000053070000620700007207000072070000810700009107000091070000a1070000b0070000b0070000\
        c0070000d0070000d0070000df070000df070000ef070000fe070000fe0700000e0800001e0800001e0800002d080000\
        3d0800003d0800004d0800004d0800005c0800006c0800006c0800007b0800008b0800008b0800009b080000aa080000\
        aa080000ba080000ca080000ca080000d9080000d9080000e9080000f8080000f8080000080900001809000018090000\
        270900003709000037090000470900004709000056090000660900006609000075090000850900008509000095090000\
        a4090000a4090000b4090000c4090000c4090000d3090000d3090000e3090000f2090000f2090000";

    // `tc class add dev lo parent 1: classid 1:1 htb rate 40gbit ceil 100gbit burst 64k cburst 128k`
    const HTB_CLASS_40GBIT_CEIL_100GBIT: &str = "\
        0c00060000f2052a010000000c00070000dd0ee9020000003000010003010000ffff0000ffffffff03010000ffff0000\
        ffffffffcb0000009c000000000000000000000000000000040404000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000004040300\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
        00000000000000000000000000000000";
}
