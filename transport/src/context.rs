//! Execution contexts: named environments on a node that hold state across executions.
//!
//! Every node (the QUIC [`crate::Node`] and the facade's in-process cluster alike) owns one
//! [`Contexts`]: a map from context name to a key → value store of [`Portable`] values.
//! `default` always exists. An execution runs in exactly one context (a hop's `context:`,
//! else `default`) and reads and writes its store through the host natives
//! [`CONTEXT_GET`]`(key)`, [`CONTEXT_SET`]`(key, value)` and [`CONTEXT_NAME`]`()`, which
//! [`ContextNatives::install`] registers on the node's engine.
//!
//! The natives are ordinary host natives, so they cannot see which execution called them.
//! The host loop tells them: it steps one execution at a time on one thread, each slice
//! through [`ContextNatives::run`] naming that execution's context.
//!
//! Forking is copy-on-fork: a store is an `Arc`, [`Contexts::fork`] clones the `Arc`, and the
//! first write to either side copies it (`Arc::make_mut`). Reading a state from the host
//! ([`Contexts::state`]) is the same cheap `Arc` clone, a snapshot that later writes never
//! change.
//!
//! Invariants:
//! - `default` exists in every [`Contexts`] and cannot be created again.
//! - Values cross into and out of a store as deep copies (send-copy, like captures): a stored
//!   value shares nothing with any execution, so changing a list after storing it does not
//!   change the stored copy, and two `context_get`s return two independent copies.
//! - A store holds data only: a value containing a function (closure) is refused with a
//!   `TypeError` (from a script) or [`ContextError::Function`] (from the host).
//! - The natives never panic: outside [`ContextNatives::run`], or in a context that does
//!   not exist, they raise a catchable error.

use skiff_vm::hop::DEFAULT_CONTEXT;
use skiff_vm::interp::{Execution, Status};
use skiff_vm::native::{NativeCtx, NativeError};
use skiff_vm::{Engine, Portable, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// `context_get(key)`: the value stored under `key` (a string) in the execution's context,
/// or nil.
pub const CONTEXT_GET: &str = "context_get";
/// `context_set(key, value)`: stores a copy of `value` under `key`; nil removes the key.
/// Returns nil.
pub const CONTEXT_SET: &str = "context_set";
/// `context_name()`: the name of the context the execution runs in.
pub const CONTEXT_NAME: &str = "context_name";
/// The names of every context native, for a compiler's list of host natives.
pub const CONTEXT_NATIVES: [&str; 3] = [CONTEXT_GET, CONTEXT_SET, CONTEXT_NAME];

/// The state of one context: a snapshot when held by the host (copy-on-write).
pub type ContextState = Arc<BTreeMap<String, Portable>>;

/// Why a context operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("no context `{0}`")]
    Unknown(String),
    #[error("context `{0}` already exists")]
    Exists(String),
    #[error("`{0}` is not a valid context name (1 to 128 characters, no control characters)")]
    InvalidName(String),
    #[error("context values cannot hold functions (key `{0}`)")]
    Function(String),
}

/// The contexts of one node and their state.
#[derive(Clone, Debug)]
pub struct Contexts {
    states: HashMap<String, ContextState>,
}

impl Default for Contexts {
    fn default() -> Self {
        let mut states = HashMap::new();
        states.insert(DEFAULT_CONTEXT.to_owned(), ContextState::default());
        Contexts { states }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control)
}

fn has_function(value: &Portable) -> bool {
    match value {
        Portable::Function { .. } => true,
        Portable::List(items) => items.iter().any(has_function),
        Portable::Map(entries) => entries
            .iter()
            .any(|(k, v)| has_function(k) || has_function(v)),
        _ => false,
    }
}

impl Contexts {
    /// Whether these are as [`Contexts::default`] made them: only `default`, empty.
    pub fn is_fresh(&self) -> bool {
        // The one entry, read without hashing its name: a host's every call asks this.
        let mut states = self.states.iter();
        matches!(
            (states.next(), states.next()),
            (Some((name, state)), None) if name.as_str() == DEFAULT_CONTEXT && state.is_empty()
        )
    }

    /// `default` plus empty contexts named `names` (duplicates and `default` are ignored).
    pub fn with_names<S: AsRef<str>>(names: &[S]) -> Result<Contexts, ContextError> {
        let mut contexts = Contexts::default();
        for name in names {
            let name = name.as_ref();
            if !contexts.contains(name) {
                contexts.create(name, BTreeMap::new())?;
            }
        }
        Ok(contexts)
    }

