//! The instruction set, defined once.
//!
//! Every instruction is one row of the `instructions!` table below: its name, its operands
//! (each a fixed-width little-endian integer), its opcode byte, its stack effect and its
//! control flow. From that one table come the [`Instr`] enum the interpreter dispatches on,
//! the canonical byte encoder and decoder used by the blob format, the stack effects and
//! flow kinds the verifier checks, the mnemonic the disassembler prints and the generated
//! opcode table in `docs/opcodes.md` (see [`markdown_table`]).
//!
//! Invariants:
//! - One opcode byte per instruction, operands at fixed widths: every instruction has exactly
//!   one encoding, so blob bytes are canonical by construction.
//! - `stack_effect` gives `(pops, pushes)` for the fall-through edge. Ops whose taken branch
//!   differs ([`Flow::Branch`]) are described in their doc line and handled by the verifier.
//! - Operands named `target`/`handler`/`fallback` are absolute instruction indices in the same
//!   function; `slot` indexes the frame's locals; `index` of `Const` indexes the constant pool;
//!   `func` indexes the function's reference table; `native` its native-name table.

/// How control leaves an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Continues at the next instruction.
    Next,
    /// Always continues at its `target`.
    Jump,
    /// Either continues at the next instruction or at its branch operand.
    Branch,
    /// Leaves the function (`Return`) or unwinds (`Throw`); no successor in this function.
    Exit,
}

/// Reasons an encoded instruction stream is rejected by [`decode_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeInstrError {
    #[error("unknown opcode 0x{opcode:02x} at byte {offset}")]
    UnknownOpcode { opcode: u8, offset: usize },
    #[error("instruction at byte {offset} is truncated")]
    Truncated { offset: usize },
}

macro_rules! instructions {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident { $($field:ident : $ty:ident),* } = $code:literal,
            stack($($pop:expr)?, $($push:expr)?), $flow:ident;
    )*) => {
        /// One decoded instruction. See the module doc and `docs/opcodes.md`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Instr {
            $( $(#[doc = $doc])* $name { $($field: $ty),* }, )*
        }

        impl Instr {
            /// The opcode byte of this instruction.
            pub fn opcode(&self) -> u8 {
                match self { $( Instr::$name { .. } => $code, )* }
            }

            /// The mnemonic printed by the disassembler.
            pub fn mnemonic(&self) -> &'static str {
                match self { $( Instr::$name { .. } => stringify!($name), )* }
            }

            /// `(pops, pushes)` on the fall-through edge.
            #[allow(unused_variables)]
            pub fn stack_effect(&self) -> (usize, usize) {
                match *self {
                    $( Instr::$name { $($field),* } => {
                        (0 $(+ ($pop))?, 0 $(+ ($push))?)
                    } )*
                }
            }

            /// How control leaves this instruction.
            pub fn flow(&self) -> Flow {
                match self { $( Instr::$name { .. } => Flow::$flow, )* }
            }

            /// The operands as `(name, value)` pairs, in encoding order.
            pub fn operands(&self) -> Vec<(&'static str, i64)> {
                match *self {
                    $( Instr::$name { $($field),* } => vec![$((stringify!($field), i64::from($field))),*], )*
                }
            }

            /// Appends the canonical encoding of this instruction.
            pub fn encode(&self, out: &mut Vec<u8>) {
                match *self {
                    $( Instr::$name { $($field),* } => {
                        out.push($code);
                        $( out.extend_from_slice(&$field.to_le_bytes()); )*
                    } )*
                }
            }

            /// Decodes one instruction from the start of `bytes`, returning it and its length.
            pub fn decode(bytes: &[u8], offset: usize) -> Result<(Instr, usize), DecodeInstrError> {
                let opcode = *bytes.get(offset).ok_or(DecodeInstrError::Truncated { offset })?;
                #[allow(unused_mut)]
                let mut pos = offset + 1;
                match opcode {
                    $( $code => {
                        $(
                            let width = std::mem::size_of::<$ty>();
                            let raw = bytes
                                .get(pos..pos + width)
                                .ok_or(DecodeInstrError::Truncated { offset })?;
                            let $field = $ty::from_le_bytes(raw.try_into().map_err(|_| DecodeInstrError::Truncated { offset })?);
                            pos += width;
                        )*
                        Ok((Instr::$name { $($field),* }, pos - offset))
                    } )*
                    _ => Err(DecodeInstrError::UnknownOpcode { opcode, offset }),
                }
            }
        }

        /// Every instruction as `(opcode, mnemonic, operands, stack effect, doc)`, for docs.
        pub const TABLE: &[(u8, &str, &[&str], &str, &str)] = &[
            $( ($code, stringify!($name), &[$(concat!(stringify!($field), ": ", stringify!($ty))),*],
                concat!("pops ", $(stringify!($pop),)? " pushes ", $(stringify!($push))?),
                concat!($($doc, " "),*)), )*
        ];
    };
}

