//! Test support for the encoders' golden tests: payloads captured from iproute2 6.1.0
//! (`tc -V`: "tc utility, iproute2-6.1.0, libbpf 1.1.2", Debian 12) via
//! `strace -f -e trace=sendmsg -xx -s 65536 tc ...` in a scratch network namespace on an x86_64
//! 6.18 kernel. Each golden is the TCA_OPTIONS payload of the RTM_NEWQDISC / RTM_NEWTCLASS
//! request for the command in its comment (netem captured from the request alone: the kernel
//! lacked sch_netem, which does not affect what tc sends).

pub(super) fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[track_caller]
pub(super) fn assert_bytes(ours: &[u8], golden: &str) {
    assert_same(ours, &hex(golden));
}

#[track_caller]
pub(super) fn assert_same(ours: &[u8], golden: &[u8]) {
    assert_eq!(ours.len(), golden.len(), "payload length");
    if let Some(i) = ours.iter().zip(golden).position(|(a, b)| a != b) {
        panic!(
            "first difference at byte {i}: ours {:02x?} tc {:02x?}",
            &ours[i..(i + 16).min(ours.len())],
            &golden[i..(i + 16).min(golden.len())]
        );
    }
}