    /// Whether a context named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.states.contains_key(name)
    }

    /// Every context name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.states.keys().cloned().collect();
        names.sort();
        names
    }

    /// Registers the context `name` holding `initial`.
    pub fn create(
        &mut self,
        name: &str,
        initial: BTreeMap<String, Portable>,
    ) -> Result<(), ContextError> {
        if !valid_name(name) {
            return Err(ContextError::InvalidName(name.to_owned()));
        }
        if self.contains(name) {
            return Err(ContextError::Exists(name.to_owned()));
        }
        if let Some((key, _)) = initial.iter().find(|(_, v)| has_function(v)) {
            return Err(ContextError::Function(key.clone()));
        }
        self.states.insert(name.to_owned(), Arc::new(initial));
        Ok(())
    }

    /// Registers `to` with a copy of `from`'s state as it is now; later writes to either are
    /// invisible to the other. Nothing is copied until one of them is written.
    pub fn fork(&mut self, from: &str, to: &str) -> Result<(), ContextError> {
        let state = self.state(from)?;
        if !valid_name(to) {
            return Err(ContextError::InvalidName(to.to_owned()));
        }
        if self.contains(to) {
            return Err(ContextError::Exists(to.to_owned()));
        }
        self.states.insert(to.to_owned(), state);
        Ok(())
    }

    /// A snapshot of the state of `name`.
    pub fn state(&self, name: &str) -> Result<ContextState, ContextError> {
        self.states
            .get(name)
            .cloned()
            .ok_or_else(|| ContextError::Unknown(name.to_owned()))
    }

    /// The value under `key` in `context`.
    pub fn get(&self, context: &str, key: &str) -> Result<Option<&Portable>, ContextError> {
        let state = self
            .states
            .get(context)
            .ok_or_else(|| ContextError::Unknown(context.to_owned()))?;
        Ok(state.get(key))
    }

    /// Stores `value` under `key` in `context` (`Nil` removes the key). Copies the state
    /// first if a fork or a host snapshot still shares it.
    pub fn set(&mut self, context: &str, key: &str, value: Portable) -> Result<(), ContextError> {
        if has_function(&value) {
            return Err(ContextError::Function(key.to_owned()));
        }
        let state = self
            .states
            .get_mut(context)
            .ok_or_else(|| ContextError::Unknown(context.to_owned()))?;
        let state = Arc::make_mut(state);
        if value == Portable::Nil {
            state.remove(key);
        } else {
            state.insert(key.to_owned(), value);
        }
        Ok(())
    }
}

/// The contexts of a node as its VM-side host loop holds them (one thread).
pub type SharedContexts = Rc<RefCell<Contexts>>;

struct Active {
    contexts: SharedContexts,
    name: Rc<str>,
}

/// The context natives of one engine and the slot that tells them which context the
/// execution being stepped runs in.
#[derive(Clone, Default)]
pub struct ContextNatives {
    active: Rc<RefCell<Option<Active>>>,
}

/// While alive, the context natives act on one context; dropping it clears the slot.
pub struct Entered<'a> {
    natives: &'a ContextNatives,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.natives.active.try_borrow_mut() {
            *slot = None;
        }
    }
}

fn no_context() -> NativeError {
    NativeError::error("ContextError", "not running in a context")
}

fn context_error(e: ContextError) -> NativeError {
    let kind = match e {
        ContextError::Function(_) => "TypeError",
        _ => "ContextError",
    };
    NativeError::error(kind, e.to_string())
}

fn arity(name: &str, want: usize, args: &[Value]) -> Result<(), NativeError> {
    if args.len() == want {
        Ok(())
    } else {
        Err(NativeError::error(
            "ArityError",
            format!("{name} takes {want} arguments, got {}", args.len()),
        ))
    }
}

fn key_arg<'v>(name: &str, value: &'v Value) -> Result<&'v str, NativeError> {
    value.as_str().ok_or_else(|| {
        NativeError::error(
            "TypeError",
            format!(
                "{name}: a context key is a string, not {}",
                value.type_name()
            ),
        )
    })
}

