//! Protocol behaviour over a simulated pair: round trips and bytes on the wire for warm and
//! cold calls, negotiation edge cases, call-backs, nesting, cancellation, deadlines, hash
//! mismatches, sidecars, hello and error replies.

mod common;

use bytes::Bytes;
use common::*;
use skiff_vm::{BlobHash, FunctionId, Portable};
use skiff_wire::message::{encode_plain, encode_sidecar};
use skiff_wire::PROTOCOL_VERSION;
use skiff_wire::{
    BlobStore, CallOptions, CloseReason, Config, ErrorKind, Event, Message, Side, SidecarHash,
    StreamId, Target,
};
use std::time::Duration;

fn args() -> Vec<Portable> {
    vec![Portable::Int(7), Portable::Str("x".into())]
}

#[test]
fn cold_then_warm_call_negotiated() {
    // Eager pushes off: every unknown blob is offered, and exactly the missing ones pushed.
    let mut pair = Pair::new(no_eager("client"), no_eager("server"));
    let (set, entry, closure) = program(1, 2000);
    pair.client.source = set;
    let all_bytes = size_of(&pair.client.source, &closure);

    let before = pair.client.conn.stats().clone();
    let (r, rtt) = pair.client_call(CallOptions::function(entry, args()));
    assert_eq!(r.unwrap(), Portable::List(args()));
    let s = pair.client.conn.stats().clone();
    assert_eq!(rtt, 2, "cold call: query+request, want, push, response");
    assert_eq!(s.blobs_sent - before.blobs_sent, 4);
    assert_eq!(s.blob_bytes_sent - before.blob_bytes_sent, all_bytes);
    assert_eq!(s.queries_sent - before.queries_sent, 1);
    for h in &closure {
        assert!(pair.client.conn.peer_holds(h));
        assert!(pair.server.store.lock().unwrap().contains(h));
        assert!(
            !pair.server.store.lock().unwrap().is_pinned(h),
            "pins released"
        );
    }
    println!(
        "cold call: {rtt} RTT, {} blob bytes, {} bytes client→server",
        s.blob_bytes_sent - before.blob_bytes_sent,
        s.bytes_sent - before.bytes_sent
    );

    let before = pair.client.conn.stats().clone();
    let wire_before = pair.wire_bytes;
    let (r, rtt) = pair.client_call(CallOptions::function(entry, args()));
    assert_eq!(r.unwrap(), Portable::List(args()));
    let s = pair.client.conn.stats().clone();
    assert_eq!(rtt, 1, "warm call: one round trip");
    assert_eq!(s.blob_bytes_sent - before.blob_bytes_sent, 0);
    assert_eq!(s.queries_sent - before.queries_sent, 0);
    assert_eq!(s.frames_sent - before.frames_sent, 1, "just the request");
    // The request frame: 5-byte header + [id, [hash, 0], nil, "client", [], sealed] + nil +
    // args (nothing to offer, so the request is sealed).
    let up = pair.wire_bytes.0 - wire_before.0;
    let down = pair.wire_bytes.1 - wire_before.1;
    let expected_request = 5 + (1 + 1 + (1 + 2 + 32 + 1) + 1 + 7 + 1 + 1) + 1 + (1 + 1 + 2);
    assert_eq!(up, expected_request as u64);
    // Response: 5 + [id, nil] + [7, "x"].
    assert_eq!(down, 5 + 3 + 4);
    println!("warm call: {rtt} RTT, 0 blob bytes, {up} bytes up, {down} bytes down");
}

#[test]
fn cold_call_with_eager_push_is_one_round_trip() {
    let mut pair = Pair::default_pair();
    let (set, entry, closure) = program(2, 100);
    pair.client.source = set;
    let all_bytes = size_of(&pair.client.source, &closure);
    assert!(all_bytes < 16 << 10);
    let (r, rtt) = pair.client_call(CallOptions::function(entry, args()));
    assert!(r.is_ok());
    assert_eq!(rtt, 1, "small blobs pushed eagerly: one round trip");
    assert_eq!(pair.client.conn.stats().blob_bytes_sent, all_bytes);
    assert_eq!(pair.client.conn.stats().queries_sent, 0);
}

#[test]
fn only_missing_blobs_cross_and_warm_store_needs_none() {
    // The server already stores two of the four blobs (e.g. from an earlier connection).
    let (set, entry, closure) = program(3, 3000);
    let server_store = BlobStore::new(1 << 20).shared();
    {
        let mut s = server_store.lock().unwrap();
        for h in &closure[..2] {
            use skiff_wire::BlobSource;
            s.insert_verified(*h, set.blob_bytes(h).unwrap(), 1 << 20, &|_| Ok(()))
                .unwrap();
        }
    }
    let mut pair = Pair::with_stores(
        no_eager("client"),
        BlobStore::new(1 << 20).shared(),
        no_eager("server"),
        server_store.clone(),
    );
    pair.client.source = set;
    let (r, rtt) = pair.client_call(CallOptions::function(entry, args()));
    assert!(r.is_ok());
    assert_eq!(rtt, 2);
    assert_eq!(pair.client.conn.stats().blobs_sent, 2);
    assert_eq!(
        pair.client.conn.stats().blob_bytes_sent,
        size_of(&pair.client.source, &closure[2..])
    );

    // A new connection to a server whose store is warm: the query is answered with nothing
    // wanted, so it costs one round trip and no blob bytes.
    let source = pair.client.source.clone();
    let mut pair2 = Pair::with_stores(
        no_eager("client"),
        BlobStore::new(1 << 20).shared(),
        no_eager("server"),
        server_store,
    );
    pair2.client.source = source;
    let (r, rtt) = pair2.client_call(CallOptions::function(entry, args()));
    assert!(r.is_ok());
    assert_eq!(rtt, 1);
    assert_eq!(pair2.client.conn.stats().blob_bytes_sent, 0);
}

#[test]
fn stale_record_after_eviction_costs_one_more_round_trip() {
    stale_record_after_eviction(args(), |_| {});
}

#[test]
fn a_moved_call_resends_a_sidecar_that_was_hashed_while_sent() {
    // No retain budget: the 2 MiB argument is hashed while it is sent; when the sealed call
    // moves to a new stream, the sidecar goes again with its hash known by then.
    let big = Portable::Bytes(Bytes::from(vec![4u8; 2 << 20]));
    stale_record_after_eviction(vec![big], |c| c.sidecar_retain_bytes = 0);
}

/// Two programs that do not fit the server's store together, called in turn; the third call
/// (of the first program again, with `args`) finds the client's record of the server stale.
fn stale_record_after_eviction(args: Vec<Portable>, tweak: fn(&mut Config)) {
    let (mut pair, entry1, closure1_size) = evicted_pair(&args, tweak);
    let before = pair.client.conn.stats().clone();
    let (r, rtt) = pair.client_call(CallOptions::function(entry1, args.clone()));
    assert_eq!(r, Ok(Portable::List(args)));
    assert_eq!(rtt, 2, "request, want, push, response");
    // Nothing was offered, so the request was sealed: the call moved to a new stream with
    // the wanted blobs pushed ahead of it.
    assert_eq!(pair.client.conn.stats().queries_sent, before.queries_sent);
    let before = before.blob_bytes_sent;
    assert_eq!(
        pair.client.conn.stats().blob_bytes_sent - before,
        closure1_size
    );
}

