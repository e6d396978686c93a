//! Test support: blob builders and a simulated connection pair with a virtual clock
//! (in the manner of quinn-proto's test `Pair`). No sockets, no threads.
#![allow(dead_code)]

use bytes::Bytes;
use skiff_vm::{Blob, BlobHash, Const, FnRef, FunctionCode, FunctionId, Instr, Portable};
use skiff_wire::message::encode_plain;
use skiff_wire::{
    BlobSet, BlobStore, CallId, CallOptions, Config, Connection, Event, Hello, IncomingCall,
    Message, SharedStore, Side, Transmit,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A blob with one function returning nil, padded with a bytes constant, referencing `deps`.
pub fn blob(tag: u8, pad: usize, deps: &[BlobHash]) -> Blob {
    Blob {
        functions: vec![FunctionCode {
            arity: 0,
            locals: 0,
            upvals: 0,
            cells: vec![],
            code: vec![Instr::Nil {}, Instr::Return {}],
            consts: vec![Const::Int(tag as i64), Const::Bytes(vec![tag; pad])],
            refs: deps
                .iter()
                .map(|h| {
                    FnRef::External(FunctionId {
                        blob: *h,
                        member: 0,
                    })
                })
                .collect(),
            natives: vec![],
        }],
    }
}

/// A small program: entry → {a, b}, a → c, b → c. Returns (set, entry, closure in order).
pub fn program(tag: u8, pad: usize) -> (BlobSet, FunctionId, Vec<BlobHash>) {
    let mut set = BlobSet::new();
    let c = set.insert(&blob(tag, pad, &[]));
    let a = set.insert(&blob(tag.wrapping_add(1), pad, &[c]));
    let b = set.insert(&blob(tag.wrapping_add(2), pad, &[c]));
    let e = set.insert(&blob(tag.wrapping_add(3), pad, &[a, b]));
    (set, FunctionId { blob: e, member: 0 }, vec![c, a, b, e])
}

pub fn size_of(set: &BlobSet, hashes: &[BlobHash]) -> u64 {
    use skiff_wire::BlobSource;
    hashes
        .iter()
        .map(|h| set.blob_bytes(h).unwrap().len() as u64)
        .sum()
}

pub fn accept_all() -> skiff_wire::Verifier {
    Arc::new(|_: &Blob| Ok(()))
}

/// A connection outside any pair, with a fresh 1 MiB store that accepts every blob.
pub fn lone_connection(side: Side, config: Config) -> Connection {
    Connection::new(side, config, BlobStore::new(1 << 20).shared(), accept_all())
}

/// A lone server connection that has read the client's hello, and its receive-buffer pool.
pub fn server_past_hello(now: Instant) -> (Connection, skiff_wire::pool::BufferPool) {
    let config = Config::new("server");
    let pool = config.recv_buffers.clone();
    let mut server = lone_connection(Side::Server, config);
    server.handle_stream_data(
        skiff_wire::StreamId(0),
        hello_frame(skiff_wire::PROTOCOL_VERSION, "client"),
        now,
    );
    (server, pool)
}

/// The next call `conn` received, skipping its other events.
pub fn next_incoming_call(conn: &mut Connection) -> Option<IncomingCall> {
    std::iter::from_fn(|| conn.poll_event()).find_map(|e| match e {
        Event::IncomingCall(c) => Some(c),
        _ => None,
    })
}

/// The hello frame of a peer named `node` speaking protocol `version`.
pub fn hello_frame(version: u32, node: &str) -> Bytes {
    Bytes::from(encode_plain(&Message::Hello(Hello {
        version,
        node: node.into(),
        capabilities: vec![],
        max_frame: 1 << 20,
        sidecar_retain: 0,
    })))
}

/// How a node answers incoming calls automatically.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Auto {
    /// Respond with the list of arguments.
    Echo,
    /// Leave calls to the test.
    Manual,
}

pub struct Node {
    pub conn: Connection,
    pub store: SharedStore,
    pub source: BlobSet,
    pub events: Vec<Event>,
    pub auto: Auto,
}

impl Node {
    pub fn new(side: Side, config: Config, store: SharedStore, auto: Auto) -> Node {
        Node::with_verifier(side, config, store, auto, accept_all())
    }