impl ContextNatives {
    /// Registers `context_get`, `context_set` and `context_name` on `engine`, except where
    /// the host already registered a native of that name (the host's wins).
    pub fn install(&self, engine: &mut Engine) {
        let active = self.active.clone();
        if !engine.has_native(CONTEXT_GET) {
            engine.register_native(CONTEXT_GET, move |_: &mut NativeCtx<'_>, args| {
                arity(CONTEXT_GET, 1, args)?;
                let key = key_arg(CONTEXT_GET, &args[0])?;
                let slot = active.try_borrow().map_err(|_| no_context())?;
                let a = slot.as_ref().ok_or_else(no_context)?;
                let contexts = a.contexts.try_borrow().map_err(|_| no_context())?;
                match contexts.get(&a.name, key).map_err(context_error)? {
                    Some(v) => to_value(v),
                    None => Ok(Value::Nil),
                }
            });
        }
        let active = self.active.clone();
        if !engine.has_native(CONTEXT_SET) {
            engine.register_native(CONTEXT_SET, move |_: &mut NativeCtx<'_>, args| {
                arity(CONTEXT_SET, 2, args)?;
                let key = key_arg(CONTEXT_SET, &args[0])?;
                let value = skiff_vm::interp::convert::export(&args[1]).map_err(|e| {
                    // The export error is a `TypeError` map (cyclic value, task, too deep).
                    NativeError::Throw(e)
                })?;
                let slot = active.try_borrow().map_err(|_| no_context())?;
                let a = slot.as_ref().ok_or_else(no_context)?;
                let mut contexts = a.contexts.try_borrow_mut().map_err(|_| no_context())?;
                contexts.set(&a.name, key, value).map_err(context_error)?;
                Ok(Value::Nil)
            });
        }
        let active = self.active.clone();
        if !engine.has_native(CONTEXT_NAME) {
            engine.register_native(CONTEXT_NAME, move |_: &mut NativeCtx<'_>, args| {
                arity(CONTEXT_NAME, 0, args)?;
                let slot = active.try_borrow().map_err(|_| no_context())?;
                let a = slot.as_ref().ok_or_else(no_context)?;
                Ok(Value::str(&*a.name))
            });
        }
    }

    /// Runs one slice of `exec` ([`Execution::run`]), an execution running in context `name`
    /// of `contexts`, with the natives pointed at that context.
    pub fn run(
        &self,
        contexts: &SharedContexts,
        name: &Rc<str>,
        exec: &mut Execution,
        now: Instant,
    ) -> Status {
        self.within(contexts, name, || exec.run(now))
    }

    /// Runs `slice` (a slice of an execution, or a whole quick run) in context `name` of
    /// `contexts`, with the natives pointed at that context.
    pub fn within<R>(
        &self,
        contexts: &SharedContexts,
        name: &Rc<str>,
        slice: impl FnOnce() -> R,
    ) -> R {
        let _in = self.enter(contexts, name);
        slice()
    }

    /// Points the natives at `name` in `contexts` until the returned guard is dropped.
    fn enter(&self, contexts: &SharedContexts, name: &Rc<str>) -> Entered<'_> {
        if let Ok(mut slot) = self.active.try_borrow_mut() {
            *slot = Some(Active {
                contexts: contexts.clone(),
                name: name.clone(),
            });
        }
        Entered { natives: self }
    }
}

/// A stored (data-only, depth-bounded) value as a fresh VM value.
fn to_value(p: &Portable) -> Result<Value, NativeError> {
    skiff_vm::interp::convert::import_data(p, "context values").map_err(NativeError::Throw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_copies_on_write() {
        let mut c = Contexts::default();
        c.create("a", BTreeMap::new()).unwrap();
        c.set("a", "x", Portable::Int(1)).unwrap();
        c.fork("a", "b").unwrap();
        assert!(Arc::ptr_eq(&c.state("a").unwrap(), &c.state("b").unwrap()));
        c.set("b", "x", Portable::Int(2)).unwrap();
        c.set("a", "y", Portable::Int(3)).unwrap();
        assert_eq!(c.get("a", "x").unwrap(), Some(&Portable::Int(1)));
        assert_eq!(c.get("b", "x").unwrap(), Some(&Portable::Int(2)));
        assert_eq!(c.get("b", "y").unwrap(), None);
        c.set("a", "y", Portable::Nil).unwrap();
        assert_eq!(c.state("a").unwrap().len(), 1);
    }

    #[test]
    fn errors_are_typed() {
        let mut c = Contexts::with_names(&["default", "gpu", "gpu"]).unwrap();
        assert_eq!(c.names(), vec!["default", "gpu"]);
        assert_eq!(
            c.create("gpu", BTreeMap::new()),
            Err(ContextError::Exists("gpu".into()))
        );
        assert_eq!(
            c.fork("nope", "x"),
            Err(ContextError::Unknown("nope".into()))
        );
        assert_eq!(c.fork("gpu", ""), Err(ContextError::InvalidName("".into())));
        let f = Portable::List(vec![Portable::Function {
            func: skiff_vm::FunctionId {
                blob: skiff_vm::BlobHash::of(b"x"),
                member: 0,
            },
            captures: Vec::new(),
        }]);
        assert_eq!(
            c.set("gpu", "k", f),
            Err(ContextError::Function("k".into()))
        );
        assert!(c.get("tpu", "k").is_err());
    }
}
