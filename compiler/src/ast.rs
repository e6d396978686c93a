//! The syntax tree.
//!
//! Invariants:
//! - Every node carries a byte span into the source it was parsed from.
//! - Every identifier occurrence (use, declaration, capture) and every function-like node
//!   (fn declaration, fn literal, spawn body, remote body) carries a [`NodeId`] unique within
//!   one parse; the resolver keys its results by these ids, so the code generator never
//!   repeats name lookup.
//! - Nesting depth is bounded by the parser, so recursive passes cannot overflow the stack.

use std::ops::Range;

/// Byte range into the source.
pub type Span = Range<usize>;

/// Identifies an identifier occurrence or a function-like node within one parse.
pub type NodeId = u32;

/// An identifier occurrence.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
    pub id: NodeId,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Range,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Ident(Ident),
    List(Vec<Expr>),
    Map(Vec<(Expr, Expr)>),
    Unary {
        op: UnOp,
        op_span: Span,
        operand: Box<Expr>,
    },
    /// Boxed as one: both operands in one allocation, not one each.
    Binary(Box<Binary>),
    Call {
        callee: Box<Expr>,
        args: Vec<Expr>,
        /// The `(`.
        paren_span: Span,
    },
    Index {
        target: Box<Expr>,
        index: Box<Expr>,
        bracket_span: Span,
    },
    Field {
        target: Box<Expr>,
        name: String,
        name_span: Span,
    },
    Block(Block),
    If {
        cond: Box<Expr>,
        then: Block,
        /// An `If` expression (for `else if`) or a `Block` expression.
        els: Option<Box<Expr>>,
    },
    Fn(Box<FnDecl>),
    Spawn {
        body: Block,
        id: NodeId,
    },
    Await {
        kw_span: Span,
        operand: Box<Expr>,
    },
    Remote(Box<Remote>),
    /// Boxed: as large as two blocks, it would double the size of every expression.
    Try(Box<TryCatch>),
    /// Stand-in for a malformed expression (already reported).
    Error,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Remote {
    pub kw_span: Span,
    pub target: Expr,
    pub captures: Vec<Ident>,
    pub body: Block,
    pub fallback: Option<Block>,
    /// Function id of the body.
    pub id: NodeId,
}

/// `lhs op rhs`.
#[derive(Clone, Debug, PartialEq)]
pub struct Binary {
    pub op: BinOp,
    pub op_span: Span,
    pub lhs: Expr,
    pub rhs: Expr,
}

/// `try body catch var handler`.
#[derive(Clone, Debug, PartialEq)]
pub struct TryCatch {
    pub body: Block,
    pub var: Option<Ident>,
    pub handler: Block,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnDecl {
    /// `None` for a literal.
    pub name: Option<Ident>,
    pub params: Vec<Ident>,
    pub body: Block,
    pub span: Span,
    pub id: NodeId,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignOp {
    Set,
    Add,
    Sub,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    Let(Ident, Expr),
    Const(Ident, Expr),
    Fn(FnDecl),
    Assign {
        target: Expr,
        op: AssignOp,
        op_span: Span,
        value: Expr,
    },
    Expr(Expr),
    While {
        cond: Expr,
        body: Block,
    },
    For {
        first: Ident,
        second: Option<Ident>,
        iter: Expr,
        body: Block,
    },
    Break,
    Continue,
    Return(Option<Expr>),
    Throw(Expr),
}

/// A parsed file.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub stmts: Vec<Stmt>,
    /// One more than the largest [`NodeId`] used.
    pub node_count: u32,
}
