//! netem's delay distribution tables (`tc ... distribution normal|pareto|paretonormal`),
//! computed with the numerics of iproute2's generators so that they equal the `.dist` files it
//! ships, value for value.

use std::sync::OnceLock;

use super::nla::{clamp_i16, rint_i32};

/// Shape of netem's random delay around the mean (`tc ... distribution`).
///
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Distribution {
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

/// Fixed-point scale of the delay distribution table (`NETEM_DIST_SCALE`).
pub(super) const NETEM_DIST_SCALE: i32 = 8192;
/// Largest table the kernel accepts (`NETEM_DIST_MAX`).
#[cfg(test)]
const NETEM_DIST_MAX: usize = 16384;

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
#[cfg(test)]
pub(super) fn distribution_table(d: Distribution) -> Option<Vec<i16>> {
    cached_table(d).map(<[i16]>::to_vec)
}

/// Number of quantile slots iproute2's generators work with (`TABLESIZE`).
const QUANTILE_SLOTS: usize = 16384;
/// iproute2 keeps every 4th slot, giving 4096-entry tables.
const SLOT_STRIDE: usize = 4;

pub(super) fn cached_table(d: Distribution) -> Option<&'static [i16]> {
    // A table takes a few hundred thousand erf evaluations: build each once.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
