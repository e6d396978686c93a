//! MessagePack writers for the hot encoders (call and response headers, values): each value
//! in its smallest form, straight into a `Vec<u8>`. `rmp::encode` writes the same bytes
//! through a generic writer with an error path at every byte, which cost a call's header
//! about twice what these do.
//!
//! Invariant: every writer here writes exactly what `rmp::encode`'s writer of the same name
//! writes for the same value (tested below, over every length class), so the canonical
//! encoding of a value does not depend on which of the two wrote it.

/// MessagePack's `nil`, one byte.
pub(crate) const NIL: u8 = 0xc0;

/// `nil`.
pub(crate) fn nil(out: &mut Vec<u8>) {
    out.push(NIL);
}

pub(crate) fn bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { 0xc3 } else { 0xc2 });
}

/// An unsigned integer: positive fixint, then `uint 8/16/32/64`.
pub(crate) fn uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v <= 0xff {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= 0xffff {
        tagged(out, 0xcd, &(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        tagged(out, 0xce, &(v as u32).to_be_bytes());
    } else {
        tagged(out, 0xcf, &v.to_be_bytes());
    }
}

/// A signed integer as rmp writes it: a non-negative one as [`uint`] does, a negative one
/// as negative fixint, then `int 8/16/32/64`.
pub(crate) fn sint(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as u8);
    } else if v >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, v as u8]);
    } else if v >= i64::from(i16::MIN) {
        tagged(out, 0xd1, &(v as i16).to_be_bytes());
    } else if v >= i64::from(i32::MIN) {
        tagged(out, 0xd2, &(v as i32).to_be_bytes());
    } else {
        tagged(out, 0xd3, &v.to_be_bytes());
    }
}

/// `float 64`.
pub(crate) fn f64(out: &mut Vec<u8>, x: f64) {
    tagged(out, 0xcb, &x.to_be_bytes());
}

/// A string: fixstr, then `str 8/16/32`.
pub(crate) fn str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else {
        length(out, [0xd9, 0xda, 0xdb], n);
    }
    out.extend_from_slice(s.as_bytes());
}

/// A byte string: `bin 8/16/32`.
pub(crate) fn bin(out: &mut Vec<u8>, b: &[u8]) {
    length(out, [0xc4, 0xc5, 0xc6], b.len());
    out.extend_from_slice(b);
}

/// An array's header: fixarray, then `array 16/32`.
pub(crate) fn array_len(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else {
        length(out, [0, 0xdc, 0xdd], len32(n) as usize);
    }
}

/// A map's header: fixmap, then `map 16/32`.
pub(crate) fn map_len(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x80 | n as u8);
    } else {
        length(out, [0, 0xde, 0xdf], len32(n) as usize);
    }
}

/// A container's length as MessagePack holds it.
pub(crate) fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("container longer than u32::MAX cannot be encoded")
}

/// `marker` and `bytes` after it.
fn tagged(out: &mut Vec<u8>, marker: u8, bytes: &[u8]) {
    out.push(marker);
    out.extend_from_slice(bytes);
}

/// A length `n` with the first of `markers` (for an 8-, 16- and 32-bit length) it fits;
/// a `0` marker is a class the caller handled itself. A string or bin longer than
/// `u32::MAX` cannot occur: a frame is far smaller.
fn length(out: &mut Vec<u8>, markers: [u8; 3], n: usize) {
    if n <= 0xff && markers[0] != 0 {
        out.extend_from_slice(&[markers[0], n as u8]);
    } else if n <= 0xffff {
        tagged(out, markers[1], &(n as u16).to_be_bytes());
    } else {
        tagged(out, markers[2], &(n as u32).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rmp::encode as rmp;

    fn ours(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out);
        out
    }

    /// Lengths at and around every class boundary.
    const LENGTHS: [usize; 14] = [
        0, 1, 15, 16, 31, 32, 255, 256, 65_535, 65_536, 70_000, 100, 17, 300,
    ];

    #[test]
    fn lengths_are_written_as_rmp_writes_them() {
        for n in LENGTHS {
            let s = "x".repeat(n);
            let mut theirs = Vec::new();
            rmp::write_str(&mut theirs, &s).unwrap();
            assert_eq!(ours(|o| str(o, &s)), theirs, "str {n}");
            let mut theirs = Vec::new();
            rmp::write_bin(&mut theirs, s.as_bytes()).unwrap();
            assert_eq!(ours(|o| bin(o, s.as_bytes())), theirs, "bin {n}");
            let mut theirs = Vec::new();
            rmp::write_array_len(&mut theirs, n as u32).unwrap();
            assert_eq!(ours(|o| array_len(o, n)), theirs, "array {n}");
            let mut theirs = Vec::new();
            rmp::write_map_len(&mut theirs, n as u32).unwrap();
            assert_eq!(ours(|o| map_len(o, n)), theirs, "map {n}");
        }
        for b in [false, true] {
            let mut theirs = Vec::new();
            rmp::write_bool(&mut theirs, b).unwrap();
            assert_eq!(ours(|o| bool(o, b)), theirs);
        }
        let mut theirs = Vec::new();
        rmp::write_nil(&mut theirs).unwrap();
        assert_eq!(ours(nil), theirs);
    }

    fn edges() -> impl Strategy<Value = i64> {
        let edge = prop::sample::select(vec![
            0i64,
            -1,
            -32,
            -33,
            127,
            128,
            -128,
            -129,
            255,
            256,
            -32_768,
            -32_769,
            65_535,
            65_536,
            i64::from(i32::MIN),
            i64::from(i32::MIN) - 1,
            u32::MAX as i64,
            u32::MAX as i64 + 1,
            i64::MIN,
            i64::MAX,
        ]);
        prop_oneof![edge, any::<i64>(), -70_000i64..70_000]
    }

    proptest! {
        #[test]
        fn integers_are_written_as_rmp_writes_them(v in edges(), u in any::<u64>()) {
            let mut theirs = Vec::new();
            rmp::write_sint(&mut theirs, v).unwrap();
            prop_assert_eq!(ours(|o| sint(o, v)), theirs);
            for u in [u, v as u64, v.unsigned_abs()] {
                let mut theirs = Vec::new();
                rmp::write_uint(&mut theirs, u).unwrap();
                prop_assert_eq!(ours(|o| uint(o, u)), theirs);
            }
        }

        #[test]
        fn floats_are_written_as_rmp_writes_them(x in any::<f64>()) {
            let mut theirs = Vec::new();
            rmp::write_f64(&mut theirs, x).unwrap();
            prop_assert_eq!(ours(|o| f64(o, x)), theirs);
        }

        #[test]
        fn strings_are_written_as_rmp_writes_them(s in ".{0,80}") {
            let mut theirs = Vec::new();
            rmp::write_str(&mut theirs, &s).unwrap();
            prop_assert_eq!(ours(|o| str(o, &s)), theirs);
        }
    }
}
