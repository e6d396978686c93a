//! # skiff-vm: content-addressed functions on a resumable stack machine
//!
//! The one decision everything here follows from: **a function is identified by the hash of
//! what it does**. Code is stored, shipped and cached as blobs whose SHA-256 covers exactly the
//! bytes that affect execution (debug names and positions travel beside them). Two nodes that
//! agree on a hash agree on behaviour, so a peer only ever needs the blobs it lacks, and a
//! blob received from anywhere is trusted only after it is re-hashed and verified.
//!
//! Layers, bottom up: [`opcodes`] (the instruction set, defined once), [`blob`] (canonical
//! encoding and hashing), [`module`] (compiled scripts, transitive blob closures),
//! [`portable`] (send-copy values), [`verify`] (every blob is checked before it runs),
//! [`store`] (verified blobs by hash), [`interp`] (linker, interpreter, tasks, limits and the
//! embedding API: [`Engine`], [`Execution`], [`Limits`], [`Status`]). The VM knows nothing of
//! networks: remote calls surface as [`interp::RemoteRequest`]s the host carries out.

pub mod blob;
pub mod builtins;
pub mod display;
pub mod function;
pub mod fuzz;
pub mod heap;
pub mod hop;
pub mod interp;
pub mod module;
pub mod native;
pub mod opcodes;
pub mod ops;
pub mod portable;
pub mod store;
pub mod value;
pub mod verify;

pub use blob::{Blob, BlobDebug, BlobHash, Const, FnRef, FunctionCode, FunctionDebug, FunctionId};
pub use interp::{
    Engine, ExecError, ExecIo, Execution, LimitKind, Limits, NextRun, QuickRun, RemoteFailure,
    RemoteRequest, StartError, Status, TraceFrame,
};
pub use module::{transitive_closure, Module};
pub use opcodes::Instr;
pub use portable::Portable;
pub use store::CodeStore;
pub use value::Value;
pub use verify::{VerifyError, VerifyErrorKind};
