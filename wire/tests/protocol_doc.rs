//! docs/protocol.md's hex examples, decoded from the document itself and compared with the
//! messages they claim to be. Keeps the spec and the code in lockstep.

use bytes::Bytes;
use skiff_vm::{Blob, BlobHash, FunctionCode, FunctionId, Instr, Portable};
use skiff_wire::message::decode_frame_exact;
use skiff_wire::value::{decode_value, decode_value_at, SidecarHash};
use skiff_wire::*;
use std::collections::BTreeMap;

/// `<!-- example: NAME -->` followed by a ```hex block; `#` starts a comment.
fn examples() -> BTreeMap<String, Vec<u8>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .expect("docs/protocol.md");
    let mut out = BTreeMap::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- example: ")
            .and_then(|s| s.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(lines.next().map(str::trim), Some("```hex"), "{name}");
        let mut hex = String::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            hex.extend(
                l.split('#')
                    .next()
                    .unwrap()
                    .chars()
                    .filter(|c| !c.is_whitespace()),
            );
        }
        assert!(hex.len() % 2 == 0, "{name}: odd hex");
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        out.insert(name.to_string(), bytes);
    }
    out
}

fn frame(ex: &BTreeMap<String, Vec<u8>>, name: &str) -> Message {
    let b = Bytes::from(ex[name].clone());
    let msg = decode_frame_exact(&b, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    // And the reference encoder produces exactly these bytes.
    assert_eq!(
        message::encode_plain(&msg),
        ex[name],
        "{name}: re-encoding differs"
    );
    msg
}

#[test]
fn every_example_decodes_to_what_the_document_says() {
    let ex = examples();
    assert_eq!(
        ex.len(),
        15,
        "examples found: {:?}",
        ex.keys().collect::<Vec<_>>()
    );
    let h11 = FunctionId {
        blob: BlobHash([0x11; 32]),
        member: 0,
    };
    assert_eq!(
        frame(&ex, "hello"),
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node: "alice".into(),
            capabilities: vec!["sidecar".into()],
            max_frame: 16 << 20,
            sidecar_retain: 0,
        })
    );
    assert_eq!(
        frame(&ex, "call"),
        Message::Call(CallRequest {
            call_id: 1,
            target: Target::Function(h11),
            deadline_ms: Some(5000),
            caller: "alice".into(),
            hops: vec![],
            context: Portable::Nil,
            args: vec![
                Portable::Int(1),
                Portable::Str("hi".into()),
                Portable::Bytes(Bytes::from_static(&[1, 2, 3])),
            ],
            sealed: false,
        })
    );
    assert_eq!(
        frame(&ex, "call-named"),
        Message::Call(CallRequest {
            call_id: 2,
            target: Target::Name("main".into()),
            deadline_ms: None,
            caller: "bob".into(),
            hops: vec!["alice".into()],
            context: Portable::Nil,
            args: vec![],
            sealed: true,
        })
    );
    assert_eq!(
        frame(&ex, "response-ok"),
        Message::Response(CallResponse {
            call_id: 1,
            result: Ok(Portable::List(vec![
                Portable::Int(1),
                Portable::Str("hi".into())
            ])),
        })
    );
    assert_eq!(
        frame(&ex, "response-err"),
        Message::Response(CallResponse {
            call_id: 1,
            result: Err(RemoteError {
                kind: ErrorKind::Thrown,
                message: "boom".into(),
                trace: Box::new(["f a.sk:3".into()]),
                value: Portable::Str("boom".into()),
            }),
        })
    );
    assert_eq!(
        frame(&ex, "query"),
        Message::BlobQuery(vec![BlobHash([0x22; 32])])
    );
    assert_eq!(
        frame(&ex, "want"),
        Message::BlobWant(vec![BlobHash([0x22; 32])])
    );
    let blob = Blob {
        functions: vec![FunctionCode {
            code: vec![Instr::Nil {}, Instr::Return {}],
            ..FunctionCode::default()
        }],
    };
    match frame(&ex, "push") {
        Message::BlobPush { hash, blob: bytes } => {
            assert_eq!(hash, blob.hash());
            assert_eq!(BlobHash::of(&bytes), hash, "the example's hash is genuine");
            assert_eq!(Blob::decode(&bytes, 1 << 20).unwrap(), blob);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        frame(&ex, "sidecar"),
        Message::Sidecar {
            hash: SidecarHash::of(b"hello"),
            retain: true,
            data: Bytes::from_static(b"hello"),
        }
    );
    assert_eq!(frame(&ex, "cancel"), Message::Cancel { call_id: 1 });
    assert_eq!(
        frame(&ex, "error"),
        Message::Error(ErrorReply {
            code: "unknown_message".into(),
            message: "?".into(),
            frame_type: 0x42,
        })
    );

    let value = |name: &str| decode_value(&Bytes::from(ex[name].clone()), 64).unwrap();
    assert_eq!(value("value-range"), Portable::Range(1, 10));
    assert_eq!(
        value("value-closure"),
        Portable::Function {
            func: h11,
            captures: vec![Portable::Int(5)],
        }
    );
    assert_eq!(
        value("value-map"),
        Portable::Map(vec![(Portable::Str("a".into()), Portable::Float(0.5))])
    );
    let buf = Bytes::from(ex["value-sidecar"].clone());
    let hello = SidecarHash::of(b"hello");
    let lookup = |h: &SidecarHash| (*h == hello).then(|| Bytes::from_static(b"hello"));
    let (v, end) = decode_value_at(&buf, 0, buf.len(), 64, &lookup).unwrap();
    assert_eq!(end, buf.len());
    assert_eq!(v, Portable::Bytes(Bytes::from_static(b"hello")));
}

#[test]
fn alpn_and_version_match_the_document() {
    assert_eq!(ALPN, b"skiff/2");
    assert_eq!(PROTOCOL_VERSION, 2);
}
