//! Name resolution: scopes, captures, remote capture checks, constants.
//!
//! The resolver walks the AST once per unit (the user's script, the prelude) and records,
//! for every identifier occurrence, what it names ([`Res`]); for every local variable
//! whether a closure or spawn body captures it (then it lives in a cell); for every closure
//! its upvalues in order; for every remote body the capture list entries it keeps.
//!
//! Scoping rules implemented here (LANGUAGE.md §4, §5, §8):
//! - Block scopes with shadowing; `let x = e` sees the outer `x` in `e`.
//! - A nested `fn name` is visible in its own body (recursion) and after its declaration.
//! - Top-level functions are resolved in a fresh function stack: they see other top-level
//!   functions, constants, builtins and natives only; naming a top-level `let` is an error
//!   asking to pass it as an argument.
//! - A remote body is a function boundary that nothing crosses: its captures become its
//!   parameters; any other enclosing local it names is an error at the use.
//! - Lookup order for globals: constants, the unit's top-level functions, host natives,
//!   prelude functions, builtins. (A user function therefore shadows a builtin or prelude
//!   function of the same name; the prelude itself only sees the prelude and builtins.)
//!
//! Invariants: results are keyed by [`NodeId`] in `Vec`s and `BTreeMap`s (deterministic);
//! each upvalue list is in first-use order, which the code generator follows exactly.

use crate::ast::*;
use crate::consts::{ConstValue, EResult, Evaluator, Reported, MAX_CONST_CHAIN};
use crate::{CompileOptions, Diagnostic};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Index of a local variable binding within one unit.
pub type BindingId = u32;

/// Which program a resolution belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    User,
    Prelude,
}

/// What an identifier names.
#[derive(Clone, Debug, PartialEq)]
pub enum Res {
    /// A local variable (of this function or, through upvalues, an enclosing one).
    Local(BindingId),
    /// A compile-time constant (index into [`Globals::consts`]).
    Const(usize),
    /// A top-level function (index into [`Globals::fns`]).
    TopFn(usize),
    /// A builtin or host native, called with `CallNative`.
    Native(String),
    /// Unresolvable (already reported).
    Error,
}

/// A top-level function of either unit.
#[derive(Clone, Debug)]
pub struct TopFnInfo {
    pub name: String,
    pub unit: Unit,
    /// Index of its statement in the unit's top-level statement list.
    pub stmt: usize,
}

/// A top-level constant.
#[derive(Clone, Debug)]
pub struct ConstInfo {
    pub name: String,
    /// `None` if evaluation failed (reported).
    pub value: Option<ConstValue>,
}

/// Everything visible at the top level of both units.
#[derive(Debug)]
pub struct Globals {
    /// User functions in source order, then prelude functions.
    pub fns: Vec<TopFnInfo>,
    pub n_user_fns: usize,
    user_fns: BTreeMap<String, usize>,
    prelude_fns: BTreeMap<String, usize>,
    pub consts: Vec<ConstInfo>,
    const_names: BTreeMap<String, usize>,
    natives: BTreeSet<String>,
    builtins: BTreeSet<&'static str>,
    top_lets: BTreeSet<String>,
}

#[derive(Clone)]
enum ConstState {
    Pending,
    InProgress,
    Done(ConstValue),
    Failed,
}

struct ConstBuilder<'a> {
    decls: Vec<(&'a Ident, &'a Expr)>,
    names: &'a BTreeMap<String, usize>,
    state: Vec<ConstState>,
    chain: u32,
    diags: Vec<Diagnostic>,
    other_globals: &'a dyn Fn(&str) -> bool,
}

