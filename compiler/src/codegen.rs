//! Code generation: resolved AST to one proto-function per function.
//!
//! A proto-function is a [`FunctionCode`] whose reference table is not yet addressed: its
//! entries are indices into the proto list ([`ProtoFn::targets`]); [`crate::address`] turns
//! them into [`FnRef`](skiff_vm::FnRef)s once hashes are known.
//!
//! Conventions shared with the VM (see also `docs/` and the crate's final report):
//! - Parameters occupy plain local slots `0..arity`; other plain locals follow; all *cell*
//!   slots come after every plain slot (`cells` = `plain_count..locals`). A slot never
//!   changes kind, so `GetLocal`/`SetLocal` only ever touch plain slots and
//!   `NewCell`/`GetCell`/`SetCell`/`CaptureLocal` only cell slots. Plain and cell slots are
//!   reused across disjoint scopes. A captured parameter is copied into a cell slot at entry.
//! - The operand stack is separate from the locals; every statement leaves it balanced and
//!   every expression pushes exactly one value. The generator tracks the depth, so `break`
//!   and `continue` pop whatever their enclosing expression has pending, and they emit one
//!   `TryEnd` per `try` body they leave. A caught error has already removed its handler.
//! - `for` keeps the collection and the cursor on the operand stack for the whole loop.
//! - A function returns its body block's value; the entry returns the value of its last
//!   top-level expression statement (else nil).
//! - `fn` literals, nested `fn` declarations and `spawn` bodies become `Closure` (even with
//!   zero captures, so each evaluation makes a distinct closure); top-level functions are
//!   `Function` values or `CallFunction` direct calls.
//! - Each instruction has a debug position: the operator for arithmetic, the `(` for calls,
//!   the `[`/field name for indexing, the keyword for `remote`/`spawn`/`await`, otherwise
//!   the start of the expression.

use crate::ast::*;
use crate::consts::ConstValue;
use crate::resolve::{BindingId, Globals, Res, Resolution, Unit as UnitKind};
use crate::{Diagnostic, LineIndex};
use skiff_vm::blob::{Const, FunctionCode, FunctionDebug};
use skiff_vm::Instr;
use std::collections::{BTreeMap, HashMap};

/// One unit's inputs to code generation.
pub struct Unit<'a> {
    pub prog: &'a Program,
    pub res: &'a Resolution,
    pub source: &'a str,
    pub file: &'a str,
}

/// A generated function whose references are proto indices.
#[derive(Clone, Debug)]
pub struct ProtoFn {
    /// `refs` is empty; see `targets`.
    pub code: FunctionCode,
    /// Reference table: `targets[i]` is the proto index `func: i` names.
    pub targets: Vec<usize>,
    pub debug: FunctionDebug,
}

/// All generated functions.
#[derive(Clone, Debug)]
pub struct Protos {
    pub fns: Vec<ProtoFn>,
    /// Proto index of each top-level function ([`Globals::fns`] order).
    pub top: Vec<usize>,
    /// Proto index of the user's entry function.
    pub entry: usize,
}

/// Generates code for the user unit and the prelude.
pub fn generate(
    user: &Unit<'_>,
    prelude: &Unit<'_>,
    globals: &Globals,
    diags: &mut Vec<Diagnostic>,
) -> Protos {
    let n_top = globals.fns.len();
    let mut protos: Vec<Option<ProtoFn>> = vec![None; n_top + 1];
    let entry = n_top;
    let top: Vec<usize> = (0..n_top).collect();
    for (unit, kind) in [(user, UnitKind::User), (prelude, UnitKind::Prelude)] {
        let mut g = Gen {
            unit,
            lines: LineIndex::new(unit.source),
            line_hint: 0,
            globals,
            protos: &mut protos,
            diags: &mut *diags,
            f: Vec::new(),
        };
        for (i, info) in globals.fns.iter().enumerate() {
            if info.unit != kind {
                continue;
            }
            if let StmtKind::Fn(decl) = &unit.prog.stmts[info.stmt].kind {
                let params = g.param_bindings(&decl.params);
                g.function(
                    i,
                    Some(info.name.clone()),
                    &params,
                    Vec::new(),
                    &decl.body,
                    decl.span.clone(),
                );
            }
        }
        if kind == UnitKind::User {
            g.entry(entry);
        }
    }
    let fns = protos
        .into_iter()
        .map(|p| {
            p.unwrap_or_else(|| ProtoFn {
                // Only reachable if generation was cut short by an error.
                code: FunctionCode {
                    code: vec![Instr::Nil {}, Instr::Return {}],
                    ..FunctionCode::default()
                },
                targets: Vec::new(),
                debug: FunctionDebug {
                    positions: vec![(1, 1), (1, 1)],
                    ..FunctionDebug::default()
                },
            })
        })
        .collect();
    Protos { fns, top, entry }
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Plain(u32),
    /// Index among cell slots (offset by the plain count when the function is finished).
    Cell(u32),
}

struct LoopCtx {
    /// Operand depth `break` pops down to (the loop's exit depth).
    break_depth: i64,
    /// Operand depth `continue` pops down to.
    continue_depth: i64,
    continue_target: usize,
    breaks: Vec<usize>,
    tries: u32,
}

/// Constant-pool deduplication key (floats by bit pattern, so `0.0` and `-0.0` differ).
#[derive(PartialEq, Eq, Hash)]
enum ConstKey {
    Int(i64),
    Float(u64),
    Str(String),
    Bytes(Vec<u8>),
}

