//! Every configurable limit, exercised through a simulated pair: each failure names the
//! limit and the size seen.

mod common;

use bytes::Bytes;
use common::*;
use skiff_vm::{BlobHash, Portable};
use skiff_wire::message::encode_plain;
use skiff_wire::PROTOCOL_VERSION;
use skiff_wire::{
    BlobStore, CallError, CallOptions, Config, ErrorKind, Limit, Message, RemoteError, Side,
    StoreError, StreamId,
};

fn expect_limit(e: &RemoteError, name: &str, seen: u64) {
    assert_eq!(e.kind, ErrorKind::Limit, "{e:?}");
    assert!(
        e.message.contains(name),
        "{} does not name {name}",
        e.message
    );
    assert!(
        e.message.contains(&format!("saw {seen}")),
        "{} does not say saw {seen}",
        e.message
    );
}

fn server_with(f: impl FnOnce(&mut Config)) -> Pair {
    let mut server = no_eager("server");
    f(&mut server);
    Pair::new(Config::new("client"), server)
}

fn nested(depth: usize) -> Portable {
    let mut v = Portable::Nil;
    for _ in 0..depth {
        v = Portable::List(vec![v]);
    }
    v
}

#[test]
fn max_frame_checked_by_sender_and_receiver() {
    let mut pair = server_with(|c| c.limits.max_frame = 4096);
    let big = Portable::Str("x".repeat(10_000));
    let err = pair
        .client
        .conn
        .start_call(
            CallOptions::named("f", vec![big]),
            &pair.client.source,
            pair.now,
        )
        .unwrap_err();
    match err {
        CallError::Limit(l) => {
            assert_eq!(l.limit, Limit::MaxFrame);
            assert_eq!(l.max, 4096);
            assert!(l.seen > 10_000);
        }
        other => panic!("{other:?}"),
    }
    // A raw frame header announcing more than the limit: rejected from the header alone,
    // with a typed error response on that call stream.
    let mut server = raw_server(|c| c.limits.max_frame = 4096);
    let stream = StreamId::new(Side::Client, 1);
    server.handle_stream_data(
        stream,
        Bytes::from_static(&[0x02, 0x00, 0x01, 0x00, 0x00]),
        now(),
    );
    let t = server.poll_transmit().unwrap();
    assert_eq!(t.stream, stream);
    assert!(t.fin);
    match skiff_wire::message::decode_frame_exact(&t.data, &Default::default()).unwrap() {
        Message::Response(r) => expect_limit(&r.result.unwrap_err(), "max_frame", 65536),
        other => panic!("{other:?}"),
    }
}

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// A server connection that has received a hello and whose own hello was drained.
fn raw_server(f: impl FnOnce(&mut Config)) -> skiff_wire::Connection {
    let mut cfg = Config::new("server");
    f(&mut cfg);
    let mut server = lone_connection(Side::Server, cfg);
    server.handle_stream_data(StreamId(0), hello_frame(PROTOCOL_VERSION, "client"), now());
    while server.poll_transmit().is_some() {}
    while server.poll_event().is_some() {}
    server
}

#[test]
fn max_depth() {
    let mut pair = server_with(|_| {});
    let (r, _) = pair.client_call(CallOptions::named("f", vec![nested(100)]));
    // args array is depth 1, so the 64th nested list is at depth 65.
    expect_limit(&r.unwrap_err(), "max_depth", 65);
    // Within the limit is fine.
    let (r, _) = pair.client_call(CallOptions::named("f", vec![nested(62)]));
    assert!(r.is_ok());
}

#[test]
fn max_blobs_per_call() {
    let mut pair = server_with(|c| c.limits.max_blobs_per_call = 2);
    let (set, entry, _) = program(1, 100);
    pair.client.source = set; // eager pushes: all four blobs arrive
    let (r, _) = pair.client_call(CallOptions::function(entry, vec![]));
    expect_limit(&r.unwrap_err(), "max_blobs_per_call", 3);
}

