//! Real traffic for the bench's measurements, made by xtask itself inside the bench's
//! namespaces: UDP datagram loss counted by sequence number, TCP goodput, loopback connects per
//! second, and timed HTTP scrapes. Adapted from the integration tests' harness
//! (tests/src/traffic.rs), which xtask cannot link (it builds the agent).

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context as _, Result};

use super::lab::Netns;

fn nonce() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
        ^ u64::from(std::process::id())
}

fn set_int_option(fd: i32, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt on an open socket with a correctly sized int option.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The fraction of `count` UDP datagrams sent from `from` to `addr` (bound in `to`) that did
/// not arrive. Datagrams carry a run nonce and a sequence number; sending is paced in bursts of
/// 100 and the receiver reads concurrently into a 16 MiB buffer, so the sockets lose nothing.
pub fn udp_loss(from: &Netns, to: &Netns, addr: SocketAddr, count: usize) -> Result<f64> {
    let receiver = to
        .run(|| -> io::Result<UdpSocket> {
            let socket = UdpSocket::bind(addr)?;
            // As root, SO_RCVBUFFORCE may exceed net.core.rmem_max.
            set_int_option(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                16 << 20,
            )?;
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
            Ok(socket)
        })?
        .with_context(|| format!("binding {addr} in {}", to.name()))?;
    let sender = from
        .run(|| UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))?
        .with_context(|| format!("binding a UDP socket in {}", from.name()))?;
    let nonce = nonce();
    let sending_done = AtomicBool::new(false);
    let received = thread::scope(|scope| {
        let counter = scope.spawn(|| -> io::Result<usize> {
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
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e),
                }
                if sending_done.load(Ordering::Acquire) {
                    let done_at = *done_at.get_or_insert_with(Instant::now);
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
            // A send error (a classifier's drop on egress) is a lost datagram.
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

/// Goodput in bits per second of `bytes` sent over one new TCP connection from `from` to a
/// fresh listener at `addr` in `to`, timed from the connect until the receiver has it all.
pub fn tcp_goodput_bps(from: &Netns, to: &Netns, addr: SocketAddr, bytes: usize) -> Result<f64> {
    let timeout = Duration::from_secs(60);
    let listener = to
        .run(|| TcpListener::bind(addr))?
        .with_context(|| format!("listening on {addr} in {}", to.name()))?;
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
            let mut stream = from.run(|| TcpStream::connect_timeout(&addr, timeout))??;
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
        Ok(bytes as f64 * 8.0 / started.elapsed().as_secs_f64())
    })
}

/// Connects per second of one client to `listener` for `time`, and how many it made. The same
/// thread accepts each connection (a separate acceptor falls behind, the accept queue
/// overflows and a dropped SYN costs a second), then closes both ends, the client's with a
/// reset so that no port lingers in TIME_WAIT. Call it on a thread inside the listener's
/// namespace ([`Netns::run`]).
pub fn connect_rate(listener: &TcpListener, time: Duration) -> Result<(f64, u64)> {
    let target = listener.local_addr()?;
    let reset = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < time {
        for _ in 0..100 {
            let client = TcpStream::connect(target).with_context(|| format!("connect {target}"))?;
            let (server, _) = listener.accept().context("accept")?;
            // SAFETY: setsockopt on an open socket with a correctly sized linger struct.
            let rc = unsafe {
                libc::setsockopt(
                    client.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&reset as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error()).context("SO_LINGER");
            }
            drop(client);
            drop(server);
            n += 1;
        }
    }
    Ok((n as f64 / started.elapsed().as_secs_f64(), n))
}

/// One `GET /metrics` over a new connection (HTTP/1.0, so the server closes it), timed from
/// the connect until the whole body has arrived; call it inside the server's namespace.
/// Returns the time and the body's length, and fails unless the status is 200.
pub fn scrape(addr: SocketAddr) -> Result<(Duration, usize)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::with_capacity(256 << 10);
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the response of {addr}"))?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{addr} answered without an HTTP header");
    };
    ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{addr} answered {}",
        head.lines().next().unwrap_or_default()
    );
    ensure!(!body.is_empty(), "{addr} answered with an empty body");
    Ok((took, body.len()))
}