instructions! {
    // ---- constants and the operand stack ----
    /// `→ nil`
    Nil {} = 0x00, stack(0, 1), Next;
    /// `→ true`
    True {} = 0x01, stack(0, 1), Next;
    /// `→ false`
    False {} = 0x02, stack(0, 1), Next;
    /// `→ int` a small integer immediate.
    Int { value: i32 } = 0x03, stack(0, 1), Next;
    /// `→ v` constant `index` of the function's pool.
    Const { index: u32 } = 0x04, stack(0, 1), Next;
    /// `v →`
    Pop {} = 0x05, stack(1, 0), Next;
    /// `v → v v`
    Dup {} = 0x06, stack(1, 2), Next;

    // ---- locals, cells, upvalues ----
    /// `→ v` reads plain local `slot`.
    GetLocal { slot: u16 } = 0x10, stack(0, 1), Next;
    /// `v →` writes plain local `slot`.
    SetLocal { slot: u16 } = 0x11, stack(1, 0), Next;
    /// `v →` puts a fresh cell holding `v` in cell local `slot` (declaration, loop iteration).
    NewCell { slot: u16 } = 0x12, stack(1, 0), Next;
    /// `→ v` reads through the cell in cell local `slot`.
    GetCell { slot: u16 } = 0x13, stack(0, 1), Next;
    /// `v →` writes through the cell in cell local `slot`.
    SetCell { slot: u16 } = 0x14, stack(1, 0), Next;
    /// `→ v` reads upvalue `index` of the running closure.
    GetUpval { index: u16 } = 0x15, stack(0, 1), Next;
    /// `v →` writes upvalue `index` of the running closure.
    SetUpval { index: u16 } = 0x16, stack(1, 0), Next;
    /// `→ cell` pushes the cell of cell local `slot`, to be consumed by `Closure`.
    CaptureLocal { slot: u16 } = 0x17, stack(0, 1), Next;
    /// `→ cell` pushes upvalue cell `index`, to be consumed by `Closure`.
    CaptureUpval { index: u16 } = 0x18, stack(0, 1), Next;

    // ---- functions ----
    /// `→ f` the function `func` of the reference table, with no captures.
    Function { func: u32 } = 0x20, stack(0, 1), Next;
    /// `cell₁..cellₙ → f` a closure of `func` over `captures` cells (in upvalue order).
    Closure { func: u32, captures: u16 } = 0x21, stack(captures as usize, 1), Next;
    /// `f a₁..aₙ → r` calls the function value below the `argc` arguments.
    Call { argc: u8 } = 0x22, stack(argc as usize + 1, 1), Next;
    /// `a₁..aₙ → r` calls reference `func` directly (no function value on the stack).
    CallFunction { func: u32, argc: u8 } = 0x23, stack(argc as usize, 1), Next;
    /// `a₁..aₙ → r` calls builtin or host native `native` of the native-name table.
    CallNative { native: u16, argc: u8 } = 0x24, stack(argc as usize, 1), Next;
    /// `v →` returns `v` to the caller.
    Return {} = 0x25, stack(1, 0), Exit;

    // ---- arithmetic and comparison ----
    /// `a b → a+b` numbers, or concatenation of two strings, bytes or lists.
    Add {} = 0x30, stack(2, 1), Next;
    /// `a b → a-b`
    Sub {} = 0x31, stack(2, 1), Next;
    /// `a b → a*b`
    Mul {} = 0x32, stack(2, 1), Next;
    /// `a b → a/b` int/int truncates toward zero.
    Div {} = 0x33, stack(2, 1), Next;
    /// `a b → a%b` remainder with the sign of `a`.
    Rem {} = 0x34, stack(2, 1), Next;
    /// `a → -a`
    Neg {} = 0x35, stack(1, 1), Next;
    /// `a → not a`
    Not {} = 0x36, stack(1, 1), Next;
    /// `a → a+value` (integer immediate; same rules as `Add`).
    AddInt { value: i32 } = 0x37, stack(1, 1), Next;
    /// `a b → a==b`
    Eq {} = 0x38, stack(2, 1), Next;
    /// `a b → a!=b`
    Ne {} = 0x39, stack(2, 1), Next;
    /// `a b → a<b`
    Lt {} = 0x3a, stack(2, 1), Next;
    /// `a b → a<=b`
    Le {} = 0x3b, stack(2, 1), Next;
    /// `a b → a>b`
    Gt {} = 0x3c, stack(2, 1), Next;
    /// `a b → a>=b`
    Ge {} = 0x3d, stack(2, 1), Next;
    /// `a b → a..b`
    Range {} = 0x3e, stack(2, 1), Next;

    // ---- control flow ----
    /// jumps to `target`.
    Jump { target: u32 } = 0x40, stack(0, 0), Jump;
    /// `c →` jumps to `target` when `c` is falsy.
    JumpIfFalse { target: u32 } = 0x41, stack(1, 0), Branch;
    /// `c →` jumps to `target` when `c` is truthy.
    JumpIfTrue { target: u32 } = 0x42, stack(1, 0), Branch;
    /// `c → ` falls through popping `c` when truthy; jumps to `target` keeping `c` when falsy (`and`).
    JumpIfFalseOrPop { target: u32 } = 0x43, stack(1, 0), Branch;
    /// `c → ` falls through popping `c` when falsy; jumps to `target` keeping `c` when truthy (`or`).
    JumpIfTrueOrPop { target: u32 } = 0x44, stack(1, 0), Branch;
    /// `a b →` jumps to `target` unless `a < b` (fused compare-and-branch).
    JumpIfNotLt { target: u32 } = 0x45, stack(2, 0), Branch;
    /// `a b →` jumps to `target` unless `a <= b`.
    JumpIfNotLe { target: u32 } = 0x46, stack(2, 0), Branch;
    /// `a b →` jumps to `target` unless `a > b`.
    JumpIfNotGt { target: u32 } = 0x47, stack(2, 0), Branch;
    /// `a b →` jumps to `target` unless `a >= b`.
    JumpIfNotGe { target: u32 } = 0x48, stack(2, 0), Branch;
    /// `a b →` jumps to `target` unless `a == b`.
    JumpIfNotEq { target: u32 } = 0x49, stack(2, 0), Branch;
    /// `a b →` jumps to `target` unless `a != b`.
    JumpIfNotNe { target: u32 } = 0x4a, stack(2, 0), Branch;

    // ---- collections and iteration ----
    /// `v₁..vₙ → list`
    List { len: u32 } = 0x50, stack(len as usize, 1), Next;
    /// `k₁ v₁..kₙ vₙ → map` (insertion order as listed).
    Map { len: u32 } = 0x51, stack(2 * len as usize, 1), Next;
    /// `c k → c[k]`
    GetIndex {} = 0x52, stack(2, 1), Next;
    /// `c k v →` stores `c[k] = v`.
    SetIndex {} = 0x53, stack(3, 0), Next;
    /// `c → c cursor` starts iterating a list, range or map (anything else: TypeError).
    IterStart {} = 0x54, stack(1, 2), Next;
    /// `c cursor → c cursor' x` next element (map: key); when done pops both and jumps to `target`.
    IterNext { target: u32 } = 0x55, stack(2, 3), Branch;
    /// `c cursor → c cursor' k v` next pair (list: index and element; map: key and value);
    /// when done pops both and jumps to `target`.
    IterNext2 { target: u32 } = 0x56, stack(2, 4), Branch;

    // ---- errors ----
    /// installs a handler: an error raised before the matching `TryEnd` truncates the operand
    /// stack to its depth here, pushes the error value and continues at `handler`.
    TryBegin { handler: u32 } = 0x60, stack(0, 0), Next;
    /// removes the innermost handler of this frame.
    TryEnd {} = 0x61, stack(0, 0), Next;
    /// `v →` raises `v`.
    Throw {} = 0x62, stack(1, 0), Exit;

    // ---- tasks and distribution ----
    /// `f → task` starts a zero-argument closure as a task of this execution.
    Spawn {} = 0x70, stack(1, 1), Next;
    /// `task → v` waits for the task; rethrows its error.
    Await {} = 0x71, stack(1, 1), Next;
    /// `target a₁..aₙ → r` runs reference `func` (arity `argc`) on a peer with copies of the args.
    Remote { func: u32, argc: u8 } = 0x72, stack(argc as usize + 1, 1), Next;
    /// like `Remote`, but when every peer failed pops target and args and jumps to `fallback`.
    RemoteElse { func: u32, argc: u8, fallback: u32 } = 0x73, stack(argc as usize + 1, 1), Branch;
}

