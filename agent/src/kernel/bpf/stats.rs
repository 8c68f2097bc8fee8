//! A classifier's own counters, read back from its pinned per-CPU `stats` map: what the loss
//! classifier matched and dropped, what the steering classifier handed to a shaping fault's
//! qdisc. Pinned, so they can be read as long as the fault's pins exist, by any agent. And the
//! pins themselves, for verifying that a revert left none.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use faultline_common::{LossStats, SteerStats};

use super::{classifier::Classifiers, BpfError};

/// The pin names of the stats maps (see `Classifiers::attach`, `attach_steer`).
const LOSS_STATS: &str = "stats";
const STEER_STATS: &str = "steer_stats";

impl Classifiers {
    /// `(matched, dropped)` packets of fault `id`'s loss classifier, summed over the CPUs;
    /// `None` when the fault has no pinned stats (not applied, or reverted).
    pub(crate) fn loss_counts(&self, id: &str) -> Result<Option<(u64, u64)>, BpfError> {
        let Some(per_cpu) = read::<LossStats>(&self.dir(id).join(LOSS_STATS))? else {
            return Ok(None);
        };
        Ok(Some(
            per_cpu
                .iter()
                .fold((0, 0), |(m, d), s| (m + s.matched, d + s.dropped)),
        ))
    }

    /// Fault `id`'s pins on bpffs (its attachments and maps), one line each.
    pub(crate) fn pins(&self, id: &str) -> Vec<String> {
        let dir = self.dir(id);
        let mut pins: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| format!("bpf pin {}", e.path().display()))
            .collect();
        pins.sort();
        if pins.is_empty() && dir.exists() {
            pins.push(format!("bpf pin directory {}", dir.display()));
        }
        pins
    }

    /// Packets fault `id`'s steering classifier sent to its qdisc, summed over the CPUs.
    pub(crate) fn steered(&self, id: &str) -> Result<Option<u64>, BpfError> {
        Ok(read::<SteerStats>(&self.dir(id).join(STEER_STATS))?
            .map(|per_cpu| per_cpu.iter().map(|s| s.steered).sum()))
    }
}

/// The one entry of a pinned per-CPU array, one value per possible CPU.
fn read<T: aya::Pod>(pin: &Path) -> Result<Option<Vec<T>>, BpfError> {
    if !pin.exists() {
        return Ok(None);
    }
    let failed = |source| BpfError::Stats {
        path: pin.to_owned(),
        source,
    };
    let data = MapData::from_pin(pin).map_err(failed)?;
    let array: PerCpuArray<MapData, T> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(failed)?;
    let values = array.get(&0, 0).map_err(failed)?;
    Ok(Some(values.iter().copied().collect()))
}
