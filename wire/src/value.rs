//! The value codec: [`Portable`] ↔ native MessagePack, written by hand on the `rmp` crate.
//!
//! Mapping (see docs/protocol.md, "Values"):
//!
//! | Skiff      | MessagePack                                                    |
//! |------------|----------------------------------------------------------------|
//! | nil        | nil                                                            |
//! | bool       | true / false                                                   |
//! | int        | int (smallest encoding; uint64 above `i64::MAX` is rejected)   |
//! | float      | float 64 (float 32 accepted on decode)                         |
//! | string     | str (UTF-8 checked)                                            |
//! | bytes      | bin, or ext 3 (sidecar reference) at/above the threshold       |
//! | list       | array                                                          |
//! | map        | map (keys nil/bool/int/str/bin only)                           |
//! | range      | ext 2: start i64 BE, end i64 BE                                |
//! | closure    | ext 1: blob hash (32) member u32 BE, then a MessagePack array  |
//! |            | of the captured values                                         |
//!
//! Invariants:
//! - Decoding never panics and never allocates more than the input could justify: every
//!   length is checked against the bytes remaining before a container or string is built
//!   (each array element needs at least one byte, each map entry two).
//! - Nesting is limited by `max_depth` (a top-level container is depth 1; a closure and
//!   its capture array each add a level), so a nesting bomb fails fast. Decoding is
//!   iterative (an explicit stack of open containers), so it fits any thread stack.
//! - Bytes are never encoded as integer arrays. Decoding a `bin` from a [`Bytes`] buffer
//!   slices it (no copy).
//! - `decode(encode(v)) == v` for every `Portable` (property-tested).
//! - [`decode_list_at`] (a call's arguments) gives what [`decode_value_at`] gives for the
//!   same array, errors and limits included (property-tested).

use crate::limits::{Limit, LimitExceeded};
use crate::pack::{self, len32};
use bytes::Bytes;
use rmp::encode as enc;
use rmp::Marker;
use sha2::{Digest, Sha256};
use skiff_vm::{BlobHash, FunctionId, Portable};
use smallvec::SmallVec;
use std::fmt;

/// Ext type of a closure.
pub const EXT_FUNCTION: i8 = 1;
/// Ext type of a range.
pub const EXT_RANGE: i8 = 2;
/// Ext type of a sidecar reference.
pub const EXT_SIDECAR: i8 = 3;

/// SHA-256 of a sidecar's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SidecarHash(pub [u8; 32]);

impl SidecarHash {
    /// Hashes sidecar bytes.
    pub fn of(bytes: &[u8]) -> SidecarHash {
        SidecarHash(Sha256::digest(bytes).into())
    }
}

/// The SHA-256 of sidecar data fed piece by piece (as it is sent or received).
#[derive(Clone, Default)]
pub struct SidecarHasher(Sha256);

impl SidecarHasher {
    pub fn new() -> SidecarHasher {
        SidecarHasher::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> SidecarHash {
        SidecarHash(self.0.finalize().into())
    }
}

impl fmt::Debug for SidecarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sidecar#")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A sidecar the encoder took out of a value: its hash and bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarOut {
    pub hash: SidecarHash,
    pub data: Bytes,
}

/// A sidecar the encoder took out of a value without hashing it: its bytes, and where in the
/// output each reference to it keeps the 32 bytes of its hash (zeros until
/// [`UnhashedSidecar::fill`]). A connection hashes a large sidecar while sending it and fills
/// the references in afterwards.
#[derive(Clone, Debug, PartialEq)]
pub struct UnhashedSidecar {
    pub data: Bytes,
    /// Offsets of the hash bytes of each reference, in the output the encoder wrote to.
    pub refs: Vec<usize>,
}

impl UnhashedSidecar {
    /// Writes `hash` into every reference to this sidecar in `out`.
    pub fn fill(&self, out: &mut [u8], hash: SidecarHash) {
        fill_refs(out, &self.refs, hash);
    }
}