impl ConstBuilder<'_> {
    fn eval(&mut self, idx: usize) -> EResult {
        match &self.state[idx] {
            ConstState::Done(v) => return Ok(v.clone()),
            ConstState::Failed => return Err(Reported),
            ConstState::InProgress => return Err(Reported),
            ConstState::Pending => {}
        }
        self.state[idx] = ConstState::InProgress;
        let expr = self.decls[idx].1;
        let mut local = Vec::new();
        let r = {
            let mut ev = Evaluator { diags: &mut local };
            ev.eval(expr, &mut |id: &Ident| self.reference(id))
        };
        self.diags.extend(local);
        self.state[idx] = match &r {
            Ok(v) => ConstState::Done(v.clone()),
            Err(Reported) => ConstState::Failed,
        };
        r
    }

    fn reference(&mut self, id: &Ident) -> EResult {
        let Some(&j) = self.names.get(&id.name) else {
            let msg = if (self.other_globals)(&id.name) {
                format!(
                    "`{}` is not a constant; a constant may only use literals, other constants and operators",
                    id.name
                )
            } else {
                format!("cannot find constant `{}`", id.name)
            };
            self.diags.push(Diagnostic::error(msg, id.span.clone()));
            return Err(Reported);
        };
        if matches!(self.state[j], ConstState::InProgress) {
            self.diags.push(
                Diagnostic::error(
                    format!("constant `{}` depends on itself", id.name),
                    id.span.clone(),
                )
                .with_label(self.decls[j].0.span.clone(), "defined here")
                .with_note("constants may not form a cycle"),
            );
            return Err(Reported);
        }
        self.chain += 1;
        if self.chain > MAX_CONST_CHAIN {
            self.chain -= 1;
            self.diags.push(Diagnostic::error(
                format!("constant `{}` is defined through too many other constants (limit {MAX_CONST_CHAIN})", id.name),
                id.span.clone(),
            ));
            return Err(Reported);
        }
        let r = self.eval(j);
        self.chain -= 1;
        r
    }
}

impl Globals {
    /// Collects top-level functions, constants and `let` names; evaluates constants.
    pub fn build(
        prog: &Program,
        prelude: &Program,
        options: &CompileOptions,
        diags: &mut Vec<Diagnostic>,
    ) -> Globals {
        let mut fns = Vec::new();
        let mut user_fns = BTreeMap::new();
        let mut fn_spans: BTreeMap<String, Span> = BTreeMap::new();
        let mut const_names = BTreeMap::new();
        let mut const_decls = Vec::new();
        let mut top_lets = BTreeSet::new();
        for (i, stmt) in prog.stmts.iter().enumerate() {
            match &stmt.kind {
                StmtKind::Fn(decl) => {
                    let Some(name) = &decl.name else { continue };
                    if let Some(prev) = fn_spans.get(&name.name) {
                        diags.push(
                            Diagnostic::error(
                                format!("function `{}` is defined twice", name.name),
                                name.span.clone(),
                            )
                            .with_label(prev.clone(), "first defined here"),
                        );
                        continue;
                    }
                    fn_spans.insert(name.name.clone(), name.span.clone());
                    user_fns.insert(name.name.clone(), fns.len());
                    fns.push(TopFnInfo {
                        name: name.name.clone(),
                        unit: Unit::User,
                        stmt: i,
                    });
                }
                StmtKind::Let(name, _) => {
                    top_lets.insert(name.name.clone());
                }
                _ => {}
            }
        }
        for stmt in &prog.stmts {
            if let StmtKind::Const(name, value) = &stmt.kind {
                if let Some(prev) = fn_spans.get(&name.name) {
                    diags.push(
                        Diagnostic::error(
                            format!(
                                "`{}` is already defined as a function or constant",
                                name.name
                            ),
                            name.span.clone(),
                        )
                        .with_label(prev.clone(), "first defined here"),
                    );
                    continue;
                }
                fn_spans.insert(name.name.clone(), name.span.clone());
                const_names.insert(name.name.clone(), const_decls.len());
                const_decls.push((name, value));
            }
        }
        let n_user_fns = fns.len();
        let mut prelude_fns = BTreeMap::new();
        for (i, stmt) in prelude.stmts.iter().enumerate() {
            if let StmtKind::Fn(FnDecl {
                name: Some(name), ..
            }) = &stmt.kind
            {
                prelude_fns.insert(name.name.clone(), fns.len());
                fns.push(TopFnInfo {
                    name: name.name.clone(),
                    unit: Unit::Prelude,
                    stmt: i,
                });
            }
        }
        let natives: BTreeSet<String> = options.natives.iter().cloned().collect();
        let builtins: BTreeSet<&'static str> = skiff_vm::native::BUILTIN_NAMES
            .iter()
            .copied()
            .filter(|n| !prelude_fns.contains_key(*n))
            .collect();

        let other = |name: &str| {
            user_fns.contains_key(name)
                || natives.contains(name)
                || prelude_fns.contains_key(name)
                || builtins.contains(name)
                || top_lets.contains(name)
        };
        let mut cb = ConstBuilder {
            state: vec![ConstState::Pending; const_decls.len()],
            decls: const_decls,
            names: &const_names,
            chain: 0,
            diags: Vec::new(),
            other_globals: &other,
        };
        let mut consts = Vec::new();
        for i in 0..cb.decls.len() {
            let value = cb.eval(i).ok();
            consts.push(ConstInfo {
                name: cb.decls[i].0.name.clone(),
                value,
            });
        }
        diags.append(&mut cb.diags);
        Globals {
            fns,
            n_user_fns,
            user_fns,
            prelude_fns,
            consts,
            const_names,
            natives,
            builtins,
            top_lets,
        }
    }

