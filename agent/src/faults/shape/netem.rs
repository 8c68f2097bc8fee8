//! The netem family's parameters: delay, jitter and its distribution, loss, duplication,
//! corruption, reordering and a rate, checked together and turned into a netem leaf qdisc.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ms, show_rate, Shaper};
use crate::{
    errors::InvalidSpec,
    kernel::{
        caps::{Capabilities, Capability},
        qdisc::{
            netem::{Distribution, NetemOptions},
            Leaf,
        },
    },
};

/// Longest delay (and jitter) accepted: beyond this a "delay" is an outage, which `block` does
/// more honestly.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// netem parameters; percentages are `0..=100`, 0 meaning "not set".
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct NetemParams {
    #[serde(with = "crate::faults::secs")]
    pub(crate) delay: Duration,
    #[serde(with = "crate::faults::secs")]
    pub(crate) jitter: Duration,
    pub(crate) delay_correlation: f64,
    pub(crate) distribution: DelayDistribution,
    pub(crate) loss: f64,
    pub(crate) loss_correlation: f64,
    pub(crate) duplicate: f64,
    pub(crate) duplicate_correlation: f64,
    pub(crate) corrupt: f64,
    pub(crate) corrupt_correlation: f64,
    pub(crate) reorder: f64,
    pub(crate) reorder_correlation: f64,
    /// Reorder every `gap`-th packet instead of at random.
    pub(crate) gap: u32,
    /// netem's own rate limit, bits per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rate_bps: Option<u64>,
    /// Packets the qdisc holds; 0: netem's default, 1000.
    pub(crate) limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DelayDistribution {
    #[default]
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

fn check_share(value: f64, field: &str) -> Result<(), InvalidSpec> {
    if value.is_finite() && (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(InvalidSpec::new(
            field,
            format!("{value} is out of range, expected a percentage 0-100"),
        ))
    }
}
impl Shaper for NetemParams {
    fn validate(&self) -> Result<(), InvalidSpec> {
        for (value, field) in [
            (self.delay_correlation, "delay-correlation"),
            (self.loss, "loss"),
            (self.loss_correlation, "loss-correlation"),
            (self.duplicate, "duplicate"),
            (self.duplicate_correlation, "duplicate-correlation"),
            (self.corrupt, "corrupt"),
            (self.corrupt_correlation, "corrupt-correlation"),
            (self.reorder, "reorder"),
            (self.reorder_correlation, "reorder-correlation"),
        ] {
            check_share(value, field)?;
        }
        for (value, field) in [(self.delay, "delay"), (self.jitter, "jitter")] {
            if value > MAX_DELAY {
                return Err(InvalidSpec::new(
                    field,
                    format!(
                        "{} is too long, at most {} is accepted",
                        ms(value),
                        ms(MAX_DELAY)
                    ),
                ));
            }
        }
        if !self.jitter.is_zero() && self.delay.is_zero() {
            return Err(InvalidSpec::new(
                "jitter",
                "jitter varies a delay: give --delay as well",
            ));
        }
        if self.distribution != DelayDistribution::Uniform && self.jitter.is_zero() {
            return Err(InvalidSpec::new(
                "distribution",
                "a delay distribution shapes the jitter: give --jitter as well",
            ));
        }
        if self.reorder > 0.0 && self.delay.is_zero() {
            return Err(InvalidSpec::new(
                "reorder",
                "netem reorders by sending some packets at once while the others wait: give \
                 --delay as well",
            ));
        }
        if self.gap > 0 && self.reorder == 0.0 {
            return Err(InvalidSpec::new(
                "gap",
                "a gap spaces reordering: give --reorder as well",
            ));
        }
        if self.rate_bps == Some(0) {
            return Err(InvalidSpec::new(
                "rate",
                "0 is not a rate, expected e.g. 10mbit",
            ));
        }
        if self.limit > 1_000_000 {
            return Err(InvalidSpec::new(
                "limit",
                format!(
                    "{} packets is too many, at most 1000000 are accepted",
                    self.limit
                ),
            ));
        }
        let nothing = self.delay.is_zero()
            && self.loss == 0.0
            && self.duplicate == 0.0
            && self.corrupt == 0.0
            && self.rate_bps.is_none();
        if nothing {
            return Err(InvalidSpec::new(
                "netem",
                "nothing to do: give at least one of delay, loss, duplicate, corrupt, rate",
            ));
        }
        Ok(())
    }

    fn needs(caps: &Capabilities) -> (&'static str, &Capability) {
        ("netem (sch_netem)", &caps.netem)
    }

    fn leaf(&self) -> Leaf {
        let options = NetemOptions {
            limit: self.limit,
            delay: self.delay,
            jitter: self.jitter,
            delay_correlation: self.delay_correlation,
            distribution: match self.distribution {
                DelayDistribution::Uniform => Distribution::Uniform,
                DelayDistribution::Normal => Distribution::Normal,
                DelayDistribution::Pareto => Distribution::Pareto,
                DelayDistribution::Paretonormal => Distribution::ParetoNormal,
            },
            loss: self.loss,
            loss_correlation: self.loss_correlation,
            duplicate: self.duplicate,
            duplicate_correlation: self.duplicate_correlation,
            corrupt: self.corrupt,
            corrupt_correlation: self.corrupt_correlation,
            reorder: self.reorder,
            reorder_correlation: self.reorder_correlation,
            gap: self.gap,
            rate_bytes_per_sec: self.rate_bps.map(|b| b / 8),
        };
        Leaf {
            kind: "netem",
            options: options.encode(),
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        let corr = |c: f64| {
            if c > 0.0 {
                format!(" (correlation {c}%)")
            } else {
                String::new()
            }
        };
        if !self.delay.is_zero() {
            let mut d = format!("delay {}", ms(self.delay));
            if !self.jitter.is_zero() {
                d.push_str(&format!(" ± {}", ms(self.jitter)));
                if self.distribution != DelayDistribution::Uniform {
                    d.push_str(&format!(" {:?}", self.distribution).to_lowercase());
                }
            }
            d.push_str(&corr(self.delay_correlation));
            parts.push(d);
        }
        for (value, c, name) in [
            (self.loss, self.loss_correlation, "loss"),
            (self.duplicate, self.duplicate_correlation, "duplicate"),
            (self.corrupt, self.corrupt_correlation, "corrupt"),
            (self.reorder, self.reorder_correlation, "reorder"),
        ] {
            if value > 0.0 {
                parts.push(format!("{name} {value}%{}", corr(c)));
            }
        }
        if self.gap > 0 {
            parts.push(format!("gap {}", self.gap));
        }
        if let Some(rate) = self.rate_bps {
            parts.push(format!("rate {}", show_rate(rate)));
        }
        if self.limit > 0 {
            parts.push(format!("limit {}", self.limit));
        }
        parts.join(", ")
    }

    fn cuts(&self) -> bool {
        self.loss >= 100.0
    }

    fn percents(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("netem loss", self.loss),
            ("netem duplicate", self.duplicate),
            ("netem corrupt", self.corrupt),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netem() -> NetemParams {
        NetemParams {
            delay: Duration::from_millis(100),
            ..Default::default()
        }
    }

    #[test]
    fn netem_parameters_are_checked_together() {
        assert!(netem().validate().is_ok());
        let e = NetemParams::default().validate().unwrap_err();
        assert_eq!(e.field, "netem");
        let e = NetemParams {
            jitter: Duration::from_millis(5),
            loss: 1.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "jitter");
        let e = NetemParams {
            distribution: DelayDistribution::Normal,
            ..netem()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "distribution");
        let e = NetemParams {
            reorder: 25.0,
            loss: 1.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "reorder");
        let e = NetemParams {
            loss: 120.0,
            ..netem()
        }
        .validate()
        .unwrap_err();
        assert!(e.reason.contains("0-100"), "{}", e.reason);
        let e = NetemParams {
            delay: Duration::from_secs(61),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "delay");
    }

    #[test]
    fn descriptions_read_like_tc() {
        let p = NetemParams {
            jitter: Duration::from_millis(10),
            distribution: DelayDistribution::Normal,
            loss: 1.5,
            rate_bps: Some(10_000_000),
            ..netem()
        };
        assert_eq!(
            p.describe(),
            "delay 100ms ± 10ms normal, loss 1.5%, rate 10mbit"
        );
        assert_eq!(show_rate(1_500_000_000), "1.5gbit");
        assert_eq!(show_rate(999), "999bit");
    }

    #[test]
    fn only_total_loss_counts_as_cutting_a_session() {
        assert!(!netem().cuts());
        assert!(NetemParams {
            loss: 100.0,
            ..Default::default()
        }
        .cuts());
    }
}
