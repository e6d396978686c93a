//! Skiff values as the interpreter holds them.
//!
//! `Value` is 16 bytes: scalars inline, everything else behind an `Rc` to a heap object that
//! carries a [`Charge`] for the heap limit. Lists and maps are mutable and shared by
//! reference; strings, bytes and ranges are immutable. `Cell` is never visible to scripts:
//! it exists only in cell local slots, closure upvalues and transiently on the operand stack
//! between `Capture*` and `Closure`.
//!
//! Invariants:
//! - Values are `!Send`: an execution and all its values live on one thread.
//! - Map keys are nil, bool, int, string or bytes ([`Key`]); equality and hashing of keys
//!   is by content; iteration is insertion order.
//! - Every heap object is charged to the heap account when created and released on drop;
//!   growable containers re-charge through [`ListObj::mutate`] / [`MapObj::mutate`].

use crate::heap::Charge;
use indexmap::IndexMap;
use std::cell::{Ref, RefCell};
use std::rc::Rc;

pub use crate::function::{Closure, TaskHandle};

/// A Skiff value.
#[derive(Clone, Debug, Default)]
pub enum Value {
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<StrObj>),
    Bytes(Rc<BytesObj>),
    List(Rc<ListObj>),
    Map(Rc<MapObj>),
    Range(Rc<RangeObj>),
    Function(Rc<Closure>),
    Task(Rc<TaskHandle>),
    /// A shared variable cell; internal, never visible to scripts.
    Cell(Rc<CellObj>),
}

const OBJECT_OVERHEAD: usize = 32;
const SLOT: usize = std::mem::size_of::<Value>();

/// An immutable UTF-8 string.
#[derive(Debug)]
pub struct StrObj {
    text: Box<str>,
    _charge: Charge,
}

impl StrObj {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// An immutable byte string; shares its buffer with the network layer (`bytes::Bytes`).
#[derive(Debug)]
pub struct BytesObj {
    data: bytes::Bytes,
    _charge: Charge,
}

impl BytesObj {
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }
    pub fn to_bytes(&self) -> bytes::Bytes {
        self.data.clone()
    }
    /// The buffer, without taking a reference count (its charge ends here).
    pub fn into_bytes(self) -> bytes::Bytes {
        self.data
    }
}

/// A mutable list shared by reference.
#[derive(Debug)]
pub struct ListObj {
    items: RefCell<Vec<Value>>,
    charge: Charge,
}

impl ListObj {
    /// Read access. Do not hold it across a call that may mutate the same list.
    pub fn items(&self) -> Ref<'_, Vec<Value>> {
        self.items.borrow()
    }

    /// Mutates the items and re-charges the heap for the new capacity.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut Vec<Value>) -> R) -> R {
        let mut items = self.items.borrow_mut();
        let out = f(&mut items);
        self.charge
            .resize(OBJECT_OVERHEAD + items.capacity() * SLOT);
        out
    }

    /// `mutate(|items| items.push(v))` when that needs no allocation: appends `v` if the list
    /// has room for it (and is not borrowed), else gives it back untouched. The capacity does
    /// not change, so the charge, `OBJECT_OVERHEAD + capacity * SLOT` since creation and every
    /// `mutate`, is already what `mutate` would re-charge it to.
    #[inline]
    pub fn push_in_place(&self, v: Value) -> Result<(), Value> {
        match self.items.try_borrow_mut() {
            Ok(mut items) if items.len() < items.capacity() => {
                items.push(v);
                Ok(())
            }
            _ => Err(v),
        }
    }

    pub fn len(&self) -> usize {
        self.items.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, index: usize) -> Option<Value> {
        self.items.borrow().get(index).cloned()
    }
}