    fn lookup(&self, unit: Unit, name: &str) -> Option<Res> {
        match unit {
            Unit::User => {
                if let Some(&i) = self.const_names.get(name) {
                    return Some(Res::Const(i));
                }
                if let Some(&i) = self.user_fns.get(name) {
                    return Some(Res::TopFn(i));
                }
                if self.natives.contains(name) {
                    return Some(Res::Native(name.to_string()));
                }
            }
            Unit::Prelude => {}
        }
        if let Some(&i) = self.prelude_fns.get(name) {
            return Some(Res::TopFn(i));
        }
        if self.builtins.contains(name) {
            return Some(Res::Native(name.to_string()));
        }
        None
    }

    /// Top-level user functions by name, for exports (sorted by name).
    pub fn user_fn_names(&self) -> impl Iterator<Item = (&str, usize)> {
        self.user_fns.iter().map(|(n, &i)| (n.as_str(), i))
    }
}

/// A local variable.
#[derive(Clone, Debug)]
pub struct BindingInfo {
    pub name: String,
    pub span: Span,
    /// Captured by a closure or spawn body: lives in a cell.
    pub captured: bool,
    pub used: bool,
}

/// The resolver's results for one unit.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Per [`NodeId`]: what the identifier names (declarations name their new binding).
    pub res: Vec<Option<Res>>,
    pub bindings: Vec<BindingInfo>,
    /// Per closure / spawn body: captured bindings in upvalue order.
    pub upvals: BTreeMap<NodeId, Vec<BindingId>>,
    /// Per remote body: kept captures as (capture identifier, parameter binding), in list order.
    pub remote_params: BTreeMap<NodeId, Vec<(NodeId, BindingId)>>,
}