/// Decodes a whole instruction stream; every byte must belong to an instruction.
pub fn decode_code(bytes: &[u8]) -> Result<Vec<Instr>, DecodeInstrError> {
    let mut code = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let (instr, len) = Instr::decode(bytes, offset)?;
        code.push(instr);
        offset += len;
    }
    Ok(code)
}

/// Encodes an instruction stream canonically.
pub fn encode_code(code: &[Instr], out: &mut Vec<u8>) {
    for instr in code {
        instr.encode(out);
    }
}

impl Instr {
    /// The operand naming another instruction of the function — a jump or branch target,
    /// a `TryBegin` handler, a `RemoteElse` fallback — for code generators to patch.
    pub fn target_mut(&mut self) -> Option<&mut u32> {
        match self {
            Instr::Jump { target }
            | Instr::JumpIfFalse { target }
            | Instr::JumpIfTrue { target }
            | Instr::JumpIfFalseOrPop { target }
            | Instr::JumpIfTrueOrPop { target }
            | Instr::JumpIfNotLt { target }
            | Instr::JumpIfNotLe { target }
            | Instr::JumpIfNotGt { target }
            | Instr::JumpIfNotGe { target }
            | Instr::JumpIfNotEq { target }
            | Instr::JumpIfNotNe { target }
            | Instr::IterNext { target }
            | Instr::IterNext2 { target } => Some(target),
            Instr::TryBegin { handler } => Some(handler),
            Instr::RemoteElse { fallback, .. } => Some(fallback),
            _ => None,
        }
    }

