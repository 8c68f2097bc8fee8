//! The running kernel's BTF (/sys/kernel/btf/vmlinux), read for what the connect-health programs
//! need from it: where a member of a kernel struct lies (`struct sock`'s, so that one build of the
//! programs reads sockets on every kernel), and which arguments a raw tracepoint passes. It reads
//! and answers; it never loads or changes anything in the kernel.
//!
//! Written by hand rather than taken from a crate: aya parses BTF but keeps type and member lookup
//! to itself (its `Btf` has no public way to walk a struct), and btf-rs, the crate that does this,
//! is LGPL. The part needed is small: the header, the type section (every kind's record, to know
//! where the next one starts), the string section, struct and union members, and the modifiers
//! and typedefs between a member and its type. Split BTF (modules) is not read: `struct sock` is
//! in vmlinux.

use std::{
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Where the kernel exposes its own BTF.
pub(crate) const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Typedefs, modifiers and tags followed at most this far: a loop in a malformed blob must end.
const MAX_CHAIN: usize = 32;

#[derive(Debug, Error)]
pub(crate) enum BtfError {
    #[error("cannot read the kernel's BTF {path}: {source} (connect health needs a kernel built with CONFIG_DEBUG_INFO_BTF)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not BTF this agent can read: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("the kernel's BTF {path} has no struct {structure}")]
    NoStruct { path: PathBuf, structure: String },
    #[error("the kernel's struct {structure} has no member {member} ({path})")]
    NoMember {
        path: PathBuf,
        structure: String,
        member: String,
    },
    #[error("the kernel's {structure}.{member} is a bitfield: only whole members can be read at an offset ({path})")]
    Bitfield {
        path: PathBuf,
        structure: String,
        member: String,
    },
    #[error("the kernel's {structure}.{member} is {found} bytes, not {expected} ({path})")]
    Size {
        path: PathBuf,
        structure: String,
        member: String,
        expected: u32,
        found: u32,
    },
    #[error("the kernel's BTF {path} has no raw tracepoint {tracepoint} (no typedef btf_trace_{tracepoint})")]
    NoTracepoint { path: PathBuf, tracepoint: String },
}

/// One type's record: where it starts in the type section, and its first three words.
#[derive(Clone, Copy)]
struct TypeRecord {
    at: usize,
    name_off: u32,
    info: u32,
    size_or_type: u32,
}

impl TypeRecord {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// Where a member lies, from the start of the outermost struct, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// Bytes from the start of the struct the path started at.
    pub(crate) offset: u32,
    /// The member's size in bytes, typedefs and modifiers resolved.
    pub(crate) size: u32,
}

/// A parsed BTF blob: types by id (id 0 is void and has no record).
pub(crate) struct Btf {
    path: PathBuf,
    /// The whole blob, kept as read (vmlinux's is megabytes: no copies of its sections).
    data: Vec<u8>,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    records: Vec<TypeRecord>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("path", &self.path)
            .field("types", &self.records.len())
            .finish_non_exhaustive()
    }
}

impl Btf {
    fn types(&self) -> &[u8] {
        &self.data[self.types.clone()]
    }

    fn strings(&self) -> &[u8] {
        &self.data[self.strings.clone()]
    }