impl Resolution {
    /// What identifier `id` resolved to.
    pub fn of(&self, id: NodeId) -> &Res {
        self.res
            .get(id as usize)
            .and_then(Option::as_ref)
            .unwrap_or(&Res::Error)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FnKind {
    Entry,
    TopLevel,
    Closure,
    Remote,
}

struct FnCtx {
    kind: FnKind,
    id: NodeId,
    /// Block scopes, innermost last; a later declaration of a name replaces the earlier one
    /// (shadowing). Only looked up, never iterated, so `HashMap` order cannot leak.
    scopes: Vec<HashMap<String, BindingId>>,
    upvals: Vec<BindingId>,
    loops: u32,
}

enum LookupErr {
    Undeclared,
    TopLevelLet,
    NotCaptured,
}

struct Resolver<'a> {
    globals: &'a Globals,
    unit: Unit,
    out: Resolution,
    fns: Vec<FnCtx>,
    diags: &'a mut Vec<Diagnostic>,
}

/// Resolves one unit.
pub fn resolve_program(
    prog: &Program,
    globals: &Globals,
    unit: Unit,
    diags: &mut Vec<Diagnostic>,
) -> Resolution {
    let mut r = Resolver {
        globals,
        unit,
        out: Resolution {
            res: vec![None; prog.node_count as usize],
            ..Resolution::default()
        },
        fns: Vec::new(),
        diags,
    };
    // Top-level functions, each in a fresh function stack.
    for stmt in &prog.stmts {
        if let StmtKind::Fn(decl) = &stmt.kind {
            r.fns.push(FnCtx {
                kind: FnKind::TopLevel,
                id: decl.id,
                scopes: vec![HashMap::new()],
                upvals: Vec::new(),
                loops: 0,
            });
            r.function_body(decl);
            r.fns.pop();
        }
    }
    // The entry: every other top-level statement.
    r.fns.push(FnCtx {
        kind: FnKind::Entry,
        id: NodeId::MAX,
        scopes: vec![HashMap::new()],
        upvals: Vec::new(),
        loops: 0,
    });
    for stmt in &prog.stmts {
        match &stmt.kind {
            StmtKind::Fn(_) | StmtKind::Const(..) => {}
            _ => r.stmt(stmt),
        }
    }
    r.fns.pop();
    r.out
}

impl Resolver<'_> {
    fn error(&mut self, span: Span, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(msg, span));
    }

    fn set(&mut self, id: NodeId, res: Res) {
        if let Some(slot) = self.out.res.get_mut(id as usize) {
            *slot = Some(res);
        }
    }

    fn cur(&mut self) -> &mut FnCtx {
        self.fns.last_mut().expect("inside a function")
    }

    /// Declares `ident` in the innermost scope and resolves the identifier to it.
    fn declare(&mut self, ident: &Ident) -> BindingId {
        let b = self.bind(ident);
        self.set(ident.id, Res::Local(b));
        b
    }

    /// A new binding named and placed like `ident`, in the innermost scope.
    fn bind(&mut self, ident: &Ident) -> BindingId {
        let b = self.out.bindings.len() as BindingId;
        self.out.bindings.push(BindingInfo {
            name: ident.name.clone(),
            span: ident.span.clone(),
            captured: false,
            used: false,
        });
        self.cur()
            .scopes
            .last_mut()
            .expect("a scope")
            .insert(ident.name.clone(), b);
        b
    }

    fn push_scope(&mut self) {
        self.cur().scopes.push(HashMap::new());
    }
    fn pop_scope(&mut self) {
        self.cur().scopes.pop();
    }

    fn lookup(&mut self, name: &str) -> Result<Res, LookupErr> {
        let n = self.fns.len();
        for i in (0..n).rev() {
            let found = self.fns[i]
                .scopes
                .iter()
                .rev()
                .find_map(|s| s.get(name).copied());
            if let Some(b) = found {
                if self.fns[i + 1..].iter().any(|f| f.kind == FnKind::Remote) {
                    return Err(LookupErr::NotCaptured);
                }
                self.out.bindings[b as usize].used = true;
                if i + 1 < n {
                    self.out.bindings[b as usize].captured = true;
                    for f in &mut self.fns[i + 1..] {
                        if !f.upvals.contains(&b) {
                            f.upvals.push(b);
                        }
                    }
                }
                return Ok(Res::Local(b));
            }
            if self.fns[i].kind == FnKind::TopLevel {
                break;
            }
        }
        if let Some(res) = self.globals.lookup(self.unit, name) {
            return Ok(res);
        }
        let in_top_fn = self.fns.iter().any(|f| f.kind == FnKind::TopLevel);
        if in_top_fn && self.unit == Unit::User && self.globals.top_lets.contains(name) {
            return Err(LookupErr::TopLevelLet);
        }
        Err(LookupErr::Undeclared)
    }

    fn report(&mut self, err: LookupErr, ident: &Ident, assigning: bool) {
        let name = &ident.name;
        let d = match err {
            LookupErr::Undeclared if assigning => Diagnostic::error(
                format!("cannot assign to undeclared variable `{name}`"),
                ident.span.clone(),
            )
            .with_note(format!("declare it first: `let {name} = ...`")),
            LookupErr::Undeclared => Diagnostic::error(
                format!("cannot find `{name}` in this scope"),
                ident.span.clone(),
            ),
            LookupErr::TopLevelLet => Diagnostic::error(
                format!("top-level function cannot use the top-level variable `{name}`"),
                ident.span.clone(),
            )
            .with_note(format!(
                "top-level functions are closed (they travel by hash); pass `{name}` as an argument"
            )),
            LookupErr::NotCaptured => Diagnostic::error(
                format!("`{name}` is used in a remote body but is not in its capture list"),
                ident.span.clone(),
            )
            .with_note(format!(
                "add it to the capture list: `remote(..) [.., {name}] {{ .. }}`"
            )),
        };
        self.diags.push(d);
    }

    /// A use of a name as a value.
    fn use_value(&mut self, ident: &Ident) {
        match self.lookup(&ident.name) {
            Ok(Res::Native(n)) => {
                self.error(
                    ident.span.clone(),
                    format!("builtin `{n}` cannot be used as a value; wrap it in a function: `fn(x) {{ {n}(x) }}`"),
                );
                self.set(ident.id, Res::Error);
            }
            Ok(res) => self.set(ident.id, res),
            Err(e) => {
                self.report(e, ident, false);
                self.set(ident.id, Res::Error);
            }
        }
    }

    fn function_body(&mut self, decl: &FnDecl) {
        let mut seen: Vec<&str> = Vec::new();
        for p in &decl.params {
            if seen.contains(&p.name.as_str()) {
                self.error(
                    p.span.clone(),
                    format!("parameter `{}` is declared twice", p.name),
                );
            }
            seen.push(&p.name);
            self.declare(p);
        }
        self.block(&decl.body);
    }

    fn closure(&mut self, kind: FnKind, id: NodeId, f: impl FnOnce(&mut Self)) {
        self.fns.push(FnCtx {
            kind,
            id,
            scopes: vec![HashMap::new()],
            upvals: Vec::new(),
            loops: 0,
        });
        f(self);
        let ctx = self.fns.pop().expect("pushed above");
        if kind == FnKind::Closure {
            self.out.upvals.insert(ctx.id, ctx.upvals);
        }
    }

    fn block(&mut self, b: &Block) {
        self.push_scope();
        for s in &b.stmts {
            self.stmt(s);
        }
        self.pop_scope();
    }

    fn stmt(&mut self, s: &Stmt) {
        match &s.kind {
            StmtKind::Let(name, value) => {
                self.expr(value);
                self.declare(name);
            }
            StmtKind::Const(name, _) => {
                self.error(
                    name.span.clone(),
                    "`const` is only allowed at the top level; use `let` here",
                );
            }
            StmtKind::Fn(decl) => {
                if let Some(name) = &decl.name {
                    self.declare(name);
                }
                self.closure(FnKind::Closure, decl.id, |r| r.function_body(decl));
            }
            StmtKind::Assign { target, value, .. } => {
                match &target.kind {
                    ExprKind::Ident(ident) => match self.lookup(&ident.name) {
                        Ok(Res::Local(b)) => self.set(ident.id, Res::Local(b)),
                        Ok(other) => {
                            let what = match other {
                                Res::Const(_) => "constant",
                                Res::TopFn(_) => "function",
                                _ => "builtin",
                            };
                            self.error(
                                ident.span.clone(),
                                format!("cannot assign to {what} `{}`", ident.name),
                            );
                            self.set(ident.id, Res::Error);
                        }
                        Err(e) => {
                            self.report(e, ident, true);
                            self.set(ident.id, Res::Error);
                        }
                    },
                    ExprKind::Index { target, index, .. } => {
                        self.expr(target);
                        self.expr(index);
                    }
                    ExprKind::Field { target, .. } => self.expr(target),
                    _ => {} // reported by the parser
                }
                self.expr(value);
            }
            StmtKind::Expr(e) => self.expr(e),
            StmtKind::While { cond, body } => {
                self.expr(cond);
                self.cur().loops += 1;
                self.block(body);
                self.cur().loops -= 1;
            }
            StmtKind::For {
                first,
                second,
                iter,
                body,
            } => {
                self.expr(iter);
                self.push_scope();
                self.declare(first);
                if let Some(second) = second {
                    if second.name == first.name {
                        self.error(
                            second.span.clone(),
                            format!("loop variable `{}` is declared twice", second.name),
                        );
                    }
                    self.declare(second);
                }
                self.cur().loops += 1;
                self.block(body);
                self.cur().loops -= 1;
                self.pop_scope();
            }
            StmtKind::Break | StmtKind::Continue => {
                if self.cur().loops == 0 {
                    let what = if matches!(s.kind, StmtKind::Break) {
                        "break"
                    } else {
                        "continue"
                    };
                    self.error(s.span.clone(), format!("`{what}` outside of a loop"));
                }
            }
            StmtKind::Return(value) => {
                if let Some(v) = value {
                    self.expr(v);
                }
            }
            StmtKind::Throw(e) => self.expr(e),
        }
    }

    fn expr(&mut self, e: &Expr) {
        match &e.kind {
            ExprKind::Nil
            | ExprKind::Bool(_)
            | ExprKind::Int(_)
            | ExprKind::Float(_)
            | ExprKind::Str(_)
            | ExprKind::Bytes(_)
            | ExprKind::Error => {}
            ExprKind::Ident(ident) => self.use_value(ident),
            ExprKind::List(items) => items.iter().for_each(|i| self.expr(i)),
            ExprKind::Map(entries) => {
                for (k, v) in entries {
                    self.expr(k);
                    self.expr(v);
                }
            }
            ExprKind::Unary { operand, .. } => self.expr(operand),
            ExprKind::Binary(b) => {
                self.expr(&b.lhs);
                self.expr(&b.rhs);
            }
            ExprKind::Call { callee, args, .. } => {
                match &callee.kind {
                    ExprKind::Ident(ident) => match self.lookup(&ident.name) {
                        Ok(res) => self.set(ident.id, res),
                        Err(err) => {
                            self.report(err, ident, false);
                            self.set(ident.id, Res::Error);
                        }
                    },
                    _ => self.expr(callee),
                }
                args.iter().for_each(|a| self.expr(a));
            }
            ExprKind::Index { target, index, .. } => {
                self.expr(target);
                self.expr(index);
            }
            ExprKind::Field { target, .. } => self.expr(target),
            ExprKind::Block(b) => self.block(b),
            ExprKind::If { cond, then, els } => {
                self.expr(cond);
                self.block(then);
                if let Some(els) = els {
                    self.expr(els);
                }
            }
            ExprKind::Fn(decl) => {
                self.closure(FnKind::Closure, decl.id, |r| r.function_body(decl));
            }
            ExprKind::Spawn { body, id } => {
                self.closure(FnKind::Closure, *id, |r| r.block(body));
            }
            ExprKind::Await { operand, .. } => self.expr(operand),
            ExprKind::Remote(remote) => self.remote(remote),
            ExprKind::Try(t) => {
                let TryCatch { body, var, handler } = &**t;
                self.block(body);
                self.push_scope();
                if let Some(var) = var {
                    self.declare(var);
                }
                self.block(handler);
                self.pop_scope();
            }
        }
    }

    fn remote(&mut self, remote: &Remote) {
        self.expr(&remote.target);
        let mut kept: Vec<&Ident> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for cap in &remote.captures {
            if seen.contains(&cap.name.as_str()) {
                self.error(
                    cap.span.clone(),
                    format!("`{}` appears twice in the capture list", cap.name),
                );
                self.set(cap.id, Res::Error);
                continue;
            }
            seen.push(&cap.name);
            match self.lookup(&cap.name) {
                Ok(Res::Local(b)) => {
                    self.set(cap.id, Res::Local(b));
                    kept.push(cap);
                }
                Ok(res) => {
                    let what = match res {
                        Res::Const(_) => "constant",
                        Res::TopFn(_) => "top-level function",
                        _ => "builtin",
                    };
                    self.diags.push(
                        Diagnostic::warning(
                            format!("`{}` is a {what} and needs no capture", cap.name),
                            cap.span.clone(),
                        )
                        .with_note("top-level functions, constants and builtins travel by hash; remove it from the list"),
                    );
                    self.set(cap.id, Res::Error);
                }
                Err(LookupErr::TopLevelLet) => {
                    self.report(LookupErr::TopLevelLet, cap, false);
                    self.set(cap.id, Res::Error);
                }
                Err(_) => {
                    self.error(
                        cap.span.clone(),
                        format!("capture `{}` does not name a variable", cap.name),
                    );
                    self.set(cap.id, Res::Error);
                }
            }
        }
        let mut params = Vec::new();
        self.closure(FnKind::Remote, remote.id, |r| {
            for cap in &kept {
                // The parameter is a new binding; its declaration is keyed by the body's id
                // space through `params`, not by the capture identifier (which names the
                // outer variable).
                let b = r.bind(cap);
                params.push((cap.id, b));
            }
            r.block(&remote.body);
        });
        for &(cap_id, b) in &params {
            if !self.out.bindings[b as usize].used {
                let span = remote
                    .captures
                    .iter()
                    .find(|c| c.id == cap_id)
                    .map(|c| c.span.clone())
                    .unwrap_or(remote.kw_span.clone());
                let name = self.out.bindings[b as usize].name.clone();
                self.diags.push(Diagnostic::warning(
                    format!("capture `{name}` is never used in the remote body"),
                    span,
                ));
            }
        }
        self.out.remote_params.insert(remote.id, params);
        if let Some(fallback) = &remote.fallback {
            self.block(fallback);
        }
    }
}
