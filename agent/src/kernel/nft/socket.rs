//! The netlink socket to nf_tables (libmnl through `mnl`): dumps, and batches sent whole with
//! every answer read back. Written against the C libraries because `nftnl` builds messages but
//! leaves the socket to its caller.
//!
//! One socket serves the agent's whole life. Closing a netfilter netlink socket is not free:
//! on its release the kernel flushes nf_tables' pending destructions (the work that frees
//! deleted rules, chains and tables once an RCU grace period has passed), so a close after a
//! deletion waits that grace period, about 10 ms here (strace of `nft delete table`: the
//! batch's sendmsg 0.1 ms, its close 10 ms). Kept open, the socket never pays it, and the
//! destructions run in the kernel's own worker after the answer.

use std::sync::{Mutex, MutexGuard};

use nftnl::{nftnl_sys as sys, FinalizedBatch, ProtoFamily};

use super::NftError;

/// The agent's socket; `None` until first used, and again after an error other than a refusal.
static SOCKET: Mutex<Option<Shared>> = Mutex::new(None);

/// A libmnl socket, moved between threads under [`SOCKET`]'s lock.
struct Shared(mnl::Socket);

// SAFETY: an mnl socket is a file descriptor and the address it is bound to; libmnl keeps no
// thread-local state, and the mutex gives one thread at a time the use of it.
unsafe impl Send for Shared {}

/// Runs `talk` on the shared socket (opening it if needed); an error discards the socket.
fn with_socket<T>(talk: impl FnOnce(&mnl::Socket) -> Result<T, NftError>) -> Result<T, NftError> {
    let mut guard: MutexGuard<'_, Option<Shared>> =
        SOCKET.lock().unwrap_or_else(|e| e.into_inner());
    let socket = match guard.as_ref() {
        Some(shared) => &shared.0,
        None => {
            let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NftError::Socket)?;
            &guard.insert(Shared(socket)).0
        }
    };
    drain(socket);
    let result = talk(socket);
    // A refusal leaves at most unread acknowledgements, which the next drain reads away; any
    // other error may mean a broken socket.
    if matches!(result, Err(ref e) if !matches!(e, NftError::Refused { .. })) {
        *guard = None;
    }
    result
}

/// Runs one dump request and collects what `parse` makes of each message.
pub(super) fn dump<T>(
    msg_type: u16,
    what: &'static str,
    parse: fn(&libc::nlmsghdr) -> T,
) -> Result<Vec<T>, NftError> {
    with_socket(|socket| dump_on(socket, msg_type, what, parse))
}

fn dump_on<T>(
    socket: &mnl::Socket,
    msg_type: u16,
    what: &'static str,
    parse: fn(&libc::nlmsghdr) -> T,
) -> Result<Vec<T>, NftError> {
    let portid = socket.portid();
    let seq = next_seq();
    let mut request = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    // SAFETY: the buffer holds nft_nlmsg_maxsize bytes, more than a bare header needs.
    let header = unsafe {
        sys::nftnl_nlmsg_build_hdr(
            request.as_mut_ptr().cast(),
            msg_type,
            ProtoFamily::Unspec as u16,
            (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
            seq,
        )
    };
    // SAFETY: nftnl_nlmsg_build_hdr returned the header it wrote at the start of the buffer.
    let len = unsafe { (*header).nlmsg_len } as usize;
    socket
        .send(&request[..len])
        .map_err(|source| NftError::Dump { what, source })?;

    struct Collect<T> {
        parse: fn(&libc::nlmsghdr) -> T,
        out: Vec<T>,
    }
    fn callback<T>(header: &libc::nlmsghdr, data: &mut Collect<T>) -> libc::c_int {
        let value = (data.parse)(header);
        data.out.push(value);
        mnl_sys_ok()
    }
    let mut collect = Collect {
        parse,
        out: Vec::new(),
    };
    let mut buffer = AlignedBuffer::new();
    loop {
        let n = socket
            .recv_raw(buffer.bytes_mut())
            .map_err(|source| NftError::Dump { what, source })?;
        if n == 0 {
            break;
        }
        match mnl::cb_run2(
            &buffer.bytes()[..n],
            seq,
            portid,
            callback::<T>,
            &mut collect,
        ) {
            Ok(mnl::CbResult::Stop) => break,
            Ok(mnl::CbResult::Ok) => {}
            // nf_tables answers a dump of an unknown family/table with ENOENT: nothing there.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(source) => return Err(NftError::Dump { what, source }),
        }
    }
    Ok(collect.out)
}

/// Reads away whatever an earlier exchange left unread (one non-blocking read when, as
/// normally, there is nothing), so that no stale answer is taken for the next request's.
fn drain(socket: &mnl::Socket) {
    use std::os::fd::AsRawFd as _;
    let mut scrap = [0u8; 8192];
    loop {
        // SAFETY: a read into a buffer we own, of its length, on the socket's descriptor.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                scrap.as_mut_ptr().cast(),
                scrap.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            return;
        }
    }
}

/// MNL_CB_OK: keep going.
fn mnl_sys_ok() -> libc::c_int {
    1
}

/// Sends a batch and checks every acknowledgement, so a refused rule is reported, not lost.
pub(super) fn send(batch: FinalizedBatch, what: impl Fn() -> String) -> Result<(), NftError> {
    with_socket(|socket| send_on(socket, &batch, &what))
}

fn send_on(
    socket: &mnl::Socket,
    batch: &FinalizedBatch,
    what: &impl Fn() -> String,
) -> Result<(), NftError> {
    let portid = socket.portid();
    socket.send_all(batch).map_err(|source| NftError::Refused {
        what: what(),
        source,
    })?;
    let mut buffer = AlignedBuffer::new();
    let mut expected = batch.sequence_numbers();
    while !expected.is_empty() {
        let n = socket
            .recv_raw(buffer.bytes_mut())
            .map_err(|source| NftError::Refused {
                what: what(),
                source,
            })?;
        if n == 0 {
            break;
        }
        for message in mnl::NlMessages::new(&buffer.bytes()[..n]) {
            let message = message.map_err(|source| NftError::Refused {
                what: what(),
                source,
            })?;
            let Some(seq) = expected.next() else { break };
            mnl::cb_run(message, seq, portid).map_err(|source| NftError::Refused {
                what: what(),
                source,
            })?;
        }
    }
    Ok(())
}

fn next_seq() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A receive buffer aligned for `nlmsghdr`, as libmnl requires; large enough for the 32 KiB
/// datagrams the kernel sends for dumps.
struct AlignedBuffer(Vec<u64>);

impl AlignedBuffer {
    const BYTES: usize = 64 * 1024;

    fn new() -> Self {
        Self(vec![0u64; Self::BYTES / 8])
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: a u64 slice viewed as bytes, same allocation and length in bytes.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), Self::BYTES) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, with the unique borrow of the vector.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), Self::BYTES) }
    }
}