/// A pair whose server store fits one program only, after calls (with `args`) of two: the
/// client still believes the server holds the first program (returned with the size of its
/// closure), which the second evicted.
fn evicted_pair(args: &[Portable], tweak: fn(&mut Config)) -> (Pair, FunctionId, u64) {
    let (set1, entry1, closure1) = program(10, 4000);
    let (set2, entry2, _) = program(20, 4000);
    let server_store = BlobStore::new(size_of(&set1, &closure1) + 100).shared();
    let (mut client, mut server) = (no_eager("client"), no_eager("server"));
    tweak(&mut client);
    tweak(&mut server);
    let mut pair = Pair::with_stores(
        client,
        BlobStore::new(1 << 20).shared(),
        server,
        server_store,
    );
    let mut both = set1.clone();
    both.merge(&set2);
    pair.client.source = both;
    for entry in [entry1, entry2] {
        assert_eq!(
            pair.client_call(CallOptions::function(entry, args.to_vec()))
                .1,
            2
        );
    }
    assert!(pair.client.conn.peer_holds(&entry1.blob));
    (pair, entry1, size_of(&set1, &closure1))
}

#[test]
fn a_moved_call_given_a_malformed_response_fails_under_its_own_id() {
    let (mut pair, entry1, _) = evicted_pair(&args(), |_| {});
    pair.server.auto = Auto::Manual;
    pair.server.events.clear();
    let id = pair
        .client
        .call(CallOptions::function(entry1, args()), pair.now);
    // The server wants the evicted blobs: the sealed call moves to a new stream.
    let moved = pair.run_until(|p| p.server.incoming()).id;
    assert_ne!(moved, id);
    // A response frame whose payload does not decode, on the stream the call moved to.
    pair.inject_to_client(moved, vec![0x03, 0, 0, 0, 1, 0xc1], false);
    let result = pair.run_until(|p| p.client.result(id));
    let err = result.expect_err("a malformed response fails the call");
    assert_eq!(err.kind, ErrorKind::Protocol);
    assert!(err.message.contains("bad response"), "{}", err.message);
}

#[test]
fn chunked_delivery_byte_by_byte() {
    let mut pair = Pair::new(no_eager("client"), no_eager("server"));
    pair.byte_by_byte = true;
    let (set, entry, _) = program(4, 500);
    pair.client.source = set;
    let big = Portable::Bytes(Bytes::from(vec![9u8; 70_000]));
    let (r, rtt) = pair.client_call(CallOptions::function(entry, vec![big.clone()]));
    assert_eq!(r.unwrap(), Portable::List(vec![big]));
    assert_eq!(rtt, 2);
}

#[test]
fn call_back_through_the_callers_connection_and_hops() {
    // The client calls the server; while running it, the server calls back into the
    // client (same connection, server-opened stream), then answers with what it got.
    let mut pair = Pair::new(no_eager("client"), no_eager("server"));
    pair.server.auto = Auto::Manual;
    let (set, entry, _) = program(5, 300);
    pair.client.source = set;
    let (sset, sentry, _) = program(50, 300);
    pair.server.source = sset;

    let t0 = pair.now;
    let id = pair
        .client
        .call(CallOptions::function(entry, args()), pair.now);
    let mut incoming = pair.run_until(|p| p.server.incoming());
    assert_eq!(&*incoming.caller, "client");
    assert_eq!(incoming.hops, Vec::<String>::new());
    let mut back = CallOptions::function(sentry, vec![Portable::Int(42)]);
    back.hops = incoming.take_nested_hops();
    let back_id = pair.server.call(back, pair.now);
    assert_eq!(back_id.initiator(), Side::Server);
    let back_result = pair.run_until(|p| p.server.result(back_id));
    assert_eq!(
        back_result.unwrap(),
        Portable::List(vec![Portable::Int(42)])
    );
    // The client's echo saw the hop chain.
    let seen = pair.client.seen_incoming().hops;
    assert_eq!(seen, vec!["client".to_string()]);
    pair.server
        .conn
        .respond(incoming.id, Ok(Portable::Str("done".into())));
    let r = pair.run_until(|p| p.client.result(id));
    assert_eq!(r.unwrap(), Portable::Str("done".into()));
    // cold outer (2) + cold call-back (2) = 4 round trips.
    assert_eq!((pair.now - t0).as_millis(), 4 * 20);
}

#[test]
fn nested_call_across_two_connections() {
    // A → B, and B runs part of it on C: B is server of pair ab and client of pair bc.
    let mut ab = Pair::new(no_eager("a"), no_eager("b"));
    let mut bc = Pair::new(no_eager("b"), no_eager("c"));
    ab.server.auto = Auto::Manual;
    let (set, entry, _) = program(6, 200);
    ab.client.source = set.clone();
    bc.client.source = set;
    let id = ab.client.call(CallOptions::function(entry, args()), ab.now);
    let mut incoming = ab.run_until(|p| p.server.incoming());
    // B forwards the call (same function, which it now holds) to C.
    let mut fwd = CallOptions::function(entry, incoming.args.clone());
    fwd.hops = incoming.take_nested_hops();
    let (r, rtt) = bc.client_call(fwd);
    assert_eq!(rtt, 2);
    let inner = bc.server.seen_incoming();
    assert_eq!(inner.hops, vec!["a".to_string()]);
    assert_eq!(&*inner.caller, "b");
    ab.server.conn.respond(incoming.id, r);
    let r = ab.run_until(|p| p.client.result(id));
    assert_eq!(r.unwrap(), Portable::List(args()));
}

/// The caller reports `id` cancelled, and the callee stopped its `incoming` call.
fn assert_cancelled_on_both_sides(
    pair: &mut Pair,
    id: skiff_wire::CallId,
    incoming: skiff_wire::CallId,
) {
    pair.collect();
    let r = pair.client.result(id);
    assert_eq!(r.unwrap().unwrap_err().kind, ErrorKind::Cancelled);
    pair.drive();
    assert!(pair.server.events.iter().any(|e| matches!(
        e,
        Event::CallCancelled { id, reason: ErrorKind::Cancelled } if *id == incoming
    )));
}

#[test]
fn cancellation_reaches_the_callee_and_releases_pins() {
    let mut pair = Pair::new(no_eager("client"), no_eager("server"));
    pair.server.auto = Auto::Manual;
    let (set, entry, closure) = program(7, 100);
    pair.client.source = set;
    let id = pair
        .client
        .call(CallOptions::function(entry, args()), pair.now);
    let incoming = pair.run_until(|p| p.server.incoming());
    assert_eq!(incoming.blobs, closure, "closure in dependency order");
    for h in &closure {
        assert!(pair.server.store.lock().unwrap().is_pinned(h));
    }
    pair.client.conn.cancel(id);
    assert_cancelled_on_both_sides(&mut pair, id, incoming.id);
    for h in &closure {
        assert!(!pair.server.store.lock().unwrap().is_pinned(h));
    }
    // A late response is ignored.
    pair.server.conn.respond(incoming.id, Ok(Portable::Nil));
    assert!(pair.server.conn.poll_transmit().is_none());
    // The connection still works.
    pair.server.auto = Auto::Echo;
    let (r, rtt) = pair.client_call(CallOptions::function(entry, args()));
    assert!(r.is_ok());
    assert_eq!(rtt, 1);
}

