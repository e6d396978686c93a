//! The value codec: property-tested exact round trips (with and without sidecars), and the
//! native MessagePack forms other languages rely on.

use bytes::Bytes;
use proptest::prelude::*;
use skiff_vm::{BlobHash, FunctionId, Portable};
use skiff_wire::value::{
    decode_list_at, decode_value, decode_value_at, encode_value, encode_value_with_sidecars,
    SidecarHash,
};
use std::collections::HashMap;

fn key() -> impl Strategy<Value = Portable> {
    prop_oneof![
        Just(Portable::Nil),
        any::<bool>().prop_map(Portable::Bool),
        any::<i64>().prop_map(Portable::Int),
        ".{0,8}".prop_map(Portable::Str),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(|v| Portable::Bytes(Bytes::from(v))),
    ]
}

fn leaf() -> impl Strategy<Value = Portable> {
    prop_oneof![
        key(),
        // Any float except NaN (NaN != NaN; its bits round-trip, checked separately).
        any::<f64>()
            .prop_filter("not NaN", |x| !x.is_nan())
            .prop_map(Portable::Float),
        (any::<i64>(), any::<i64>()).prop_map(|(a, b)| Portable::Range(a, b)),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|v| Portable::Bytes(Bytes::from(v))),
        // Past 31 and 255 bytes: the str8 and str16 forms.
        "[a-zé]{0,300}".prop_map(Portable::Str),
    ]
}

fn value() -> impl Strategy<Value = Portable> {
    leaf().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Portable::List),
            proptest::collection::vec((key(), inner.clone()), 0..6).prop_map(Portable::Map),
            (
                any::<[u8; 32]>(),
                any::<u32>(),
                proptest::collection::vec(inner, 0..4)
            )
                .prop_map(|(h, member, captures)| Portable::Function {
                    func: FunctionId {
                        blob: BlobHash(h),
                        member
                    },
                    captures
                }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip(v in value()) {
        let mut out = Vec::new();
        encode_value(&v, &mut out);
        prop_assert_eq!(decode_value(&Bytes::from(out), 64).unwrap(), v);
    }

    #[test]
    fn round_trip_with_sidecars(v in value(), threshold in 0usize..200) {
        let mut out = Vec::new();
        let mut sidecars = Vec::new();
        encode_value_with_sidecars(&v, &mut out, threshold, &mut sidecars);
        let table: HashMap<SidecarHash, Bytes> =
            sidecars.iter().map(|s| (s.hash, s.data.clone())).collect();
        for s in &sidecars {
            prop_assert!(s.data.len() >= threshold);
            prop_assert_eq!(SidecarHash::of(&s.data), s.hash);
        }
        let buf = Bytes::from(out);
        let lookup = |h: &SidecarHash| table.get(h).cloned();
        let (back, end) = decode_value_at(&buf, 0, buf.len(), 64, &lookup).unwrap();
        prop_assert_eq!(end, buf.len());
        prop_assert_eq!(back, v);
    }

    /// A call's arguments are decoded item by item (`decode_list_at`): exactly what decoding
    /// the array as one value gives, errors included (a limit names the same depths), whole
    /// or cut short, under any depth limit; anything but an array is never taken for one.
    #[test]
    fn list_decoding_is_value_decoding(
        v in value(),
        max_depth in 0usize..8,
        cut in any::<proptest::sample::Index>(),
    ) {
        let mut out = Vec::new();
        encode_value(&v, &mut out);
        let buf = Bytes::from(out);
        let none = |_: &SidecarHash| None;
        for end in [buf.len(), cut.index(buf.len() + 1)] {
            let as_value = decode_value_at(&buf, 0, end, max_depth, &none);
            let as_list = decode_list_at(&buf, 0, end, max_depth, &none);
            match (&v, as_value) {
                (Portable::List(_), Ok((Portable::List(items), n))) => {
                    prop_assert_eq!(as_list, Ok(Some((items, n))))
                }
                (Portable::List(_), Err(e)) => prop_assert_eq!(as_list, Err(e)),
                (_, _) => prop_assert!(!matches!(as_list, Ok(Some(_))), "{:?}", as_list),
            }
        }
    }
}

