//! The agent's Prometheus page as a scraper reads it: fetched over HTTP from inside the
//! agent's namespace, and single samples read from it.

use std::io::{Read as _, Write as _};

use anyhow::{Context as _, Result};

use crate::Netns;

/// The page at `http://ADDR/metrics`, from inside `ns`.
pub fn scrape(ns: &Netns, addr: &str) -> Result<String> {
    let addr = addr.to_owned();
    ns.run(move || -> Result<String> {
        let mut stream = std::net::TcpStream::connect(&addr)
            .with_context(|| format!("connecting to the metrics listener {addr}"))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut page = String::new();
        stream.read_to_string(&mut page)?;
        Ok(page)
    })?
}

/// One sample of the page: `series` is the name with its labels as written
/// (`faultline_refusals_total{stage="call"}`).
pub fn sample(page: &str, series: &str) -> Result<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .with_context(|| format!("no {series} on the metrics page:\n{page}"))?
        .trim()
        .parse()
        .with_context(|| format!("{series} is not a number"))
}
