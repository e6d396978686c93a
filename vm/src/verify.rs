//! The verifier: every blob is checked here before any of its code can run.
//!
//! [`verify_blob`] checks one blob on its own and computes, per member, the maximum operand
//! stack depth the interpreter reserves once per call. [`verify_links`] checks the blob's
//! references to other blobs against a store (done at load/link time, when the dependencies
//! are present). A failing blob yields a [`VerifyError`] naming the check, the member and the
//! instruction index; nothing here panics on any input.
//!
//! Invariants established for every member of a verified blob:
//! 1. `arity <= locals`; every cell slot is `< locals`, `>= arity` (parameters are never cells)
//!    and the cell list is strictly ascending.
//! 2. The code is non-empty and its last instruction cannot fall through (`Jump`, `Return`,
//!    `Throw`): control never runs off the end.
//! 3. Operands are in range: local slots `< locals`; plain local ops (`GetLocal`, `SetLocal`)
//!    never name a cell slot and cell ops (`NewCell`, `GetCell`, `SetCell`, `CaptureLocal`)
//!    only name cell slots; upvalue indices `< upvals`; constant indices `< consts.len()`;
//!    `func < refs.len()`; `native < natives.len()`; `FnRef::Local(m)` has `m < member count`;
//!    jump, handler and fallback targets `< code.len()`.
//! 4. Function shapes: `Function`, `CallFunction`, `Remote` and `RemoteElse` name functions
//!    with no upvalues; `Closure { captures }` names a function with exactly `captures`
//!    upvalues (checked for local members here, for external ones by [`verify_links`]).
//! 5. Stack discipline (abstract interpretation over the control-flow graph): every reachable
//!    instruction has one operand depth, one try depth and one "cells on top" count, equal
//!    over all incoming edges; no instruction pops more than is there. Edge rules: the
//!    `TryBegin` handler is entered with the depth at `TryBegin` + 1 (the error) and the try
//!    depth at `TryBegin`; `RemoteElse`'s fallback with depth − argc − 1; `IterNext`/`IterNext2`
//!    done-edges pop the collection and cursor; `JumpIfFalseOrPop`/`JumpIfTrueOrPop` keep the
//!    value on the taken edge.
//! 6. Cells on the operand stack: only `CaptureLocal`/`CaptureUpval` push them, they sit on top
//!    of the stack, and the only instruction that may execute while any are there is another
//!    capture or the `Closure` that consumes exactly all of them.
//! 7. `TryBegin`/`TryEnd` are balanced per path: `TryEnd` only with a handler open. `Return`
//!    and `Throw` may leave handlers open (the interpreter drops a frame's handlers with it).
//! 8. `max_stack` (the largest operand depth reached) is at most [`MAX_OPERAND_STACK`].
//!
//! Link-time ([`verify_links`]): every external reference names a blob present in the store,
//! a member that exists, with the upvalue count rule 4 demands.

use crate::blob::{Blob, BlobHash, FnRef};
use crate::opcodes::{Flow, Instr};

/// Largest operand depth a function may need.
pub const MAX_OPERAND_STACK: u32 = 1 << 16;