/// Writes `hash` at each of `refs` (the offsets of a sidecar's references) in `out`.
pub fn fill_refs(out: &mut [u8], refs: &[usize], hash: SidecarHash) {
    for &at in refs {
        out[at..at + 32].copy_from_slice(&hash.0);
    }
}

/// How many references each sidecar has now: taken before encoding into a buffer that will
/// be moved, so that [`move_refs_since`] can move what was recorded in it.
pub(crate) fn ref_marks(sidecars: &[UnhashedSidecar]) -> Vec<usize> {
    sidecars.iter().map(|s| s.refs.len()).collect()
}

/// Adds `by` to every reference recorded since `marks` was taken (sidecars added since
/// then: all of theirs).
pub(crate) fn move_refs_since(sidecars: &mut [UnhashedSidecar], marks: &[usize], by: usize) {
    for (i, s) in sidecars.iter_mut().enumerate() {
        let first = marks.get(i).copied().unwrap_or(0);
        for at in &mut s.refs[first..] {
            *at += by;
        }
    }
}

/// Why a value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("value truncated at byte {0}")]
    Truncated(usize),
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    #[error("invalid UTF-8 in a string at byte {0}")]
    InvalidUtf8(usize),
    #[error("integer at byte {0} does not fit in i64")]
    IntOutOfRange(usize),
    #[error("reserved MessagePack marker 0xc1 at byte {0}")]
    Reserved(usize),
    #[error("unknown ext type {ty} at byte {at}")]
    UnknownExt { ty: i8, at: usize },
    #[error("malformed ext type {ty} at byte {at}: {why}")]
    BadExt {
        ty: i8,
        at: usize,
        why: &'static str,
    },
    #[error("map key at byte {0} is not nil, bool, int, string or bytes")]
    InvalidMapKey(usize),
    #[error("reference to unknown sidecar {0:?}")]
    UnknownSidecar(SidecarHash),
    #[error("sidecar {hash:?} is {actual} bytes but the reference says {declared}")]
    SidecarLength {
        hash: SidecarHash,
        declared: u64,
        actual: u64,
    },
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
    #[error("expected {expected} at byte {at}")]
    Unexpected { expected: &'static str, at: usize },
}

// ---------------------------------------------------------------------------------------
// Encoding

/// Encodes a value with no sidecars (every bytes value inline as `bin`).
pub fn encode_value(value: &Portable, out: &mut Vec<u8>) {
    let mut none = Vec::new();
    encode_value_with_sidecars(value, out, usize::MAX, &mut none);
}

/// Encodes a value; bytes of at least `threshold` bytes become sidecar references and are
/// appended (deduplicated by hash) to `sidecars`.
pub fn encode_value_with_sidecars(
    value: &Portable,
    out: &mut Vec<u8>,
    threshold: usize,
    sidecars: &mut Vec<SidecarOut>,
) {
    let mut unhashed = Vec::new();
    encode_value_unhashed(value, out, threshold, &mut unhashed);
    hash_sidecars(unhashed, out, sidecars);
}

/// Hashes sidecars taken out of `out` unhashed, fills in their references and appends them
/// (deduplicated by hash) to `sidecars`.
pub fn hash_sidecars(
    unhashed: Vec<UnhashedSidecar>,
    out: &mut [u8],
    sidecars: &mut Vec<SidecarOut>,
) {
    for s in unhashed {
        let hash = SidecarHash::of(&s.data);
        s.fill(out, hash);
        if !sidecars.iter().any(|o| o.hash == hash) {
            sidecars.push(SidecarOut { hash, data: s.data });
        }
    }
}

/// Like [`encode_value_with_sidecars`], without hashing: each sidecar's references hold
/// zeros where the hash goes. The same bytes (the same buffer, not merely equal contents)
/// referenced twice are one sidecar.
pub fn encode_value_unhashed(
    value: &Portable,
    out: &mut Vec<u8>,
    threshold: usize,
    sidecars: &mut Vec<UnhashedSidecar>,
) {
    // Writes into a Vec cannot fail.
    encode_inner(value, out, threshold, sidecars);
}