struct FnState {
    code: Vec<Instr>,
    const_map: HashMap<ConstKey, u32>,
    target_map: HashMap<usize, u32>,
    positions: Vec<(u32, u32)>,
    consts: Vec<Const>,
    targets: Vec<usize>,
    natives: Vec<String>,
    arity: u32,
    plain_next: u32,
    plain_max: u32,
    cell_next: u32,
    cell_max: u32,
    slots: BTreeMap<BindingId, Slot>,
    upvals: Vec<BindingId>,
    depth: i64,
    loops: Vec<LoopCtx>,
    tries: u32,
    plain_names: Vec<Vec<String>>,
    cell_names: Vec<Vec<String>>,
    name: Option<String>,
    span: Span,
}

struct Gen<'a, 'u> {
    unit: &'a Unit<'u>,
    lines: LineIndex,
    /// The line of the last position looked up: the next is mostly on it or the next one.
    line_hint: usize,
    globals: &'a Globals,
    protos: &'a mut Vec<Option<ProtoFn>>,
    diags: &'a mut Vec<Diagnostic>,
    f: Vec<FnState>,
}

/// Instructions a function's code and position lists have room for when it starts (trimmed
/// to what it used when it ends).
const CODE_CAPACITY: usize = 64;

/// A slot number as encoded; overflow is reported once when the function is finished.
fn slot16(s: u32) -> u16 {
    u16::try_from(s).unwrap_or(u16::MAX)
}

fn small_int(v: i64) -> Option<i32> {
    i32::try_from(v).ok()
}

/// The debug names of `count` slots: each the names that shared the slot, in order, joined
/// by `/` (a slot with one name keeps its string; one without any is named "").
fn slot_names(names: Vec<Vec<String>>, count: usize) -> Vec<String> {
    let mut names = names.into_iter();
    (0..count)
        .map(|_| match names.next() {
            Some(mut one) if one.len() == 1 => one.swap_remove(0),
            Some(several) => several.join("/"),
            None => String::new(),
        })
        .collect()
}

fn add_name(names: &mut Vec<Vec<String>>, slot: u32, name: &str) {
    let slot = slot as usize;
    if names.len() <= slot {
        names.resize(slot + 1, Vec::new());
    }
    if !names[slot].iter().any(|n| n == name) {
        names[slot].push(name.to_string());
    }
}

impl Gen<'_, '_> {
    // ---------------------------------------------------------------- function state

    fn cur(&mut self) -> &mut FnState {
        self.f.last_mut().expect("inside a function")
    }

    fn cur_ref(&self) -> &FnState {
        self.f.last().expect("inside a function")
    }

    fn pos(&mut self, span: &Span) -> (u32, u32) {
        self.lines
            .line_col_near(self.unit.source, span.start, &mut self.line_hint)
    }