#[test]
fn nan_bits_round_trip() {
    let v = Portable::Float(f64::from_bits(0x7ff8_0000_dead_beef));
    let mut out = Vec::new();
    encode_value(&v, &mut out);
    match decode_value(&Bytes::from(out), 64).unwrap() {
        Portable::Float(x) => assert_eq!(x.to_bits(), 0x7ff8_0000_dead_beef),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bytes_are_bin_never_integer_arrays() {
    let v = Portable::Bytes(Bytes::from(vec![0xffu8; 300]));
    let mut out = Vec::new();
    encode_value(&v, &mut out);
    assert_eq!(&out[..3], &[0xc5, 0x01, 0x2c]); // bin 16, length 300
    assert_eq!(out.len(), 303);
}

#[test]
fn decoded_bin_shares_the_frame_buffer() {
    let buf = Bytes::from(vec![0xc4, 3, 1, 2, 3]);
    match decode_value(&buf, 64).unwrap() {
        Portable::Bytes(b) => {
            assert_eq!(&b[..], &[1, 2, 3]);
            assert_eq!(b.as_ptr(), buf[2..].as_ptr(), "sliced, not copied");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn foreign_encodings_are_accepted() {
    // Non-minimal ints, float32, str8: what another MessagePack library might emit.
    let cases: Vec<(Vec<u8>, Portable)> = vec![
        (vec![0xcc, 0x05], Portable::Int(5)),
        (vec![0xd1, 0xff, 0xfe], Portable::Int(-2)),
        (vec![0xcf, 0, 0, 0, 0, 0, 0, 0, 9], Portable::Int(9)),
        (vec![0xca, 0x3f, 0xc0, 0, 0], Portable::Float(1.5)),
        (vec![0xd9, 1, b'a'], Portable::Str("a".into())),
        (
            vec![0xdc, 0, 1, 0xc3],
            Portable::List(vec![Portable::Bool(true)]),
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(decode_value(&Bytes::from(bytes), 64).unwrap(), want);
    }
    // uint64 above i64::MAX, invalid UTF-8, float keys, unknown ext: rejected.
    for bad in [
        vec![0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0],
        vec![0xa1, 0xff],
        vec![0x81, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0xc0],
        vec![0xd4, 0x09, 0x00],
        vec![0xc0, 0xc0],
    ] {
        assert!(
            decode_value(&Bytes::from(bad.clone()), 64).is_err(),
            "{bad:02x?}"
        );
    }
}

#[test]
fn scalars_inside_a_list_decode_as_alone() {
    // Inside a list all items but the last are read by a fast path for plain scalars; the
    // last, and a scalar alone, by the general one. Each form, non-minimal ones included,
    // must decode the same either way.
    let forms: Vec<Vec<u8>> = vec![
        vec![0x00],
        vec![0x7f],
        vec![0xe0],
        vec![0xff],
        vec![0xc0],
        vec![0xc2],
        vec![0xc3],
        vec![0xcc, 0xff],
        vec![0xcd, 0xff, 0xfe],
        vec![0xce, 0xff, 0xff, 0xff, 0xfe],
        vec![0xcf, 0, 0, 0, 1, 0, 0, 0, 0],
        vec![0xd0, 0x80],
        vec![0xd1, 0x80, 0x00],
        vec![0xd2, 0x80, 0, 0, 0],
        vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
        vec![0xca, 0x3f, 0xc0, 0, 0],
        vec![0xcb, 0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18],
    ];
    for form in &forms {
        let alone = decode_value(&Bytes::from(form.clone()), 64).unwrap();
        let mut list = vec![0x93];
        for _ in 0..3 {
            list.extend_from_slice(form);
        }
        assert_eq!(
            decode_value(&Bytes::from(list), 64).unwrap(),
            Portable::List(vec![alone.clone(), alone.clone(), alone]),
            "{form:02x?}"
        );
    }
    // A scalar cut short inside a list is an error, wherever it is.
    for form in forms.iter().filter(|f| f.len() > 1) {
        let mut list = vec![0x93, 0x01];
        list.extend_from_slice(&form[..form.len() - 1]);
        assert!(
            matches!(
                decode_value(&Bytes::from(list), 64),
                Err(skiff_wire::ValueError::Truncated(_))
            ),
            "{form:02x?}"
        );
    }
}
