//! Rust ↔ Skiff value conversions for typed host natives and call results.
//!
//! [`FromValue`]/[`IntoValue`] convert at the native boundary (inside an execution, where
//! values are the VM's own); [`FromPortable`]/[`IntoPortable`] convert arguments and results
//! of host calls (outside any execution, where values are deep copies).
//!
//! Invariant: a conversion that does not fit is a `TypeError` naming the expected and the
//! actual type, never a panic.

use skiff_vm::native::NativeError;
use skiff_vm::{Portable, Value};

fn mismatch(expected: &str, got: &str) -> NativeError {
    NativeError::error("TypeError", format!("expected {expected}, got {got}"))
}

/// A Rust type a native can take as an argument.
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> Result<Self, NativeError>;
}

/// A Rust type a native can return.
pub trait IntoValue {
    fn into_value(self) -> Value;
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Self, NativeError> {
        Ok(value.clone())
    }
}
impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, NativeError> {
        match value {
            Value::Str(s) => Ok(s.as_str().to_owned()),
            other => Err(mismatch("string", other.type_name())),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, NativeError> {
        match value {
            Value::Bytes(b) => Ok(b.as_slice().to_vec()),
            other => Err(mismatch("bytes", other.type_name())),
        }
    }
}
impl<T: FromValue> FromValue for Vec<T> {
    fn from_value(value: &Value) -> Result<Self, NativeError> {
        match value {
            Value::List(list) => list.items().iter().map(T::from_value).collect(),
            other => Err(mismatch("list", other.type_name())),
        }
    }
}

impl IntoValue for Value {
    fn into_value(self) -> Value {
        self
    }
}
impl IntoValue for () {
    fn into_value(self) -> Value {
        Value::Nil
    }
}
impl IntoValue for String {
    fn into_value(self) -> Value {
        Value::str(self)
    }
}
impl IntoValue for &str {
    fn into_value(self) -> Value {
        Value::str(self)
    }
}
impl<T: IntoValue> IntoValue for Option<T> {
    fn into_value(self) -> Value {
        self.map_or(Value::Nil, T::into_value)
    }
}
impl<T: IntoValue> IntoValue for Vec<T> {
    fn into_value(self) -> Value {
        Value::list(self.into_iter().map(T::into_value).collect())
    }
}

/// What a typed native returns: a value, or a `Result` whose error becomes a `HostError`.
pub trait IntoNativeResult {
    fn into_native_result(self) -> Result<Value, NativeError>;
}
impl<T: IntoValue> IntoNativeResult for T {
    fn into_native_result(self) -> Result<Value, NativeError> {
        Ok(self.into_value())
    }
}
impl<T: IntoValue, E: std::fmt::Display> IntoNativeResult for Result<T, E> {
    fn into_native_result(self) -> Result<Value, NativeError> {
        self.map(T::into_value)
            .map_err(|e| NativeError::error("HostError", e.to_string()))
    }
}

/// A Rust type that can be read from a call result.
pub trait FromPortable: Sized {
    fn from_portable(value: Portable) -> Result<Self, String>;
}

/// A Rust type that can be passed as a call argument.
pub trait IntoPortable {
    fn into_portable(self) -> Portable;
}

impl FromPortable for Portable {
    fn from_portable(value: Portable) -> Result<Self, String> {
        Ok(value)
    }
}
impl FromPortable for String {
    fn from_portable(value: Portable) -> Result<Self, String> {
        match value {
            Portable::Str(s) => Ok(s),
            other => Err(format!("expected string, got {other:?}")),
        }
    }
}
impl<T: FromPortable> FromPortable for Vec<T> {
    fn from_portable(value: Portable) -> Result<Self, String> {
        match value {
            Portable::List(items) => items.into_iter().map(T::from_portable).collect(),
            other => Err(format!("expected list, got {other:?}")),
        }
    }
}

impl IntoPortable for Portable {
    fn into_portable(self) -> Portable {
        self
    }
}
impl IntoPortable for &str {
    fn into_portable(self) -> Portable {
        Portable::Str(self.to_owned())
    }
}
impl IntoPortable for String {
    fn into_portable(self) -> Portable {
        Portable::Str(self)
    }
}
impl<T: IntoPortable> IntoPortable for Vec<T> {
    fn into_portable(self) -> Portable {
        Portable::List(self.into_iter().map(T::into_portable).collect())
    }
}

/// The four conversions of a scalar held in the `$variant` of both [`Value`] and [`Portable`]
/// (`$name` is its Skiff type name); reading also accepts the `widen` variant, cast with `as`.
macro_rules! scalar {
    ($t:ty, $name:literal, $variant:ident $(, widen $wider:ident)?) => {
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self, NativeError> {
                match value {
                    Value::$variant(x) => Ok(*x),
                    $(Value::$wider(x) => Ok(*x as $t),)?
                    other => Err(mismatch($name, other.type_name())),
                }
            }
        }
        impl IntoValue for $t {
            fn into_value(self) -> Value {
                Value::$variant(self)
            }
        }
        impl FromPortable for $t {
            fn from_portable(value: Portable) -> Result<Self, String> {
                match value {
                    Portable::$variant(x) => Ok(x),
                    $(Portable::$wider(x) => Ok(x as $t),)?
                    other => Err(format!("expected {}, got {other:?}", $name)),
                }
            }
        }
        impl IntoPortable for $t {
            fn into_portable(self) -> Portable {
                Portable::$variant(self)
            }
        }
    };
}

scalar!(i64, "int", Int);
scalar!(f64, "float", Float, widen Int);
scalar!(bool, "bool", Bool);

/// Argument lists for calls: tuples of [`IntoPortable`] values.
pub trait IntoArgs {
    fn into_args(self) -> Vec<Portable>;
}
impl IntoArgs for Vec<Portable> {
    fn into_args(self) -> Vec<Portable> {
        self
    }
}

/// Typed host functions: closures of up to four [`FromValue`] arguments.
pub trait IntoNative<Args> {
    fn arity(&self) -> usize;
    fn call(&self, args: &[Value]) -> Result<Value, NativeError>;
}

macro_rules! tuples {
    ($($n:literal => ($($t:ident $i:tt),*);)*) => {$(
        impl<$($t: IntoPortable),*> IntoArgs for ($($t,)*) {
            #[allow(clippy::unused_unit)]
            fn into_args(self) -> Vec<Portable> {
                vec![$(self.$i.into_portable()),*]
            }
        }
        impl<F, R, $($t: FromValue),*> IntoNative<($($t,)*)> for F
        where
            F: Fn($($t),*) -> R,
            R: IntoNativeResult,
        {
            fn arity(&self) -> usize {
                $n
            }
            #[allow(unused_variables)]
            fn call(&self, args: &[Value]) -> Result<Value, NativeError> {
                (self)($($t::from_value(&args[$i])?),*).into_native_result()
            }
        }
    )*};
}

tuples! {
    0 => ();
    1 => (A 0);
    2 => (A 0, B 1);
    3 => (A 0, B 1, C 2);
    4 => (A 0, B 1, C 2, D 3);
}