    fn error(&mut self, span: Span, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(msg, span));
    }

    fn emit(&mut self, instr: Instr, span: &Span) -> usize {
        let pos = self.pos(span);
        let f = self.cur();
        let (pops, pushes) = instr.stack_effect();
        f.depth = f.depth - pops as i64 + pushes as i64;
        debug_assert!(f.depth >= 0, "operand stack underflow generating {instr:?}");
        f.code.push(instr);
        f.positions.push(pos);
        f.code.len() - 1
    }

    fn here(&self) -> usize {
        self.cur_ref().code.len()
    }

    /// Points the branch operand of the instruction at `at` to `target`.
    fn patch(&mut self, at: usize, target: usize) {
        let t = u32::try_from(target).unwrap_or(u32::MAX);
        let instr = &mut self.cur().code[at];
        match instr.target_mut() {
            Some(operand) => *operand = t,
            None => debug_assert!(false, "patching a non-branch {instr:?}"),
        }
    }

    fn patch_here(&mut self, at: usize) {
        let h = self.here();
        self.patch(at, h);
    }

    fn set_depth(&mut self, depth: i64) {
        self.cur().depth = depth;
    }

    fn depth(&self) -> i64 {
        self.cur_ref().depth
    }

    fn func_ref(&mut self, proto: usize) -> u32 {
        let f = self.cur();
        if let Some(&i) = f.target_map.get(&proto) {
            return i;
        }
        let i = f.targets.len() as u32;
        f.targets.push(proto);
        f.target_map.insert(proto, i);
        i
    }

    fn native_ref(&mut self, name: &str, span: &Span) -> u16 {
        let f = self.cur();
        let i = match f.natives.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                f.natives.push(name.to_string());
                f.natives.len() - 1
            }
        };
        match u16::try_from(i) {
            Ok(i) => i,
            Err(_) => {
                self.error(span.clone(), "too many distinct natives in one function");
                0
            }
        }
    }

    fn const_index(&mut self, c: Const) -> u32 {
        let f = self.cur();
        let key = match &c {
            Const::Int(i) => ConstKey::Int(*i),
            Const::Float(x) => ConstKey::Float(x.to_bits()),
            Const::Str(s) => ConstKey::Str(s.clone()),
            Const::Bytes(b) => ConstKey::Bytes(b.clone()),
        };
        if let Some(&i) = f.const_map.get(&key) {
            return i;
        }
        let i = f.consts.len() as u32;
        f.consts.push(c);
        f.const_map.insert(key, i);
        i
    }

    fn begin_scope(&mut self) -> (u32, u32) {
        let f = self.cur_ref();
        (f.plain_next, f.cell_next)
    }

    fn end_scope(&mut self, saved: (u32, u32)) {
        let f = self.cur();
        f.plain_next = saved.0;
        f.cell_next = saved.1;
    }

    fn alloc_plain(&mut self, name: &str) -> u32 {
        let f = self.cur();
        let s = f.plain_next;
        f.plain_next += 1;
        f.plain_max = f.plain_max.max(f.plain_next);
        add_name(&mut f.plain_names, s, name);
        s
    }

    fn alloc_cell(&mut self, name: &str) -> u32 {
        let f = self.cur();
        let s = f.cell_next;
        f.cell_next += 1;
        f.cell_max = f.cell_max.max(f.cell_next);
        add_name(&mut f.cell_names, s, name);
        s
    }

    /// Allocates a slot for a new binding.
    fn declare(&mut self, b: BindingId) -> Slot {
        let info = &self.unit.res.bindings[b as usize];
        let (captured, name) = (info.captured, info.name.clone());
        let slot = if captured {
            Slot::Cell(self.alloc_cell(&name))
        } else {
            Slot::Plain(self.alloc_plain(&name))
        };
        self.cur().slots.insert(b, slot);
        slot
    }

    /// Declares `b` and stores the value on top of the stack into it.
    fn declare_store(&mut self, b: BindingId, span: &Span) {
        match self.declare(b) {
            Slot::Plain(s) => {
                let slot = slot16(s);
                self.emit(Instr::SetLocal { slot }, span);
            }
            Slot::Cell(c) => {
                let slot = slot16(c);
                self.emit(Instr::NewCell { slot }, span);
            }
        }
    }

    fn load(&mut self, b: BindingId, span: &Span) {
        let f = self.cur_ref();
        if let Some(&slot) = f.slots.get(&b) {
            let instr = match slot {
                Slot::Plain(s) => Instr::GetLocal { slot: slot16(s) },
                Slot::Cell(c) => Instr::GetCell { slot: slot16(c) },
            };
            self.emit(instr, span);
        } else if let Some(i) = f.upvals.iter().position(|&u| u == b) {
            self.emit(Instr::GetUpval { index: i as u16 }, span);
        } else {
            self.internal(span, "variable has no slot");
            self.emit(Instr::Nil {}, span);
        }
    }

    fn store(&mut self, b: BindingId, span: &Span) {
        let f = self.cur_ref();
        if let Some(&slot) = f.slots.get(&b) {
            let instr = match slot {
                Slot::Plain(s) => Instr::SetLocal { slot: slot16(s) },
                Slot::Cell(c) => Instr::SetCell { slot: slot16(c) },
            };
            self.emit(instr, span);
        } else if let Some(i) = f.upvals.iter().position(|&u| u == b) {
            self.emit(Instr::SetUpval { index: i as u16 }, span);
        } else {
            self.internal(span, "variable has no slot");
            self.emit(Instr::Pop {}, span);
        }
    }

    fn internal(&mut self, span: &Span, what: &str) {
        self.error(span.clone(), format!("internal compiler error: {what}"));
    }

    fn binding_of(&self, ident: &Ident) -> Option<BindingId> {
        match self.unit.res.of(ident.id) {
            Res::Local(b) => Some(*b),
            _ => None,
        }
    }

    fn param_bindings(&self, params: &[Ident]) -> Vec<BindingId> {
        params
            .iter()
            .map(|p| self.binding_of(p).unwrap_or(BindingId::MAX))
            .collect()
    }

    // ---------------------------------------------------------------- functions

    fn push_fn(&mut self, name: Option<String>, arity: usize, upvals: Vec<BindingId>, span: Span) {
        let arity = arity as u32;
        // Room for a small function's code: most are, and growing from empty reallocates
        // both lists several times.
        self.f.push(FnState {
            code: Vec::with_capacity(CODE_CAPACITY),
            const_map: HashMap::new(),
            target_map: HashMap::new(),
            positions: Vec::with_capacity(CODE_CAPACITY),
            consts: Vec::new(),
            targets: Vec::new(),
            natives: Vec::new(),
            arity,
            plain_next: arity,
            plain_max: arity,
            cell_next: 0,
            cell_max: 0,
            slots: BTreeMap::new(),
            upvals,
            depth: 0,
            loops: Vec::new(),
            tries: 0,
            plain_names: Vec::new(),
            cell_names: Vec::new(),
            name,
            span,
        });
    }

    fn pop_fn(&mut self, proto: usize) {
        let f = self.f.pop().expect("pushed");
        let plain = f.plain_max;
        let total = plain + f.cell_max;
        let mut ok = true;
        if total > u32::from(u16::MAX) || f.arity > u32::from(u16::MAX) {
            self.error(f.span.clone(), "function has too many local variables");
            ok = false;
        }
        if f.upvals.len() > usize::from(u16::MAX) {
            self.error(f.span.clone(), "function captures too many variables");
            ok = false;
        }
        if f.code.len() > u32::MAX as usize / 2 {
            self.error(f.span.clone(), "function is too large");
            ok = false;
        }
        let offset = if ok { plain as u16 } else { 0 };
        // The code and position lists started with room for `CODE_CAPACITY`; the module
        // keeps them, so they give back what the function did not use.
        let mut code = f.code;
        code.shrink_to_fit();
        let mut positions = f.positions;
        positions.shrink_to_fit();
        for instr in &mut code {
            match instr {
                Instr::NewCell { slot }
                | Instr::GetCell { slot }
                | Instr::SetCell { slot }
                | Instr::CaptureLocal { slot } => *slot = slot.saturating_add(offset),
                _ => {}
            }
        }
        let mut local_names = slot_names(f.plain_names, plain as usize);
        local_names.extend(slot_names(f.cell_names, f.cell_max as usize));
        let file = self.unit.file.to_string();
        self.protos[proto] = Some(ProtoFn {
            code: FunctionCode {
                arity: f.arity as u16,
                locals: total.min(u32::from(u16::MAX)) as u16,
                upvals: f.upvals.len().min(usize::from(u16::MAX)) as u16,
                cells: (plain..total.min(u32::from(u16::MAX)))
                    .map(|s| s as u16)
                    .collect(),
                code,
                consts: f.consts,
                refs: Vec::new(),
                natives: f.natives,
            },
            targets: f.targets,
            debug: FunctionDebug {
                name: f.name,
                file,
                positions,
                local_names,
            },
        });
    }

    fn reserve(&mut self) -> usize {
        self.protos.push(None);
        self.protos.len() - 1
    }

    /// Compiles a function whose parameters are `params` (bindings) and body `body`.
    fn function(
        &mut self,
        proto: usize,
        name: Option<String>,
        params: &[BindingId],
        upvals: Vec<BindingId>,
        body: &Block,
        span: Span,
    ) {
        self.push_fn(name, params.len(), upvals, span.clone());
        for (i, &b) in params.iter().enumerate() {
            let Some(info) = self.unit.res.bindings.get(b as usize) else {
                continue;
            };
            let (captured, pname) = (info.captured, info.name.clone());
            let f = self.cur();
            add_name(&mut f.plain_names, i as u32, &pname);
            if captured {
                let c = self.alloc_cell(&pname);
                let (slot, cell) = (slot16(i as u32), slot16(c));
                self.emit(Instr::GetLocal { slot }, &span);
                self.emit(Instr::NewCell { slot: cell }, &span);
                self.cur().slots.insert(b, Slot::Cell(c));
            } else {
                self.cur().slots.insert(b, Slot::Plain(i as u32));
            }
        }
        self.block(body, true);
        let end = body.span.end.saturating_sub(1)..body.span.end;
        self.emit(Instr::Return {}, &end);
        self.pop_fn(proto);
    }

    fn entry(&mut self, proto: usize) {
        let prog = self.unit.prog;
        let span = 0..0;
        self.push_fn(Some("<main>".into()), 0, Vec::new(), span.clone());
        let stmts: Vec<&Stmt> = prog
            .stmts
            .iter()
            .filter(|s| !matches!(s.kind, StmtKind::Fn(_) | StmtKind::Const(..)))
            .collect();
        self.stmts(&stmts, true, &span);
        let end = self.unit.source.len()..self.unit.source.len();
        self.emit(Instr::Return {}, &end);
        self.pop_fn(proto);
    }

    /// Creates a closure over `upvals` of the function `proto` in the current function.
    fn make_closure(&mut self, proto: usize, upvals: &[BindingId], span: &Span) {
        for &b in upvals {
            let f = self.cur_ref();
            let instr = if let Some(&slot) = f.slots.get(&b) {
                match slot {
                    Slot::Cell(c) => Instr::CaptureLocal { slot: slot16(c) },
                    Slot::Plain(_) => {
                        self.internal(span, "captured variable is not in a cell");
                        Instr::Nil {}
                    }
                }
            } else if let Some(i) = f.upvals.iter().position(|&u| u == b) {
                Instr::CaptureUpval { index: i as u16 }
            } else {
                self.internal(span, "captured variable not found");
                Instr::Nil {}
            };
            self.emit(instr, span);
        }
        let func = self.func_ref(proto);
        let captures = u16::try_from(upvals.len()).unwrap_or(u16::MAX);
        self.emit(Instr::Closure { func, captures }, span);
    }

    fn closure_of(&mut self, decl: &FnDecl, name: Option<String>) {
        let proto = self.reserve();
        let upvals = self
            .unit
            .res
            .upvals
            .get(&decl.id)
            .cloned()
            .unwrap_or_default();
        let params = self.param_bindings(&decl.params);
        self.function(
            proto,
            name,
            &params,
            upvals.clone(),
            &decl.body,
            decl.span.clone(),
        );
        let kw = decl.span.start..decl.span.start + 2;
        self.make_closure(proto, &upvals, &kw);
    }

    // ---------------------------------------------------------------- statements

    fn block(&mut self, b: &Block, want: bool) {
        let stmts: Vec<&Stmt> = b.stmts.iter().collect();
        let end = b.span.end.saturating_sub(1)..b.span.end;
        self.stmts(&stmts, want, &end);
    }

    fn stmts(&mut self, stmts: &[&Stmt], want: bool, end: &Span) {
        let saved = self.begin_scope();
        let mut produced = false;
        for (i, s) in stmts.iter().enumerate() {
            if want && i + 1 == stmts.len() {
                if let StmtKind::Expr(e) = &s.kind {
                    self.expr(e);
                    produced = true;
                    continue;
                }
            }
            self.stmt(s);
        }
        if want && !produced {
            self.emit(Instr::Nil {}, end);
        }
        self.end_scope(saved);
    }

    fn stmt(&mut self, s: &Stmt) {
        let span = &s.span;
        match &s.kind {
            StmtKind::Let(name, value) => {
                self.expr(value);
                match self.binding_of(name) {
                    Some(b) => self.declare_store(b, &name.span),
                    None => {
                        self.emit(Instr::Pop {}, span);
                    }
                }
            }
            StmtKind::Const(..) => {}
            StmtKind::Fn(decl) => {
                let b = decl.name.as_ref().and_then(|n| self.binding_of(n));
                let name = decl.name.as_ref().map(|n| n.name.clone());
                let Some(b) = b else {
                    self.closure_of(decl, name);
                    self.emit(Instr::Pop {}, span);
                    return;
                };
                match self.declare(b) {
                    Slot::Cell(c) => {
                        // The closure may capture itself: create the cell first.
                        let slot = slot16(c);
                        self.emit(Instr::Nil {}, span);
                        self.emit(Instr::NewCell { slot }, span);
                        self.closure_of(decl, name);
                        self.emit(Instr::SetCell { slot }, span);
                    }
                    Slot::Plain(s) => {
                        let slot = slot16(s);
                        self.closure_of(decl, name);
                        self.emit(Instr::SetLocal { slot }, span);
                    }
                }
            }
            StmtKind::Assign {
                target,
                op,
                op_span,
                value,
            } => self.assign(target, *op, op_span, value),
            StmtKind::Expr(e) => match &e.kind {
                // Value discarded: compile without producing it.
                ExprKind::If { cond, then, els } => self.if_stmt(cond, then, els.as_deref()),
                ExprKind::Block(b) => self.block(b, false),
                _ => {
                    self.expr(e);
                    self.emit(Instr::Pop {}, span);
                }
            },
            StmtKind::While { cond, body } => {
                let start = self.here();
                let exits = self.cond_jump(cond);
                let d = self.depth();
                self.cur().loops.push(LoopCtx {
                    break_depth: d,
                    continue_depth: d,
                    continue_target: start,
                    breaks: Vec::new(),
                    tries: 0,
                });
                let tries = self.cur_ref().tries;
                if let Some(l) = self.cur().loops.last_mut() {
                    l.tries = tries;
                }
                self.block(body, false);
                self.emit(
                    Instr::Jump {
                        target: start as u32,
                    },
                    span,
                );
                let lp = self.cur().loops.pop().expect("pushed");
                for j in exits.into_iter().chain(lp.breaks) {
                    self.patch_here(j);
                }
                self.set_depth(d);
            }
            StmtKind::For {
                first,
                second,
                iter,
                body,
            } => {
                let d = self.depth();
                self.expr(iter);
                self.emit(Instr::IterStart {}, &iter.span);
                let top = self.here();
                let exit = if second.is_some() {
                    self.emit(Instr::IterNext2 { target: 0 }, &first.span)
                } else {
                    self.emit(Instr::IterNext { target: 0 }, &first.span)
                };
                let saved = self.begin_scope();
                if let Some(second) = second {
                    match self.binding_of(second) {
                        Some(b) => self.declare_store(b, &second.span),
                        None => {
                            self.emit(Instr::Pop {}, &second.span);
                        }
                    }
                }
                match self.binding_of(first) {
                    Some(b) => self.declare_store(b, &first.span),
                    None => {
                        self.emit(Instr::Pop {}, &first.span);
                    }
                }
                let tries = self.cur_ref().tries;
                self.cur().loops.push(LoopCtx {
                    break_depth: d,
                    continue_depth: d + 2,
                    continue_target: top,
                    breaks: Vec::new(),
                    tries,
                });
                self.block(body, false);
                self.emit(Instr::Jump { target: top as u32 }, span);
                self.end_scope(saved);
                let lp = self.cur().loops.pop().expect("pushed");
                self.patch_here(exit);
                for j in lp.breaks {
                    self.patch_here(j);
                }
                self.set_depth(d);
            }
            StmtKind::Break | StmtKind::Continue => {
                let is_break = matches!(s.kind, StmtKind::Break);
                let before = self.depth();
                let f = self.cur_ref();
                let Some(lp) = f.loops.last() else {
                    // Reported by the resolver.
                    return;
                };
                let (target_depth, leave_tries, cont) = (
                    if is_break {
                        lp.break_depth
                    } else {
                        lp.continue_depth
                    },
                    f.tries - lp.tries,
                    lp.continue_target,
                );
                for _ in target_depth..before {
                    self.emit(Instr::Pop {}, span);
                }
                for _ in 0..leave_tries {
                    self.emit(Instr::TryEnd {}, span);
                }
                if is_break {
                    let j = self.emit(Instr::Jump { target: 0 }, span);
                    if let Some(lp) = self.cur().loops.last_mut() {
                        lp.breaks.push(j);
                    }
                } else {
                    self.emit(
                        Instr::Jump {
                            target: cont as u32,
                        },
                        span,
                    );
                }
                self.set_depth(before);
            }
            StmtKind::Return(value) => {
                let before = self.depth();
                match value {
                    Some(v) => self.expr(v),
                    None => {
                        self.emit(Instr::Nil {}, span);
                    }
                }
                self.emit(Instr::Return {}, span);
                self.set_depth(before);
            }
            StmtKind::Throw(e) => {
                let before = self.depth();
                self.expr(e);
                self.emit(Instr::Throw {}, span);
                self.set_depth(before);
            }
        }
    }

    /// An `if` whose value is discarded: no `Nil` for a missing branch, no `Pop`.
    fn if_stmt(&mut self, cond: &Expr, then: &Block, els: Option<&Expr>) {
        let exits = self.cond_jump(cond);
        self.block(then, false);
        match els {
            None => {
                for j in exits {
                    self.patch_here(j);
                }
            }
            Some(els) => {
                let end = self.emit(Instr::Jump { target: 0 }, &then.span);
                for j in exits {
                    self.patch_here(j);
                }
                match &els.kind {
                    ExprKind::If { cond, then, els } => self.if_stmt(cond, then, els.as_deref()),
                    ExprKind::Block(b) => self.block(b, false),
                    _ => {
                        self.expr(els);
                        self.emit(Instr::Pop {}, &els.span);
                    }
                }
                self.patch_here(end);
            }
        }
    }

    fn assign(&mut self, target: &Expr, op: AssignOp, op_span: &Span, value: &Expr) {
        let arith = match op {
            AssignOp::Set => None,
            AssignOp::Add => Some(BinOp::Add),
            AssignOp::Sub => Some(BinOp::Sub),
        };
        match &target.kind {
            ExprKind::Ident(ident) => {
                let Some(b) = self.binding_of(ident) else {
                    return;
                };
                match arith {
                    None => self.expr(value),
                    Some(aop) => {
                        self.load(b, &ident.span);
                        self.arith_rhs(aop, value, op_span);
                    }
                }
                self.store(b, &ident.span);
            }
            ExprKind::Index {
                target: t,
                index,
                bracket_span,
            } => match arith {
                None => {
                    self.expr(t);
                    self.expr(index);
                    self.expr(value);
                    self.emit(Instr::SetIndex {}, op_span);
                }
                Some(aop) => {
                    let saved = self.begin_scope();
                    let tc = self.alloc_plain("<target>");
                    let ti = self.alloc_plain("<index>");
                    let (tc, ti) = (slot16(tc), slot16(ti));
                    self.expr(t);
                    self.emit(Instr::SetLocal { slot: tc }, bracket_span);
                    self.expr(index);
                    self.emit(Instr::SetLocal { slot: ti }, bracket_span);
                    self.emit(Instr::GetLocal { slot: tc }, bracket_span);
                    self.emit(Instr::GetLocal { slot: ti }, bracket_span);
                    self.emit(Instr::GetLocal { slot: tc }, bracket_span);
                    self.emit(Instr::GetLocal { slot: ti }, bracket_span);
                    self.emit(Instr::GetIndex {}, bracket_span);
                    self.arith_rhs(aop, value, op_span);
                    self.emit(Instr::SetIndex {}, op_span);
                    self.end_scope(saved);
                }
            },
            ExprKind::Field {
                target: t,
                name,
                name_span,
            } => {
                let key = self.const_index(Const::Str(name.clone()));
                match arith {
                    None => {
                        self.expr(t);
                        self.emit(Instr::Const { index: key }, name_span);
                        self.expr(value);
                        self.emit(Instr::SetIndex {}, op_span);
                    }
                    Some(aop) => {
                        let saved = self.begin_scope();
                        let tc = self.alloc_plain("<target>");
                        let tc = slot16(tc);
                        self.expr(t);
                        self.emit(Instr::SetLocal { slot: tc }, name_span);
                        self.emit(Instr::GetLocal { slot: tc }, name_span);
                        self.emit(Instr::Const { index: key }, name_span);
                        self.emit(Instr::GetLocal { slot: tc }, name_span);
                        self.emit(Instr::Const { index: key }, name_span);
                        self.emit(Instr::GetIndex {}, name_span);
                        self.arith_rhs(aop, value, op_span);
                        self.emit(Instr::SetIndex {}, op_span);
                        self.end_scope(saved);
                    }
                }
            }
            _ => {} // reported by the parser
        }
    }

    /// With the left operand on the stack, applies `+ rhs` or `- rhs`.
    fn arith_rhs(&mut self, op: BinOp, rhs: &Expr, op_span: &Span) {
        if let ExprKind::Int(v) = rhs.kind {
            let imm = if op == BinOp::Add {
                small_int(v)
            } else {
                v.checked_neg().and_then(small_int)
            };
            if let Some(value) = imm {
                self.emit(Instr::AddInt { value }, op_span);
                return;
            }
        }
        self.expr(rhs);
        let instr = if op == BinOp::Add {
            Instr::Add {}
        } else {
            Instr::Sub {}
        };
        self.emit(instr, op_span);
    }

    /// Evaluates `cond` and jumps when it is falsy; returns the jumps to patch.
    fn cond_jump(&mut self, cond: &Expr) -> Vec<usize> {
        match &cond.kind {
            // `while true { }`: no test at all.
            ExprKind::Bool(true) => return Vec::new(),
            ExprKind::Binary(b) => {
                let Binary {
                    op,
                    op_span,
                    lhs,
                    rhs,
                } = &**b;
                let fused = match op {
                    BinOp::Lt => Some(Instr::JumpIfNotLt { target: 0 }),
                    BinOp::Le => Some(Instr::JumpIfNotLe { target: 0 }),
                    BinOp::Gt => Some(Instr::JumpIfNotGt { target: 0 }),
                    BinOp::Ge => Some(Instr::JumpIfNotGe { target: 0 }),
                    BinOp::Eq => Some(Instr::JumpIfNotEq { target: 0 }),
                    BinOp::Ne => Some(Instr::JumpIfNotNe { target: 0 }),
                    BinOp::And => {
                        let mut j = self.cond_jump(lhs);
                        j.extend(self.cond_jump(rhs));
                        return j;
                    }
                    _ => None,
                };
                if let Some(instr) = fused {
                    self.expr(lhs);
                    self.expr(rhs);
                    return vec![self.emit(instr, op_span)];
                }
            }
            ExprKind::Unary {
                op: UnOp::Not,
                op_span,
                operand,
            } => {
                self.expr(operand);
                return vec![self.emit(Instr::JumpIfTrue { target: 0 }, op_span)];
            }
            _ => {}
        }
        self.expr(cond);
        vec![self.emit(Instr::JumpIfFalse { target: 0 }, &cond.span)]
    }

    // ---------------------------------------------------------------- expressions

    fn int(&mut self, v: i64, span: &Span) {
        match small_int(v) {
            Some(value) => self.emit(Instr::Int { value }, span),
            None => {
                let index = self.const_index(Const::Int(v));
                self.emit(Instr::Const { index }, span)
            }
        };
    }

    fn konst(&mut self, c: Const, span: &Span) {
        let index = self.const_index(c);
        self.emit(Instr::Const { index }, span);
    }

    fn const_value(&mut self, v: &ConstValue, span: &Span) {
        match v {
            ConstValue::Nil => {
                self.emit(Instr::Nil {}, span);
            }
            ConstValue::Bool(true) => {
                self.emit(Instr::True {}, span);
            }
            ConstValue::Bool(false) => {
                self.emit(Instr::False {}, span);
            }
            ConstValue::Int(i) => self.int(*i, span),
            ConstValue::Float(f) => self.konst(Const::Float(*f), span),
            ConstValue::Str(s) => self.konst(Const::Str(s.clone()), span),
            ConstValue::Bytes(b) => self.konst(Const::Bytes(b.clone()), span),
            ConstValue::List(items) => {
                for item in items {
                    self.const_value(item, span);
                }
                self.emit(
                    Instr::List {
                        len: items.len() as u32,
                    },
                    span,
                );
            }
            ConstValue::Map(entries) => {
                for (k, v) in entries {
                    self.const_value(k, span);
                    self.const_value(v, span);
                }
                self.emit(
                    Instr::Map {
                        len: entries.len() as u32,
                    },
                    span,
                );
            }
            ConstValue::Range(a, b) => {
                self.int(*a, span);
                self.int(*b, span);
                self.emit(Instr::Range {}, span);
            }
        }
    }

    fn expr(&mut self, e: &Expr) {
        let span = &e.span;
        match &e.kind {
            ExprKind::Nil | ExprKind::Error => {
                self.emit(Instr::Nil {}, span);
            }
            ExprKind::Bool(true) => {
                self.emit(Instr::True {}, span);
            }
            ExprKind::Bool(false) => {
                self.emit(Instr::False {}, span);
            }
            ExprKind::Int(v) => self.int(*v, span),
            ExprKind::Float(v) => self.konst(Const::Float(*v), span),
            ExprKind::Str(s) => self.konst(Const::Str(s.clone()), span),
            ExprKind::Bytes(b) => self.konst(Const::Bytes(b.clone()), span),
            ExprKind::Ident(ident) => match self.unit.res.of(ident.id).clone() {
                Res::Local(b) => self.load(b, span),
                Res::Const(i) => match self.globals.consts[i].value.clone() {
                    Some(v) => self.const_value(&v, span),
                    None => {
                        self.emit(Instr::Nil {}, span);
                    }
                },
                Res::TopFn(i) => {
                    let func = self.func_ref(i);
                    self.emit(Instr::Function { func }, span);
                }
                Res::Native(_) | Res::Error => {
                    self.emit(Instr::Nil {}, span);
                }
            },
            ExprKind::List(items) => {
                for item in items {
                    self.expr(item);
                }
                self.emit(
                    Instr::List {
                        len: items.len() as u32,
                    },
                    span,
                );
            }
            ExprKind::Map(entries) => {
                for (k, v) in entries {
                    self.expr(k);
                    self.expr(v);
                }
                self.emit(
                    Instr::Map {
                        len: entries.len() as u32,
                    },
                    span,
                );
            }
            ExprKind::Unary {
                op,
                op_span,
                operand,
            } => {
                self.expr(operand);
                let instr = match op {
                    UnOp::Neg => Instr::Neg {},
                    UnOp::Not => Instr::Not {},
                };
                self.emit(instr, op_span);
            }
            ExprKind::Binary(b) => self.binary(b.op, &b.op_span, &b.lhs, &b.rhs),
            ExprKind::Call {
                callee,
                args,
                paren_span,
            } => self.call(callee, args, paren_span),
            ExprKind::Index {
                target,
                index,
                bracket_span,
            } => {
                self.expr(target);
                self.expr(index);
                self.emit(Instr::GetIndex {}, bracket_span);
            }
            ExprKind::Field {
                target,
                name,
                name_span,
            } => {
                self.expr(target);
                self.konst(Const::Str(name.clone()), name_span);
                self.emit(Instr::GetIndex {}, name_span);
            }
            ExprKind::Block(b) => self.block(b, true),
            ExprKind::If { cond, then, els } => {
                let d = self.depth();
                let exits = self.cond_jump(cond);
                self.block(then, true);
                let end = self.emit(Instr::Jump { target: 0 }, &then.span);
                for j in exits {
                    self.patch_here(j);
                }
                self.set_depth(d);
                match els {
                    Some(els) => self.expr(els),
                    None => {
                        self.emit(Instr::Nil {}, span);
                    }
                }
                self.patch_here(end);
            }
            ExprKind::Fn(decl) => self.closure_of(decl, None),
            ExprKind::Spawn { body, id } => {
                let kw = span.start..span.start + 5;
                let line = self.pos(span).0;
                let proto = self.reserve();
                let upvals = self.unit.res.upvals.get(id).cloned().unwrap_or_default();
                self.function(
                    proto,
                    Some(format!("spawn@{line}")),
                    &[],
                    upvals.clone(),
                    body,
                    span.clone(),
                );
                self.make_closure(proto, &upvals, &kw);
                self.emit(Instr::Spawn {}, &kw);
            }
            ExprKind::Await { kw_span, operand } => {
                self.expr(operand);
                self.emit(Instr::Await {}, kw_span);
            }
            ExprKind::Remote(remote) => self.remote(remote),
            ExprKind::Try(t) => {
                let TryCatch { body, var, handler } = &**t;
                let d = self.depth();
                let tb = self.emit(Instr::TryBegin { handler: 0 }, span);
                self.cur().tries += 1;
                self.block(body, true);
                self.cur().tries -= 1;
                let body_end = body.span.end.saturating_sub(1)..body.span.end;
                self.emit(Instr::TryEnd {}, &body_end);
                let end = self.emit(Instr::Jump { target: 0 }, &body_end);
                self.patch_here(tb);
                self.set_depth(d + 1);
                let saved = self.begin_scope();
                match var
                    .as_ref()
                    .and_then(|v| self.binding_of(v).map(|b| (b, v)))
                {
                    Some((b, v)) => self.declare_store(b, &v.span),
                    None => {
                        self.emit(Instr::Pop {}, &handler.span);
                    }
                }
                self.block(handler, true);
                self.end_scope(saved);
                self.patch_here(end);
            }
        }
    }

    fn binary(&mut self, op: BinOp, op_span: &Span, lhs: &Expr, rhs: &Expr) {
        match op {
            BinOp::And | BinOp::Or => {
                self.expr(lhs);
                let j = if op == BinOp::And {
                    self.emit(Instr::JumpIfFalseOrPop { target: 0 }, op_span)
                } else {
                    self.emit(Instr::JumpIfTrueOrPop { target: 0 }, op_span)
                };
                self.expr(rhs);
                self.patch_here(j);
            }
            BinOp::Add | BinOp::Sub => {
                self.expr(lhs);
                self.arith_rhs(op, rhs, op_span);
            }
            _ => {
                self.expr(lhs);
                self.expr(rhs);
                let instr = match op {
                    BinOp::Eq => Instr::Eq {},
                    BinOp::Ne => Instr::Ne {},
                    BinOp::Lt => Instr::Lt {},
                    BinOp::Le => Instr::Le {},
                    BinOp::Gt => Instr::Gt {},
                    BinOp::Ge => Instr::Ge {},
                    BinOp::Range => Instr::Range {},
                    BinOp::Mul => Instr::Mul {},
                    BinOp::Div => Instr::Div {},
                    _ => Instr::Rem {},
                };
                self.emit(instr, op_span);
            }
        }
    }

    fn call(&mut self, callee: &Expr, args: &[Expr], paren_span: &Span) {
        let Ok(argc) = u8::try_from(args.len()) else {
            self.error(paren_span.clone(), "a call may pass at most 255 arguments");
            self.emit(Instr::Nil {}, paren_span);
            return;
        };
        let res = match &callee.kind {
            ExprKind::Ident(ident) => self.unit.res.of(ident.id).clone(),
            _ => Res::Error,
        };
        match res {
            Res::TopFn(i) => {
                for a in args {
                    self.expr(a);
                }
                let func = self.func_ref(i);
                self.emit(Instr::CallFunction { func, argc }, paren_span);
            }
            Res::Native(name) => {
                for a in args {
                    self.expr(a);
                }
                let native = self.native_ref(&name, paren_span);
                self.emit(Instr::CallNative { native, argc }, paren_span);
            }
            _ => {
                self.expr(callee);
                for a in args {
                    self.expr(a);
                }
                self.emit(Instr::Call { argc }, paren_span);
            }
        }
    }

    fn remote(&mut self, remote: &Remote) {
        let kw = &remote.kw_span;
        let d = self.depth();
        self.expr(&remote.target);
        let params = self
            .unit
            .res
            .remote_params
            .get(&remote.id)
            .cloned()
            .unwrap_or_default();
        let Ok(argc) = u8::try_from(params.len()) else {
            self.error(
                kw.clone(),
                "a remote call may capture at most 255 variables",
            );
            return;
        };
        for &(cap, _) in &params {
            let cap_span = remote
                .captures
                .iter()
                .find(|c| c.id == cap)
                .map_or(kw.clone(), |c| c.span.clone());
            match self.unit.res.of(cap).clone() {
                Res::Local(b) => self.load(b, &cap_span),
                _ => {
                    self.emit(Instr::Nil {}, &cap_span);
                }
            }
        }
        let line = self.pos(kw).0;
        let proto = self.reserve();
        let param_bindings: Vec<BindingId> = params.iter().map(|&(_, b)| b).collect();
        self.function(
            proto,
            Some(format!("remote@{line}")),
            &param_bindings,
            Vec::new(),
            &remote.body,
            remote.body.span.clone(),
        );
        let func = self.func_ref(proto);
        match &remote.fallback {
            None => {
                self.emit(Instr::Remote { func, argc }, kw);
            }
            Some(fallback) => {
                let re = self.emit(
                    Instr::RemoteElse {
                        func,
                        argc,
                        fallback: 0,
                    },
                    kw,
                );
                let end = self.emit(Instr::Jump { target: 0 }, kw);
                self.patch_here(re);
                self.set_depth(d);
                self.block(fallback, true);
                self.patch_here(end);
            }
        }
    }
}