    /// The branch destination of a `Jump` or `Branch` instruction (not `TryBegin`'s handler,
    /// which is entered by unwinding, not by control flow).
    pub fn branch_target(&self) -> Option<u32> {
        match self {
            Instr::TryBegin { .. } => None,
            other => other.clone().target_mut().map(|t| *t),
        }
    }
}

/// The opcode table as Markdown, generated from the one definition (`docs/opcodes.md`).
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| opcode | instruction | operands | stack | description |\n|---|---|---|---|---|\n",
    );
    for (code, name, operands, stack, doc) in TABLE {
        out.push_str(&format!(
            "| 0x{code:02x} | `{name}` | {} | {stack} | {} |\n",
            operands.join(", "),
            doc.trim()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (code, name, ..) in TABLE {
            assert!(
                seen.insert(*code),
                "opcode 0x{code:02x} ({name}) used twice"
            );
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let code = vec![
            Instr::Int { value: -7 },
            Instr::Const { index: 70000 },
            Instr::Closure {
                func: 3,
                captures: 2,
            },
            Instr::RemoteElse {
                func: 1,
                argc: 2,
                fallback: 9,
            },
            Instr::Return {},
        ];
        let mut bytes = Vec::new();
        encode_code(&code, &mut bytes);
        assert_eq!(decode_code(&bytes).unwrap(), code);
        assert!(matches!(
            decode_code(&bytes[..bytes.len() - 2]),
            Err(DecodeInstrError::Truncated { .. })
        ));
        assert!(matches!(
            decode_code(&[0xff]),
            Err(DecodeInstrError::UnknownOpcode { opcode: 0xff, .. })
        ));
    }

    #[test]
    fn stack_effects_use_operands() {
        assert_eq!(Instr::Call { argc: 3 }.stack_effect(), (4, 1));
        assert_eq!(Instr::Map { len: 2 }.stack_effect(), (4, 1));
        assert_eq!(Instr::Nil {}.stack_effect(), (0, 1));
    }
}
