//! Compile-time constants: values and the evaluator for `const NAME = e`.
//!
//! A constant expression is built from literals, list/map literals, other constants and
//! operators (arithmetic, comparison, `..`, `and`/`or`/`not`). It is evaluated with the
//! runtime's rules (checked int arithmetic, int/float mixing, structural equality); any
//! runtime error becomes a compile error at the operator.
//!
//! Invariants:
//! - Evaluation is deterministic and never panics; recursion is bounded by the AST depth
//!   bound of the parser plus [`MAX_CONST_CHAIN`] for constant-to-constant references.
//! - A constant list or map is *not* shared: the code generator emits code that builds a
//!   fresh copy at each use.

use crate::ast::{BinOp, Expr, ExprKind, Ident, UnOp};
use crate::Diagnostic;

/// How many constants may refer to each other in a chain.
pub const MAX_CONST_CHAIN: u32 = 64;

/// A compile-time value.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstValue {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<ConstValue>),
    /// Insertion order; keys unique.
    Map(Vec<(ConstValue, ConstValue)>),
    Range(i64, i64),
}

impl ConstValue {
    fn truthy(&self) -> bool {
        !matches!(self, ConstValue::Nil | ConstValue::Bool(false))
    }

    fn type_name(&self) -> &'static str {
        match self {
            ConstValue::Nil => "nil",
            ConstValue::Bool(_) => "bool",
            ConstValue::Int(_) => "int",
            ConstValue::Float(_) => "float",
            ConstValue::Str(_) => "string",
            ConstValue::Bytes(_) => "bytes",
            ConstValue::List(_) => "list",
            ConstValue::Map(_) => "map",
            ConstValue::Range(..) => "range",
        }
    }

    fn is_key(&self) -> bool {
        matches!(
            self,
            ConstValue::Nil
                | ConstValue::Bool(_)
                | ConstValue::Int(_)
                | ConstValue::Str(_)
                | ConstValue::Bytes(_)
        )
    }
}

fn equal(a: &ConstValue, b: &ConstValue) -> bool {
    use ConstValue::*;
    match (a, b) {
        (Int(x), Float(y)) | (Float(y), Int(x)) => (*x as f64) == *y,
        (List(x), List(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b)),
        (Map(x), Map(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.iter()
                        .find(|(k2, _)| key_eq(k, k2))
                        .is_some_and(|(_, v2)| equal(v, v2))
                })
        }
        _ => a == b,
    }
}

fn key_eq(a: &ConstValue, b: &ConstValue) -> bool {
    // Keys are nil/bool/int/string/bytes: equality is plain content equality.
    a == b
}

/// Evaluates constant expressions; `lookup` resolves a constant name (reporting its own
/// errors) and returns `Err(Reported)` when the name is not a usable constant.
pub struct Evaluator<'a> {
    pub diags: &'a mut Vec<Diagnostic>,
}

/// The error was reported as a diagnostic already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reported;

/// The result of evaluating a constant expression.
pub type EResult = Result<ConstValue, Reported>;