/// Which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyErrorKind {
    #[error("a blob has no functions")]
    NoFunctions,
    #[error("arity {arity} exceeds locals {locals}")]
    ArityExceedsLocals { arity: u16, locals: u16 },
    #[error("cell slot {slot} out of range (locals {locals})")]
    CellSlotOutOfRange { slot: u16, locals: u16 },
    #[error("parameter slot {slot} is declared a cell")]
    ParamIsCell { slot: u16 },
    #[error("cell slots are not strictly ascending")]
    CellsNotAscending,
    #[error("function has no code")]
    EmptyCode,
    #[error("control can fall off the end of the code")]
    FallsOffEnd,
    #[error("local slot {slot} out of range (locals {locals})")]
    LocalOutOfRange { slot: u16, locals: u16 },
    #[error("plain local op on cell slot {slot}")]
    PlainOpOnCell { slot: u16 },
    #[error("cell op on plain slot {slot}")]
    CellOpOnPlain { slot: u16 },
    #[error("upvalue {index} out of range (upvals {upvals})")]
    UpvalOutOfRange { index: u16, upvals: u16 },
    #[error("constant {index} out of range ({len} constants)")]
    ConstOutOfRange { index: u32, len: usize },
    #[error("function reference {func} out of range ({len} references)")]
    FuncOutOfRange { func: u32, len: usize },
    #[error("native {native} out of range ({len} natives)")]
    NativeOutOfRange { native: u16, len: usize },
    #[error("local member {member} out of range ({len} members)")]
    MemberOutOfRange { member: u32, len: usize },
    #[error("jump target {target} out of range (code length {len})")]
    TargetOutOfRange { target: u32, len: usize },
    #[error("function with {upvals} upvalues used where {expected} are required")]
    UpvalsMismatch { upvals: u16, expected: u16 },
    #[error("stack underflow: needs {needed}, has {depth}")]
    StackUnderflow { needed: usize, depth: usize },
    #[error("inconsistent stack at merge: {a:?} vs {b:?}")]
    StackMismatch {
        a: (u32, u16, u16),
        b: (u32, u16, u16),
    },
    #[error("cell on the operand stack used by a non-closure instruction")]
    CellMisuse,
    #[error("Closure consumes {captures} cells but {cells} were captured")]
    CaptureCountMismatch { captures: u16, cells: u16 },
    #[error("TryEnd without an open TryBegin")]
    TryEndWithoutBegin,
    #[error("operand stack depth {0} exceeds the maximum")]
    StackTooDeep(u64),
    #[error("referenced blob {0} is not in the store")]
    MissingBlob(BlobHash),
    #[error("referenced blob {blob} has no member {member}")]
    MissingMember { blob: BlobHash, member: u32 },
}

/// A rejected blob: which check, which member, which instruction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("verify: function {function}{}: {kind}", pc.map(|p| format!(" pc {p}")).unwrap_or_default())]
pub struct VerifyError {
    pub function: u32,
    pub pc: Option<u32>,
    pub kind: VerifyErrorKind,
}

/// What the verifier computed for a blob, per member.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobInfo {
    pub max_stack: Vec<u32>,
}

/// Abstract state at an instruction: operand depth, cells on top, open handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    depth: u32,
    cells: u16,
    tries: u16,
}

/// Verifies every member of `blob` on its own (see the module invariants).
pub fn verify_blob(blob: &Blob) -> Result<BlobInfo, VerifyError> {
    if blob.functions.is_empty() {
        return Err(VerifyError {
            function: 0,
            pc: None,
            kind: VerifyErrorKind::NoFunctions,
        });
    }
    let mut info = BlobInfo::default();
    for (i, _) in blob.functions.iter().enumerate() {
        let i = i as u32;
        let max = verify_function(blob, i as usize).map_err(|(pc, kind)| VerifyError {
            function: i,
            pc,
            kind,
        })?;
        info.max_stack.push(max);
    }
    Ok(info)
}