/// A map key: the hashable subset of values, compared by content.
#[derive(Clone, Debug)]
pub enum Key {
    Nil,
    Bool(bool),
    Int(i64),
    Str(Rc<StrObj>),
    Bytes(Rc<BytesObj>),
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Nil, Key::Nil) => true,
            (Key::Bool(a), Key::Bool(b)) => a == b,
            (Key::Int(a), Key::Int(b)) => a == b,
            (Key::Str(a), Key::Str(b)) => a.as_str() == b.as_str(),
            (Key::Bytes(a), Key::Bytes(b)) => a.as_slice() == b.as_slice(),
            _ => false,
        }
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Key::Nil => {}
            Key::Bool(b) => b.hash(state),
            Key::Int(i) => i.hash(state),
            Key::Str(s) => s.as_str().hash(state),
            Key::Bytes(b) => b.as_slice().hash(state),
        }
    }
}

impl Key {
    /// The key for a value, or `None` if the value cannot be a map key.
    pub fn from_value(value: &Value) -> Option<Key> {
        Some(match value {
            Value::Nil => Key::Nil,
            Value::Bool(b) => Key::Bool(*b),
            Value::Int(i) => Key::Int(*i),
            Value::Str(s) => Key::Str(s.clone()),
            Value::Bytes(b) => Key::Bytes(b.clone()),
            _ => return None,
        })
    }

    pub fn to_value(&self) -> Value {
        match self {
            Key::Nil => Value::Nil,
            Key::Bool(b) => Value::Bool(*b),
            Key::Int(i) => Value::Int(*i),
            Key::Str(s) => Value::Str(s.clone()),
            Key::Bytes(b) => Value::Bytes(b.clone()),
        }
    }
}

/// The entries of a map, in insertion order.
pub type Entries = IndexMap<Key, Value>;

/// A mutable map shared by reference.
#[derive(Debug)]
pub struct MapObj {
    entries: RefCell<Entries>,
    charge: Charge,
}

impl MapObj {
    /// Read access. Do not hold it across a call that may mutate the same map.
    pub fn entries(&self) -> Ref<'_, Entries> {
        self.entries.borrow()
    }

    /// Mutates the entries and re-charges the heap for the new capacity.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut Entries) -> R) -> R {
        let mut entries = self.entries.borrow_mut();
        let out = f(&mut entries);
        self.charge
            .resize(OBJECT_OVERHEAD + entries.capacity() * 3 * SLOT);
        out
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        self.entries.borrow().get(key).cloned()
    }
}

/// `start..end`, end exclusive.
#[derive(Debug)]
pub struct RangeObj {
    pub start: i64,
    pub end: i64,
    _charge: Charge,
}