    /// The running kernel's BTF.
    pub(crate) fn vmlinux() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub(crate) fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, data)
    }

    /// Parses a raw BTF blob (header, type and string sections) in this machine's byte order;
    /// `path` only names it in errors.
    pub(crate) fn parse(path: &Path, data: Vec<u8>) -> Result<Self, BtfError> {
        let malformed = |reason: String| BtfError::Malformed {
            path: path.to_owned(),
            reason,
        };
        if data.len() < HEADER_LEN {
            return Err(malformed(format!(
                "{} bytes, shorter than a header",
                data.len()
            )));
        }
        let magic = u16::from_ne_bytes([data[0], data[1]]);
        if magic != MAGIC {
            return Err(malformed(if magic == MAGIC.swap_bytes() {
                "the other byte order than this machine's".to_owned()
            } else {
                format!("magic {magic:#06x}, not {MAGIC:#06x}")
            }));
        }
        if data[2] != 1 {
            return Err(malformed(format!("version {}, not 1", data[2])));
        }
        let word = |at: usize| u32_at(&data, at).unwrap_or(0) as usize;
        let hdr_len = word(4);
        let (type_off, type_len, str_off, str_len) = (word(8), word(12), word(16), word(20));
        let section = |off: usize, len: usize, name: &str| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .filter(|range| hdr_len >= HEADER_LEN && range.end <= data.len())
                .ok_or_else(|| malformed(format!("its {name} section lies outside the file")))
        };
        let type_range = section(type_off, type_len, "type")?;
        let string_range = section(str_off, str_len, "string")?;
        let types = &data[type_range.clone()];

        // Every type takes 12 bytes or more: sized once for the largest count there can be.
        let mut records = Vec::with_capacity(types.len() / 12);
        let mut at = 0;
        while at < types.len() {
            let id = records.len() + 1;
            let (Some(name_off), Some(info), Some(size_or_type)) = (
                u32_at(types, at),
                u32_at(types, at + 4),
                u32_at(types, at + 8),
            ) else {
                return Err(malformed(format!("type {id} is cut short")));
            };
            let record = TypeRecord {
                at,
                name_off,
                info,
                size_or_type,
            };
            let extra = match record.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * record.vlen(),
                KIND_ENUM | KIND_FUNC_PROTO => 8 * record.vlen(),
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                kind => return Err(malformed(format!("type {id} has unknown kind {kind}"))),
            };
            records.push(record);
            at += 12 + extra;
        }
        if at != types.len() {
            return Err(malformed(
                "its last type runs past the type section".to_owned(),
            ));
        }
        records.shrink_to_fit();
        Ok(Self {
            path: path.to_owned(),
            data,
            types: type_range,
            strings: string_range,
            records,
        })
    }

    /// Where `path` lies in the struct named `structure`: the first element is a member of it, each
    /// further one a member of the previous one's struct or union. Members of anonymous structs
    /// and unions are found as if they were the enclosing struct's own (as C names them), their
    /// offsets added up. Refuses bitfields, which a plain read cannot extract.
    pub(crate) fn member(&self, structure: &str, path: &[&str]) -> Result<Member, BtfError> {
        let mut id = self
            .named_struct(structure)
            .ok_or_else(|| BtfError::NoStruct {
                path: self.path.clone(),
                structure: structure.to_owned(),
            })?;
        let mut offset = 0u32;
        let mut size = self.size_of(id).unwrap_or(0);
        let mut within = structure.to_owned();
        for name in path {
            let no_member = || BtfError::NoMember {
                path: self.path.clone(),
                structure: within.clone(),
                member: (*name).to_owned(),
            };
            let found = self.find_member(id, name, 0).ok_or_else(no_member)?;
            if found.bitfield {
                return Err(BtfError::Bitfield {
                    path: self.path.clone(),
                    structure: within,
                    member: (*name).to_owned(),
                });
            }
            offset += found.bit_offset / 8;
            id = self.resolve(found.type_id).unwrap_or(found.type_id);
            size = self.size_of(id).ok_or_else(no_member)?;
            within = format!("{within}.{name}");
        }
        Ok(Member { offset, size })
    }

    /// As [`Btf::member`], and the member must be `expected` bytes.
    pub(crate) fn member_sized(
        &self,
        structure: &str,
        path: &[&str],
        expected: u32,
    ) -> Result<Member, BtfError> {
        let member = self.member(structure, path)?;
        if member.size != expected {
            return Err(BtfError::Size {
                path: self.path.clone(),
                structure: structure.to_owned(),
                member: path.join("."),
                expected,
                found: member.size,
            });
        }
        Ok(member)
    }

    /// How many arguments the raw tracepoint `tracepoint` passes a program: its TP_PROTO's, from
    /// the kernel's `btf_trace_<tracepoint>` typedef (a pointer to a function whose first
    /// parameter is the tracepoint's private data, not passed).
    pub(crate) fn tracepoint_args(&self, tracepoint: &str) -> Result<usize, BtfError> {
        let name = format!("btf_trace_{tracepoint}");
        let missing = || BtfError::NoTracepoint {
            path: self.path.clone(),
            tracepoint: tracepoint.to_owned(),
        };
        let typedef = self
            .ids()
            .find(|&id| {
                let r = self.record(id);
                r.is_some_and(|r| r.kind() == KIND_TYPEDEF && self.name(r) == Some(&name))
            })
            .ok_or_else(missing)?;
        let pointer = self.resolve(typedef).ok_or_else(missing)?;
        let proto = self
            .record(pointer)
            .filter(|r| r.kind() == KIND_PTR)
            .and_then(|r| self.resolve(r.size_or_type))
            .and_then(|id| self.record(id))
            .filter(|r| r.kind() == KIND_FUNC_PROTO)
            .ok_or_else(missing)?;
        proto.vlen().checked_sub(1).ok_or_else(missing)
    }

    /// Whether the kernel has a function named `name` (a BTF FUNC record: one the compiler did
    /// not inline everywhere).
    pub(crate) fn has_function(&self, name: &str) -> bool {
        self.ids().any(|id| {
            self.record(id)
                .is_some_and(|r| r.kind() == KIND_FUNC && self.name(r) == Some(name))
        })
    }

    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        1..=self.records.len() as u32
    }

    fn record(&self, id: u32) -> Option<TypeRecord> {
        self.records.get((id as usize).checked_sub(1)?).copied()
    }

    fn name(&self, r: TypeRecord) -> Option<&str> {
        let start = r.name_off as usize;
        let rest = self.strings().get(start..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// The struct named `name` that has members (not a forward declaration's stand-in).
    fn named_struct(&self, name: &str) -> Option<u32> {
        self.ids().find(|&id| {
            self.record(id).is_some_and(|r| {
                r.kind() == KIND_STRUCT && r.vlen() > 0 && self.name(r) == Some(name)
            })
        })
    }

    /// `id` with typedefs, modifiers (const, volatile, restrict) and type tags taken off.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..MAX_CHAIN {
            let r = self.record(id)?;
            match r.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = r.size_or_type;
                }
                _ => return Some(id),
            }
        }
        None
    }

    /// The size in bytes of the (resolved) type `id`.
    fn size_of(&self, id: u32) -> Option<u32> {
        let id = self.resolve(id)?;
        let r = self.record(id)?;
        match r.kind() {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(r.size_or_type)
            }
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let elem = u32_at(self.types(), r.at + 12)?;
                let count = u32_at(self.types(), r.at + 20)?;
                self.size_of(elem)?.checked_mul(count)
            }
            _ => None,
        }
    }

    /// The member `name` of the struct or union `id`, looking into anonymous members; `depth`
    /// bounds the descent.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Option<FoundMember> {
        if depth > MAX_CHAIN {
            return None;
        }
        let r = self.record(self.resolve(id)?)?;
        if r.kind() != KIND_STRUCT && r.kind() != KIND_UNION {
            return None;
        }
        for i in 0..r.vlen() {
            let at = r.at + 12 + 12 * i;
            let name_off = u32_at(self.types(), at)?;
            let type_id = u32_at(self.types(), at + 4)?;
            let raw_offset = u32_at(self.types(), at + 8)?;
            // With the kind flag, the top byte is a bitfield's width (0 for a plain member).
            let (bit_offset, width) = if r.kind_flag() {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            let member_name = self.string(name_off)?;
            if member_name == name {
                let bitfield = width != 0 || bit_offset % 8 != 0 || self.int_bitfield(type_id);
                return Some(FoundMember {
                    bit_offset,
                    type_id,
                    bitfield,
                });
            }
            if member_name.is_empty() {
                if let Some(inner) = self.find_member(type_id, name, depth + 1) {
                    return Some(FoundMember {
                        bit_offset: bit_offset + inner.bit_offset,
                        ..inner
                    });
                }
            }
        }
        None
    }

    /// Whether `id` is an integer narrower than its storage or shifted in it: how BTF without
    /// the kind flag marks a bitfield.
    fn int_bitfield(&self, id: u32) -> bool {
        let Some(r) = self.resolve(id).and_then(|id| self.record(id)) else {
            return false;
        };
        if r.kind() != KIND_INT {
            return false;
        }
        let encoding = u32_at(self.types(), r.at + 12).unwrap_or(0);
        let (bits, offset) = (encoding & 0xff, (encoding >> 16) & 0xff);
        offset != 0 || bits != r.size_or_type * 8
    }

    fn string(&self, off: u32) -> Option<&str> {
        let rest = self.strings().get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

struct FoundMember {
    bit_offset: u32,
    type_id: u32,
    bitfield: bool,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob type by type, in this machine's byte order.
    #[derive(Default)]
    struct Blob {
        types: Vec<u8>,
        strings: Vec<u8>,
        count: u32,
    }

    impl Blob {
        fn new() -> Self {
            Self {
                strings: vec![0],
                ..Self::default()
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_ne_bytes());
            }
        }

        fn add(&mut self, name: &str, kind: u32, vlen: usize, flag: bool, third: u32) -> u32 {
            let name = self.string(name);
            let info = (u32::from(flag) << 31) | (kind << 24) | vlen as u32;
            self.words(&[name, info, third]);
            self.count += 1;
            self.count
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.add(name, KIND_INT, 0, false, size);
            self.words(&[size * 8]);
            id
        }

        /// A struct or union of `(name, type, bit offset, bitfield width)` members.
        fn aggregate(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            m: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let flag = m.iter().any(|&(_, _, _, width)| width != 0);
            let id = self.add(name, kind, m.len(), flag, size);
            for &(member, type_id, bit_offset, width) in m {
                let name = self.string(member);
                let offset = if flag {
                    (width << 24) | bit_offset
                } else {
                    bit_offset
                };
                self.words(&[name, type_id, offset]);
            }
            id
        }

        fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_ne_bytes());
            out.extend_from_slice(&[1, 0]);
            let (tl, sl) = (self.types.len() as u32, self.strings.len() as u32);
            for w in [HEADER_LEN as u32, 0, tl, tl, sl] {
                out.extend_from_slice(&w.to_ne_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A struct sock in the shape of Linux 5.4's: the addresses in an anonymous union inside
    /// struct sock_common, a volatile state, and sk_protocol a bitfield.
    fn handcrafted() -> Vec<u8> {
        let mut b = Blob::new();
        let u8_ = b.int("unsigned char", 1);
        let u16_ = b.int("unsigned short", 2);
        let u32_ = b.int("unsigned int", 4);
        let be32 = b.add("__be32", KIND_TYPEDEF, 0, false, u32_);
        let vol = b.add("", KIND_VOLATILE, 0, false, u8_);
        let pair = b.aggregate(
            KIND_STRUCT,
            "",
            8,
            &[("skc_daddr", be32, 0, 0), ("skc_rcv_saddr", be32, 32, 0)],
        );
        let u64_ = b.int("long long unsigned int", 8);
        let addrs = b.aggregate(
            KIND_UNION,
            "",
            8,
            &[("skc_addrpair", u64_, 0, 0), ("", pair, 0, 0)],
        );
        let common = b.aggregate(
            KIND_STRUCT,
            "sock_common",
            16,
            &[
                ("", addrs, 0, 0),
                ("skc_family", u16_, 64, 0),
                ("skc_state", vol, 80, 0),
            ],
        );
        let cnst = b.add("", KIND_CONST, 0, false, common);
        b.aggregate(
            KIND_STRUCT,
            "sock",
            24,
            &[
                ("__sk_common", cnst, 0, 0),
                ("sk_type", u16_, 128, 16),
                ("sk_protocol", u32_, 144, 8),
            ],
        );
        // typedef void (*btf_trace_inet_sk_error_report)(void *, const struct sock *);
        let proto = b.add("", KIND_FUNC_PROTO, 2, false, 0);
        b.words(&[0, 0, 0, 0]);
        let ptr = b.add("", KIND_PTR, 0, false, proto);
        b.add(
            "btf_trace_inet_sk_error_report",
            KIND_TYPEDEF,
            0,
            false,
            ptr,
        );
        b.bytes()
    }

    #[test]
    fn members_of_anonymous_unions_are_found_with_their_offsets() {
        let btf = Btf::parse(Path::new("handcrafted"), handcrafted()).expect("parse");
        let daddr = btf.member("sock", &["__sk_common", "skc_daddr"]);
        assert_eq!(daddr.expect("skc_daddr"), Member { offset: 0, size: 4 });
        let saddr = btf.member("sock", &["__sk_common", "skc_rcv_saddr"]);
        assert_eq!(saddr.expect("skc_rcv_saddr"), Member { offset: 4, size: 4 });
        let family = btf.member_sized("sock", &["__sk_common", "skc_family"], 2);
        assert_eq!(family.expect("skc_family").offset, 8);
        let state = btf.member_sized("sock", &["__sk_common", "skc_state"], 1);
        assert_eq!(state.expect("volatile skc_state").offset, 10);
        assert_eq!(
            btf.tracepoint_args("inet_sk_error_report").expect("args"),
            1
        );
    }

    #[test]
    fn bitfields_missing_members_and_wrong_sizes_are_refused_by_name() {
        let btf = Btf::parse(Path::new("handcrafted"), handcrafted()).expect("parse");
        let e = btf
            .member("sock", &["sk_protocol"])
            .expect_err("a bitfield");
        assert!(matches!(&e, BtfError::Bitfield { member, .. } if member == "sk_protocol"));
        assert!(
            e.to_string().contains("sock.sk_protocol is a bitfield"),
            "{e}"
        );
        let e = btf
            .member("sock", &["__sk_common", "skc_v6_daddr"])
            .expect_err("absent");
        assert!(
            matches!(&e, BtfError::NoMember { structure, member, .. }
                if structure == "sock.__sk_common" && member == "skc_v6_daddr"),
            "{e}"
        );
        let e = btf
            .member("inet_sock", &["inet_sport"])
            .expect_err("no such struct");
        assert!(matches!(e, BtfError::NoStruct { .. }), "{e}");
        let e = btf
            .member_sized("sock", &["__sk_common", "skc_family"], 4)
            .expect_err("two bytes");
        assert!(matches!(e, BtfError::Size { found: 2, .. }), "{e}");
        let e = btf
            .tracepoint_args("tcp_receive_reset")
            .expect_err("absent");
        assert!(e.to_string().contains("handcrafted"), "{e}");
    }

    #[test]
    fn truncated_and_foreign_blobs_are_refused() {
        let blob = handcrafted();
        let e = Btf::parse(Path::new("cut"), blob[..blob.len() - 40].to_vec()).expect_err("cut");
        assert!(matches!(e, BtfError::Malformed { .. }), "{e}");
        let mut swapped = blob.clone();
        swapped.swap(0, 1);
        let e = Btf::parse(Path::new("swapped"), swapped).expect_err("byte order");
        assert!(e.to_string().contains("byte order"), "{e}");
    }

    /// The running kernel's: skip where it has none.
    fn vmlinux() -> Option<Btf> {
        if !Path::new(VMLINUX).exists() {
            eprintln!("SKIP: no {VMLINUX}");
            return None;
        }
        Some(Btf::vmlinux().expect("the kernel's BTF parses"))
    }

    #[test]
    fn the_running_kernels_struct_sock_is_found() {
        let Some(btf) = vmlinux() else {
            return;
        };
        // struct sock_common starts struct sock, and the destination address starts both.
        let daddr = btf.member_sized("sock", &["__sk_common", "skc_daddr"], 4);
        assert_eq!(daddr.expect("skc_daddr").offset, 0);
        let rcv_saddr = btf.member_sized("sock", &["__sk_common", "skc_rcv_saddr"], 4);
        assert_eq!(rcv_saddr.expect("skc_rcv_saddr").offset, 4);
        let dport = btf.member_sized("sock", &["__sk_common", "skc_dport"], 2);
        assert_eq!(dport.expect("skc_dport").offset, 12);
        let family = btf.member_sized("sock", &["__sk_common", "skc_family"], 2);
        assert_eq!(family.expect("skc_family").offset, 16);
        let v6 = btf.member_sized("sock", &["__sk_common", "skc_v6_daddr"], 16);
        assert!(v6.expect("skc_v6_daddr").offset >= 16);
        // Past sock_common; since Linux 5.6 a plain u16.
        let protocol = btf.member_sized("sock", &["sk_protocol"], 2);
        assert!(protocol.expect("sk_protocol").offset > 100);
        let sport = btf.member_sized("inet_sock", &["inet_sport"], 2);
        assert!(sport.expect("inet_sport").offset > protocol_offset(&btf));
        assert_eq!(btf.tracepoint_args("inet_sock_set_state").expect("args"), 3);
        // Functions: one every TCP kernel has out of line, and none by a made-up name.
        assert!(btf.has_function("tcp_v4_connect"));
        assert!(!btf.has_function("faultline_no_such_function"));
        assert_eq!(btf.tracepoint_args("tcp_receive_reset").expect("args"), 1);
        assert_eq!(
            btf.tracepoint_args("inet_sk_error_report").expect("args"),
            1
        );
        let retransmit = btf.tracepoint_args("tcp_retransmit_skb").expect("args");
        assert!(retransmit == 2 || retransmit == 3, "{retransmit}");
    }

    fn protocol_offset(btf: &Btf) -> u32 {
        btf.member("sock", &["sk_protocol"])
            .expect("sk_protocol")
            .offset
    }
}
