//! Function blobs: the unit of code that is hashed, stored, shipped and verified.
//!
//! A blob is one strongly connected component of the call graph: usually a single function,
//! several when functions are mutually recursive (they are hashed as a unit, as Unison does,
//! and each member is addressed as `(blob hash, member index)` — a [`FunctionId`]).
//!
//! Canonical encoding (version [`FORMAT_VERSION`]), all integers little-endian fixed width:
//! ```text
//! blob     = "SKB" version:u8 count:u32 function{count}
//! function = arity:u16 locals:u16 upvals:u16
//!            cells:u32 slot:u16{cells}          -- local slots that hold cells, ascending
//!            code_len:u32 code:u8{code_len}     -- instructions, see opcodes.rs
//!            consts:u32 const{consts}
//!            refs:u32 ref{refs}
//!            natives:u32 string{natives}
//! const    = 0x00 i64 | 0x01 f64-bits:u64 | 0x02 string | 0x03 len:u32 u8{len}
//! ref      = 0x00 member:u32                    -- a member of this same blob (self included)
//!          | 0x01 hash:[u8;32] member:u32       -- a member of another blob
//! string   = len:u32 utf8{len}
//! ```
//! Invariants:
//! - One blob value has exactly one encoding and decoding accepts only that encoding:
//!   trailing bytes, unknown tags, non-ascending cell slots, invalid UTF-8 are rejected.
//! - The hash ([`BlobHash`]) is SHA-256 over exactly these bytes. Debug information
//!   ([`BlobDebug`]) travels beside the blob and never enters the hash.
//! - Decoding checks every length against the remaining input before allocating, so a
//!   hostile length cannot make it allocate more than the input size.

use crate::opcodes::{decode_code, encode_code, DecodeInstrError, Instr};
use sha2::{Digest, Sha256};
use std::fmt;

/// The version byte of the canonical blob encoding.
pub const FORMAT_VERSION: u8 = 1;
const MAGIC: &[u8; 3] = b"SKB";

/// SHA-256 of a blob's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// Hashes canonical blob bytes.
    pub fn of(bytes: &[u8]) -> BlobHash {
        BlobHash(Sha256::digest(bytes).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<BlobHash> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(BlobHash(out))
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", &self.to_hex()[..12])
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A function's global address: a member of a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct FunctionId {
    pub blob: BlobHash,
    pub member: u32,
}

impl fmt::Display for FunctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.blob, self.member)
    }
}

/// A constant-pool entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Const {
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
}

/// A function reference-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FnRef {
    /// Member `n` of the blob that holds the referencing function (itself included).
    Local(u32),
    /// A member of another blob.
    External(FunctionId),
}

/// The executable part of one function; everything here is covered by the hash.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FunctionCode {
    /// Number of parameters; they occupy local slots `0..arity`.
    pub arity: u16,
    /// Number of local slots, parameters included.
    pub locals: u16,
    /// Number of upvalue cells a closure of this function carries.
    pub upvals: u16,
    /// Local slots that hold cells (captured variables), ascending. Never parameters.
    pub cells: Vec<u16>,
    pub code: Vec<Instr>,
    pub consts: Vec<Const>,
    pub refs: Vec<FnRef>,
    /// Names of the builtins and host natives `CallNative` uses.
    pub natives: Vec<String>,
}

/// A content-addressed unit: one strongly connected component of functions.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Blob {
    pub functions: Vec<FunctionCode>,
}

/// Source positions and names for one function; never hashed.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FunctionDebug {
    /// `None` for anonymous functions; remote and spawn bodies get descriptive names.
    pub name: Option<String>,
    /// The source file name as given to the compiler.
    pub file: String,
    /// `(line, column)`, 1-based, one entry per instruction.
    pub positions: Vec<(u32, u32)>,
    /// Names of local slots, for the disassembler.
    pub local_names: Vec<String>,
}

/// Debug information for every member of a blob, in member order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BlobDebug {
    pub functions: Vec<FunctionDebug>,
}