    pub fn with_verifier(
        side: Side,
        config: Config,
        store: SharedStore,
        auto: Auto,
        verifier: skiff_wire::Verifier,
    ) -> Node {
        Node {
            conn: Connection::new(side, config, store.clone(), verifier),
            store,
            source: BlobSet::new(),
            events: Vec::new(),
            auto,
        }
    }

    /// Takes the first event `take` accepts, if any, as what it made of it.
    fn take_event<T>(&mut self, take: impl Fn(&Event) -> Option<T>) -> Option<T> {
        let (pos, taken) = self
            .events
            .iter()
            .enumerate()
            .find_map(|(pos, e)| Some((pos, take(e)?)))?;
        self.events.remove(pos);
        Some(taken)
    }

    /// Takes the result of an outgoing call, if it arrived.
    pub fn result(&mut self, id: CallId) -> Option<Result<Portable, skiff_wire::RemoteError>> {
        self.take_event(|e| match e {
            Event::CallResult { id: i, result, .. } if *i == id => Some(result.clone()),
            _ => None,
        })
    }

    /// Takes the first incoming call, if any.
    pub fn incoming(&mut self) -> Option<IncomingCall> {
        self.take_event(|e| match e {
            Event::IncomingCall(c) => Some(c.clone()),
            _ => None,
        })
    }

    /// The first incoming call among the events kept so far (which stay); panics if none.
    pub fn seen_incoming(&self) -> IncomingCall {
        self.events
            .iter()
            .find_map(|e| match e {
                Event::IncomingCall(c) => Some(c.clone()),
                _ => None,
            })
            .expect("no incoming call seen")
    }

    pub fn call(&mut self, opts: CallOptions, now: Instant) -> CallId {
        self.conn.start_call(opts, &self.source, now).unwrap()
    }
}

struct Packet {
    at: Instant,
    to_server: bool,
    t: Transmit,
}

/// A client and a server connected by a virtual link with fixed one-way latency.
pub struct Pair {
    pub start: Instant,
    pub now: Instant,
    pub latency: Duration,
    pub client: Node,
    pub server: Node,
    link: VecDeque<Packet>,
    /// Deliver each transmit one byte at a time (exercises reassembly).
    pub byte_by_byte: bool,
    /// Bytes carried client→server and server→client.
    pub wire_bytes: (u64, u64),
}

pub const LATENCY: Duration = Duration::from_millis(10);

impl Pair {
    pub fn new(client: Config, server: Config) -> Pair {
        Self::with_stores(
            client,
            BlobStore::new(64 << 20).shared(),
            server,
            BlobStore::new(64 << 20).shared(),
        )
    }

    pub fn with_stores(
        client: Config,
        client_store: SharedStore,
        server: Config,
        server_store: SharedStore,
    ) -> Pair {
        Self::build(client, client_store, server, server_store, accept_all())
    }

    pub fn build(
        client: Config,
        client_store: SharedStore,
        server: Config,
        server_store: SharedStore,
        server_verifier: skiff_wire::Verifier,
    ) -> Pair {
        let now = Instant::now();
        let mut pair = Pair {
            start: now,
            now,
            latency: LATENCY,
            client: Node::new(Side::Client, client, client_store, Auto::Echo),
            server: Node::with_verifier(
                Side::Server,
                server,
                server_store,
                Auto::Echo,
                server_verifier,
            ),
            link: VecDeque::new(),
            byte_by_byte: false,
            wire_bytes: (0, 0),
        };
        pair.drive();
        assert!(pair.client.conn.is_established(), "handshake failed");
        assert!(pair.server.conn.is_established(), "handshake failed");
        pair.client.events.clear();
        pair.server.events.clear();
        pair
    }

    pub fn default_pair() -> Pair {
        Pair::new(Config::new("client"), Config::new("server"))
    }

    pub fn collect(&mut self) {
        for node in [&mut self.client, &mut self.server] {
            while let Some(e) = node.conn.poll_event() {
                if let (Auto::Echo, Event::IncomingCall(c)) = (node.auto, &e) {
                    node.conn.respond(c.id, Ok(Portable::List(c.args.clone())));
                    node.events.push(e);
                    continue;
                }
                node.events.push(e);
            }
        }
        let at = self.now + self.latency;
        while let Some(t) = self.client.conn.poll_transmit() {
            report_hash(&mut self.client.conn, &t);
            self.wire_bytes.0 += t.data.len() as u64;
            self.link.push_back(Packet {
                at,
                to_server: true,
                t,
            });
        }
        while let Some(t) = self.server.conn.poll_transmit() {
            report_hash(&mut self.server.conn, &t);
            self.wire_bytes.1 += t.data.len() as u64;
            self.link.push_back(Packet {
                at,
                to_server: false,
                t,
            });
        }
    }

