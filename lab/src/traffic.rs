//! Real traffic between test hosts, to measure what a fault does: TCP listeners and connects,
//! a bulk TCP transfer, and UDP datagram loss counted by sequence number. Sockets are created
//! inside the hosts' namespaces ([`Netns::run`]) and used from ordinary threads.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{ensure, Context as _, Result};

use crate::Netns;

/// A TCP listener in `ns`. The kernel completes handshakes into its backlog, so connects
/// succeed without anyone calling `accept`.
pub fn tcp_listen(ns: &Netns, addr: SocketAddr) -> Result<TcpListener> {
    ns.run(|| TcpListener::bind(addr))?
        .with_context(|| format!("listening on {addr} in {}", ns.name()))
}

/// A TCP connection from `ns` to `addr`, or the connect error (refused, timed out, ...).
pub fn tcp_connect(
    ns: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<io::Result<TcpStream>> {
    ns.run(|| TcpStream::connect_timeout(&addr, timeout))
}

/// Sends `bytes` over a new TCP connection from `ns` to a fresh listener at `addr` (in
/// `server_ns`), and returns how long the transfer took until the receiver had it all.
pub fn tcp_transfer(
    ns: &Netns,
    server_ns: &Netns,
    addr: SocketAddr,
    bytes: usize,
    timeout: Duration,
) -> Result<Duration> {
    let listener = tcp_listen(server_ns, addr)?;
    let started = Instant::now();
    thread::scope(|scope| {
        let receiver = scope.spawn(|| -> io::Result<usize> {
            let (mut stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(timeout))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0;
            loop {
                match stream.read(&mut buf)? {
                    0 => return Ok(total),
                    n => total += n,
                }
            }
        });
        let sent = (|| -> Result<()> {
            let mut stream = tcp_connect(ns, addr, timeout)??;
            stream.set_write_timeout(Some(timeout))?;
            let chunk = vec![0x5au8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                stream.write_all(&chunk[..n])?;
                left -= n;
            }
            stream.shutdown(std::net::Shutdown::Write)?;
            Ok(())
        })();
        let received = receiver.join().expect("receiver thread panicked");
        sent.context("sending")?;
        let received = received.context("receiving")?;
        ensure!(received == bytes, "received {received} of {bytes} bytes");
        Ok(started.elapsed())
    })
}

/// The fraction of `count` UDP datagrams sent from `from` to `addr` (a socket bound in `to`)
/// that did not arrive, in 0.0..=1.0. Datagrams carry a run nonce and a sequence number, so
/// duplicates and strays from other runs are not counted; sending is paced in bursts and the
/// receiver reads concurrently into a large buffer, so the sockets themselves lose nothing.
pub fn udp_loss(from: &Netns, to: &Netns, addr: SocketAddr, count: usize) -> Result<f64> {
    let (receiver, sender) = udp_pair(from, to, addr)?;
    let nonce = run_nonce();
    let sending_done = AtomicBool::new(false);
    let received = thread::scope(|scope| {
        let counter = scope.spawn(|| {
            let mut seen = vec![false; count];
            let mut buf = [0u8; 64];
            let mut last = Instant::now();
            let mut done_at: Option<Instant> = None;
            loop {
                match receiver.recv(&mut buf) {
                    Ok(12) if buf[..8] == nonce.to_be_bytes() => {
                        let seq = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
                        if let Some(slot) = seen.get_mut(seq as usize) {
                            *slot = true;
                        }
                        last = Instant::now();
                    }
                    Ok(_) => {}
                    Err(e) if is_retry(&e) => {}
                    Err(e) => return Err(e),
                }
                if sending_done.load(Ordering::Acquire) {
                    let done_at = *done_at.get_or_insert_with(Instant::now);
                    // Quiet for a while after the last datagram was sent: nothing more comes.
                    if done_at.elapsed() > Duration::from_millis(300)
                        && last.elapsed() > Duration::from_millis(300)
                    {
                        return Ok(seen.iter().filter(|&&s| s).count());
                    }
                }
            }
        });
        for seq in 0..count {
            let mut payload = [0u8; 12];
            payload[..8].copy_from_slice(&nonce.to_be_bytes());
            payload[8..].copy_from_slice(&(seq as u32).to_be_bytes());
            // A send error (ENOBUFS when a classifier drops on egress) is a lost datagram.
            let _ = sender.send_to(&payload, addr);
            if seq % 100 == 99 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        sending_done.store(true, Ordering::Release);
        counter.join().expect("receiver thread panicked")
    })
    .context("receiving datagrams")?;
    Ok(1.0 - received as f64 / count as f64)
}

/// A socket bound to `addr` in `to` and one on any port in `from`, both with a large receive
/// buffer (so the sockets themselves lose nothing) and a short read timeout (so readers can
/// poll for the end).
fn udp_pair(from: &Netns, to: &Netns, addr: SocketAddr) -> Result<(UdpSocket, UdpSocket)> {
    let open = |bind: SocketAddr| -> io::Result<UdpSocket> {
        let socket = UdpSocket::bind(bind)?;
        set_receive_buffer(&socket, 16 << 20)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(socket)
    };
    let bound = to
        .run(|| open(addr))?
        .with_context(|| format!("binding {addr} in {}", to.name()))?;
    let any = match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let other = from
        .run(|| open(any))?
        .with_context(|| format!("binding a UDP socket in {}", from.name()))?;
    Ok((bound, other))
}

/// A receive that ended without a datagram and should simply be tried again: the read
/// timeout ran out, or a signal came in (a socket with SO_RCVTIMEO returns EINTR even where
/// the handler asked for restarts).
fn is_retry(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Marks one run's datagrams, so that strays of another run are not counted.
fn run_nonce() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
        ^ u64::from(std::process::id())
}

fn set_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt on an open socket with a correctly sized int option; as root,
    // SO_RCVBUFFORCE may exceed net.core.rmem_max.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Round-trip times of `count` UDP probes from `from` to an echo server at `addr` (bound in
/// `to`), sent every `interval`; `None` for a probe whose echo never came. Probes are in flight
/// together, so a 100 ms delay costs 100 ms once, not per probe, and each carries its own send
/// time, so reordering and duplicates cannot confuse the count.
pub fn udp_rtts(
    from: &Netns,
    to: &Netns,
    addr: SocketAddr,
    count: usize,
    interval: Duration,
) -> Result<Vec<Option<Duration>>> {
    let (server, client) = udp_pair(from, to, addr)?;
    let nonce = run_nonce();
    let stop = AtomicBool::new(false);
    let origin = Instant::now();
    thread::scope(|scope| {
        let echo = scope.spawn(|| -> io::Result<()> {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Acquire) {
                match server.recv_from(&mut buf) {
                    Ok((n, peer)) => {
                        server.send_to(&buf[..n], peer)?;
                    }
                    Err(e) if is_retry(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        let collector = scope.spawn(|| -> io::Result<Vec<Option<Duration>>> {
            let mut rtts = vec![None; count];
            let mut buf = [0u8; 64];
            let mut quiet_since: Option<Instant> = None;
            loop {
                match client.recv(&mut buf) {
                    Ok(20) if buf[..8] == nonce.to_be_bytes() => {
                        let seq = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
                        let sent = u64::from_be_bytes(buf[12..20].try_into().expect("8 bytes"));
                        let rtt = origin.elapsed().saturating_sub(Duration::from_nanos(sent));
                        if let Some(slot) = rtts.get_mut(seq as usize) {
                            slot.get_or_insert(rtt);
                        }
                        quiet_since = None;
                    }
                    Ok(_) => {}
                    Err(e) if is_retry(&e) => {}
                    Err(e) => return Err(e),
                }
                if stop.load(Ordering::Acquire) {
                    // Sending is over: wait until echoes have stopped coming for a second.
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(1) {
                        return Ok(rtts);
                    }
                }
            }
        });
        let mut next = Instant::now();
        for seq in 0..count {
            let mut payload = [0u8; 20];
            payload[..8].copy_from_slice(&nonce.to_be_bytes());
            payload[8..12].copy_from_slice(&(seq as u32).to_be_bytes());
            payload[12..].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_be_bytes());
            let _ = client.send_to(&payload, addr);
            next += interval;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        // Let the last echoes travel before the collector starts counting quiet time.
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Release);
        let rtts = collector.join().expect("collector thread panicked");
        echo.join()
            .expect("echo thread panicked")
            .context("echo server")?;
        rtts.context("collecting echoes")
    })
}

/// The median of the probes that came back, and how many did.
pub fn median_rtt(rtts: &[Option<Duration>]) -> Option<(Duration, usize)> {
    let mut got: Vec<Duration> = rtts.iter().flatten().copied().collect();
    if got.is_empty() {
        return None;
    }
    got.sort();
    Some((got[got.len() / 2], got.len()))
}

/// Goodput in bits per second of a `bytes`-long TCP transfer from `ns` to a fresh listener at
/// `addr` in `server_ns`.
pub fn tcp_rate_bps(
    ns: &Netns,
    server_ns: &Netns,
    addr: SocketAddr,
    bytes: usize,
    timeout: Duration,
) -> Result<f64> {
    let took = tcp_transfer(ns, server_ns, addr, bytes, timeout)?;
    Ok(bytes as f64 * 8.0 / took.as_secs_f64())
}

/// Receives one TCP connection on `listener` to its end and returns the goodput in bits per
/// second, timed from the first byte; for senders that are other processes.
pub fn receive_rate_bps(listener: &TcpListener, timeout: Duration) -> Result<(usize, f64)> {
    // Polled, so that a sender that never connects fails the test instead of hanging it.
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ensure!(
                    Instant::now() < deadline,
                    "nobody connected within {timeout:?}"
                );
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("accepting"),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    let mut first: Option<Instant> = None;
    loop {
        match stream.read(&mut buf).context("receiving")? {
            0 => break,
            n => {
                first.get_or_insert_with(Instant::now);
                total += n;
            }
        }
    }
    let took = first.map(|f| f.elapsed()).unwrap_or_default();
    ensure!(total > 0, "the sender sent nothing");
    Ok((total, total as f64 * 8.0 / took.as_secs_f64().max(1e-6)))
}