/// Why blob bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobDecodeError {
    #[error("blob is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("not a blob (bad magic)")]
    BadMagic,
    #[error("blob format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    #[error("blob is truncated at byte {0}")]
    Truncated(usize),
    #[error("{0} trailing bytes after the blob")]
    TrailingBytes(usize),
    #[error("unknown {what} tag 0x{tag:02x} at byte {offset}")]
    UnknownTag {
        what: &'static str,
        tag: u8,
        offset: usize,
    },
    #[error("invalid UTF-8 in a string at byte {0}")]
    InvalidUtf8(usize),
    #[error("cell slots are not strictly ascending")]
    CellsNotAscending,
    #[error("a blob has no functions")]
    Empty,
    #[error("bad code: {0}")]
    Code(#[from] DecodeInstrError),
}

impl Blob {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        put_len(&mut out, self.functions.len());
        for f in &self.functions {
            out.extend_from_slice(&f.arity.to_le_bytes());
            out.extend_from_slice(&f.locals.to_le_bytes());
            out.extend_from_slice(&f.upvals.to_le_bytes());
            put_len(&mut out, f.cells.len());
            for slot in &f.cells {
                out.extend_from_slice(&slot.to_le_bytes());
            }
            // The code's length goes before it: encoded in place, then filled in.
            let len_at = out.len();
            put_len(&mut out, 0);
            let code_at = out.len();
            out.reserve(f.code.len() * 3);
            encode_code(&f.code, &mut out);
            let code_len = section_len(out.len() - code_at);
            out[len_at..code_at].copy_from_slice(&code_len.to_le_bytes());
            put_len(&mut out, f.consts.len());
            for c in &f.consts {
                match c {
                    Const::Int(i) => {
                        out.push(0);
                        out.extend_from_slice(&i.to_le_bytes());
                    }
                    Const::Float(x) => {
                        out.push(1);
                        out.extend_from_slice(&x.to_bits().to_le_bytes());
                    }
                    Const::Str(s) => {
                        out.push(2);
                        put_bytes(&mut out, s.as_bytes());
                    }
                    Const::Bytes(b) => {
                        out.push(3);
                        put_bytes(&mut out, b);
                    }
                }
            }
            put_len(&mut out, f.refs.len());
            for r in &f.refs {
                match r {
                    FnRef::Local(member) => {
                        out.push(0);
                        out.extend_from_slice(&member.to_le_bytes());
                    }
                    FnRef::External(id) => {
                        out.push(1);
                        out.extend_from_slice(&id.blob.0);
                        out.extend_from_slice(&id.member.to_le_bytes());
                    }
                }
            }
            put_len(&mut out, f.natives.len());
            for n in &f.natives {
                put_bytes(&mut out, n.as_bytes());
            }
        }
        out
    }

    /// The content hash: SHA-256 of [`Blob::encode`].
    pub fn hash(&self) -> BlobHash {
        BlobHash::of(&self.encode())
    }

    /// Decodes canonical bytes; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8], max_size: usize) -> Result<Blob, BlobDecodeError> {
        if bytes.len() > max_size {
            return Err(BlobDecodeError::TooLarge {
                size: bytes.len(),
                limit: max_size,
            });
        }
        let mut r = Reader { bytes, pos: 0 };
        if r.take(3)? != MAGIC {
            return Err(BlobDecodeError::BadMagic);
        }
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(BlobDecodeError::UnsupportedVersion(version));
        }
        let count = r.count(1)?;
        if count == 0 {
            return Err(BlobDecodeError::Empty);
        }
        let mut functions = Vec::with_capacity(count);
        for _ in 0..count {
            let arity = r.u16()?;
            let locals = r.u16()?;
            let upvals = r.u16()?;
            let n_cells = r.count(2)?;
            let mut cells = Vec::with_capacity(n_cells);
            for _ in 0..n_cells {
                let slot = r.u16()?;
                if cells.last().is_some_and(|&prev| prev >= slot) {
                    return Err(BlobDecodeError::CellsNotAscending);
                }
                cells.push(slot);
            }
            let code_len = r.count(1)?;
            let code = decode_code(r.take(code_len)?)?;
            let n_consts = r.count(1)?;
            let mut consts = Vec::with_capacity(n_consts);
            for _ in 0..n_consts {
                let offset = r.pos;
                consts.push(match r.u8()? {
                    0 => Const::Int(i64::from_le_bytes(r.array()?)),
                    1 => Const::Float(f64::from_bits(u64::from_le_bytes(r.array()?))),
                    2 => Const::Str(r.string()?),
                    3 => {
                        let len = r.count(1)?;
                        Const::Bytes(r.take(len)?.to_vec())
                    }
                    tag => {
                        return Err(BlobDecodeError::UnknownTag {
                            what: "constant",
                            tag,
                            offset,
                        })
                    }
                });
            }
            let n_refs = r.count(5)?;
            let mut refs = Vec::with_capacity(n_refs);
            for _ in 0..n_refs {
                let offset = r.pos;
                refs.push(match r.u8()? {
                    0 => FnRef::Local(r.u32()?),
                    1 => {
                        let blob = BlobHash(r.array()?);
                        FnRef::External(FunctionId {
                            blob,
                            member: r.u32()?,
                        })
                    }
                    tag => {
                        return Err(BlobDecodeError::UnknownTag {
                            what: "reference",
                            tag,
                            offset,
                        })
                    }
                });
            }
            let n_natives = r.count(4)?;
            let mut natives = Vec::with_capacity(n_natives);
            for _ in 0..n_natives {
                natives.push(r.string()?);
            }
            functions.push(FunctionCode {
                arity,
                locals,
                upvals,
                cells,
                code,
                consts,
                refs,
                natives,
            });
        }
        if r.pos != bytes.len() {
            return Err(BlobDecodeError::TrailingBytes(bytes.len() - r.pos));
        }
        Ok(Blob { functions })
    }

    /// The blobs this one references, deduplicated, in first-reference order.
    pub fn dependencies(&self) -> Vec<BlobHash> {
        let mut out: Vec<BlobHash> = Vec::new();
        for f in &self.functions {
            for r in &f.refs {
                if let FnRef::External(id) = r {
                    if !out.contains(&id.blob) {
                        out.push(id.blob);
                    }
                }
            }
        }
        out
    }
}

