//! Parser: tokens to the syntax tree ([`crate::ast`]), with error recovery.
//!
//! Recursive descent for statements, precedence climbing for binary operators
//! (lowest to highest: `or`, `and`, `not`, comparisons, `..`, `+ -`, `* / %`, unary `-` and
//! `await`, postfix call/index/field).
//!
//! Invariants:
//! - A syntax error inside a statement is reported and the parser skips to the next
//!   statement boundary (`;`, a token that begins a line, or the `}` closing the block), so
//!   one run reports many independent errors.
//! - Nesting (blocks, parentheses, operator chains) is bounded by [`MAX_DEPTH`]; deeper input
//!   is an error, never a stack overflow. Later passes rely on this bound.
//! - The newline rule: a `(` or `[` that begins a line is never a call or index of the
//!   previous expression; binary operators continue across newlines.

use crate::ast::*;
use crate::lexer::{Tok, Token};
use crate::Diagnostic;

/// Maximum nesting of expressions and blocks.
pub const MAX_DEPTH: u32 = 160;
/// Parsing stops after this many syntax errors.
const MAX_ERRORS: usize = 100;

type PResult<T> = Result<T, ()>;

pub struct Parser<'a> {
    toks: Vec<Token>,
    pos: usize,
    diags: &'a mut Vec<Diagnostic>,
    errors: usize,
    depth: u32,
    next_id: NodeId,
    prev_end: usize,
    eof_reported: bool,
}

/// Parses a token stream (ending in `Eof`) into a program, appending syntax errors to `diags`.
pub fn parse(toks: Vec<Token>, diags: &mut Vec<Diagnostic>) -> Program {
    let mut p = Parser {
        toks,
        pos: 0,
        diags,
        errors: 0,
        depth: 0,
        next_id: 0,
        prev_end: 0,
        eof_reported: false,
    };
    let stmts = p.stmts(true);
    Program {
        stmts,
        node_count: p.next_id,
    }
}

fn bin_op(tok: &Tok) -> Option<(BinOp, u8)> {
    Some(match tok {
        Tok::Or => (BinOp::Or, 1),
        Tok::And => (BinOp::And, 2),
        Tok::EqEq => (BinOp::Eq, 4),
        Tok::NotEq => (BinOp::Ne, 4),
        Tok::Lt => (BinOp::Lt, 4),
        Tok::Le => (BinOp::Le, 4),
        Tok::Gt => (BinOp::Gt, 4),
        Tok::Ge => (BinOp::Ge, 4),
        Tok::DotDot => (BinOp::Range, 5),
        Tok::Plus => (BinOp::Add, 6),
        Tok::Minus => (BinOp::Sub, 6),
        Tok::Star => (BinOp::Mul, 7),
        Tok::Slash => (BinOp::Div, 7),
        Tok::Percent => (BinOp::Rem, 7),
        _ => return None,
    })
}

const NOT_BP: u8 = 3;
const UNARY_BP: u8 = 8;