impl Evaluator<'_> {
    fn fail(&mut self, span: &std::ops::Range<usize>, msg: impl Into<String>) -> EResult {
        self.diags.push(Diagnostic::error(msg, span.clone()));
        Err(Reported)
    }

    pub fn eval(&mut self, e: &Expr, lookup: &mut dyn FnMut(&Ident) -> EResult) -> EResult {
        use ConstValue as V;
        match &e.kind {
            ExprKind::Nil => Ok(V::Nil),
            ExprKind::Bool(b) => Ok(V::Bool(*b)),
            ExprKind::Int(i) => Ok(V::Int(*i)),
            ExprKind::Float(f) => Ok(V::Float(*f)),
            ExprKind::Str(s) => Ok(V::Str(s.clone())),
            ExprKind::Bytes(b) => Ok(V::Bytes(b.clone())),
            ExprKind::Ident(id) => lookup(id),
            ExprKind::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items {
                    match self.eval(item, lookup) {
                        Ok(v) => out.push(v),
                        Err(Reported) => ok = false,
                    }
                }
                if ok {
                    Ok(V::List(out))
                } else {
                    Err(Reported)
                }
            }
            ExprKind::Map(entries) => {
                let mut out: Vec<(ConstValue, ConstValue)> = Vec::new();
                let mut ok = true;
                for (k, v) in entries {
                    let (Ok(kv), Ok(vv)) = (self.eval(k, lookup), self.eval(v, lookup)) else {
                        ok = false;
                        continue;
                    };
                    if !kv.is_key() {
                        let msg = format!("a {} cannot be a map key", kv.type_name());
                        let _ = self.fail(&k.span, msg);
                        ok = false;
                        continue;
                    }
                    if let Some(slot) = out.iter_mut().find(|(k2, _)| key_eq(&kv, k2)) {
                        slot.1 = vv;
                    } else {
                        out.push((kv, vv));
                    }
                }
                if ok {
                    Ok(V::Map(out))
                } else {
                    Err(Reported)
                }
            }
            ExprKind::Unary {
                op,
                op_span,
                operand,
            } => {
                let v = self.eval(operand, lookup)?;
                match op {
                    UnOp::Not => Ok(V::Bool(!v.truthy())),
                    UnOp::Neg => match v {
                        V::Int(i) => match i.checked_neg() {
                            Some(n) => Ok(V::Int(n)),
                            None => self.fail(op_span, "integer overflow in constant"),
                        },
                        V::Float(f) => Ok(V::Float(-f)),
                        other => {
                            let msg = format!("cannot negate a {}", other.type_name());
                            self.fail(op_span, msg)
                        }
                    },
                }
            }
            ExprKind::Binary(bin) => {
                let a = self.eval(&bin.lhs, lookup)?;
                match bin.op {
                    BinOp::And if !a.truthy() => return Ok(a),
                    BinOp::Or if a.truthy() => return Ok(a),
                    BinOp::And | BinOp::Or => return self.eval(&bin.rhs, lookup),
                    _ => {}
                }
                let b = self.eval(&bin.rhs, lookup)?;
                match binary(bin.op, a, b) {
                    Ok(v) => Ok(v),
                    Err(msg) => self.fail(&bin.op_span, msg),
                }
            }
            _ => self.fail(
                &e.span,
                "a constant may only use literals, other constants and operators",
            ),
        }
    }
}

fn binary(op: BinOp, a: ConstValue, b: ConstValue) -> Result<ConstValue, String> {
    use ConstValue as V;
    let overflow = || "integer overflow in constant".to_string();
    let mismatch = |a: &V, b: &V| {
        format!(
            "unsupported operand types for this operator: {} and {}",
            a.type_name(),
            b.type_name()
        )
    };
    let num = |v: &V| match v {
        V::Int(i) => Some(*i as f64),
        V::Float(f) => Some(*f),
        _ => None,
    };
    Ok(match op {
        BinOp::Eq => V::Bool(equal(&a, &b)),
        BinOp::Ne => V::Bool(!equal(&a, &b)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = match (&a, &b) {
                (V::Int(x), V::Int(y)) => x.partial_cmp(y),
                (V::Str(x), V::Str(y)) => x.partial_cmp(y),
                _ => match (num(&a), num(&b)) {
                    (Some(x), Some(y)) => x.partial_cmp(&y),
                    _ => return Err(mismatch(&a, &b)),
                },
            };
            let Some(ord) = ord else {
                return Ok(V::Bool(false));
            };
            V::Bool(match op {
                BinOp::Lt => ord.is_lt(),
                BinOp::Le => ord.is_le(),
                BinOp::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            })
        }
        BinOp::Range => match (&a, &b) {
            (V::Int(x), V::Int(y)) => V::Range(*x, *y),
            _ => return Err(mismatch(&a, &b)),
        },
        BinOp::Add => match (a, b) {
            (V::Int(x), V::Int(y)) => V::Int(x.checked_add(y).ok_or_else(overflow)?),
            (V::Str(x), V::Str(y)) => V::Str(x + &y),
            (V::Bytes(mut x), V::Bytes(y)) => {
                x.extend(y);
                V::Bytes(x)
            }
            (V::List(mut x), V::List(y)) => {
                x.extend(y);
                V::List(x)
            }
            (a, b) => match (num(&a), num(&b)) {
                (Some(x), Some(y)) => V::Float(x + y),
                _ => return Err(mismatch(&a, &b)),
            },
        },
        BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => match (&a, &b) {
            (V::Int(x), V::Int(y)) => {
                let (x, y) = (*x, *y);
                if matches!(op, BinOp::Div | BinOp::Rem) && y == 0 {
                    return Err("division by zero in constant".into());
                }
                V::Int(
                    match op {
                        BinOp::Sub => x.checked_sub(y),
                        BinOp::Mul => x.checked_mul(y),
                        BinOp::Div => x.checked_div(y),
                        _ => x.checked_rem(y),
                    }
                    .ok_or_else(overflow)?,
                )
            }
            _ => match (num(&a), num(&b)) {
                (Some(x), Some(y)) => V::Float(match op {
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div => x / y,
                    _ => x % y,
                }),
                _ => return Err(mismatch(&a, &b)),
            },
        },
        BinOp::And | BinOp::Or => unreachable!("short-circuit operators are handled by eval"),
    })
}
