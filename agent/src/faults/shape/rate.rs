//! The rate family's parameters: a bandwidth cap with tbf, with a burst and a latency that
//! default to what the rate needs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ms, show_rate, Shaper};
use crate::{
    errors::InvalidSpec,
    kernel::{
        caps::{Capabilities, Capability},
        qdisc::{tbf::TbfOptions, Leaf},
    },
};

/// A bandwidth cap with tbf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RateParams {
    /// Bits per second.
    pub(crate) rate_bps: u64,
    /// Bytes that may pass at once; unset: 20 ms worth of the rate, at least 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) burst: Option<u32>,
    /// Longest a packet may wait before it is dropped; unset: 50 ms.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::faults::opt_secs"
    )]
    pub(crate) latency: Option<Duration>,
}
impl RateParams {
    fn bytes_per_sec(&self) -> u64 {
        (self.rate_bps / 8).max(1)
    }

    fn burst_bytes(&self) -> u32 {
        self.burst.unwrap_or_else(|| {
            (self.bytes_per_sec() / 50).clamp(16 << 10, u64::from(u32::MAX)) as u32
        })
    }

    fn latency(&self) -> Duration {
        self.latency.unwrap_or(Duration::from_millis(50))
    }
}

impl Shaper for RateParams {
    fn validate(&self) -> Result<(), InvalidSpec> {
        if self.rate_bps < 8 {
            return Err(InvalidSpec::new(
                "rate",
                format!("{}bit/s is too slow, expected at least 8bit", self.rate_bps),
            ));
        }
        if let Some(burst) = self.burst {
            if burst < 1600 {
                return Err(InvalidSpec::new(
                    "burst",
                    format!("{burst} bytes cannot pass a full-size packet, expected at least 1600"),
                ));
            }
        }
        if let Some(latency) = self.latency {
            if latency.is_zero() || latency > Duration::from_secs(10) {
                return Err(InvalidSpec::new(
                    "latency",
                    format!("{} is out of range, expected 1ms to 10s", ms(latency)),
                ));
            }
        }
        Ok(())
    }

    fn needs(caps: &Capabilities) -> (&'static str, &Capability) {
        ("tbf (sch_tbf)", &caps.tbf)
    }

    fn leaf(&self) -> Leaf {
        Leaf {
            kind: "tbf",
            options: TbfOptions {
                rate_bytes_per_sec: self.bytes_per_sec(),
                burst_bytes: self.burst_bytes(),
                latency: self.latency(),
                mtu: 0,
            }
            .encode(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "rate {} (burst {} bytes, latency {})",
            show_rate(self.rate_bps),
            self.burst_bytes(),
            ms(self.latency())
        )
    }

    fn cuts(&self) -> bool {
        false
    }

    fn percents(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_defaults_scale_with_the_rate() {
        let slow = RateParams {
            rate_bps: 1_000_000,
            burst: None,
            latency: None,
        };
        assert_eq!(slow.burst_bytes(), 16 << 10);
        let fast = RateParams {
            rate_bps: 10_000_000_000,
            ..slow.clone()
        };
        assert_eq!(fast.burst_bytes(), 25_000_000);
        assert!(RateParams {
            rate_bps: 4,
            ..slow
        }
        .validate()
        .is_err());
    }
}
