//! faultline's test lab, shared by the integration tests (`tests/`) and `cargo xtask bench`:
//! test hosts are network namespaces ([`Netns`]), two of them joined by a veth pair ([`Lab`]);
//! commands run with a time limit ([`process`]); effects are measured with real traffic
//! ([`traffic`]). Everything made here is removed by a guard's `Drop`, also when the caller
//! panics; names carry the process id, so runs at the same time pick different ones.

pub mod link;
pub mod netns;
pub mod process;
pub mod traffic;

pub use link::{Addressing, Host, Lab};
pub use netns::Netns;

/// A number unique within this process; names combine it with the process id, so that test
/// binaries running at once pick different names too.
pub fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