fn encode_inner(
    value: &Portable,
    out: &mut Vec<u8>,
    threshold: usize,
    sidecars: &mut Vec<UnhashedSidecar>,
) {
    match value {
        Portable::Nil => pack::nil(out),
        Portable::Bool(b) => pack::bool(out, *b),
        Portable::Int(i) => pack::sint(out, *i),
        Portable::Float(x) => pack::f64(out, *x),
        Portable::Str(s) => pack::str(out, s),
        Portable::Bytes(b) if b.len() >= threshold => {
            let _ = enc::write_ext_meta(out, 40, EXT_SIDECAR);
            let at = out.len();
            let same =
                |s: &&mut UnhashedSidecar| s.data.as_ptr() == b.as_ptr() && s.data.len() == b.len();
            match sidecars.iter_mut().find(same) {
                Some(s) => s.refs.push(at),
                None => sidecars.push(UnhashedSidecar {
                    data: b.clone(),
                    refs: vec![at],
                }),
            }
            out.extend_from_slice(&[0; 32]);
            out.extend_from_slice(&(b.len() as u64).to_be_bytes());
        }
        Portable::Bytes(b) => {
            pack::bin(out, b);
        }
        Portable::List(items) => {
            pack::array_len(out, items.len());
            for item in items {
                encode_inner(item, out, threshold, sidecars);
            }
        }
        Portable::Map(entries) => {
            pack::map_len(out, entries.len());
            for (k, v) in entries {
                encode_inner(k, out, threshold, sidecars);
                encode_inner(v, out, threshold, sidecars);
            }
        }
        Portable::Range(start, end) => {
            let _ = enc::write_ext_meta(out, 16, EXT_RANGE);
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&end.to_be_bytes());
        }
        Portable::Function { func, captures } => {
            let mut payload = Vec::with_capacity(40);
            payload.extend_from_slice(&func.blob.0);
            payload.extend_from_slice(&func.member.to_be_bytes());
            pack::array_len(&mut payload, captures.len());
            // References recorded inside `payload` move with it into `out`.
            let marks = ref_marks(sidecars);
            for c in captures {
                encode_inner(c, &mut payload, threshold, sidecars);
            }
            let _ = enc::write_ext_meta(out, len32(payload.len()), EXT_FUNCTION);
            move_refs_since(sidecars, &marks, out.len());
            out.extend_from_slice(&payload);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoding

/// Looks a sidecar up by hash (a stream's received sidecars, then the
/// connection's retained table).
pub type SidecarLookup<'a> = &'a dyn Fn(&SidecarHash) -> Option<Bytes>;

/// Decodes exactly one value occupying all of `buf`; sidecar references are errors.
pub fn decode_value(buf: &Bytes, max_depth: usize) -> Result<Portable, ValueError> {
    let no_sidecars = |_: &SidecarHash| None;
    let mut r = Reader::new(buf, 0, buf.len());
    let v = r.value(max_depth, 0, &no_sidecars)?;
    r.finish()?;
    Ok(v)
}

/// Decodes one value starting at `buf[pos..end]`, returning it and the position after it.
#[inline]
pub fn decode_value_at(
    buf: &Bytes,
    pos: usize,
    end: usize,
    max_depth: usize,
    sidecars: SidecarLookup<'_>,
) -> Result<(Portable, usize), ValueError> {
    let mut r = Reader::new(buf, pos, end);
    // `nil` (a call's default context, a function's empty answer) is one byte, a bytes or
    // string value one item: neither needs the open-container bookkeeping of `value`.
    if r.remaining() > 0 && buf[r.pos] == pack::NIL {
        return Ok((Portable::Nil, r.pos + 1));
    }
    if let Some(v) = r.leaf() {
        return Ok((v, r.pos));
    }
    let v = r.value(max_depth, 0, sidecars)?;
    Ok((v, r.pos))
}

/// Decodes the array starting at `buf[pos..end]` into its items (a call's arguments),
/// returning them and the position after it, or `None` if what starts there is not an
/// array. The limits are [`decode_value_at`]'s for the same array, the array being the first
/// level of nesting; its items are read one by one, with no list to build and take apart.
pub fn decode_list_at(
    buf: &Bytes,
    pos: usize,
    end: usize,
    max_depth: usize,
    sidecars: SidecarLookup<'_>,
) -> Result<Option<(Vec<Portable>, usize)>, ValueError> {
    let mut r = Reader::new(buf, pos, end);
    let Item::Array(n) = r.item(sidecars)? else {
        return Ok(None);
    };
    depth_check(max_depth, 1)?;
    if n > r.remaining() as u64 {
        return Err(ValueError::Truncated(r.pos));
    }
    let mut items = Vec::with_capacity((n as usize).min(PREALLOC));
    for _ in 0..n {
        let item = match r.scalar().or_else(|| r.leaf()) {
            Some(v) => v,
            None => r.value(max_depth, 1, sidecars)?,
        };
        items.push(item);
    }
    Ok(Some((items, r.pos)))
}

/// Length in bytes of the one MessagePack object at the start of `buf`, checking nesting
/// against `max_depth` without recursion. Used to delimit serde-decoded message headers.
pub fn object_len(buf: &[u8], max_depth: usize) -> Result<usize, ValueError> {
    let mut pos = 0usize;
    // Items still to skip at each open container level (headers nest a few levels).
    let mut stack: SmallVec<[u64; 8]> = SmallVec::new();
    let mut pending: u64 = 1;
    loop {
        while pending == 0 {
            match stack.pop() {
                Some(p) => pending = p,
                None => return Ok(pos),
            }
        }
        pending -= 1;
        let at = pos;
        let m = *buf.get(pos).ok_or(ValueError::Truncated(at))?;
        pos += 1;
        let (skip, children): (u64, u64) = match Marker::from_u8(m) {
            Marker::Null | Marker::True | Marker::False | Marker::FixPos(_) | Marker::FixNeg(_) => {
                (0, 0)
            }
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (n as u64, 0),
            Marker::Str8 | Marker::Bin8 => (be(buf, &mut pos, 1)?, 0),
            Marker::Str16 | Marker::Bin16 => (be(buf, &mut pos, 2)?, 0),
            Marker::Str32 | Marker::Bin32 => (be(buf, &mut pos, 4)?, 0),
            Marker::FixArray(n) => (0, n as u64),
            Marker::Array16 => (0, be(buf, &mut pos, 2)?),
            Marker::Array32 => (0, be(buf, &mut pos, 4)?),
            Marker::FixMap(n) => (0, 2 * n as u64),
            Marker::Map16 => (0, 2 * be(buf, &mut pos, 2)?),
            Marker::Map32 => (0, 2 * be(buf, &mut pos, 4)?),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (be(buf, &mut pos, 1)? + 1, 0),
            Marker::Ext16 => (be(buf, &mut pos, 2)? + 1, 0),
            Marker::Ext32 => (be(buf, &mut pos, 4)? + 1, 0),
            Marker::Reserved => return Err(ValueError::Reserved(at)),
        };
        let remaining = (buf.len() - pos) as u64;
        if skip > remaining || children > remaining {
            return Err(ValueError::Truncated(at));
        }
        pos += skip as usize;
        if children > 0 {
            depth_check(max_depth, stack.len() + 1)?;
            stack.push(pending);
            pending = children;
        }
    }
}

/// `MaxDepth` exceeded when a container would open at nesting `depth`.
fn depth_check(max_depth: usize, depth: usize) -> Result<(), ValueError> {
    if depth > max_depth {
        return Err(LimitExceeded {
            limit: Limit::MaxDepth,
            max: max_depth as u64,
            seen: depth as u64,
        }
        .into());
    }
    Ok(())
}

fn be(buf: &[u8], pos: &mut usize, n: usize) -> Result<u64, ValueError> {
    let at = *pos;
    let end = at.checked_add(n).ok_or(ValueError::Truncated(at))?;
    let bytes = buf.get(at..end).ok_or(ValueError::Truncated(at))?;
    *pos = end;
    Ok(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a Bytes, pos: usize, end: usize) -> Self {
        let end = end.min(buf.len());
        Reader {
            buf,
            pos: pos.min(end),
            end,
        }
    }

    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn take(&mut self, n: u64) -> Result<std::ops::Range<usize>, ValueError> {
        if n > self.remaining() as u64 {
            return Err(ValueError::Truncated(self.pos));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(start..self.pos)
    }

    fn uint(&mut self, n: usize) -> Result<u64, ValueError> {
        let r = self.take(n as u64)?;
        Ok(self.buf[r]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn finish(&self) -> Result<(), ValueError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(ValueError::Trailing(n)),
        }
    }

    /// Decodes one value inside `outer` open containers. Iterative (an explicit stack of
    /// open containers, bounded by `max_depth` with the outer ones), so the Rust stack use
    /// is constant whatever the input.
    fn value(
        &mut self,
        max_depth: usize,
        outer: usize,
        sidecars: SidecarLookup<'_>,
    ) -> Result<Portable, ValueError> {
        // Open containers, innermost last; shallow values need no allocation for it.
        let mut stack: SmallVec<[Open; 4]> = SmallVec::new();
        loop {
            // Inside a list, plain scalars (most of a large list) are read in a tight loop,
            // without the item and container bookkeeping; the list's last item, and anything
            // else, takes the general path below.
            if let Some(Open::List { items, left }) = stack.last_mut() {
                while *left > 1 {
                    let Some(v) = self.scalar() else { break };
                    items.push(v);
                    *left -= 1;
                }
            }
            let at = self.pos;
            let mut v = match self.item(sidecars)? {
                Item::Value(v) => v,
                Item::Array(n) => {
                    depth_check(max_depth, outer + stack.len() + 1)?;
                    if n > self.remaining() as u64 {
                        return Err(ValueError::Truncated(self.pos));
                    }
                    if n > 0 {
                        stack.push(Open::List {
                            items: Vec::with_capacity((n as usize).min(PREALLOC)),
                            left: n,
                        });
                        continue;
                    }
                    Portable::List(Vec::new())
                }
                Item::Map(n) => {
                    depth_check(max_depth, outer + stack.len() + 1)?;
                    if n.saturating_mul(2) > self.remaining() as u64 {
                        return Err(ValueError::Truncated(self.pos));
                    }
                    if n > 0 {
                        stack.push(Open::Map {
                            entries: Vec::with_capacity((n as usize).min(PREALLOC)),
                            key: None,
                            left: n,
                        });
                        continue;
                    }
                    Portable::Map(Vec::new())
                }
                Item::Closure { func, ext_end } => {
                    depth_check(max_depth, outer + stack.len() + 1)?;
                    stack.push(Open::Closure {
                        func,
                        ext_end,
                        outer_end: self.end,
                        at,
                    });
                    self.end = ext_end;
                    continue;
                }
            };
            // Close every container this value completes.
            loop {
                match stack.last_mut() {
                    None => return Ok(v),
                    Some(Open::List { items, left }) => {
                        items.push(v);
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        let Some(Open::List { items, .. }) = stack.pop() else {
                            return Err(internal(self.pos));
                        };
                        v = Portable::List(items);
                    }
                    Some(Open::Map { entries, key, left }) => {
                        let Some(k) = key.take() else {
                            if !matches!(
                                v,
                                Portable::Nil
                                    | Portable::Bool(_)
                                    | Portable::Int(_)
                                    | Portable::Str(_)
                                    | Portable::Bytes(_)
                            ) {
                                return Err(ValueError::InvalidMapKey(at));
                            }
                            *key = Some(v);
                            break;
                        };
                        entries.push((k, v));
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        let Some(Open::Map { entries, .. }) = stack.pop() else {
                            return Err(internal(self.pos));
                        };
                        v = Portable::Map(entries);
                    }
                    Some(Open::Closure { .. }) => {
                        let Some(Open::Closure {
                            func,
                            ext_end,
                            outer_end,
                            at,
                        }) = stack.pop()
                        else {
                            return Err(internal(self.pos));
                        };
                        if self.pos != ext_end {
                            return Err(ValueError::Trailing(ext_end - self.pos));
                        }
                        self.end = outer_end;
                        let Portable::List(captures) = v else {
                            return Err(ValueError::BadExt {
                                ty: EXT_FUNCTION,
                                at,
                                why: "closure captures must be an array",
                            });
                        };
                        v = Portable::Function { func, captures };
                    }
                }
            }
        }
    }

    /// The next item if it is `nil`, a boolean, an integer that fits an `i64` by its marker
    /// (all but `uint64`) or a float, complete before `end`; `None`, with nothing read, for
    /// anything else (which [`Reader::item`] reads, or reports). The one place these forms
    /// are decoded.
    // Inlined into both callers: as a call, the list loop paid ~20 instructions more per
    // item (a 100k-int list: 71.2M -> 73.2M instructions per hop).
    #[inline(always)]
    fn scalar(&mut self) -> Option<Portable> {
        let rest = self.buf.get(self.pos..self.end)?;
        let (&m, data) = rest.split_first()?;
        let be = |n: usize| -> Option<u64> {
            let bytes = data.get(..n)?;
            Some(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
        };
        let (value, len) = match m {
            0x00..=0x7f => (Portable::Int(m as i64), 0),
            0xe0..=0xff => (Portable::Int(m as i8 as i64), 0),
            0xc0 => (Portable::Nil, 0),
            0xc2 => (Portable::Bool(false), 0),
            0xc3 => (Portable::Bool(true), 0),
            0xcc => (Portable::Int(be(1)? as i64), 1),
            0xcd => (Portable::Int(be(2)? as i64), 2),
            0xce => (Portable::Int(be(4)? as i64), 4),
            0xd0 => (Portable::Int(be(1)? as u8 as i8 as i64), 1),
            0xd1 => (Portable::Int(be(2)? as u16 as i16 as i64), 2),
            0xd2 => (Portable::Int(be(4)? as u32 as i32 as i64), 4),
            0xd3 => (Portable::Int(be(8)? as i64), 8),
            0xca => (Portable::Float(f32::from_bits(be(4)? as u32) as f64), 4),
            0xcb => (Portable::Float(f64::from_bits(be(8)?)), 8),
            _ => return None,
        };
        self.pos += 1 + len;
        Some(value)
    }

    /// The next item if it is a bytes or string value (what a call mostly passes and
    /// answers), complete before `end` and, for a string, valid UTF-8; `None`, with nothing
    /// read, for anything else (which [`Reader::value`] reads, or reports).
    fn leaf(&mut self) -> Option<Portable> {
        let at = self.pos;
        let m = Marker::from_u8(*self.buf.get(at..self.end)?.first()?);
        self.pos += 1;
        match self.text_or_bytes(m) {
            Some(Ok(v)) => Some(v),
            _ => {
                self.pos = at;
                None
            }
        }
    }

    /// The string or bytes value that marker `m` (read) begins; `None`, with nothing more
    /// read, if `m` begins anything else.
    fn text_or_bytes(&mut self, m: Marker) -> Option<Result<Portable, ValueError>> {
        Some(match m {
            Marker::FixStr(n) => self.string(Len::Fixed(n as u64)),
            Marker::Str8 => self.string(Len::Prefix(1)),
            Marker::Str16 => self.string(Len::Prefix(2)),
            Marker::Str32 => self.string(Len::Prefix(4)),
            Marker::Bin8 => self.bin(Len::Prefix(1)),
            Marker::Bin16 => self.bin(Len::Prefix(2)),
            Marker::Bin32 => self.bin(Len::Prefix(4)),
            _ => return None,
        })
    }

    /// Reads one item: a complete scalar, or the header of a container.
    fn item(&mut self, sidecars: SidecarLookup<'_>) -> Result<Item, ValueError> {
        if let Some(v) = self.scalar() {
            return Ok(Item::Value(v));
        }
        let at = self.pos;
        let m = self.uint(1)? as u8;
        let v = match Marker::from_u8(m) {
            // What `scalar` reads: here only when the value is cut short.
            Marker::Null
            | Marker::True
            | Marker::False
            | Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::U8
            | Marker::U16
            | Marker::U32
            | Marker::I8
            | Marker::I16
            | Marker::I32
            | Marker::I64
            | Marker::F32
            | Marker::F64 => return Err(ValueError::Truncated(self.pos)),
            Marker::U64 => {
                let v = self.uint(8)?;
                Portable::Int(i64::try_from(v).map_err(|_| ValueError::IntOutOfRange(at))?)
            }
            Marker::FixArray(n) => return Ok(Item::Array(n as u64)),
            Marker::Array16 => return Ok(Item::Array(self.uint(2)?)),
            Marker::Array32 => return Ok(Item::Array(self.uint(4)?)),
            Marker::FixMap(n) => return Ok(Item::Map(n as u64)),
            Marker::Map16 => return Ok(Item::Map(self.uint(2)?)),
            Marker::Map32 => return Ok(Item::Map(self.uint(4)?)),
            Marker::FixExt1 => return self.ext(Len::Fixed(1), at, sidecars),
            Marker::FixExt2 => return self.ext(Len::Fixed(2), at, sidecars),
            Marker::FixExt4 => return self.ext(Len::Fixed(4), at, sidecars),
            Marker::FixExt8 => return self.ext(Len::Fixed(8), at, sidecars),
            Marker::FixExt16 => return self.ext(Len::Fixed(16), at, sidecars),
            Marker::Ext8 => return self.ext(Len::Prefix(1), at, sidecars),
            Marker::Ext16 => return self.ext(Len::Prefix(2), at, sidecars),
            Marker::Ext32 => return self.ext(Len::Prefix(4), at, sidecars),
            // A string or bytes value; else `Reserved`, the one marker left.
            marker => match self.text_or_bytes(marker) {
                Some(read) => read?,
                None => return Err(ValueError::Reserved(at)),
            },
        };
        Ok(Item::Value(v))
    }

    /// The length `len` gives: fixed by the marker, or read from the next bytes.
    fn length(&mut self, len: Len) -> Result<u64, ValueError> {
        match len {
            Len::Fixed(n) => Ok(n),
            Len::Prefix(width) => self.uint(width),
        }
    }

    fn string(&mut self, len: Len) -> Result<Portable, ValueError> {
        let n = self.length(len)?;
        let r = self.take(n)?;
        let at = r.start;
        let s = std::str::from_utf8(&self.buf[r]).map_err(|_| ValueError::InvalidUtf8(at))?;
        Ok(Portable::Str(s.to_owned()))
    }

    fn bin(&mut self, len: Len) -> Result<Portable, ValueError> {
        let n = self.length(len)?;
        let r = self.take(n)?;
        Ok(Portable::Bytes(self.buf.slice(r)))
    }

    fn ext(
        &mut self,
        len: Len,
        at: usize,
        sidecars: SidecarLookup<'_>,
    ) -> Result<Item, ValueError> {
        let n = self.length(len)?;
        let ty = self.uint(1)? as u8 as i8;
        if n > self.remaining() as u64 {
            return Err(ValueError::Truncated(self.pos));
        }
        let start = self.pos;
        let end = start + n as usize;
        let payload = &self.buf[start..end];
        let bad = |why| ValueError::BadExt { ty, at, why };
        match ty {
            EXT_RANGE => {
                if payload.len() != 16 {
                    return Err(bad("range payload must be 16 bytes"));
                }
                let s = i64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
                let e = i64::from_be_bytes(payload[8..].try_into().unwrap_or_default());
                self.pos = end;
                Ok(Item::Value(Portable::Range(s, e)))
            }
            EXT_SIDECAR => {
                if payload.len() != 40 {
                    return Err(bad("sidecar reference payload must be 40 bytes"));
                }
                let mut h = [0u8; 32];
                h.copy_from_slice(&payload[..32]);
                let hash = SidecarHash(h);
                let declared = u64::from_be_bytes(payload[32..].try_into().unwrap_or_default());
                let data = sidecars(&hash).ok_or(ValueError::UnknownSidecar(hash))?;
                if data.len() as u64 != declared {
                    return Err(ValueError::SidecarLength {
                        hash,
                        declared,
                        actual: data.len() as u64,
                    });
                }
                self.pos = end;
                Ok(Item::Value(Portable::Bytes(data)))
            }
            EXT_FUNCTION => {
                if payload.len() < 37 {
                    return Err(bad("closure payload shorter than hash + member + array"));
                }
                let mut h = [0u8; 32];
                h.copy_from_slice(&payload[..32]);
                let member = u32::from_be_bytes(payload[32..36].try_into().unwrap_or_default());
                self.pos = start + 36;
                Ok(Item::Closure {
                    func: FunctionId {
                        blob: BlobHash(h),
                        member,
                    },
                    ext_end: end,
                })
            }
            _ => Err(ValueError::UnknownExt { ty, at }),
        }
    }
}

/// A decoder state that cannot occur; reported as an error rather than a panic.
fn internal(at: usize) -> ValueError {
    ValueError::Unexpected {
        expected: "a consistent decoder state",
        at,
    }
}

/// Largest pre-allocation of a decoded container, in elements.
const PREALLOC: usize = 1024;

/// The length of a payload: given by its marker, or in a big-endian prefix of `width` bytes.
#[derive(Clone, Copy)]
enum Len {
    Fixed(u64),
    Prefix(usize),
}

enum Item {
    Value(Portable),
    Array(u64),
    Map(u64),
    Closure { func: FunctionId, ext_end: usize },
}

enum Open {
    List {
        items: Vec<Portable>,
        left: u64,
    },
    Map {
        entries: Vec<(Portable, Portable)>,
        key: Option<Portable>,
        left: u64,
    },
    Closure {
        func: FunctionId,
        ext_end: usize,
        outer_end: usize,
        at: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(v: &Portable) -> Portable {
        let mut out = Vec::new();
        encode_value(v, &mut out);
        decode_value(&Bytes::from(out), 64).unwrap()
    }

    #[test]
    fn native_forms() {
        let mut out = Vec::new();
        encode_value(&Portable::Bytes(Bytes::from_static(&[1, 2, 3])), &mut out);
        assert_eq!(out, [0xc4, 3, 1, 2, 3]);
        out.clear();
        encode_value(
            &Portable::List(vec![Portable::Int(1), Portable::Str("a".into())]),
            &mut out,
        );
        assert_eq!(out, [0x92, 0x01, 0xa1, b'a']);
        for v in [
            Portable::Int(i64::MIN),
            Portable::Int(i64::MAX),
            Portable::Int(-33),
            Portable::Range(-5, 7),
            Portable::Float(1.5),
        ] {
            assert_eq!(rt(&v), v);
        }
    }

    #[test]
    fn object_len_matches() {
        let v = Portable::Map(vec![(
            Portable::Str("k".into()),
            Portable::List(vec![Portable::Nil, Portable::Range(1, 2)]),
        )]);
        let mut out = Vec::new();
        encode_value(&v, &mut out);
        let n = out.len();
        out.push(0xc0);
        assert_eq!(object_len(&out, 64).unwrap(), n);
    }
}
