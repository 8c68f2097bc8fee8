//! Traffic only the bench makes, inside its namespaces: loopback connects per second and timed
//! HTTP scrapes. UDP loss and TCP goodput are the lab crate's, as the integration tests measure
//! them.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

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