/// Checks `blob`'s external references against the blobs `lookup` can find.
pub fn verify_links<'a>(
    blob: &Blob,
    lookup: impl Fn(&BlobHash) -> Option<&'a Blob>,
) -> Result<(), VerifyError> {
    for (fi, f) in blob.functions.iter().enumerate() {
        let err = |pc: Option<u32>, kind| VerifyError {
            function: fi as u32,
            pc,
            kind,
        };
        for r in &f.refs {
            if let FnRef::External(id) = r {
                let target = lookup(&id.blob)
                    .ok_or_else(|| err(None, VerifyErrorKind::MissingBlob(id.blob)))?;
                if target.functions.get(id.member as usize).is_none() {
                    return Err(err(
                        None,
                        VerifyErrorKind::MissingMember {
                            blob: id.blob,
                            member: id.member,
                        },
                    ));
                }
            }
        }
        // Upvalue counts demanded by how the code uses each external reference.
        for (pc, instr) in f.code.iter().enumerate() {
            let (func, want) = match *instr {
                Instr::Function { func }
                | Instr::CallFunction { func, .. }
                | Instr::Remote { func, .. }
                | Instr::RemoteElse { func, .. } => (func, 0),
                Instr::Closure { func, captures } => (func, captures),
                _ => continue,
            };
            if let Some(FnRef::External(id)) = f.refs.get(func as usize) {
                let member = lookup(&id.blob).and_then(|b| b.functions.get(id.member as usize));
                if let Some(member) = member {
                    if member.upvals != want {
                        return Err(err(
                            Some(pc as u32),
                            VerifyErrorKind::UpvalsMismatch {
                                upvals: member.upvals,
                                expected: want,
                            },
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

type FnResult<T> = Result<T, (Option<u32>, VerifyErrorKind)>;

fn verify_function(blob: &Blob, index: usize) -> FnResult<u32> {
    use VerifyErrorKind as K;
    let f = &blob.functions[index];
    if f.arity > f.locals {
        return Err((
            None,
            K::ArityExceedsLocals {
                arity: f.arity,
                locals: f.locals,
            },
        ));
    }
    let mut is_cell = vec![false; f.locals as usize];
    let mut prev: Option<u16> = None;
    for &slot in &f.cells {
        if prev.is_some_and(|p| p >= slot) {
            return Err((None, K::CellsNotAscending));
        }
        prev = Some(slot);
        if slot >= f.locals {
            return Err((
                None,
                K::CellSlotOutOfRange {
                    slot,
                    locals: f.locals,
                },
            ));
        }
        if slot < f.arity {
            return Err((None, K::ParamIsCell { slot }));
        }
        is_cell[slot as usize] = true;
    }
    let code = &f.code;
    let len = code.len();
    let Some(last) = code.last() else {
        return Err((None, K::EmptyCode));
    };
    if matches!(last.flow(), Flow::Next | Flow::Branch) {
        return Err((Some(len as u32 - 1), K::FallsOffEnd));
    }

    // Operand checks, one pass.
    let members = blob.functions.len();
    let check_ref = |func: u32, want_upvals: Option<u16>| -> Result<(), K> {
        let r = f.refs.get(func as usize).ok_or(K::FuncOutOfRange {
            func,
            len: f.refs.len(),
        })?;
        if let FnRef::Local(member) = *r {
            let target = blob
                .functions
                .get(member as usize)
                .ok_or(K::MemberOutOfRange {
                    member,
                    len: members,
                })?;
            if let Some(want) = want_upvals {
                if target.upvals != want {
                    return Err(K::UpvalsMismatch {
                        upvals: target.upvals,
                        expected: want,
                    });
                }
            }
        }
        Ok(())
    };
    let local = |slot: u16, cell: bool| -> Result<(), K> {
        match is_cell.get(slot as usize) {
            None => Err(K::LocalOutOfRange {
                slot,
                locals: f.locals,
            }),
            Some(&c) if c && !cell => Err(K::PlainOpOnCell { slot }),
            Some(&c) if !c && cell => Err(K::CellOpOnPlain { slot }),
            _ => Ok(()),
        }
    };
    let upval = |index: u16| -> Result<(), K> {
        if index < f.upvals {
            Ok(())
        } else {
            Err(K::UpvalOutOfRange {
                index,
                upvals: f.upvals,
            })
        }
    };
    for (pc, instr) in code.iter().enumerate() {
        let res = match *instr {
            Instr::GetLocal { slot } | Instr::SetLocal { slot } => local(slot, false),
            Instr::NewCell { slot }
            | Instr::GetCell { slot }
            | Instr::SetCell { slot }
            | Instr::CaptureLocal { slot } => local(slot, true),
            Instr::GetUpval { index }
            | Instr::SetUpval { index }
            | Instr::CaptureUpval { index } => upval(index),
            Instr::Const { index } => {
                if (index as usize) < f.consts.len() {
                    Ok(())
                } else {
                    Err(K::ConstOutOfRange {
                        index,
                        len: f.consts.len(),
                    })
                }
            }
            Instr::Function { func }
            | Instr::CallFunction { func, .. }
            | Instr::Remote { func, .. } => check_ref(func, Some(0)),
            Instr::RemoteElse { func, .. } => check_ref(func, Some(0)),
            Instr::Closure { func, captures } => check_ref(func, Some(captures)),
            Instr::CallNative { native, .. } => {
                if (native as usize) < f.natives.len() {
                    Ok(())
                } else {
                    Err(K::NativeOutOfRange {
                        native,
                        len: f.natives.len(),
                    })
                }
            }
            Instr::TryBegin { handler } if handler as usize >= len => Err(K::TargetOutOfRange {
                target: handler,
                len,
            }),
            _ => Ok(()),
        };
        res.map_err(|k| (Some(pc as u32), k))?;
        if let Some(target) = instr.branch_target() {
            if target as usize >= len {
                return Err((Some(pc as u32), K::TargetOutOfRange { target, len }));
            }
        }
    }

    // Abstract interpretation over the CFG.
    let mut states: Vec<Option<State>> = vec![None; len];
    let mut work: Vec<usize> = Vec::new();
    let mut max_depth: u64 = 0;
    let flow_to = |states: &mut Vec<Option<State>>,
                   work: &mut Vec<usize>,
                   target: usize,
                   st: State|
     -> FnResult<()> {
        match states[target] {
            None => {
                states[target] = Some(st);
                work.push(target);
                Ok(())
            }
            Some(old) if old == st => Ok(()),
            Some(old) => Err((
                Some(target as u32),
                K::StackMismatch {
                    a: (old.depth, old.cells, old.tries),
                    b: (st.depth, st.cells, st.tries),
                },
            )),
        }
    };
    flow_to(
        &mut states,
        &mut work,
        0,
        State {
            depth: 0,
            cells: 0,
            tries: 0,
        },
    )?;
    while let Some(pc) = work.pop() {
        let Some(st) = states[pc] else { continue };
        let at = Some(pc as u32);
        let instr = code[pc];
        let (pops, pushes) = instr.stack_effect();
        let depth = st.depth as usize;
        if pops > depth {
            return Err((
                at,
                K::StackUnderflow {
                    needed: pops,
                    depth,
                },
            ));
        }
        let mut cells = st.cells;
        match instr {
            Instr::CaptureLocal { .. } | Instr::CaptureUpval { .. } => cells += 1,
            Instr::Closure { captures, .. } => {
                if cells != captures {
                    return Err((at, K::CaptureCountMismatch { captures, cells }));
                }
                cells = 0;
            }
            _ if cells != 0 => return Err((at, K::CellMisuse)),
            _ => {}
        }
        let after = depth - pops + pushes;
        max_depth = max_depth.max(after as u64).max(depth as u64);
        if max_depth > MAX_OPERAND_STACK as u64 {
            return Err((at, K::StackTooDeep(max_depth)));
        }
        let next = State {
            depth: after as u32,
            cells,
            tries: st.tries,
        };
        let with_depth = |d: usize| State {
            depth: d as u32,
            ..next
        };
        match instr {
            Instr::TryBegin { handler } => {
                let Some(tries) = st.tries.checked_add(1) else {
                    return Err((at, K::StackTooDeep(u64::from(st.tries))));
                };
                flow_to(
                    &mut states,
                    &mut work,
                    handler as usize,
                    State {
                        depth: st.depth + 1,
                        cells: 0,
                        tries: st.tries,
                    },
                )?;
                if pc + 1 < len {
                    flow_to(&mut states, &mut work, pc + 1, State { tries, ..next })?;
                }
                max_depth = max_depth.max(depth as u64 + 1);
                continue;
            }
            Instr::TryEnd {} => {
                if st.tries == 0 {
                    return Err((at, K::TryEndWithoutBegin));
                }
                flow_to(
                    &mut states,
                    &mut work,
                    pc + 1,
                    State {
                        tries: st.tries - 1,
                        ..next
                    },
                )?;
                continue;
            }
            _ => {}
        }
        match instr.flow() {
            Flow::Exit => {}
            Flow::Next => flow_to(&mut states, &mut work, pc + 1, next)?,
            Flow::Jump => {
                let target = instr.branch_target().unwrap_or(0) as usize;
                flow_to(&mut states, &mut work, target, with_depth(depth))?;
            }
            Flow::Branch => {
                let target = instr.branch_target().unwrap_or(0) as usize;
                let taken = match instr {
                    Instr::JumpIfFalseOrPop { .. } | Instr::JumpIfTrueOrPop { .. } => depth,
                    Instr::IterNext { .. } | Instr::IterNext2 { .. } => depth - 2,
                    Instr::RemoteElse { argc, .. } => depth - argc as usize - 1,
                    _ => after,
                };
                flow_to(&mut states, &mut work, pc + 1, next)?;
                flow_to(&mut states, &mut work, target, with_depth(taken))?;
            }
        }
    }
    Ok(max_depth as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{Const, FunctionCode, FunctionId};

    fn func(code: Vec<Instr>) -> FunctionCode {
        FunctionCode {
            arity: 0,
            locals: 2,
            upvals: 0,
            cells: vec![1],
            code,
            consts: vec![Const::Int(1)],
            refs: vec![FnRef::Local(0)],
            natives: vec!["print".into()],
        }
    }

    fn check(code: Vec<Instr>) -> Result<BlobInfo, VerifyErrorKind> {
        verify_blob(&Blob {
            functions: vec![func(code)],
        })
        .map_err(|e| e.kind)
    }

    use Instr as I;

    #[test]
    fn accepts_good_code_and_computes_max_stack() {
        let info = check(vec![
            I::Int { value: 1 },
            I::Int { value: 2 },
            I::Add {},
            I::SetLocal { slot: 0 },
            I::TryBegin { handler: 8 },
            I::Nil {},
            I::Throw {},
            I::TryEnd {},
            I::Return {},
        ])
        .unwrap();
        assert_eq!(info.max_stack, vec![2]);
    }

    #[test]
    fn rejects_each_check() {
        use VerifyErrorKind as K;
        let r = |code| check(code).unwrap_err();
        assert!(matches!(r(vec![]), K::EmptyCode));
        assert!(matches!(r(vec![I::Nil {}]), K::FallsOffEnd));
        assert!(matches!(
            r(vec![I::GetLocal { slot: 5 }, I::Return {}]),
            K::LocalOutOfRange { .. }
        ));
        assert!(matches!(
            r(vec![I::GetLocal { slot: 1 }, I::Return {}]),
            K::PlainOpOnCell { .. }
        ));
        assert!(matches!(
            r(vec![I::GetCell { slot: 0 }, I::Return {}]),
            K::CellOpOnPlain { .. }
        ));
        assert!(matches!(
            r(vec![I::GetUpval { index: 0 }, I::Return {}]),
            K::UpvalOutOfRange { .. }
        ));
        assert!(matches!(
            r(vec![I::Const { index: 1 }, I::Return {}]),
            K::ConstOutOfRange { .. }
        ));
        assert!(matches!(
            r(vec![I::Function { func: 1 }, I::Return {}]),
            K::FuncOutOfRange { .. }
        ));
        assert!(matches!(
            r(vec![I::CallNative { native: 1, argc: 0 }, I::Return {}]),
            K::NativeOutOfRange { .. }
        ));
        assert!(matches!(
            r(vec![I::Jump { target: 9 }]),
            K::TargetOutOfRange { .. }
        ));
        assert!(matches!(r(vec![I::Return {}]), K::StackUnderflow { .. }));
        assert!(matches!(
            r(vec![
                I::True {},
                I::JumpIfFalse { target: 3 },
                I::Nil {},
                I::Nil {},
                I::Return {}
            ]),
            K::StackMismatch { .. }
        ));
        assert!(matches!(
            r(vec![I::CaptureLocal { slot: 1 }, I::Return {}]),
            K::CellMisuse
        ));
        let mut outer = func(vec![
            I::Nil {},
            I::Closure {
                func: 0,
                captures: 1,
            },
            I::Return {},
        ]);
        outer.refs = vec![FnRef::Local(1)];
        let mut inner = func(vec![I::Nil {}, I::Return {}]);
        inner.upvals = 1;
        let e = verify_blob(&Blob {
            functions: vec![outer, inner],
        })
        .unwrap_err();
        assert!(matches!(e.kind, K::CaptureCountMismatch { .. }), "{e}");
        assert!(matches!(
            r(vec![I::TryEnd {}, I::Nil {}, I::Return {}]),
            K::TryEndWithoutBegin
        ));
        // Closure over a member with a different upvalue count.
        assert!(matches!(
            r(vec![
                I::CaptureLocal { slot: 1 },
                I::Closure {
                    func: 0,
                    captures: 1
                },
                I::Return {}
            ]),
            K::UpvalsMismatch { .. }
        ));
        // try depth differs at a merge
        assert!(matches!(
            r(vec![
                I::True {},
                I::JumpIfFalse { target: 3 },
                I::TryBegin { handler: 5 },
                I::Nil {},
                I::Return {},
                I::Return {},
            ]),
            K::StackMismatch { .. }
        ));
    }

    #[test]
    fn rejects_bad_headers() {
        use VerifyErrorKind as K;
        let mut f = func(vec![I::Nil {}, I::Return {}]);
        f.arity = 3;
        let e = verify_blob(&Blob {
            functions: vec![f.clone()],
        });
        assert!(matches!(e.unwrap_err().kind, K::ArityExceedsLocals { .. }));
        f.arity = 2;
        f.locals = 2;
        let e = verify_blob(&Blob {
            functions: vec![f.clone()],
        });
        assert!(matches!(e.unwrap_err().kind, K::ParamIsCell { .. }));
        f.arity = 0;
        f.cells = vec![4];
        let e = verify_blob(&Blob {
            functions: vec![f.clone()],
        });
        assert!(matches!(e.unwrap_err().kind, K::CellSlotOutOfRange { .. }));
        f.cells = vec![1, 1];
        let e = verify_blob(&Blob {
            functions: vec![f.clone()],
        });
        assert!(matches!(e.unwrap_err().kind, K::CellsNotAscending));
        f.cells = vec![];
        f.refs = vec![FnRef::Local(7)];
        f.code = vec![I::Function { func: 0 }, I::Return {}];
        let e = verify_blob(&Blob {
            functions: vec![f.clone()],
        });
        assert!(matches!(e.unwrap_err().kind, K::MemberOutOfRange { .. }));
        assert!(matches!(
            verify_blob(&Blob { functions: vec![] }).unwrap_err().kind,
            K::NoFunctions
        ));
    }

    #[test]
    fn rejects_missing_member_and_deep_stacks() {
        let mut f = func(vec![I::Function { func: 0 }, I::Return {}]);
        f.refs = vec![FnRef::External(FunctionId {
            blob: BlobHash([3; 32]),
            member: 5,
        })];
        let blob = Blob { functions: vec![f] };
        let dep = Blob {
            functions: vec![func(vec![I::Nil {}, I::Return {}])],
        };
        let e = verify_links(&blob, |_| Some(&dep)).unwrap_err();
        assert!(matches!(
            e.kind,
            VerifyErrorKind::MissingMember { member: 5, .. }
        ));

        let mut code = vec![I::Nil {}; MAX_OPERAND_STACK as usize + 1];
        code.push(I::Return {});
        let e = check(code).unwrap_err();
        assert!(matches!(e, VerifyErrorKind::StackTooDeep(_)));
    }

    #[test]
    fn links_need_present_blobs() {
        let mut f = func(vec![I::Function { func: 0 }, I::Return {}]);
        let missing = BlobHash([9; 32]);
        f.refs = vec![FnRef::External(FunctionId {
            blob: missing,
            member: 0,
        })];
        let blob = Blob { functions: vec![f] };
        verify_blob(&blob).unwrap();
        let e = verify_links(&blob, |_| None).unwrap_err();
        assert_eq!(e.kind, VerifyErrorKind::MissingBlob(missing));
        let dep = Blob {
            functions: vec![func(vec![I::Nil {}, I::Return {}])],
        };
        verify_links(&blob, |_| Some(&dep)).unwrap();
        let mut closure_dep = dep.clone();
        closure_dep.functions[0].upvals = 1;
        let e = verify_links(&blob, |_| Some(&closure_dep)).unwrap_err();
        assert!(matches!(e.kind, VerifyErrorKind::UpvalsMismatch { .. }));
    }
}
