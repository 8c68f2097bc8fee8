//! The apply path's route netlink: one synchronous socket kept open for the agent's life, and
//! requests sent several to a datagram. The kernel handles a datagram's messages in order and
//! answers each, so a batch costs one exchange, and no answer waits for a wake-up of the
//! runtime's connection task (each such round trip cost about 0.1 ms against the kernel's
//! tens of microseconds).
//!
//! Everything else (dumps, the deletions of a revert and its clean-up) keeps the [`Rtnl`]
//! connections: an IFB's deletion waits in the kernel for tens of milliseconds, which no apply
//! should wait behind on a shared socket.
//!
//! [`Rtnl`]: super::Rtnl

use std::sync::{Mutex, MutexGuard};

use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST},
    packet_route::RouteNetlinkMessage,
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
};

use super::RtnlError;

/// The socket; `None` until first used, and again after an error of the socket itself.
static SOCKET: Mutex<Option<Socket>> = Mutex::new(None);

/// One request of a batch: the message, its flags, what it does for an error's words, and an
/// error number that means "already done".
pub(crate) struct Request {
    pub(crate) message: RouteNetlinkMessage,
    pub(crate) flags: u16,
    pub(crate) what: String,
    pub(crate) device: String,
    pub(crate) done_if: Option<i32>,
}

/// Sends `requests` as one datagram and waits for every answer; returns each request's
/// replies (a lookup's message; nothing for a change). The first refusal is the error, after
/// every answer has been read.
pub(crate) fn exchange(requests: Vec<Request>) -> Result<Vec<Vec<RouteNetlinkMessage>>, RtnlError> {
    let mut guard: MutexGuard<'_, Option<Socket>> =
        SOCKET.lock().unwrap_or_else(|e| e.into_inner());
    let socket = match guard.take() {
        Some(socket) => socket,
        None => open().map_err(RtnlError::Socket)?,
    };
    let result = talk(&socket, requests);
    // A refusal leaves the socket as good as before; an error of the socket itself does not.
    if !matches!(result, Err(RtnlError::Socket(_))) {
        *guard = Some(socket);
    }
    result
}

fn open() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

fn next_seq() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn talk(
    socket: &Socket,
    requests: Vec<Request>,
) -> Result<Vec<Vec<RouteNetlinkMessage>>, RtnlError> {
    drain(socket);
    let mut buffer = Vec::new();
    let mut pending = Vec::with_capacity(requests.len());
    for request in requests {
        let seq = next_seq();
        let mut message = NetlinkMessage::from(request.message);
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK | request.flags;
        message.header.sequence_number = seq;
        message.finalize();
        let at = buffer.len();
        buffer.resize(at + message.buffer_len(), 0);
        message.serialize(&mut buffer[at..]);
        pending.push((seq, request.what, request.device, request.done_if));
    }
    socket.send(&buffer, 0).map_err(RtnlError::Socket)?;
    let mut replies: Vec<Vec<RouteNetlinkMessage>> = vec![Vec::new(); pending.len()];
    let mut answered = vec![false; pending.len()];
    let mut refused = None;
    let mut receive = vec![0u8; 64 * 1024];
    while answered.iter().any(|a| !a) {
        let n = socket
            .recv(&mut &mut receive[..], 0)
            .map_err(RtnlError::Socket)?;
        let mut at = 0;
        while at < n {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[at..n])
                .map_err(|e| RtnlError::Socket(std::io::Error::other(e)))?;
            let len = message.header.length as usize;
            if len == 0 {
                return Err(RtnlError::Socket(std::io::Error::other(
                    "an empty route netlink message",
                )));
            }
            at += len.next_multiple_of(4);
            let Some(i) = pending
                .iter()
                .position(|(seq, ..)| *seq == message.header.sequence_number)
            else {
                // An answer to an earlier exchange that gave up: not ours.
                continue;
            };
            match message.payload {
                NetlinkPayload::Error(e) => {
                    answered[i] = true;
                    let (_, what, device, done_if) = &pending[i];
                    let done = e.code.is_none()
                        || done_if.is_some_and(|errno| e.raw_code().abs() == errno);
                    if !done && refused.is_none() {
                        refused = Some(RtnlError::Netlink {
                            what: what.clone(),
                            device: device.clone(),
                            source: rtnetlink::Error::NetlinkError(e),
                        });
                    }
                }
                NetlinkPayload::InnerMessage(reply) => replies[i].push(reply),
                _ => {}
            }
        }
    }
    match refused {
        Some(e) => Err(e),
        None => Ok(replies),
    }
}

/// Reads away whatever an earlier exchange left unread (normally nothing: one non-blocking
/// read).
fn drain(socket: &Socket) {
    let mut scrap = vec![0u8; 8192];
    while matches!(socket.recv(&mut &mut scrap[..], libc::MSG_DONTWAIT), Ok(n) if n > 0) {}
}