#[test]
fn deadlines_expire_on_both_sides() {
    let mut pair = Pair::new(no_eager("client"), no_eager("server"));
    pair.server.auto = Auto::Manual;
    let (set, entry, _) = program(8, 100);
    pair.client.source = set;
    let mut opts = CallOptions::function(entry, args());
    opts.deadline = Some(Duration::from_millis(100));
    let t0 = pair.now;
    let (r, _) = pair.client_call(opts);
    assert_eq!(r.unwrap_err().kind, ErrorKind::DeadlineExceeded);
    assert!((pair.now - t0).as_millis() >= 100);
    pair.drive();
    assert!(pair.server.events.iter().any(|e| matches!(
        e,
        Event::CallCancelled { reason, .. }
            if *reason == ErrorKind::Cancelled || *reason == ErrorKind::DeadlineExceeded
    )));
}

#[test]
fn the_timer_is_the_earliest_deadline_of_a_call_still_running() {
    let mut pair = Pair::new(no_eager("client"), no_eager("server"));
    pair.server.auto = Auto::Manual;
    let (set, entry, _) = program(10, 100);
    pair.client.source = set;
    let t0 = pair.now;
    let mut ids = Vec::new();
    let mut start = |pair: &mut Pair, secs: u64| {
        let mut opts = CallOptions::function(entry, args());
        opts.deadline = Some(Duration::from_secs(secs));
        ids.push(pair.client.call(opts, t0));
    };
    // Deadlines out of order; the 2 s call stays unanswered while all others are answered
    // (within the server's 128 calls in flight).
    start(&mut pair, 2);
    for i in 0..120 {
        start(&mut pair, 3 + (i * 7919) % 250);
    }
    pair.drive();
    let at = |s: u64| Some(t0 + Duration::from_secs(s));
    assert_eq!(pair.client.conn.poll_timeout(), at(2));
    let mut incoming = Vec::new();
    while let Some(call) = pair.server.incoming() {
        incoming.push(call);
    }
    // The server's deadlines are its own clock's; the 2 s call's is still the earliest.
    incoming.sort_by_key(|c| std::cmp::Reverse(c.deadline));
    let kept = incoming.pop().expect("calls arrived");
    // Answered latest deadline first: the earliest live one stays the timer on both sides.
    for call in incoming.drain(..) {
        pair.server.conn.respond(call.id, Ok(Portable::Nil));
        assert_eq!(pair.server.conn.poll_timeout(), Some(kept.deadline));
    }
    pair.drive();
    assert_eq!(pair.client.conn.poll_timeout(), at(2));
    // More calls while the 120 answered calls' entries are still in the heap: it is rebuilt
    // from the live calls on the way (once entries pass twice the live calls plus 64), and
    // the timer stays right.
    for i in 0..60 {
        start(&mut pair, 300 + i);
    }
    pair.drive();
    assert_eq!(pair.client.conn.poll_timeout(), at(2));
    while let Some(call) = pair.server.incoming() {
        pair.server.conn.respond(call.id, Ok(Portable::Nil));
    }
    assert_eq!(pair.server.conn.poll_timeout(), Some(kept.deadline));
    pair.server.conn.respond(kept.id, Ok(Portable::Nil));
    assert_eq!(pair.server.conn.poll_timeout(), None);
    pair.drive();
    assert_eq!(pair.client.conn.poll_timeout(), None);
    for id in ids {
        assert!(pair.client.result(id).expect("answered").is_ok());
    }
}

#[test]
fn callee_enforces_its_own_maximum_duration() {
    let mut server = no_eager("server");
    server.max_call_duration = Duration::from_millis(50);
    let mut pair = Pair::new(no_eager("client"), server);
    pair.server.auto = Auto::Manual;
    let (set, entry, _) = program(9, 100);
    pair.client.source = set;
    let mut opts = CallOptions::function(entry, args());
    opts.deadline = Some(Duration::from_secs(60));
    let (r, _) = pair.client_call(opts);
    assert_eq!(r.unwrap_err().kind, ErrorKind::DeadlineExceeded);
    assert!(pair.server.events.iter().any(|e| matches!(
        e,
        Event::CallCancelled {
            reason: ErrorKind::DeadlineExceeded,
            ..
        }
    )));
}

fn push_frame(hash: BlobHash, bytes: Vec<u8>) -> Vec<u8> {
    encode_plain(&Message::BlobPush {
        hash,
        blob: Bytes::from(bytes),
    })
}

#[test]
fn hash_mismatch_stores_nothing_and_repeat_offender_is_disconnected() {
    let mut pair = Pair::default_pair();
    let good = blob(1, 10, &[]);
    let hash = good.hash();
    let mut bad = good.encode();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    for i in 0..3u64 {
        let stream = StreamId::new(Side::Client, 100 + i);
        pair.inject_to_server(stream, push_frame(hash, bad.clone()), false);
        pair.drive();
        assert!(!pair.server.store.lock().unwrap().contains(&hash));
        assert!(!pair
            .server
            .store
            .lock()
            .unwrap()
            .contains(&BlobHash::of(&bad)));
    }
    assert_eq!(pair.server.conn.stats().hash_mismatches, 3);
    assert_eq!(
        pair.server.conn.close_reason(),
        Some(&CloseReason::TooManyOffences { count: 3 })
    );
}

#[test]
fn hash_mismatch_fails_the_call_with_a_typed_error() {
    let mut pair = Pair::default_pair();
    let good = blob(1, 10, &[]);
    let mut bad = good.encode();
    bad[5] ^= 0x40;
    let stream = StreamId::new(Side::Client, 1);
    // Use the client's own next stream so its response is routed to a call.
    let (set, entry, _) = program(30, 10);
    pair.client.source = set;
    let id = pair
        .client
        .call(CallOptions::function(entry, args()), pair.now);
    assert_eq!(id, stream);
    // The eager pushes are already queued; replace nothing, just add a bad push first.
    pair.inject_to_server(stream, push_frame(good.hash(), bad), false);
    let r = pair.run_until(|p| p.client.result(id));
    // Either the genuine frames or the bad push arrive first; the bad one fails the call.
    assert_eq!(r.unwrap_err().kind, ErrorKind::HashMismatch);
    assert!(!pair.server.store.lock().unwrap().contains(&good.hash()));
}