impl Parser<'_> {
    fn tok(&self) -> &Tok {
        &self.toks[self.pos].tok
    }
    fn tok_at(&self, ahead: usize) -> &Tok {
        let i = (self.pos + ahead).min(self.toks.len() - 1);
        &self.toks[i].tok
    }
    fn span(&self) -> Span {
        self.toks[self.pos].span.clone()
    }
    fn line_start(&self) -> bool {
        self.toks[self.pos].line_start
    }
    fn at(&self, t: &Tok) -> bool {
        self.tok() == t
    }
    /// Consumes the current token (not `Eof`), returning its span.
    fn bump(&mut self) -> Span {
        let t = &self.toks[self.pos];
        let span = t.span.clone();
        if t.tok != Tok::Eof {
            self.prev_end = span.end;
            self.pos += 1;
        }
        span
    }
    /// The current token's name and span if it is an identifier, consumed. The name is
    /// moved out of the token, not copied: no token is read again once consumed.
    fn take_ident(&mut self) -> Option<(String, Span)> {
        let Tok::Ident(name) = &mut self.toks[self.pos].tok else {
            return None;
        };
        let name = std::mem::take(name);
        Some((name, self.bump()))
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.at(t) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn id(&mut self) -> NodeId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn error_at(&mut self, span: Span, msg: impl Into<String>) {
        self.errors += 1;
        if self.errors <= MAX_ERRORS {
            self.diags.push(Diagnostic::error(msg, span));
        }
    }

    /// Reports "expected X, found Y" at the current token.
    fn expected(&mut self, what: &str) -> PResult<()> {
        if self.at(&Tok::Eof) {
            if self.eof_reported {
                return Err(());
            }
            self.eof_reported = true;
        }
        if self.at(&Tok::Error) {
            // The lexer already reported this token.
            return Err(());
        }
        let found = self.tok().describe();
        let span = self.span();
        self.error_at(span, format!("expected {what}, found {found}"));
        Err(())
    }

    fn expect(&mut self, t: &Tok) -> PResult<Span> {
        if self.at(t) {
            Ok(self.bump())
        } else {
            let what = t.describe();
            self.expected(&what)?;
            Err(())
        }
    }

    fn ident(&mut self, what: &str) -> PResult<Ident> {
        match self.take_ident() {
            Some((name, span)) => {
                let id = self.id();
                Ok(Ident { name, span, id })
            }
            None => {
                self.expected(what)?;
                Err(())
            }
        }
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let span = self.span();
            self.error_at(span, "expression or block nested too deeply");
            // Abandon the rest of the file: it cannot be parsed within the bound.
            self.errors = MAX_ERRORS + 1;
            return Err(());
        }
        Ok(())
    }
    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Skips to the next statement boundary after an error.
    fn synchronize(&mut self, start: usize) {
        let mut depth = 0u32;
        loop {
            match self.tok() {
                Tok::Eof => return,
                Tok::LBrace | Tok::LParen | Tok::LBracket => depth += 1,
                Tok::RBrace | Tok::RParen | Tok::RBracket => {
                    if depth == 0 {
                        if self.at(&Tok::RBrace) && self.pos > start {
                            return;
                        }
                    } else {
                        depth -= 1;
                    }
                }
                Tok::Semi if depth == 0 => {
                    self.bump();
                    return;
                }
                _ => {}
            }
            if depth == 0 && self.pos > start && self.line_start() {
                return;
            }
            self.bump();
        }
    }

    /// Statements up to `}` (not consumed) or end of file.
    fn stmts(&mut self, top: bool) -> Vec<Stmt> {
        let mut out = Vec::new();
        loop {
            if self.errors > MAX_ERRORS {
                while !self.at(&Tok::Eof) {
                    self.bump();
                }
                return out;
            }
            while self.eat(&Tok::Semi) {}
            match self.tok() {
                Tok::Eof => return out,
                Tok::RBrace if !top => return out,
                Tok::RBrace => {
                    let span = self.span();
                    self.error_at(span, "unexpected `}` with no matching `{`");
                    self.bump();
                    continue;
                }
                _ => {}
            }
            let start = self.pos;
            match self.stmt() {
                Ok(stmt) => {
                    out.push(stmt);
                    // A statement must be followed by `;`, a newline, `}` or the end, unless
                    // it ends with a block.
                    let prev_brace = self.pos > 0 && self.toks[self.pos - 1].tok == Tok::RBrace;
                    if !(self.line_start()
                        || prev_brace
                        || matches!(self.tok(), Tok::Semi | Tok::RBrace | Tok::Eof))
                    {
                        let _ = self.expected("`;` or a newline after the statement");
                        self.synchronize(self.pos);
                    }
                }
                Err(()) => {
                    if self.pos == start && !self.at(&Tok::Eof) {
                        // No progress: skip at least the offending token.
                        self.bump();
                    }
                    self.synchronize(start);
                }
            }
        }
    }

    fn block(&mut self) -> PResult<Block> {
        let open = self.expect(&Tok::LBrace)?;
        self.enter()?;
        let stmts = self.stmts(false);
        self.leave();
        if !self.at(&Tok::RBrace) {
            if self.at(&Tok::Eof) && !self.eof_reported {
                self.eof_reported = true;
                self.error_at(open.clone(), "this `{` is never closed");
            }
            return Err(());
        }
        let close = self.bump();
        Ok(Block {
            stmts,
            span: open.start..close.end,
        })
    }

    fn stmt(&mut self) -> PResult<Stmt> {
        let start = self.span().start;
        let kind = match self.tok() {
            Tok::Let => {
                self.bump();
                let name = self.ident("a variable name after `let`")?;
                self.expect(&Tok::Assign)?;
                let value = self.expr()?;
                StmtKind::Let(name, value)
            }
            Tok::Const => {
                self.bump();
                let name = self.ident("a constant name after `const`")?;
                self.expect(&Tok::Assign)?;
                let value = self.expr()?;
                StmtKind::Const(name, value)
            }
            Tok::Fn if matches!(self.tok_at(1), Tok::Ident(_)) => {
                self.bump();
                let name = self.ident("a function name")?;
                let decl = self.fn_rest(Some(name), start)?;
                StmtKind::Fn(decl)
            }
            Tok::While => {
                self.bump();
                let cond = self.expr()?;
                let body = self.block()?;
                StmtKind::While { cond, body }
            }
            Tok::For => {
                self.bump();
                let first = self.ident("a loop variable after `for`")?;
                let second = if self.eat(&Tok::Comma) {
                    Some(self.ident("a second loop variable")?)
                } else {
                    None
                };
                self.expect(&Tok::In)?;
                let iter = self.expr()?;
                let body = self.block()?;
                StmtKind::For {
                    first,
                    second,
                    iter,
                    body,
                }
            }
            Tok::Break => {
                self.bump();
                StmtKind::Break
            }
            Tok::Continue => {
                self.bump();
                StmtKind::Continue
            }
            Tok::Return => {
                self.bump();
                if self.line_start() || matches!(self.tok(), Tok::Semi | Tok::RBrace | Tok::Eof) {
                    StmtKind::Return(None)
                } else {
                    StmtKind::Return(Some(self.expr()?))
                }
            }
            Tok::Throw => {
                self.bump();
                StmtKind::Throw(self.expr()?)
            }
            _ => {
                let e = self.expr()?;
                let op = match self.tok() {
                    Tok::Assign => Some(AssignOp::Set),
                    Tok::PlusAssign => Some(AssignOp::Add),
                    Tok::MinusAssign => Some(AssignOp::Sub),
                    _ => None,
                };
                match op {
                    None => StmtKind::Expr(e),
                    Some(op) => {
                        let op_span = self.bump();
                        if !matches!(
                            e.kind,
                            ExprKind::Ident(_) | ExprKind::Index { .. } | ExprKind::Field { .. }
                        ) {
                            self.error_at(
                                e.span.clone(),
                                "invalid assignment target; expected a variable, `a[i]` or `m.k`",
                            );
                        }
                        let value = self.expr()?;
                        StmtKind::Assign {
                            target: e,
                            op,
                            op_span,
                            value,
                        }
                    }
                }
            }
        };
        Ok(Stmt {
            kind,
            span: start..self.prev_end.max(start),
        })
    }

    /// Parameters and body of a function, after its name (or after `fn` for literals).
    fn fn_rest(&mut self, name: Option<Ident>, start: usize) -> PResult<FnDecl> {
        self.expect(&Tok::LParen)?;
        let params = self.comma_list(&Tok::RParen, |p| p.ident("a parameter name"))?;
        let body = self.block()?;
        let id = self.id();
        Ok(FnDecl {
            name,
            params,
            span: start..self.prev_end,
            body,
            id,
        })
    }

    fn expr(&mut self) -> PResult<Expr> {
        self.expr_bp(0)
    }

    fn expr_bp(&mut self, min: u8) -> PResult<Expr> {
        self.enter()?;
        let r = self.expr_bp_inner(min);
        self.leave();
        r
    }

    fn expr_bp_inner(&mut self, min: u8) -> PResult<Expr> {
        let start = self.span().start;
        let mut lhs = match self.tok() {
            Tok::Not => {
                let op_span = self.bump();
                let operand = self.expr_bp(NOT_BP + 1)?;
                Expr {
                    span: start..self.prev_end,
                    kind: ExprKind::Unary {
                        op: UnOp::Not,
                        op_span,
                        operand: Box::new(operand),
                    },
                }
            }
            Tok::Minus => {
                let op_span = self.bump();
                let operand = self.expr_bp(UNARY_BP)?;
                let kind = match operand.kind {
                    // Fold negative literals so `-5` is one constant.
                    ExprKind::Int(v) => ExprKind::Int(v.wrapping_neg()),
                    ExprKind::Float(v) => ExprKind::Float(-v),
                    _ => ExprKind::Unary {
                        op: UnOp::Neg,
                        op_span,
                        operand: Box::new(operand),
                    },
                };
                Expr {
                    span: start..self.prev_end,
                    kind,
                }
            }
            Tok::Await => {
                let kw_span = self.bump();
                let operand = self.expr_bp(UNARY_BP)?;
                Expr {
                    span: start..self.prev_end,
                    kind: ExprKind::Await {
                        kw_span,
                        operand: Box::new(operand),
                    },
                }
            }
            _ => self.postfix()?,
        };
        let mut chain = 0u32;
        while let Some((op, bp)) = bin_op(self.tok()) {
            if bp < min {
                break;
            }
            let op_span = self.bump();
            // Each operator of a chain deepens the tree: count it against the bound.
            chain += 1;
            if self.enter().is_err() {
                self.depth = self.depth.saturating_sub(chain);
                return Err(());
            }
            let rhs = match self.expr_bp(bp + 1) {
                Ok(rhs) => rhs,
                Err(()) => {
                    self.depth = self.depth.saturating_sub(chain);
                    return Err(());
                }
            };
            lhs = Expr {
                span: start..self.prev_end,
                kind: ExprKind::Binary(Box::new(Binary {
                    op,
                    op_span,
                    lhs,
                    rhs,
                })),
            };
        }
        self.depth = self.depth.saturating_sub(chain);
        Ok(lhs)
    }

    fn postfix(&mut self) -> PResult<Expr> {
        let start = self.span().start;
        let mut e = self.primary()?;
        let mut chain = 0u32;
        let result = loop {
            let kind = match self.tok() {
                Tok::LParen if !self.line_start() => {
                    let paren_span = self.bump();
                    let mut args = Vec::new();
                    while !self.at(&Tok::RParen) {
                        match self.expr() {
                            Ok(a) => args.push(a),
                            Err(()) => break,
                        }
                        if !self.eat(&Tok::Comma) {
                            break;
                        }
                    }
                    if self.expect(&Tok::RParen).is_err() {
                        break Err(());
                    }
                    ExprKind::Call {
                        callee: Box::new(e),
                        args,
                        paren_span,
                    }
                }
                Tok::LBracket if !self.line_start() => {
                    let bracket_span = self.bump();
                    let index = match self.expr() {
                        Ok(i) => i,
                        Err(()) => break Err(()),
                    };
                    if self.expect(&Tok::RBracket).is_err() {
                        break Err(());
                    }
                    ExprKind::Index {
                        target: Box::new(e),
                        index: Box::new(index),
                        bracket_span,
                    }
                }
                Tok::Dot => {
                    self.bump();
                    let name = match self.ident("a field name after `.`") {
                        Ok(n) => n,
                        Err(()) => break Err(()),
                    };
                    ExprKind::Field {
                        target: Box::new(e),
                        name: name.name,
                        name_span: name.span,
                    }
                }
                _ => break Ok(e),
            };
            chain += 1;
            if self.enter().is_err() {
                break Err(());
            }
            e = Expr {
                kind,
                span: start..self.prev_end,
            };
        };
        self.depth = self.depth.saturating_sub(chain);
        result
    }

    /// The current token as a literal expression, consumed; `None`, with nothing consumed,
    /// if it is not a literal. A string's or bytes' contents are moved out of the token.
    fn literal(&mut self) -> Option<ExprKind> {
        let kind = match &mut self.toks[self.pos].tok {
            Tok::Int(v) => ExprKind::Int(*v),
            Tok::Float(v) => ExprKind::Float(*v),
            Tok::Str(s) => ExprKind::Str(std::mem::take(s)),
            Tok::Bytes(b) => ExprKind::Bytes(std::mem::take(b)),
            Tok::True => ExprKind::Bool(true),
            Tok::False => ExprKind::Bool(false),
            Tok::Nil => ExprKind::Nil,
            _ => return None,
        };
        self.bump();
        Some(kind)
    }

    fn primary(&mut self) -> PResult<Expr> {
        let start = self.span().start;
        if let Some(kind) = self.literal() {
            return Ok(Expr {
                kind,
                span: start..self.prev_end,
            });
        }
        let kind = match self.tok() {
            Tok::Ident(_) => ExprKind::Ident(self.ident("identifier")?),
            Tok::LParen => {
                self.bump();
                let inner = self.expr()?;
                self.expect(&Tok::RParen)?;
                // Keep the inner expression; widen its span to the parentheses.
                return Ok(Expr {
                    kind: inner.kind,
                    span: start..self.prev_end,
                });
            }
            Tok::LBracket => {
                self.bump();
                ExprKind::List(self.comma_list(&Tok::RBracket, Self::expr)?)
            }
            Tok::LBrace => {
                let is_map = match self.tok_at(1) {
                    Tok::RBrace => true,
                    Tok::Ident(_)
                    | Tok::Str(_)
                    | Tok::Int(_)
                    | Tok::Float(_)
                    | Tok::True
                    | Tok::False
                    | Tok::Nil
                    | Tok::Bytes(_) => self.tok_at(2) == &Tok::Colon,
                    _ => false,
                };
                if is_map {
                    self.map()?
                } else {
                    ExprKind::Block(self.block()?)
                }
            }
            Tok::If => return self.if_expr(),
            Tok::Fn => {
                self.bump();
                if matches!(self.tok(), Tok::Ident(_)) {
                    let span = self.span();
                    self.error_at(
                        span,
                        "a named `fn` declaration is a statement; use `fn(..) { }` in an expression",
                    );
                    return Err(());
                }
                ExprKind::Fn(Box::new(self.fn_rest(None, start)?))
            }
            Tok::Spawn => {
                self.bump();
                let body = self.block()?;
                let id = self.id();
                ExprKind::Spawn { body, id }
            }
            Tok::Remote => {
                let kw_span = self.bump();
                self.expect(&Tok::LParen)?;
                let target = self.expr()?;
                self.expect(&Tok::RParen)?;
                if !self.at(&Tok::LBracket) {
                    self.expected("a capture list `[..]` after `remote(..)` (use `[]` if the body needs nothing)")?;
                }
                self.bump();
                let captures = self.comma_list(&Tok::RBracket, |p| {
                    p.ident("a variable name in the capture list")
                })?;
                let body = self.block()?;
                let fallback = if self.eat(&Tok::Else) {
                    Some(self.block()?)
                } else {
                    None
                };
                let id = self.id();
                ExprKind::Remote(Box::new(Remote {
                    kw_span,
                    target,
                    captures,
                    body,
                    fallback,
                    id,
                }))
            }
            Tok::Try => {
                self.bump();
                let body = self.block()?;
                self.expect(&Tok::Catch)?;
                let var = if matches!(self.tok(), Tok::Ident(_)) {
                    Some(self.ident("identifier")?)
                } else {
                    None
                };
                let handler = self.block()?;
                ExprKind::Try(Box::new(TryCatch { body, var, handler }))
            }
            _ => {
                self.expected("an expression")?;
                return Err(());
            }
        };
        Ok(Expr {
            kind,
            span: start..self.prev_end,
        })
    }

    fn map(&mut self) -> PResult<ExprKind> {
        self.expect(&Tok::LBrace)?;
        let entries = self.comma_list(&Tok::RBrace, |p| {
            let bare = if p.tok_at(1) == &Tok::Colon {
                p.take_ident()
            } else {
                None
            };
            let key = match bare {
                Some((name, span)) => Expr {
                    kind: ExprKind::Str(name),
                    span,
                },
                None => p.expr()?,
            };
            p.expect(&Tok::Colon)?;
            let value = p.expr()?;
            Ok((key, value))
        })?;
        Ok(ExprKind::Map(entries))
    }

    /// Items separated by commas (a trailing one allowed) up to `close`, which is consumed.
    fn comma_list<T>(
        &mut self,
        close: &Tok,
        mut item: impl FnMut(&mut Self) -> PResult<T>,
    ) -> PResult<Vec<T>> {
        let mut items = Vec::new();
        while !self.at(close) {
            items.push(item(self)?);
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        self.expect(close)?;
        Ok(items)
    }

    fn if_expr(&mut self) -> PResult<Expr> {
        let start = self.span().start;
        self.expect(&Tok::If)?;
        self.enter()?;
        let r = (|| {
            let cond = self.expr()?;
            let then = self.block()?;
            let els = if self.eat(&Tok::Else) {
                if self.at(&Tok::If) {
                    Some(Box::new(self.if_expr()?))
                } else {
                    let b = self.block()?;
                    Some(Box::new(Expr {
                        span: b.span.clone(),
                        kind: ExprKind::Block(b),
                    }))
                }
            } else {
                None
            };
            Ok(Expr {
                kind: ExprKind::If {
                    cond: Box::new(cond),
                    then,
                    els,
                },
                span: start..self.prev_end,
            })
        })();
        self.leave();
        r
    }
}