impl BlobDebug {
    /// A compact encoding for storing debug info beside a blob (`skiff compile`); not hashed.
    ///
    /// `"SKD" version:u8 count:u32 (has_name:u8 [string] file:string
    ///  positions:u32 (line:u32 col:u32)* locals:u32 string*)*`
    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"SKD".to_vec();
        out.push(FORMAT_VERSION);
        put_len(&mut out, self.functions.len());
        for f in &self.functions {
            match &f.name {
                Some(name) => {
                    out.push(1);
                    put_bytes(&mut out, name.as_bytes());
                }
                None => out.push(0),
            }
            put_bytes(&mut out, f.file.as_bytes());
            put_len(&mut out, f.positions.len());
            for (line, col) in &f.positions {
                out.extend_from_slice(&line.to_le_bytes());
                out.extend_from_slice(&col.to_le_bytes());
            }
            put_len(&mut out, f.local_names.len());
            for name in &f.local_names {
                put_bytes(&mut out, name.as_bytes());
            }
        }
        out
    }

    /// Decodes [`BlobDebug::encode`] output; malformed input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<BlobDebug, BlobDecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(3)? != b"SKD" {
            return Err(BlobDecodeError::BadMagic);
        }
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(BlobDecodeError::UnsupportedVersion(version));
        }
        let count = r.count(13)?;
        let mut functions = Vec::with_capacity(count);
        for _ in 0..count {
            let offset = r.pos;
            let name = match r.u8()? {
                0 => None,
                1 => Some(r.string()?),
                tag => {
                    return Err(BlobDecodeError::UnknownTag {
                        what: "debug name",
                        tag,
                        offset,
                    })
                }
            };
            let file = r.string()?;
            let n_positions = r.count(8)?;
            let mut positions = Vec::with_capacity(n_positions);
            for _ in 0..n_positions {
                positions.push((r.u32()?, r.u32()?));
            }
            let n_locals = r.count(4)?;
            let mut local_names = Vec::with_capacity(n_locals);
            for _ in 0..n_locals {
                local_names.push(r.string()?);
            }
            functions.push(FunctionDebug {
                name,
                file,
                positions,
                local_names,
            });
        }
        if r.pos != bytes.len() {
            return Err(BlobDecodeError::TrailingBytes(bytes.len() - r.pos));
        }
        Ok(BlobDebug { functions })
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&section_len(len).to_le_bytes());
}