impl RangeObj {
    /// Number of integers in the range (0 when `end <= start`).
    pub fn len(&self) -> u64 {
        if self.end > self.start {
            self.end.abs_diff(self.start)
        } else {
            0
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A shared variable: what closures capture.
#[derive(Debug)]
pub struct CellObj {
    pub value: RefCell<Value>,
    _charge: Charge,
}

impl CellObj {
    pub fn new(value: Value) -> Rc<CellObj> {
        Rc::new(CellObj {
            value: RefCell::new(value),
            _charge: Charge::new(OBJECT_OVERHEAD),
        })
    }
}

impl Value {
    pub fn str(text: impl Into<Box<str>>) -> Value {
        let text = text.into();
        let charge = Charge::new(OBJECT_OVERHEAD + text.len());
        Value::Str(Rc::new(StrObj {
            text,
            _charge: charge,
        }))
    }

    pub fn bytes(data: impl Into<bytes::Bytes>) -> Value {
        let data = data.into();
        let charge = Charge::new(OBJECT_OVERHEAD + data.len());
        Value::Bytes(Rc::new(BytesObj {
            data,
            _charge: charge,
        }))
    }

    pub fn list(items: Vec<Value>) -> Value {
        let charge = Charge::new(OBJECT_OVERHEAD + items.capacity() * SLOT);
        Value::List(Rc::new(ListObj {
            items: RefCell::new(items),
            charge,
        }))
    }

    pub fn map(entries: Entries) -> Value {
        let charge = Charge::new(OBJECT_OVERHEAD + entries.capacity() * 3 * SLOT);
        Value::Map(Rc::new(MapObj {
            entries: RefCell::new(entries),
            charge,
        }))
    }

    pub fn range(start: i64, end: i64) -> Value {
        Value::Range(Rc::new(RangeObj {
            start,
            end,
            _charge: Charge::new(OBJECT_OVERHEAD),
        }))
    }

    /// The error value raised by the VM and builtins: `{"kind": kind, "message": message}`.
    pub fn error(kind: &str, message: impl Into<String>) -> Value {
        let mut entries = Entries::with_capacity(2);
        entries.insert(Key::Str(str_obj("kind")), Value::str(kind));
        entries.insert(Key::Str(str_obj("message")), Value::str(message.into()));
        Value::map(entries)
    }

    /// Only `nil` and `false` are falsy.
    #[inline]
    pub fn is_truthy(&self) -> bool {
        !matches!(self, Value::Nil | Value::Bool(false))
    }

    /// The name `type()` returns.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Range(_) => "range",
            Value::Function(_) => "function",
            Value::Task(_) => "task",
            Value::Cell(_) => "cell",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }
}

/// Drops values without recursing once per nesting level: the children of a container
/// that is being freed are moved onto an explicit worklist instead of being dropped in
/// place, so a list nested a million deep (or a chain of closures over cells) cannot
/// overflow the Rust stack when it is released.
fn release(mut pending: Vec<Value>) {
    while let Some(value) = pending.pop() {
        match value {
            Value::List(rc) => {
                if let Ok(mut list) = Rc::try_unwrap(rc) {
                    pending.append(list.items.get_mut());
                }
            }
            Value::Map(rc) => {
                if let Ok(mut map) = Rc::try_unwrap(rc) {
                    pending.extend(map.entries.get_mut().drain(..).map(|(_, v)| v));
                }
            }
            Value::Cell(rc) => {
                if let Ok(mut cell) = Rc::try_unwrap(rc) {
                    pending.push(std::mem::take(cell.value.get_mut()));
                }
            }
            Value::Function(rc) => {
                if let Ok(mut closure) = Rc::try_unwrap(rc) {
                    pending.extend(
                        std::mem::take(&mut closure.upvals)
                            .into_vec()
                            .into_iter()
                            .map(Value::Cell),
                    );
                }
            }
            _ => {}
        }
    }
}

impl Drop for ListObj {
    fn drop(&mut self) {
        release(std::mem::take(self.items.get_mut()));
    }
}

impl Drop for MapObj {
    fn drop(&mut self) {
        release(self.entries.get_mut().drain(..).map(|(_, v)| v).collect());
    }
}

impl Drop for CellObj {
    fn drop(&mut self) {
        let value = std::mem::take(self.value.get_mut());
        if matches!(
            value,
            Value::List(_) | Value::Map(_) | Value::Cell(_) | Value::Function(_)
        ) {
            release(vec![value]);
        }
    }
}

impl Drop for Closure {
    fn drop(&mut self) {
        if !self.upvals.is_empty() {
            release(
                std::mem::take(&mut self.upvals)
                    .into_vec()
                    .into_iter()
                    .map(Value::Cell)
                    .collect(),
            );
        }
    }
}

fn str_obj(text: &str) -> Rc<StrObj> {
    match Value::str(text) {
        Value::Str(s) => s,
        _ => unreachable!("Value::str builds a string"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_two_words() {
        assert_eq!(std::mem::size_of::<Value>(), 16);
    }

    #[test]
    fn dropping_deep_nesting_does_not_overflow_a_small_stack() {
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let mut list = Value::list(vec![]);
                let mut map = Value::map(Entries::new());
                let mut cell = CellObj::new(Value::Nil);
                for _ in 0..200_000 {
                    list = Value::list(vec![list]);
                    let mut entries = Entries::new();
                    entries.insert(Key::Int(0), map);
                    map = Value::map(entries);
                    cell = CellObj::new(Value::Cell(cell));
                }
                let before = crate::heap::live();
                drop((list, map, cell));
                assert!(crate::heap::live() < before);
            })
            .unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn objects_are_charged_and_released() {
        let before = crate::heap::live();
        let list = Value::list(Vec::with_capacity(100));
        assert!(crate::heap::live() >= before + 100 * SLOT);
        drop(list);
        assert_eq!(crate::heap::live(), before);
    }
}
