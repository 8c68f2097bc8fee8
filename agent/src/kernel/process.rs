//! Processes as faults that signal or stop them see them: who they are (pid with start time,
//! so that a reused pid is never mistaken for the process), the processes faultline never
//! touches (PID 1, the agent, its ancestors and its own children, kernel threads), the ones
//! holding sessions on protected ports, and signals sent through a pidfd, so that a process
//! that exited between the look and the signal is never replaced by another with its pid.
//!
//! Also the one place repeating actions live ([`Repeats`]): a fault that acts again every
//! period (a kill `--every`) runs on a thread of its own, stopped when the fault is reverted.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    sync::{mpsc, Mutex},
    thread,
    time::Duration,
};

use procfs::process::{FDTarget, Process};

/// The kernel's flag for a kernel thread in /proc/<pid>/stat.
const PF_KTHREAD: u32 = 0x0020_0000;

/// A process as seen at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    /// Clock ticks after boot: with the pid, names one process.
    pub(crate) start: u64,
    pub(crate) comm: String,
    pub(crate) ppid: u32,
    pub(crate) kthread: bool,
}

impl Proc {
    pub(crate) fn read(pid: u32) -> Option<Self> {
        let stat = Process::new(pid as i32).ok()?.stat().ok()?;
        Some(Self {
            pid,
            start: stat.starttime,
            comm: stat.comm,
            ppid: stat.ppid.max(0) as u32,
            kthread: stat.flags & PF_KTHREAD != 0 || pid == 2 || stat.ppid == 2,
        })
    }

    /// The command line, arguments joined by spaces; empty for a kernel thread.
    pub(crate) fn cmdline(&self) -> String {
        Process::new(self.pid as i32)
            .and_then(|p| p.cmdline())
            .map(|args| args.join(" "))
            .unwrap_or_default()
    }
}

/// Every process on the host (in the agent's pid namespace), as far as it can be read.
pub(crate) fn all() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// The processes no fault ever signals or stops, with why: PID 1, the agent and the
/// processes above it (whoever started it: its supervisor, a shell), its own children (stress
/// workers), and kernel threads.
pub(crate) struct Untouchable {
    agent: u32,
    ancestors: HashSet<u32>,
}

impl Untouchable {
    pub(crate) fn now() -> Self {
        let agent = std::process::id();
        let mut ancestors = HashSet::new();
        let mut pid = agent;
        while let Some(p) = Proc::read(pid) {
            if p.ppid == 0 || !ancestors.insert(p.ppid) {
                break;
            }
            pid = p.ppid;
        }
        Self { agent, ancestors }
    }

    /// Why `p` is never touched, if it is not to be.
    pub(crate) fn why(&self, p: &Proc) -> Option<&'static str> {
        if p.pid == 1 {
            Some("PID 1 (init) is never touched")
        } else if p.pid == self.agent {
            Some("it is the faultline agent itself")
        } else if self.ancestors.contains(&p.pid) {
            Some("it is an ancestor of the faultline agent")
        } else if p.ppid == self.agent {
            Some("it is the faultline agent's own child (a stress worker)")
        } else if p.kthread {
            Some("it is a kernel thread")
        } else {
            None
        }
    }
}

/// Processes with an established TCP connection on one of `ports` (local side), and the
/// port: what the safety guard protects, unless a request says `force`.
pub(crate) fn session_holders(ports: &[u16]) -> HashMap<u32, u16> {
    let mut inodes: HashMap<u64, u16> = HashMap::new();
    if ports.is_empty() {
        return HashMap::new();
    }
    let v4 = procfs::net::tcp().unwrap_or_default();
    let v6 = procfs::net::tcp6().unwrap_or_default();
    for entry in v4.into_iter().chain(v6) {
        if entry.state == procfs::net::TcpState::Established
            && ports.contains(&entry.local_address.port())
        {
            inodes.insert(entry.inode, entry.local_address.port());
        }
    }
    let mut holders = HashMap::new();
    if inodes.is_empty() {
        return holders;
    }
    for pid in all() {
        let Ok(fds) = Process::new(pid as i32).and_then(|p| p.fd()) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            if let FDTarget::Socket(inode) = fd.target {
                if let Some(port) = inodes.get(&inode) {
                    holders.insert(pid, *port);
                    break;
                }
            }
        }
    }
    holders
}

