//! Wire-codec benchmarks: Skiff's message encoding against plain rmp-serde and memcpy.
//!
//! | group               | `skiff`                                   | peers                        |
//! |---------------------|-------------------------------------------|------------------------------|
//! | `wire_small_encode` | `encode_plain(Call)`: a small call request | `rmp_serde::to_vec` of an equivalent struct |
//! | `wire_small_decode` | `decode_frame_exact` of that frame         | `rmp_serde::from_slice`       |
//! | `wire_1mib_encode`  | a call whose one argument is 1 MiB of bytes | rmp-serde (bytes as `bin`), `memcpy` of 1 MiB |
//! | `wire_1mib_decode`  | decoding that frame                        | rmp-serde, `memcpy` of 1 MiB  |
//!
//! The Skiff side encodes every bytes value inline here (`encode_plain`); the node runtime
//! moves large bytes as hashed sidecars, whose cost (SHA-256 of the payload) the
//! transport's `bulk256m` group measures end to end.
//!
//! Checked once: every codec round-trips its message to an equal value.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench wire`; see
//! `benches/README.md` for the whole suite and the report script.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use skiff_vm::Portable;
use skiff_wire::message::{encode_plain, CallRequest, Message, Target};
use skiff_wire::Limits;

const BIG: usize = 1 << 20;

/// The rmp-serde peer: the same fields as a call request, serde-derived.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PlainCall {
    call_id: u64,
    target: String,
    deadline_ms: Option<u64>,
    caller: String,
    hops: Vec<String>,
    context: Option<u8>,
    args: Vec<PlainArg>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum PlainArg {
    Int(i64),
    Str(String),
    Bytes(Bin),
}

/// Bytes serialized as MessagePack `bin` (serde's default for `Vec<u8>` is an array of ints).
#[derive(Debug, PartialEq)]
struct Bin(Vec<u8>);

impl Serialize for Bin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bin, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bin;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bin, E> {
                Ok(Bin(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bin, E> {
                Ok(Bin(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

fn skiff_call(args: Vec<Portable>) -> Message {
    Message::Call(CallRequest {
        call_id: 7,
        target: Target::Name("handle".into()),
        deadline_ms: Some(5_000),
        caller: "main".into(),
        hops: vec!["edge1".into()],
        context: Portable::Nil,
        args,
        sealed: false,
    })
}

fn plain_call(args: Vec<PlainArg>) -> PlainCall {
    PlainCall {
        call_id: 7,
        target: "handle".into(),
        deadline_ms: Some(5_000),
        caller: "main".into(),
        hops: vec!["edge1".into()],
        context: None,
        args,
    }
}

fn codecs(c: &mut Criterion) {
    let limits = Limits::default();
    let payload: Vec<u8> = (0..BIG).map(|i| (i * 31) as u8).collect();
    let cases = [
        (
            "small",
            skiff_call(vec![
                Portable::Int(41),
                Portable::Str("hello, skiff".into()),
            ]),
            plain_call(vec![
                PlainArg::Int(41),
                PlainArg::Str("hello, skiff".into()),
            ]),
        ),
        (
            "1mib",
            skiff_call(vec![Portable::Bytes(Bytes::from(payload.clone()))]),
            plain_call(vec![PlainArg::Bytes(Bin(payload.clone()))]),
        ),
    ];
    for (name, msg, plain) in &cases {
        let frame = Bytes::from(encode_plain(msg));
        let decoded = skiff_wire::message::decode_frame_exact(&frame, &limits).expect("decodes");
        assert_eq!(&decoded, msg, "skiff wire round trip ({name})");
        let packed = rmp_serde::to_vec(plain).unwrap();
        let back: PlainCall = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(&back, plain, "rmp-serde round trip ({name})");

        let mut g = c.benchmark_group(format!("wire_{name}_encode"));
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function("skiff", |b| b.iter(|| encode_plain(black_box(msg))));
        g.bench_function("rmp_serde", |b| {
            b.iter(|| rmp_serde::to_vec(black_box(plain)).unwrap())
        });
        if *name == "1mib" {
            g.bench_function("memcpy", |b| b.iter(|| black_box(&payload[..]).to_vec()));
        }
        g.finish();

        let mut g = c.benchmark_group(format!("wire_{name}_decode"));
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function("skiff", |b| {
            b.iter(|| skiff_wire::message::decode_frame_exact(black_box(&frame), &limits).unwrap())
        });
        g.bench_function("rmp_serde", |b| {
            b.iter(|| rmp_serde::from_slice::<PlainCall>(black_box(&packed)).unwrap())
        });
        if *name == "1mib" {
            g.bench_function("memcpy", |b| b.iter(|| black_box(&packed[..]).to_vec()));
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codecs
}
criterion_main!(benches);