#[test]
fn verifier_rejection_stores_nothing() {
    let (set, entry, closure) = program(11, 10);
    let store = BlobStore::new(1 << 20).shared();
    let mut pair = Pair::build(
        Config::new("client"),
        BlobStore::new(1 << 20).shared(),
        Config::new("server"),
        store.clone(),
        std::sync::Arc::new(|_: &skiff_vm::Blob| Err("nope".into())),
    );
    pair.client.source = set;
    let (r, _) = pair.client_call(CallOptions::function(entry, args()));
    let e = r.unwrap_err();
    assert_eq!(e.kind, ErrorKind::VerifyFailed);
    assert!(e.message.contains("nope"));
    for h in &closure {
        assert!(!store.lock().unwrap().contains(h));
    }
}

#[test]
fn sidecars_travel_beside_and_are_not_resent() {
    let mut pair = Pair::default_pair();
    let (set, entry, _) = program(12, 10);
    pair.client.source = set;
    let big = Bytes::from((0..300_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    let small = Bytes::from_static(b"tiny");
    let a = vec![
        Portable::Bytes(big.clone()),
        Portable::Bytes(small.clone()),
        Portable::List(vec![Portable::Bytes(big.clone())]),
    ];
    let before = pair.wire_bytes.0;
    let (r, rtt) = pair.client_call(CallOptions::function(entry, a.clone()));
    assert_eq!(rtt, 1);
    let got = r.unwrap();
    assert_eq!(got, Portable::List(a.clone()));
    // Sent once (deduplicated within the call), received back without resending: the
    // echo's response references the sidecar the server retained.
    assert_eq!(pair.client.conn.stats().sidecar_bytes_sent, 300_000);
    assert_eq!(pair.server.conn.stats().sidecar_bytes_sent, 0);
    assert!(pair.wire_bytes.0 - before < 300_000 + 2_000);
    // The server's copy reached the node as a slice of the frame (no copy into the value).
    let inc = pair.server.seen_incoming();
    assert_eq!(inc.args[0], Portable::Bytes(big.clone()));

    // Hashed once by the client, though it appears twice; the server's echo referenced the
    // buffer it retained without hashing it again.
    assert_eq!(pair.client.conn.stats().sidecar_bytes_hashed, 300_000);
    assert_eq!(pair.server.conn.stats().sidecar_bytes_hashed, 0);

    // Second call with the same bytes: the peer holds it, nothing resent, and the buffer
    // the client retained is known without hashing it again.
    let before = pair.client.conn.stats().sidecar_bytes_sent;
    let (r, rtt) = pair.client_call(CallOptions::function(entry, a.clone()));
    assert_eq!(rtt, 1);
    assert_eq!(r.unwrap(), Portable::List(a));
    assert_eq!(pair.client.conn.stats().sidecar_bytes_sent, before);
    assert_eq!(pair.client.conn.stats().sidecar_bytes_hashed, 300_000);

    // The same contents in another buffer: hashed (nothing is known of that buffer), and
    // then not resent either.
    let copy = Portable::Bytes(Bytes::copy_from_slice(&big));
    let (r, _) = pair.client_call(CallOptions::function(entry, vec![copy.clone()]));
    assert_eq!(r.unwrap(), Portable::List(vec![copy]));
    assert_eq!(pair.client.conn.stats().sidecar_bytes_sent, before);
    assert_eq!(pair.client.conn.stats().sidecar_bytes_hashed, 600_000);
}

/// Runs one call of `entry` whose response is `out`; returns the result.
fn respond_with(pair: &mut Pair, entry: FunctionId, out: &Bytes) -> Portable {
    pair.server.auto = Auto::Manual;
    let id = pair
        .client
        .call(CallOptions::function(entry, vec![]), pair.now);
    let inc = pair.run_until(|p| p.server.incoming());
    pair.server
        .conn
        .respond(inc.id, Ok(Portable::Bytes(out.clone())));
    let r = pair.run_until(|p| p.client.result(id));
    pair.drive();
    r.unwrap()
}

#[test]
fn results_carry_sidecars_back() {
    // Negotiated (the caller offers its blobs), so the stream stays open until the caller
    // has read the response: its fin is the evidence that it holds the sidecar.
    let mut pair = Pair::new(no_eager("client"), no_eager("server"));
    let (set, entry, _) = program(13, 10);
    pair.client.source = set;
    let out = Bytes::from(vec![0xabu8; 200_000]);
    assert_eq!(
        respond_with(&mut pair, entry, &out),
        Portable::Bytes(out.clone())
    );
    assert_eq!(pair.server.conn.stats().sidecar_bytes_sent, 200_000);
    assert!(pair
        .server
        .conn
        .peer_holds_sidecar(&skiff_wire::SidecarHash::of(&out)));
}

#[test]
fn a_sealed_call_gives_no_evidence_for_its_response() {
    // Eager pushes make the cold call sealed: the caller's fin went with the request, so
    // the callee cannot know the response was read, and sends the sidecar again next time.
    let mut pair = Pair::default_pair();
    let (set, entry, _) = program(14, 10);
    pair.client.source = set;
    let out = Bytes::from(vec![0xcdu8; 150_000]);
    for round in 1..=2u64 {
        assert_eq!(
            respond_with(&mut pair, entry, &out),
            Portable::Bytes(out.clone())
        );
        assert_eq!(pair.server.conn.stats().sidecar_bytes_sent, round * 150_000);
        assert!(!pair
            .server
            .conn
            .peer_holds_sidecar(&skiff_wire::SidecarHash::of(&out)));
    }
}

/// Takes what the client queued, without delivering it.
fn take_client_transmits(pair: &mut Pair) -> Vec<skiff_wire::Transmit> {
    std::iter::from_fn(|| pair.client.conn.poll_transmit()).collect()
}

#[test]
fn a_call_with_nothing_to_offer_finishes_its_stream_with_the_request() {
    let mut pair = Pair::new(no_eager("client"), no_eager("server"));
    let (set, entry, _) = program(17, 100);
    pair.client.source = set;
    // Cold and negotiated: the stream stays open for the want and the pushes.
    let id = pair
        .client
        .call(CallOptions::function(entry, args()), pair.now);
    let sent = take_client_transmits(&mut pair);
    assert!(sent.iter().all(|t| t.stream == id && !t.fin));
    for t in sent {
        pair.inject_to_server(t.stream, t.data.to_vec(), t.fin);
    }
    assert!(pair.run_until(|p| p.client.result(id)).is_ok());
    pair.drive();
    // Warm: one transmit, the request, with the fin.
    let id = pair
        .client
        .call(CallOptions::function(entry, args()), pair.now);
    let sent = take_client_transmits(&mut pair);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].stream, id);
    assert!(sent[0].fin, "sealed");
    pair.inject_to_server(sent[0].stream, sent[0].data.to_vec(), true);
    assert_eq!(
        pair.run_until(|p| p.client.result(id)).unwrap(),
        Portable::List(args())
    );
    // Nothing follows the response: no trailing fin from the caller.
    pair.collect();
    assert!(pair.client.conn.poll_transmit().is_none());
}

