//! faultline's compiled eBPF object (built by agent/build.rs from agent-ebpf/) and the one
//! loader of it: fresh copies of a program, verified by the kernel, with spares loaded ahead so
//! that a fault's apply does not wait for the verifier.

use std::{
    collections::HashMap,
    fmt,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    thread,
};

use aya::{
    maps::Array,
    programs::{ProgramError, SchedClassifier},
    util::KernelVersion,
    Ebpf, EbpfLoader,
};

use super::BpfError;

/// The compiled eBPF object, built by agent/build.rs: the tc classifiers here, and the TCP
/// raw tracepoint programs of `monitor::tcp`.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/faultline-ebpf"));

/// The loss classifier.
pub(crate) const LOSS_PROGRAM: &str = "faultline_loss";
/// The steering classifier of shaping faults.
pub(crate) const STEER_PROGRAM: &str = "faultline_steer";

/// Whether this kernel attaches tc programs through TCX links (Linux 6.6 and later).
pub(crate) fn tcx_supported() -> bool {
    KernelVersion::current()
        .map(|v| v >= KernelVersion::new(6, 6, 0))
        .unwrap_or(false)
}

/// A verifier log runs to tens of kilobytes: the agent logs it whole, the error keeps its last
/// lines, which say what was refused.
fn verifier_error(e: ProgramError) -> BpfError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => BpfError::Verifier {
            error: io_error,
            tail: verifier_tail(LOSS_PROGRAM, &verifier_log.to_string()),
        },
        other => BpfError::Program(other),
    }
}

/// Logs a verifier's refusal of `program` whole (tens of kilobytes) and returns its last lines,
/// which say what was refused, for the error.
pub(crate) fn verifier_tail(program: &str, log: &str) -> String {
    tracing::warn!(program, log = %log, "the verifier refused the program");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// Classifier objects loaded ahead, one per program: the verifier takes milliseconds for each
/// load, which a fault's apply then does not wait for. Every fault still gets a copy of its own
/// (program and maps), as before. A spare is held only by the agent's descriptors, so nothing
/// of it outlives the agent.
///
/// A program gets spares once a fault has used it, and the next spare is loaded only when asked
/// ([`Spares::refill`], once the apply has answered): a load running beside an apply took the
/// CPU the apply's netlink requests were waiting for (1.5 ms of a 2.5 ms apply, p50, on 2
/// shared cores).
#[derive(Clone, Default)]
pub(super) struct Spares(Arc<Mutex<SpareSet>>);

#[derive(Default)]
struct SpareSet {
    ready: HashMap<&'static str, Ebpf>,
    /// The programs faults have taken, whose spares `refill` keeps ready.
    wanted: Vec<&'static str>,
    /// A refill is under way.
    loading: bool,
}

impl fmt::Debug for Spares {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.lock().ready.keys()).finish()
    }
}

impl Spares {
    fn lock(&self) -> MutexGuard<'_, SpareSet> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the object with `program` loaded: the spare if one is ready, else a fresh
    /// load.
    pub(super) fn take(&self, program: &'static str) -> Result<Ebpf, BpfError> {
        let spare = {
            let mut set = self.lock();
            if !set.wanted.contains(&program) {
                set.wanted.push(program);
            }
            set.ready.remove(program)
        };
        match spare {
            Some(ebpf) => Ok(ebpf),
            None => load_fresh(program),
        }
    }

    /// Loads, on a thread of its own, a spare of every program taken whose spare is missing.
    pub(super) fn refill(&self) {
        let missing: Vec<&'static str> = {
            let mut set = self.lock();
            if set.loading {
                return;
            }
            let missing: Vec<_> = set
                .wanted
                .iter()
                .copied()
                .filter(|p| !set.ready.contains_key(p))
                .collect();
            set.loading = !missing.is_empty();
            missing
        };
        if missing.is_empty() {
            return;
        }
        let spares = self.clone();
        let load = move || {
            // Only on a CPU nothing else wants: the agent's next request (often the revert of
            // the fault just applied) must not wait behind the verifier.
            let idle = libc::sched_param { sched_priority: 0 };
            // SAFETY: sets the calling thread's policy; the parameter outlives the call.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the spare loader's priority");
            }
            for program in missing {
                match load_fresh(program) {
                    Ok(ebpf) => {
                        spares.lock().ready.entry(program).or_insert(ebpf);
                    }
                    // The next fault loads its own and reports the error then, to its requester.
                    Err(e) => {
                        tracing::debug!(program, error = %e, "cannot load a spare classifier")
                    }
                }
            }
            spares.lock().loading = false;
        };
        if let Err(e) = thread::Builder::new()
            .name("ebpf-spare".to_owned())
            .spawn(load)
        {
            self.lock().loading = false;
            tracing::debug!(error = %e, "cannot start loading a spare classifier");
        }
    }
}

/// The agent's one loader of the classifiers' object. The classifiers read no kernel struct (no
/// CO-RE relocations in the object), so they need none of the kernel's BTF; yet every
/// `EbpfLoader::new` parses all of /sys/kernel/btf/vmlinux (`Ebpf::load` twice), which was most
/// of a shaping fault's apply. One loader parses it once, at the first fault, and drops it at
/// once (kept, it would hold about 20 MiB for the agent's life). The lock also serializes loads.
fn loader() -> MutexGuard<'static, EbpfLoader<'static>> {
    static LOADER: OnceLock<Mutex<EbpfLoader<'static>>> = OnceLock::new();
    LOADER
        .get_or_init(|| {
            let mut loader = EbpfLoader::new();
            loader.btf(None);
            // glibc keeps the freed parse (megabytes in small blocks) in its arenas; give it
            // back, or the agent's memory stays some 13 MiB higher after its first fault.
            // SAFETY: malloc_trim only releases free memory; it has no preconditions.
            unsafe { libc::malloc_trim(0) };
            Mutex::new(loader)
        })
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// A fresh copy of faultline's eBPF object with `program` loaded (verified by the kernel).
fn load_fresh(program: &'static str) -> Result<Ebpf, BpfError> {
    let mut ebpf = loader().load(EBPF_OBJECT).map_err(BpfError::Load)?;
    classifier(&mut ebpf, program)?
        .load()
        .map_err(verifier_error)?;
    Ok(ebpf)
}

/// Writes `config` into `map`'s single entry.
pub(super) fn configure<T: aya::Pod>(
    ebpf: &mut Ebpf,
    map: &'static str,
    config: &T,
) -> Result<(), BpfError> {
    let data = ebpf.map_mut(map).ok_or(BpfError::Missing(map))?;
    let mut array: Array<_, T> = Array::try_from(data).map_err(BpfError::Map)?;
    array.set(0, config, 0).map_err(BpfError::Map)
}

pub(super) fn pin_maps(
    ebpf: &Ebpf,
    dir: &Path,
    maps: &[(&'static str, &str)],
) -> Result<(), BpfError> {
    for (name, file) in maps {
        let map = ebpf.map(name).ok_or(BpfError::Missing(name))?;
        let path = dir.join(file);
        map.pin(&path)
            .map_err(|source| BpfError::Pin { path, source })?;
    }
    Ok(())
}

pub(super) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, BpfError> {
    ebpf.program_mut(name)
        .ok_or(BpfError::Missing(name))?
        .try_into()
        .map_err(BpfError::Program)
}