/// Sends `signal` to the process `p` names, and only to it: through a pidfd opened while its
/// start time still matches. A process that has exited is `ESRCH`.
pub(crate) fn signal(p: &Proc, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; no memory is
    // passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned by the kernel and is owned here alone.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // The pidfd holds the process: if the start time matches now, the fd is that process.
    if Proc::read(p.pid).map(|now| now.start) != Some(p.start) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, a signal number, no siginfo (null) and
    // no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A running repeat: dropping the sender stops it; the handle waits for it.
type Running = (mpsc::Sender<()>, thread::JoinHandle<()>);

/// How many processes each kill fault has signalled so far: its effect.
#[derive(Debug, Default)]
pub(crate) struct Signalled {
    counts: Mutex<HashMap<String, u64>>,
}

impl Signalled {
    pub(crate) fn add(&self, id: &str, n: u64) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default() += n;
    }

    pub(crate) fn get(&self, id: &str) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn forget(&self, id: &str) {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// Actions that faults repeat every period, one thread each, until the fault is reverted.
#[derive(Default)]
pub(crate) struct Repeats {
    running: Mutex<HashMap<String, Running>>,
}

impl Repeats {
    /// Runs `action` every `period` (the first time one period from now) until [`Repeats::stop`].
    pub(crate) fn start(
        &self,
        id: &str,
        period: Duration,
        mut action: impl FnMut() + Send + 'static,
    ) -> io::Result<()> {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = thread::Builder::new()
            .name(format!("repeat-{id}"))
            .spawn(move || {
                // Nothing is ever sent: the sender's drop (stop) ends the wait at once.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                    action();
                }
            })?;
        self.lock().insert(id.to_owned(), (stop, handle));
        Ok(())
    }

    /// Stops fault `id`'s repeating action, waiting for a round under way to end. Idempotent.
    pub(crate) fn stop(&self, id: &str) {
        let entry = self.lock().remove(id);
        if let Some((stop, handle)) = entry {
            drop(stop);
            let _ = handle.join();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicU32, Ordering},
            Arc,
        },
        time::Instant,
    };

    use super::*;

    #[test]
    fn the_agent_its_ancestors_and_init_are_untouchable() {
        let untouchable = Untouchable::now();
        let me = Proc::read(std::process::id()).unwrap();
        assert!(untouchable.why(&me).unwrap().contains("agent itself"));
        let parent = Proc::read(me.ppid).unwrap();
        assert!(untouchable.why(&parent).unwrap().contains("ancestor"));
        let init = Proc::read(1).unwrap();
        assert!(untouchable.why(&init).is_some());
        if let Some(kthreadd) = Proc::read(2).filter(|p| p.kthread) {
            assert!(untouchable.why(&kthreadd).is_some());
        }
    }

    #[test]
    fn a_signal_reaches_the_process_only_while_it_is_the_same_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = Proc::read(child.id()).unwrap();
        assert_eq!(p.comm, "sleep");
        let stale = Proc {
            start: p.start + 1,
            ..p.clone()
        };
        assert_eq!(
            signal(&stale, libc::SIGKILL).unwrap_err().raw_os_error(),
            Some(libc::ESRCH)
        );
        signal(&p, libc::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }

    #[test]
    fn a_repeat_runs_every_period_and_stops_at_once() {
        let repeats = Repeats::default();
        let count = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&count);
        repeats
            .start("f", Duration::from_millis(20), move || {
                counted.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        thread::sleep(Duration::from_millis(110));
        let started = Instant::now();
        repeats.stop("f");
        assert!(started.elapsed() < Duration::from_millis(50));
        let n = count.load(Ordering::SeqCst);
        assert!((3..=6).contains(&n), "{n} rounds in 110 ms every 20 ms");
        thread::sleep(Duration::from_millis(50));
        assert_eq!(count.load(Ordering::SeqCst), n, "it stopped");
        repeats.stop("f");
    }
}