    /// Runs until nothing is in flight (timers fire only if due meanwhile).
    pub fn drive(&mut self) {
        for _ in 0..100_000 {
            self.collect();
            if self.link.is_empty() || !self.step() {
                return;
            }
        }
        panic!("pair did not go idle");
    }

    /// Delivers the next batch of packets (or fires the next timer). False when idle.
    pub fn step(&mut self) -> bool {
        self.collect();
        let next_packet = self.link.front().map(|p| p.at);
        let next_timer = [
            self.client.conn.poll_timeout(),
            self.server.conn.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let next = match (next_packet, next_timer) {
            (Some(p), Some(t)) => p.min(t),
            (Some(p), None) => p,
            (None, Some(t)) if t <= self.now + Duration::from_secs(3600) => t,
            _ => return false,
        };
        if next > self.now {
            self.now = next;
        }
        while self.link.front().is_some_and(|p| p.at <= self.now) {
            let p = self.link.pop_front().unwrap();
            let node = if p.to_server {
                &mut self.server
            } else {
                &mut self.client
            };
            if self.byte_by_byte {
                for i in 0..p.t.data.len() {
                    node.conn
                        .handle_stream_data(p.t.stream, p.t.data.slice(i..i + 1), self.now);
                }
            } else {
                node.conn.handle_stream_data(p.t.stream, p.t.data, self.now);
            }
            if p.t.fin {
                node.conn.handle_stream_finished(p.t.stream, self.now);
            }
        }
        let now = self.now;
        self.client.conn.handle_timeout(now);
        self.server.conn.handle_timeout(now);
        self.collect();
        true
    }

    /// Drives until `id`'s result reaches the client; returns it and the round trips
    /// (elapsed virtual time / 2·latency).
    pub fn client_call(
        &mut self,
        opts: CallOptions,
    ) -> (Result<Portable, skiff_wire::RemoteError>, u32) {
        let t0 = self.now;
        let id = self.client.call(opts, self.now);
        loop {
            if let Some(r) = self.client.result(id) {
                let rtt = (self.now - t0).as_micros() / (2 * self.latency.as_micros());
                // Let trailing frames (fins) settle.
                self.drive();
                return (r, rtt as u32);
            }
            assert!(self.step(), "idle before the call finished");
        }
    }

    /// Steps until `poll` finds what it looks for; panics if the pair goes idle first.
    pub fn run_until<T>(&mut self, mut poll: impl FnMut(&mut Pair) -> Option<T>) -> T {
        loop {
            if let Some(found) = poll(self) {
                return found;
            }
            assert!(self.step());
        }
    }

    /// Injects raw bytes into the server on a stream (as if the client sent them).
    pub fn inject_to_server(&mut self, stream: skiff_wire::StreamId, data: Vec<u8>, fin: bool) {
        self.inject(true, stream, data, fin);
    }

    /// Injects raw bytes into the client on a stream (as if the server sent them).
    pub fn inject_to_client(&mut self, stream: skiff_wire::StreamId, data: Vec<u8>, fin: bool) {
        self.inject(false, stream, data, fin);
    }

    fn inject(&mut self, to_server: bool, stream: skiff_wire::StreamId, data: Vec<u8>, fin: bool) {
        self.link.push_back(Packet {
            at: self.now + self.latency,
            to_server,
            t: Transmit {
                stream,
                data: Bytes::from(data),
                fin,
                report_hash: false,
            },
        });
    }
}

/// What a transport does with a transmit of sidecar data not hashed yet: hash it as it is
/// "sent" and report the hash, releasing the frames behind it.
pub fn report_hash(conn: &mut Connection, t: &Transmit) {
    if t.report_hash {
        conn.handle_sidecar_sent(t.stream, Some(skiff_wire::SidecarHash::of(&t.data)));
    }
}

/// A config with eager pushes disabled (every unknown blob is negotiated).
pub fn no_eager(name: &str) -> Config {
    let mut c = Config::new(name);
    c.eager_push_max_blob = 0;
    c
}