#[test]
fn max_blob_bytes_per_call() {
    let mut pair = server_with(|c| c.limits.max_blob_bytes_per_call = 3000);
    let (set, entry, closure) = program(2, 2000);
    let first = size_of(&set, &closure[..1]);
    let second = size_of(&set, &closure[..2]);
    assert!(first <= 3000 && second > 3000);
    pair.client.source = set;
    let (r, _) = pair.client_call(CallOptions::function(entry, vec![]));
    expect_limit(&r.unwrap_err(), "max_blob_bytes_per_call", second);
}

#[test]
fn max_sidecar_bytes_per_call() {
    let mut pair = server_with(|c| c.limits.max_sidecar_bytes_per_call = 100_000);
    let big = Portable::Bytes(Bytes::from(vec![1u8; 150_000]));
    let (r, _) = pair.client_call(CallOptions::named("f", vec![big]));
    expect_limit(&r.unwrap_err(), "max_sidecar_bytes_per_call", 150_000);
}

#[test]
fn max_calls_in_flight() {
    let mut pair = server_with(|c| c.limits.max_calls_in_flight = 2);
    pair.server.auto = Auto::Manual;
    let ids: Vec<_> = (0..3)
        .map(|i| {
            pair.client
                .call(CallOptions::named("f", vec![Portable::Int(i)]), pair.now)
        })
        .collect();
    pair.drive();
    let third = pair.client.result(ids[2]).expect("third call refused");
    expect_limit(&third.unwrap_err(), "max_calls_in_flight", 3);
    assert!(pair.client.result(ids[0]).is_none());
    // Answer the two; a new call is then accepted.
    while let Some(c) = pair.server.incoming() {
        pair.server.conn.respond(c.id, Ok(Portable::Nil));
    }
    pair.drive();
    pair.server.auto = Auto::Echo;
    assert!(pair.client_call(CallOptions::named("f", vec![])).0.is_ok());
}

#[test]
fn max_negotiation_list() {
    let mut server = no_eager("server");
    server.limits.max_negotiation_list = 2;
    let mut pair = Pair::new(no_eager("client"), server);
    let (set, entry, _) = program(3, 100);
    pair.client.source = set;
    let (r, _) = pair.client_call(CallOptions::function(entry, vec![]));
    expect_limit(&r.unwrap_err(), "max_negotiation_list", 4);
}

#[test]
fn max_hops() {
    let mut pair = server_with(|c| c.limits.max_hops = 4);
    let mut opts = CallOptions::named("f", vec![]);
    opts.hops = (0..5).map(|i| format!("n{i}")).collect();
    let (r, _) = pair.client_call(opts);
    expect_limit(&r.unwrap_err(), "max_hops", 5);
}

#[test]
fn store_bytes_bound_with_pins() {
    let (set, _, closure) = program(4, 1000);
    let one = size_of(&set, &closure[1..2]);
    let mut store = BlobStore::new(one + 10);
    use skiff_wire::BlobSource;
    let b0 = set.blob_bytes(&closure[0]).unwrap();
    let b1 = set.blob_bytes(&closure[1]).unwrap();
    store
        .insert_verified(closure[0], b0, 1 << 20, &|_| Ok(()))
        .unwrap();
    assert!(store.pin(&closure[0]));
    match store.insert_verified(closure[1], b1.clone(), 1 << 20, &|_| Ok(())) {
        Err(StoreError::Full(l)) => {
            assert_eq!(l.limit, Limit::StoreBytes);
            assert!(l.to_string().contains("store_bytes"));
        }
        other => panic!("{other:?}"),
    }
    store.unpin(&closure[0]);
    store
        .insert_verified(closure[1], b1, 1 << 20, &|_| Ok(()))
        .unwrap();
    assert!(!store.contains(&closure[0]), "LRU evicted once unpinned");
    let _ = BlobHash([0; 32]);
}

#[test]
fn hostile_frames_on_the_control_stream() {
    let mut pair = server_with(|_| {});
    // A hello-typed frame announcing 4 GiB: the header alone is rejected.
    pair.inject_to_server(StreamId(0), vec![0x01, 0xff, 0xff, 0xff, 0xff], false);
    pair.drive();
    assert!(pair.server.conn.close_reason().is_some());
    let _ = encode_plain(&Message::Cancel { call_id: 1 });
}