#[test]
fn cancelling_a_sealed_call_goes_on_the_control_stream() {
    let mut pair = Pair::default_pair();
    pair.server.auto = Auto::Manual;
    let id = pair
        .client
        .call(CallOptions::named("main", args()), pair.now);
    let incoming = pair.run_until(|p| p.server.incoming());
    pair.client.conn.cancel(id);
    let sent = take_client_transmits(&mut pair);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].stream, StreamId(0), "the call's stream is finished");
    assert!(!sent[0].fin, "the control stream stays open");
    pair.inject_to_server(sent[0].stream, sent[0].data.to_vec(), false);
    assert_cancelled_on_both_sides(&mut pair, id, incoming.id);
    // A late response is ignored; the connection still works.
    pair.server.conn.respond(incoming.id, Ok(Portable::Nil));
    assert!(pair.server.conn.poll_transmit().is_none());
    pair.server.auto = Auto::Echo;
    let (r, rtt) = pair.client_call(CallOptions::named("main", args()));
    assert_eq!(r.unwrap(), Portable::List(args()));
    assert_eq!(rtt, 1);
}

#[test]
fn a_cancel_that_overtakes_its_sealed_call_stops_it_from_running() {
    let mut pair = Pair::default_pair();
    let id = pair
        .client
        .call(CallOptions::named("main", args()), pair.now);
    let request = take_client_transmits(&mut pair);
    pair.client.conn.cancel(id);
    let cancel = take_client_transmits(&mut pair);
    // The cancel (control stream) arrives first, then the request.
    for t in cancel.into_iter().chain(request) {
        pair.inject_to_server(t.stream, t.data.to_vec(), t.fin);
    }
    pair.drive();
    assert!(!pair
        .server
        .events
        .iter()
        .any(|e| matches!(e, Event::IncomingCall(_))));
    assert_eq!(
        pair.client.result(id).unwrap().unwrap_err().kind,
        ErrorKind::Cancelled
    );
}

#[test]
fn sidecar_hash_mismatch_is_rejected() {
    let mut pair = Pair::default_pair();
    let stream = StreamId::new(Side::Client, 7);
    let data = vec![1u8; 100];
    let wrong = skiff_wire::SidecarHash::of(b"other");
    pair.inject_to_server(stream, encode_sidecar(wrong, false, &data), false);
    pair.drive();
    assert_eq!(pair.server.conn.stats().hash_mismatches, 1);
}

