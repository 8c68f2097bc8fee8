//! Network interfaces of the agent's own network namespace, looked up by name through the
//! kernel (not /sys/class/net, which shows the namespace of whoever mounted sysfs): whether
//! one exists, and how long its link-layer header is.

use std::{io, path::PathBuf};

/// Linux's IFNAMSIZ less the terminating NUL.
const MAX_NAME: usize = 15;

/// An interface name that is wrong or names no interface: what a request's `dev` field got
/// wrong, and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadDevice(pub String);

/// Why a link-layer header length is not known for an interface.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkTypeError {
    #[error("cannot read the link type of {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("interface {device} has link type {link_type}, which the loss classifier cannot parse (it handles Ethernet, loopback and raw IP devices)")]
    Unsupported { device: String, link_type: u32 },
}

/// The interface's index, or why the name is refused.
pub(crate) fn check_exists(name: &str) -> Result<u32, BadDevice> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || name.contains(['/', ':'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(BadDevice(format!(
            "{name:?} is not an interface name (1-{MAX_NAME} characters, no '/', ':' or spaces)"
        )));
    }
    nix::net::if_::if_nametoindex(name).map_err(|_| {
        let known = names().join(", ");
        BadDevice(format!(
            "no interface {name:?} in the agent's network namespace (it has: {known})"
        ))
    })
}

/// Names of the interfaces in this network namespace, for messages.
pub(crate) fn names() -> Vec<String> {
    let mut names: Vec<String> = nix::net::if_::if_nameindex()
        .map(|list| {
            list.iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Bytes of link-layer header before the IP header on `device`, from its ARPHRD type.
pub(crate) fn l2_len(device: &str) -> Result<u16, LinkTypeError> {
    let link_type = link_type(device).map_err(|source| LinkTypeError::Io {
        path: PathBuf::from(device),
        source,
    })?;
    match link_type {
        // ARPHRD_ETHER, ARPHRD_LOOPBACK
        1 | 772 => Ok(14),
        // ARPHRD_TUNNEL, ARPHRD_TUNNEL6, ARPHRD_SIT, ARPHRD_IPGRE, ARPHRD_IP6GRE, ARPHRD_NONE
        // (WireGuard, tun): the packet starts with its IP header.
        768 | 769 | 776 | 778 | 823 | 65534 => Ok(0),
        _ => Err(LinkTypeError::Unsupported {
            device: device.to_owned(),
            link_type: link_type.into(),
        }),
    }
}

/// The interface's ARPHRD type through SIOCGIFHWADDR, which answers for the calling thread's
/// network namespace (sysfs shows the namespace it was mounted in, which may be another one).
fn link_type(device: &str) -> io::Result<u16> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let name = device.as_bytes();
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: a plain socket call; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR reads the name from and writes the address into `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
    Ok(unsafe { request.ifr_ifru.ifru_hwaddr.sa_family })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_nonsense_does_not() {
        assert!(check_exists("lo").is_ok());
        let err = check_exists("nosuch0").unwrap_err();
        assert!(err.0.contains("lo"), "{}", err.0);
        assert!(check_exists("a/b").is_err());
        assert!(check_exists("much-too-long-name0").is_err());
    }
}