/// A section's length as encoded.
fn section_len(len: usize) -> u32 {
    u32::try_from(len).expect("blob section longer than u32::MAX")
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BlobDecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(BlobDecodeError::Truncated(self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BlobDecodeError> {
        let pos = self.pos;
        self.take(N)?
            .try_into()
            .map_err(|_| BlobDecodeError::Truncated(pos))
    }
    fn u8(&mut self) -> Result<u8, BlobDecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, BlobDecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, BlobDecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A count of items each at least `min_item_size` bytes, checked against the input left.
    fn count(&mut self, min_item_size: usize) -> Result<usize, BlobDecodeError> {
        let pos = self.pos;
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_size) > self.bytes.len() - self.pos {
            return Err(BlobDecodeError::Truncated(pos));
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<String, BlobDecodeError> {
        let len = self.count(1)?;
        let pos = self.pos;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| BlobDecodeError::InvalidUtf8(pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Blob {
        Blob {
            functions: vec![FunctionCode {
                arity: 1,
                locals: 2,
                upvals: 0,
                cells: vec![1],
                code: vec![Instr::GetLocal { slot: 0 }, Instr::Return {}],
                consts: vec![
                    Const::Int(-1),
                    Const::Float(0.5),
                    Const::Str("é".into()),
                    Const::Bytes(vec![0, 255]),
                ],
                refs: vec![
                    FnRef::Local(0),
                    FnRef::External(FunctionId {
                        blob: BlobHash([7; 32]),
                        member: 2,
                    }),
                ],
                natives: vec!["print".into()],
            }],
        }
    }

    #[test]
    fn round_trip_and_stable_hash() {
        let blob = sample();
        let bytes = blob.encode();
        assert_eq!(Blob::decode(&bytes, 1 << 20).unwrap(), blob);
        assert_eq!(BlobHash::of(&bytes), blob.hash());
        assert_eq!(BlobHash::from_hex(&blob.hash().to_hex()), Some(blob.hash()));
    }

    #[test]
    fn rejects_trailing_truncated_and_oversized() {
        let mut bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Blob::decode(&bytes[..cut], 1 << 20).is_err());
        }
        assert!(matches!(
            Blob::decode(&bytes, 4),
            Err(BlobDecodeError::TooLarge { .. })
        ));
        bytes.push(0);
        assert_eq!(
            Blob::decode(&bytes, 1 << 20),
            Err(BlobDecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn debug_info_round_trips_and_rejects_garbage() {
        let debug = BlobDebug {
            functions: vec![FunctionDebug {
                name: Some("f".into()),
                file: "a.skiff".into(),
                positions: vec![(1, 2), (3, 4)],
                local_names: vec!["x".into()],
            }],
        };
        let bytes = debug.encode();
        assert_eq!(BlobDebug::decode(&bytes).unwrap(), debug);
        for cut in 0..bytes.len() {
            assert!(BlobDebug::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn hostile_count_does_not_allocate() {
        let mut bytes = b"SKB\x01".to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Blob::decode(&bytes, 1 << 20),
            Err(BlobDecodeError::Truncated(_))
        ));
    }
}