#[test]
fn version_mismatch_is_a_clear_error_at_hello() {
    let mut server = lone_connection(Side::Server, Config::new("server"));
    server.handle_stream_data(
        StreamId(0),
        hello_frame(99, "future"),
        std::time::Instant::now(),
    );
    let reply = server.poll_transmit().unwrap();
    let msg = skiff_wire::message::decode_frame_exact(&reply.data, &Default::default()).unwrap();
    match msg {
        Message::Error(e) => {
            assert_eq!(e.code, "version_mismatch");
            assert!(e.message.contains("99"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        server.close_reason(),
        Some(&CloseReason::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: 99
        })
    );
    // And the client side reports the refusal.
    let mut client = lone_connection(Side::Client, Config::new("client"));
    client.handle_stream_data(StreamId(0), reply.data, std::time::Instant::now());
    assert!(matches!(
        client.close_reason(),
        Some(CloseReason::PeerRefused(m)) if m.contains("version_mismatch")
    ));
}

#[test]
fn unknown_message_gets_an_error_reply_and_the_connection_survives() {
    let mut pair = Pair::default_pair();
    pair.inject_to_server(StreamId(0), vec![0x42, 0, 0, 0, 2, 0xc0, 0xc0], false);
    pair.inject_to_server(StreamId(0), vec![0x08, 0, 0, 0, 1, 0xc1], false);
    pair.drive();
    let replies: Vec<_> = pair
        .client
        .events
        .iter()
        .filter_map(|e| match e {
            Event::PeerError { reply, .. } => Some(reply.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0].code, "unknown_message");
    assert_eq!(replies[0].frame_type, 0x42);
    assert_eq!(replies[1].code, "malformed");
    assert!(pair.server.conn.close_reason().is_none());
    let (set, entry, _) = program(14, 10);
    pair.client.source = set;
    assert!(pair
        .client_call(CallOptions::function(entry, args()))
        .0
        .is_ok());
}

#[test]
fn calls_queued_before_hello_and_early_call_data() {
    // The client starts a call before the handshake completes: it is held, then sent.
    let mut client = lone_connection(Side::Client, Config::new("client"));
    let mut server = lone_connection(Side::Server, Config::new("server"));
    let now = std::time::Instant::now();
    let (set, entry, _) = program(15, 10);
    let id = client
        .start_call(CallOptions::function(entry, args()), &set, now)
        .unwrap();
    let hello = client.poll_transmit().unwrap();
    assert_eq!(hello.stream, StreamId(0));
    assert!(client.poll_transmit().is_none(), "call held until hello");
    server.handle_stream_data(hello.stream, hello.data, now);
    let server_hello = server.poll_transmit().unwrap();
    client.handle_stream_data(server_hello.stream, server_hello.data, now);
    let mut frames = Vec::new();
    while let Some(t) = client.poll_transmit() {
        assert_eq!(t.stream, id);
        frames.push(t);
    }
    // Its blobs go eagerly, nothing is offered: the held request is sealed.
    assert!(frames.last().is_some_and(|t| t.fin));

    // A server that sees call data (and its fin) before the client's hello holds it until
    // hello.
    let mut server2 = lone_connection(Side::Server, Config::new("server"));
    for t in &frames {
        server2.handle_stream_data(t.stream, t.data.clone(), now);
        if t.fin {
            server2.handle_stream_finished(t.stream, now);
        }
    }
    assert!(server2.poll_event().is_none());
    server2.handle_stream_data(StreamId(0), hello_frame(PROTOCOL_VERSION, "client"), now);
    let mut call = None;
    while let Some(e) = server2.poll_event() {
        if let Event::IncomingCall(c) = e {
            call = Some(c);
        }
    }
    let call = call.expect("the held call runs after hello");
    // The held fin did not fail it: it is answered normally.
    server2.respond(call.id, Ok(Portable::Nil));
    let answer: Vec<_> = std::iter::from_fn(|| server2.poll_transmit())
        .filter(|t| t.stream == id)
        .collect();
    assert!(answer.last().is_some_and(|t| t.fin && !t.data.is_empty()));
}

#[test]
fn what_overtakes_hello_is_bounded() {
    // Data and fins held before the peer's hello count against `max_frame` (a fin as one
    // byte); a peer that goes past it is closed, not buffered without end.
    let mut config = Config::new("server");
    config.limits.max_frame = 64;
    let mut server = lone_connection(Side::Server, config);
    let now = std::time::Instant::now();
    server.handle_stream_data(
        StreamId::new(Side::Client, 1),
        Bytes::from(vec![0; 60]),
        now,
    );
    for i in 2..7 {
        assert!(server.close_reason().is_none(), "stream {i}");
        server.handle_stream_finished(StreamId::new(Side::Client, i), now);
    }
    assert!(
        matches!(server.close_reason(), Some(CloseReason::Protocol(m)) if m.contains("before hello")),
        "{:?}",
        server.close_reason()
    );
}

#[test]
fn named_targets_pass_through() {
    let mut pair = Pair::default_pair();
    let (r, rtt) = pair.client_call(CallOptions::named("main", vec![Portable::Nil]));
    assert!(r.is_ok());
    assert_eq!(rtt, 1);
    let inc = pair.server.seen_incoming();
    assert_eq!(inc.target, Target::Name("main".into()));
    assert!(inc.blobs.is_empty());
}

#[test]
fn closures_in_arguments_ship_their_blobs() {
    let mut pair = Pair::new(no_eager("client"), no_eager("server"));
    let (set, entry, closure) = program(16, 100);
    pair.client.source = set;
    let f = Portable::Function {
        func: entry,
        captures: vec![Portable::Int(1)],
    };
    let (r, rtt) = pair.client_call(CallOptions::named("apply", vec![f.clone()]));
    assert_eq!(r.unwrap(), Portable::List(vec![f]));
    assert_eq!(rtt, 2);
    for h in &closure {
        assert!(pair.server.store.lock().unwrap().contains(h));
    }
    let _ = FunctionId {
        blob: closure[0],
        member: 0,
    };
}

#[test]
fn call_streams_may_arrive_out_of_order() {
    let now = std::time::Instant::now();
    let mut client = lone_connection(Side::Client, Config::new("client"));
    let mut server = lone_connection(Side::Server, Config::new("server"));
    let hello = client.poll_transmit().unwrap();
    server.handle_stream_data(hello.stream, hello.data, now);
    let reply = server.poll_transmit().unwrap();
    client.handle_stream_data(reply.stream, reply.data, now);
    let a = client
        .start_call(
            CallOptions::named("a", vec![]),
            &skiff_wire::BlobSet::new(),
            now,
        )
        .unwrap();
    let b = client
        .start_call(
            CallOptions::named("b", vec![]),
            &skiff_wire::BlobSet::new(),
            now,
        )
        .unwrap();
    let mut frames: Vec<_> = std::iter::from_fn(|| client.poll_transmit()).collect();
    frames.reverse(); // b's stream first
    for t in frames {
        server.handle_stream_data(t.stream, t.data, now);
    }
    let calls: Vec<StreamId> = std::iter::from_fn(|| server.poll_event())
        .filter_map(|e| match e {
            Event::IncomingCall(c) => Some(c.id),
            _ => None,
        })
        .collect();
    assert_eq!(calls, vec![b, a]);
    // Late data on a finished stream is ignored, not taken for a new call.
    server.respond(a, Ok(Portable::Nil));
    server.handle_stream_finished(a, now);
    server.handle_stream_data(
        a,
        Bytes::from(encode_plain(&Message::Cancel { call_id: 1 })),
        now,
    );
    assert!(server.poll_event().is_none());
}

/// The frame of call 1 to `f` from `client` passing `data` as one bytes argument, and the
/// sidecars it refers to (`data` is above the sidecar threshold in these tests).
fn call_with_bytes(data: &[u8]) -> (Vec<u8>, Vec<skiff_wire::value::SidecarOut>) {
    let mut sidecars = Vec::new();
    let call = skiff_wire::encode_message(
        &Message::Call(skiff_wire::CallRequest {
            call_id: 1,
            target: Target::Name("f".into()),
            deadline_ms: None,
            caller: "client".into(),
            hops: vec![],
            context: Portable::Nil,
            args: vec![Portable::Bytes(Bytes::copy_from_slice(data))],
            sealed: false,
        }),
        1000,
        &mut sidecars,
    );
    (call, sidecars)
}

#[test]
fn received_sidecars_are_slices_of_the_received_buffer() {
    let now = std::time::Instant::now();
    let mut server = lone_connection(Side::Server, Config::new("server"));
    server.handle_stream_data(StreamId(0), hello_frame(PROTOCOL_VERSION, "client"), now);
    let data = vec![5u8; 100_000];
    let (call, sidecars) = call_with_bytes(&data);
    assert_eq!(sidecars.len(), 1);
    let mut wire = encode_sidecar(sidecars[0].hash, false, &data);
    wire.extend_from_slice(&call);
    let wire = Bytes::from(wire);
    let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
    server.handle_stream_data(StreamId::new(Side::Client, 1), wire.clone(), now);
    let inc = next_incoming_call(&mut server).unwrap();
    match &inc.args[0] {
        Portable::Bytes(b) => {
            assert_eq!(&b[..], &data[..]);
            assert!(range.contains(&(b.as_ptr() as usize)), "not copied");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_large_sidecar_split_anywhere_arrives_whole() {
    // Above the size where the receiver collects a frame's chunks and copies them once; the
    // header arrives split, and the call frame shares the sidecar's last chunk.
    let now = std::time::Instant::now();
    let (mut server, pool) = server_past_hello(now);
    let data: Vec<u8> = (0..3 * (1 << 20) + 7)
        .map(|i: u32| (i * 31) as u8)
        .collect();
    let (call, sidecars) = call_with_bytes(&data);
    let deliver = |server: &mut skiff_wire::Connection, stream: StreamId, sidecar: &[u8]| {
        let mut wire = encode_sidecar(sidecars[0].hash, false, sidecar);
        wire.extend_from_slice(&call);
        let wire = Bytes::from(wire);
        let mut at = 0;
        for size in [2usize, 1, 100]
            .into_iter()
            .chain(std::iter::repeat(65_537))
        {
            let end = (at + size).min(wire.len());
            server.handle_stream_data(stream, wire.slice(at..end), now);
            at = end;
            if at == wire.len() {
                break;
            }
        }
    };
    deliver(&mut server, StreamId::new(Side::Client, 1), &data);
    let inc = next_incoming_call(&mut server).expect("the call arrived");
    assert_eq!(inc.args, vec![Portable::Bytes(Bytes::from(data.clone()))]);
    // The frame's buffer goes back to the pool once the value received in it is dropped.
    assert_eq!(pool.idle_bytes(), 0);
    drop(inc);
    let idle = pool.idle_bytes();
    assert!(idle > data.len(), "{idle}");
    // The hash computed on arrival is checked like any other: one flipped byte fails it.
    let mut tampered = data;
    tampered[2 << 20] ^= 1;
    deliver(&mut server, StreamId::new(Side::Client, 2), &tampered);
    assert_eq!(server.stats().hash_mismatches, 1);
    // The second frame was received in the first one's buffer (no second allocation).
    assert_eq!(pool.idle_bytes(), idle);
    assert!(
        !std::iter::from_fn(|| server.poll_event()).any(|e| matches!(e, Event::IncomingCall(_)))
    );
}

#[test]
fn a_large_frame_takes_an_idle_pooled_buffer_as_soon_as_its_header_is_read() {
    let now = std::time::Instant::now();
    let (mut server, pool) = server_past_hello(now);
    let data: Vec<u8> = (0..2 * (1 << 20) + 3).map(|i: u32| (i * 7) as u8).collect();
    let (call, sidecars) = call_with_bytes(&data);
    let mut wire = encode_sidecar(sidecars[0].hash, false, &data);
    wire.extend_from_slice(&call);
    let wire = Bytes::from(wire);
    let deliver = |server: &mut skiff_wire::Connection, stream: StreamId, from: usize| {
        for at in (from..wire.len()).step_by(65_536) {
            server.handle_stream_data(stream, wire.slice(at..(at + 65_536).min(wire.len())), now);
        }
    };
    // The first frame, arriving in pieces, fills a new buffer, which returns to the pool
    // with the value.
    deliver(&mut server, StreamId::new(Side::Client, 1), 0);
    drop(next_incoming_call(&mut server).expect("the first call arrived"));
    let idle = pool.idle_bytes();
    assert!(idle > data.len(), "{idle}");
    // The second takes that buffer with its first chunk, long before half of it is there.
    let stream = StreamId::new(Side::Client, 2);
    server.handle_stream_data(stream, wire.slice(..4096), now);
    assert_eq!(pool.idle_bytes(), 0);
    deliver(&mut server, stream, 4096);
    let inc = next_incoming_call(&mut server).expect("the second call arrived");
    assert_eq!(inc.args, vec![Portable::Bytes(Bytes::from(data))]);
    drop(inc);
    assert_eq!(pool.idle_bytes(), idle);
}

#[test]
fn sidecar_bytes_are_sent_without_a_copy() {
    let now = std::time::Instant::now();
    let mut client = lone_connection(Side::Client, Config::new("client"));
    client.handle_stream_data(StreamId(0), hello_frame(PROTOCOL_VERSION, "server"), now);
    let data = Bytes::from(vec![3u8; 200_000]);
    client
        .start_call(
            CallOptions::named("f", vec![Portable::Bytes(data.clone())]),
            &skiff_wire::BlobSet::new(),
            now,
        )
        .unwrap();
    let sent: Vec<_> = std::iter::from_fn(|| client.poll_transmit()).collect();
    assert!(
        sent.iter()
            .any(|t| t.data.as_ptr() == data.as_ptr() && t.data.len() == data.len()),
        "the sidecar's bytes went out as the caller's buffer"
    );
    let total: usize = sent.iter().map(|t| t.data.len()).sum();
    assert_eq!(client.stats().bytes_sent as usize, total);
}

#[test]
fn connection_is_send() {
    fn is_send<T: Send>() {}
    is_send::<skiff_wire::Connection>();
    is_send::<skiff_wire::SharedStore>();
}

/// Drains `conn`'s transmits on `stream` (others are dropped).
fn transmits_on(conn: &mut skiff_wire::Connection, stream: StreamId) -> Vec<skiff_wire::Transmit> {
    std::iter::from_fn(|| conn.poll_transmit())
        .filter(|t| t.stream == stream)
        .collect()
}

#[test]
fn a_large_sidecar_is_hashed_while_it_is_sent() {
    // The server announced no retain budget, so nothing needs the sidecar's hash before it
    // is sent: the transport hashes the data as it writes it, and the hash (the frame's
    // trailer) and the request referencing it wait for that report.
    let now = std::time::Instant::now();
    let mut client = lone_connection(Side::Client, Config::new("client"));
    client.handle_stream_data(StreamId(0), hello_frame(PROTOCOL_VERSION, "server"), now);
    while client.poll_transmit().is_some() {} // our hello
    let before = client.stats().bytes_sent as usize;
    let data = Bytes::from(
        (0..(2 << 20) + 3)
            .map(|i: u32| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let call = |client: &mut skiff_wire::Connection| {
        let args = vec![Portable::Bytes(data.clone()), Portable::Int(7)];
        client
            .start_call(
                CallOptions::named("f", args),
                &skiff_wire::BlobSet::new(),
                now,
            )
            .unwrap()
    };
    let stream = call(&mut client);
    let first = transmits_on(&mut client, stream);
    let last = first.last().expect("the sidecar went out");
    assert!(last.report_hash && last.data.as_ptr() == data.as_ptr() && !last.fin);
    assert!(first[..first.len() - 1].iter().all(|t| !t.report_hash));
    assert!(
        client.poll_transmit().is_none(),
        "the request waits for the hash"
    );

    let hash = SidecarHash::of(&data);
    client.handle_sidecar_sent(stream, Some(hash));
    let rest = transmits_on(&mut client, stream);
    assert_eq!(
        &rest[0].data[..],
        &hash.0[..],
        "the hash ends the sidecar frame"
    );
    assert!(
        rest.last().unwrap().fin,
        "a sealed request finishes the stream"
    );
    let mut wire = Vec::new();
    for t in first.iter().chain(&rest) {
        wire.extend_from_slice(&t.data);
    }
    let total: usize = first.iter().chain(&rest).map(|t| t.data.len()).sum();
    assert_eq!(client.stats().bytes_sent as usize - before, total);

    // What went out is a well-formed call carrying the bytes.
    let mut server = lone_connection(Side::Server, Config::new("server"));
    server.handle_stream_data(StreamId(0), hello_frame(PROTOCOL_VERSION, "client"), now);
    server.handle_stream_data(stream, Bytes::from(wire.clone()), now);
    let inc = next_incoming_call(&mut server).expect("the call arrived");
    assert_eq!(
        inc.args,
        vec![Portable::Bytes(data.clone()), Portable::Int(7)]
    );

    // A wrong hash reported by the transport reaches the receiver, which rejects it.
    let stream2 = call(&mut client);
    let mut wire2: Vec<u8> = transmits_on(&mut client, stream2)
        .iter()
        .flat_map(|t| t.data.to_vec())
        .collect();
    client.handle_sidecar_sent(stream2, Some(SidecarHash::of(b"something else")));
    for t in transmits_on(&mut client, stream2) {
        wire2.extend_from_slice(&t.data);
    }
    server.handle_stream_data(stream2, Bytes::from(wire2), now);
    assert_eq!(server.stats().hash_mismatches, 1);

    // A stream that went away before its sidecar was written: what waited is dropped.
    let stream3 = call(&mut client);
    assert!(!transmits_on(&mut client, stream3).is_empty());
    client.handle_sidecar_sent(stream3, None);
    assert!(client.poll_transmit().is_none());
}

#[test]
fn large_sidecars_hashed_while_sent_travel_both_ways() {
    // No retain budget on either side: the argument and the echoed result are both hashed
    // while sent (the pair's transport reports the hashes as a real one does).
    let config = |name: &str| {
        let mut c = Config::new(name);
        c.sidecar_retain_bytes = 0;
        c
    };
    let mut pair = Pair::new(config("client"), config("server"));
    let (set, entry, _) = program(4, 3);
    pair.client.source = set;
    let big = Bytes::from(
        (0..(3 << 20) + 1)
            .map(|i: u32| (i / 7) as u8)
            .collect::<Vec<_>>(),
    );
    let args = vec![Portable::Bytes(big.clone()), Portable::Str("tag".into())];
    for _ in 0..2 {
        let (r, _) = pair.client_call(CallOptions::function(entry, args.clone()));
        assert_eq!(r.unwrap(), Portable::List(args.clone()));
    }
    // Nothing retained, so each call sent the bytes there and back.
    assert_eq!(
        pair.client.conn.stats().sidecar_bytes_sent,
        2 * big.len() as u64
    );
    assert_eq!(
        pair.server.conn.stats().sidecar_bytes_sent,
        2 * big.len() as u64
    );
    assert_eq!(pair.server.conn.stats().hash_mismatches, 0);
}

#[test]
fn call_streams_may_arrive_out_of_order_and_a_finished_one_stays_finished() {
    let now = std::time::Instant::now();
    let (mut server, _) = server_past_hello(now);
    let (call, _) = call_with_bytes(b"hi");
    let stream = |index| StreamId::new(Side::Client, index);
    // Stream 3 overtakes 1 and 2 (QUIC delivers each stream's data on its own).
    for index in [3, 1, 2] {
        server.handle_stream_data(stream(index), Bytes::from(call.clone()), now);
        let inc = next_incoming_call(&mut server).expect("each stream's call arrives");
        assert_eq!(inc.id, stream(index));
        server.respond(inc.id, Ok(Portable::Nil));
        server.handle_stream_finished(stream(index), now);
    }
    // Finished streams, whichever order they came in: late data on them is ignored.
    for index in [1, 2, 3] {
        server.handle_stream_data(stream(index), Bytes::from(call.clone()), now);
        assert!(next_incoming_call(&mut server).is_none(), "stream {index}");
    }
    // The next stream is new.
    server.handle_stream_data(stream(4), Bytes::from(call), now);
    assert_eq!(
        next_incoming_call(&mut server).map(|c| c.id),
        Some(stream(4))
    );
}

#[test]
fn a_call_made_before_hello_sends_its_sidecars_with_retain() {
    // The peer's retain budget comes with its hello: a call's sidecars are framed once it
    // is known, so a large argument of the first call is kept by the peer like any other.
    let mut client = lone_connection(Side::Client, Config::new("client"));
    let mut server = lone_connection(Side::Server, Config::new("server"));
    let now = std::time::Instant::now();
    let shuttle = |from: &mut skiff_wire::Connection, to: &mut skiff_wire::Connection| {
        while let Some(t) = from.poll_transmit() {
            report_hash(from, &t);
            to.handle_stream_data(t.stream, t.data, now);
            if t.fin {
                to.handle_stream_finished(t.stream, now);
            }
        }
    };
    let big = Bytes::from(vec![3u8; 300_000]);
    let call = |client: &mut skiff_wire::Connection| {
        let opts = CallOptions::named("f", vec![Portable::Bytes(big.clone())]);
        client
            .start_call(opts, &skiff_wire::BlobSet::default(), now)
            .unwrap()
    };
    let first = call(&mut client);
    shuttle(&mut client, &mut server); // hello, the call held
    shuttle(&mut server, &mut client); // hello back: the call goes
    shuttle(&mut client, &mut server);
    let inc = next_incoming_call(&mut server).expect("the call arrived");
    assert_eq!(inc.args, vec![Portable::Bytes(big.clone())]);
    server.respond(inc.id, Ok(Portable::Nil));
    shuttle(&mut server, &mut client);
    assert!(std::iter::from_fn(|| client.poll_event())
        .any(|e| matches!(e, Event::CallResult { id, result: Ok(_), .. } if id == first)));
    assert!(client.peer_holds_sidecar(&SidecarHash::of(&big)));

    // So the next call references it without sending it again.
    let sent = client.stats().sidecar_bytes_sent;
    call(&mut client);
    shuttle(&mut client, &mut server);
    assert_eq!(client.stats().sidecar_bytes_sent, sent);
    let inc = next_incoming_call(&mut server).expect("the second call arrived");
    assert_eq!(inc.args, vec![Portable::Bytes(big)]);
}

#[test]
fn a_retain_budget_bounds_how_many_small_sidecars_a_peer_makes_us_keep() {
    // Each retained sidecar counts at least 1 KiB against the budget, so 16-byte ones fill
    // an 8 KiB budget after eight: the ninth is refused, not kept.
    let mut config = Config::new("server");
    config.sidecar_retain_bytes = 8 << 10;
    let e = nine_tiny_sidecars(config, true);
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(e.message.contains("8192"), "{}", e.message);
}

#[test]
fn a_small_sidecar_is_held_as_a_copy_of_its_own() {
    // Held until its call is read, or kept for the connection, a slice would keep the whole
    // buffer it arrived in alive; a small one is copied (a large one stays a slice).
    let now = std::time::Instant::now();
    let (mut server, _) = server_past_hello(now);
    let cases = [
        (2_000, false, true),
        (2_000, true, true),
        (100_000, true, false),
    ];
    for (index, (size, retain, copied)) in (1..).zip(cases) {
        let data = vec![index as u8; size];
        let (call, sidecars) = call_with_bytes(&data);
        let mut wire = encode_sidecar(sidecars[0].hash, retain, &data);
        wire.extend_from_slice(&call);
        let wire = Bytes::from(wire);
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        server.handle_stream_data(StreamId::new(Side::Client, index), wire.clone(), now);
        let inc = next_incoming_call(&mut server).unwrap();
        let Portable::Bytes(b) = &inc.args[0] else {
            panic!("{:?}", inc.args)
        };
        assert_eq!(&b[..], &data[..]);
        let at = b.as_ptr() as usize;
        assert_eq!(
            !range.contains(&at),
            copied,
            "{size} bytes, retain {retain}"
        );
    }
}

#[test]
fn a_calls_sidecar_budget_bounds_how_many_small_sidecars_it_may_carry() {
    // Each sidecar counts at least 1 KiB against `max_sidecar_bytes_per_call`, so 16-byte
    // ones fill an 8 KiB allowance after eight: the ninth fails the call with `limit`.
    let mut config = Config::new("server");
    config.limits.max_sidecar_bytes_per_call = 8 << 10;
    let e = nine_tiny_sidecars(config, false);
    assert_eq!(e.kind, ErrorKind::Limit);
    assert!(
        e.message.contains("max_sidecar_bytes_per_call"),
        "{}",
        e.message
    );
}

/// Sends a server made with `config` nine distinct 16-byte sidecars (with the retain flag
/// if `retain`) on one call stream, and returns the error of the one response it sends.
fn nine_tiny_sidecars(config: Config, retain: bool) -> skiff_wire::RemoteError {
    let now = std::time::Instant::now();
    let mut server = lone_connection(Side::Server, config);
    server.handle_stream_data(StreamId(0), hello_frame(PROTOCOL_VERSION, "client"), now);
    let stream = StreamId::new(Side::Client, 1);
    for i in 0..9u8 {
        let data = [i; 16];
        let frame = encode_sidecar(SidecarHash::of(&data), retain, &data);
        server.handle_stream_data(stream, Bytes::from(frame), now);
    }
    let replies: Vec<Message> = std::iter::from_fn(|| server.poll_transmit())
        .filter(|t| t.stream == stream && !t.data.is_empty())
        .map(|t| skiff_wire::message::decode_frame_exact(&t.data, &Default::default()).unwrap())
        .collect();
    match replies.as_slice() {
        [Message::Response(r)] => r.result.clone().unwrap_err(),
        other => panic!("{other:?}"),
    }
}
