//! Lexer: source text to tokens with byte spans.
//!
//! Every token records whether it is the first token on its source line
//! ([`Token::line_start`]); the parser needs this for the one newline-sensitive rule of the
//! language (a `(` or `[` that begins a line starts a new statement).
//!
//! Invariants:
//! - Lexing never fails as a whole: a malformed token yields a diagnostic and an
//!   [`Tok::Error`] token (or a best-effort literal), and lexing continues.
//! - Spans are byte ranges into the source on char boundaries; the token stream always ends
//!   with exactly one [`Tok::Eof`].

use crate::Diagnostic;
use std::borrow::Cow;
use std::ops::Range;

/// A token kind with its payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    // keywords
    Let,
    Const,
    Fn,
    Return,
    If,
    Else,
    While,
    For,
    In,
    Break,
    Continue,
    True,
    False,
    Nil,
    And,
    Or,
    Not,
    Remote,
    Spawn,
    Await,
    Try,
    Catch,
    Throw,
    // punctuation
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Colon,
    Semi,
    Dot,
    DotDot,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Assign,
    PlusAssign,
    MinusAssign,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    /// A malformed token (already reported).
    Error,
    Eof,
}

impl Tok {
    /// How the token is described in "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(name) => format!("identifier `{name}`"),
            Tok::Int(_) | Tok::Float(_) => "number".into(),
            Tok::Str(_) => "string".into(),
            Tok::Bytes(_) => "byte string".into(),
            Tok::Error => "invalid token".into(),
            Tok::Eof => "end of file".into(),
            other => format!("`{}`", other.text()),
        }
    }

    fn text(&self) -> &'static str {
        match self {
            Tok::Let => "let",
            Tok::Const => "const",
            Tok::Fn => "fn",
            Tok::Return => "return",
            Tok::If => "if",
            Tok::Else => "else",
            Tok::While => "while",
            Tok::For => "for",
            Tok::In => "in",
            Tok::Break => "break",
            Tok::Continue => "continue",
            Tok::True => "true",
            Tok::False => "false",
            Tok::Nil => "nil",
            Tok::And => "and",
            Tok::Or => "or",
            Tok::Not => "not",
            Tok::Remote => "remote",
            Tok::Spawn => "spawn",
            Tok::Await => "await",
            Tok::Try => "try",
            Tok::Catch => "catch",
            Tok::Throw => "throw",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::Comma => ",",
            Tok::Colon => ":",
            Tok::Semi => ";",
            Tok::Dot => ".",
            Tok::DotDot => "..",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Assign => "=",
            Tok::PlusAssign => "+=",
            Tok::MinusAssign => "-=",
            Tok::EqEq => "==",
            Tok::NotEq => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            _ => "?",
        }
    }
}

fn keyword(word: &str) -> Option<Tok> {
    Some(match word {
        "let" => Tok::Let,
        "const" => Tok::Const,
        "fn" => Tok::Fn,
        "return" => Tok::Return,
        "if" => Tok::If,
        "else" => Tok::Else,
        "while" => Tok::While,
        "for" => Tok::For,
        "in" => Tok::In,
        "break" => Tok::Break,
        "continue" => Tok::Continue,
        "true" => Tok::True,
        "false" => Tok::False,
        "nil" => Tok::Nil,
        "and" => Tok::And,
        "or" => Tok::Or,
        "not" => Tok::Not,
        "remote" => Tok::Remote,
        "spawn" => Tok::Spawn,
        "await" => Tok::Await,
        "try" => Tok::Try,
        "catch" => Tok::Catch,
        "throw" => Tok::Throw,
        _ => return None,
    })
}

/// One token.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub span: Range<usize>,
    /// True when no other token precedes this one on its line.
    pub line_start: bool,
}

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    diags: &'a mut Vec<Diagnostic>,
}

/// Most tokens [`lex`] makes room for before reading them: 64k tokens (3.5 MiB), a ~200 KB
/// script's worth. Past that the list grows with the tokens actually read, so a large
/// source of comments or whitespace reserves nothing for tokens it does not have.
const TOKENS_RESERVED: usize = 1 << 16;

/// Splits `src` into tokens, appending lexical errors to `diags`.
pub fn lex(src: &str, diags: &mut Vec<Diagnostic>) -> Vec<Token> {
    let mut lx = Lexer {
        src,
        bytes: src.as_bytes(),
        pos: 0,
        diags,
    };
    // About one token per three bytes of source: sized once rather than grown by doubling
    // (each step copies every token so far), up to `TOKENS_RESERVED`.
    let mut out = Vec::with_capacity((src.len() / 3 + 1).min(TOKENS_RESERVED));
    let mut line_start = true;
    loop {
        // Skip whitespace and comments, noting newlines.
        while lx.pos < lx.bytes.len() {
            match lx.bytes[lx.pos] {
                b'\n' => {
                    line_start = true;
                    lx.pos += 1;
                }
                b' ' | b'\t' | b'\r' => lx.pos += 1,
                b'/' if lx.bytes.get(lx.pos + 1) == Some(&b'/') => {
                    while lx.pos < lx.bytes.len() && lx.bytes[lx.pos] != b'\n' {
                        lx.pos += 1;
                    }
                }
                _ => break,
            }
        }
        let start = lx.pos;
        if start >= lx.bytes.len() {
            out.push(Token {
                tok: Tok::Eof,
                span: start..start,
                line_start,
            });
            return out;
        }
        let tok = lx.token();
        out.push(Token {
            tok,
            span: start..lx.pos,
            line_start,
        });
        line_start = false;
    }
}

/// A number literal's text without its `_` separators: borrowed when it has none (most).
fn without_separators(text: &str) -> Cow<'_, str> {
    if text.contains('_') {
        Cow::Owned(text.replace('_', ""))
    } else {
        Cow::Borrowed(text)
    }
}

/// A piece of the body of a string or byte string literal.
enum Piece {
    /// A common escape (`\n`, `\t`, ...), consumed: the byte it stands for.
    Byte(u8),
    /// Another escape: the backslash is at `esc_start`, the cursor on `letter`.
    Escape { esc_start: usize, letter: u8 },
    /// A character that is not an escape, starting with this byte at the cursor.
    Plain(u8),
}

impl Lexer<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(message, span));
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    fn token(&mut self) -> Tok {
        let start = self.pos;
        let c = self.bytes[self.pos];
        if c == b'b' && self.peek(1) == Some(b'"') {
            self.pos += 2;
            return self.byte_string(start);
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while self
                .peek(0)
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
            {
                self.pos += 1;
            }
            let word = &self.src[start..self.pos];
            return keyword(word).unwrap_or_else(|| Tok::Ident(word.to_string()));
        }
        if c.is_ascii_digit() {
            return self.number(start);
        }
        if c == b'"' {
            self.pos += 1;
            return self.string(start);
        }
        let two = |a: u8| self.peek(1) == Some(a);
        let (tok, len) = match c {
            b'(' => (Tok::LParen, 1),
            b')' => (Tok::RParen, 1),
            b'[' => (Tok::LBracket, 1),
            b']' => (Tok::RBracket, 1),
            b'{' => (Tok::LBrace, 1),
            b'}' => (Tok::RBrace, 1),
            b',' => (Tok::Comma, 1),
            b':' => (Tok::Colon, 1),
            b';' => (Tok::Semi, 1),
            b'.' if two(b'.') => (Tok::DotDot, 2),
            b'.' => (Tok::Dot, 1),
            b'+' if two(b'=') => (Tok::PlusAssign, 2),
            b'+' => (Tok::Plus, 1),
            b'-' if two(b'=') => (Tok::MinusAssign, 2),
            b'-' => (Tok::Minus, 1),
            b'*' => (Tok::Star, 1),
            b'/' => (Tok::Slash, 1),
            b'%' => (Tok::Percent, 1),
            b'=' if two(b'=') => (Tok::EqEq, 2),
            b'=' => (Tok::Assign, 1),
            b'!' if two(b'=') => (Tok::NotEq, 2),
            b'<' if two(b'=') => (Tok::Le, 2),
            b'<' => (Tok::Lt, 1),
            b'>' if two(b'=') => (Tok::Ge, 2),
            b'>' => (Tok::Gt, 1),
            _ => {
                let ch = self.src[start..].chars().next().unwrap_or('?');
                self.pos += ch.len_utf8();
                let msg = if ch == '!' {
                    "unexpected `!`; use `not` for negation".to_string()
                } else if ch == '&' || ch == '|' {
                    format!("unexpected `{ch}`; use `and` / `or`")
                } else {
                    format!("unexpected character `{}`", ch.escape_debug())
                };
                self.error(start..self.pos, msg);
                return Tok::Error;
            }
        };
        self.pos += len;
        tok
    }

    fn number(&mut self, start: usize) -> Tok {
        if self.bytes[start] == b'0' && matches!(self.peek(1), Some(b'x' | b'X')) {
            self.pos += 2;
            let digits_start = self.pos;
            while self
                .peek(0)
                .is_some_and(|c| c.is_ascii_hexdigit() || c == b'_')
            {
                self.pos += 1;
            }
            let digits = without_separators(&self.src[digits_start..self.pos]);
            if digits.is_empty() {
                self.error(start..self.pos, "hexadecimal literal has no digits");
                return Tok::Int(0);
            }
            return match i64::from_str_radix(&digits, 16) {
                Ok(v) => Tok::Int(v),
                Err(_) => {
                    self.error(
                        start..self.pos,
                        "integer literal does not fit in a 64-bit signed integer",
                    );
                    Tok::Int(0)
                }
            };
        }
        let mut is_float = false;
        self.digits();
        if self.peek(0) == Some(b'.') && self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            is_float = true;
            self.pos += 1;
            self.digits();
        }
        if matches!(self.peek(0), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.peek(0), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                is_float = true;
                self.digits();
            } else {
                self.pos = save + 1;
                self.error(start..self.pos, "exponent has no digits");
                return Tok::Float(0.0);
            }
        }
        // An identifier character glued to a number (`12abc`) is an error.
        if self
            .peek(0)
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        {
            while self
                .peek(0)
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
            {
                self.pos += 1;
            }
            self.error(start..self.pos, "invalid number literal");
            return Tok::Error;
        }
        let text = without_separators(&self.src[start..self.pos]);
        if is_float {
            match text.parse::<f64>() {
                Ok(v) => Tok::Float(v),
                Err(_) => {
                    self.error(start..self.pos, "invalid float literal");
                    Tok::Float(0.0)
                }
            }
        } else {
            match text.parse::<i64>() {
                Ok(v) => Tok::Int(v),
                Err(_) => {
                    self.error(
                        start..self.pos,
                        "integer literal does not fit in a 64-bit signed integer",
                    );
                    Tok::Int(0)
                }
            }
        }
    }

    fn digits(&mut self) {
        while self
            .peek(0)
            .is_some_and(|c| c.is_ascii_digit() || c == b'_')
        {
            self.pos += 1;
        }
    }

    /// Parses the common escapes; returns the byte value, or None (already reported).
    fn simple_escape(&self, c: u8) -> Option<u8> {
        Some(match c {
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            b'\\' => b'\\',
            b'"' => b'"',
            b'0' => 0,
            _ => return None,
        })
    }

    /// Consumes the (possibly multi-byte) character at the cursor.
    fn bump_char(&mut self) -> char {
        let ch = self.src[self.pos..].chars().next().unwrap_or('?');
        self.pos += ch.len_utf8();
        ch
    }

    /// The next piece of the body of a string literal of kind `what`, or `None` at its end:
    /// the closing quote (consumed) or the end of the input (reported).
    fn literal_piece(&mut self, start: usize, what: &str) -> Option<Piece> {
        let unterminated = |lx: &mut Self| lx.error(start..lx.pos, format!("unterminated {what}"));
        let Some(c) = self.peek(0) else {
            unterminated(self);
            return None;
        };
        match c {
            b'"' => {
                self.pos += 1;
                None
            }
            b'\\' => {
                let esc_start = self.pos;
                self.pos += 1;
                let Some(letter) = self.peek(0) else {
                    unterminated(self);
                    return None;
                };
                Some(match self.simple_escape(letter) {
                    Some(b) => {
                        self.pos += 1;
                        Piece::Byte(b)
                    }
                    None => Piece::Escape { esc_start, letter },
                })
            }
            _ => Some(Piece::Plain(c)),
        }
    }

    /// Consumes the unknown escape letter at the cursor and reports it (`context` ends the
    /// message).
    fn unknown_escape(&mut self, esc_start: usize, context: &str) {
        let ch = self.bump_char();
        self.error(
            esc_start..self.pos,
            format!("unknown escape `\\{}`{context}", ch.escape_debug()),
        );
    }

    fn string(&mut self, start: usize) -> Tok {
        let mut out = String::new();
        while let Some(piece) = self.literal_piece(start, "string") {
            match piece {
                Piece::Byte(b) => out.push(b as char),
                Piece::Escape {
                    esc_start,
                    letter: b'u',
                } => {
                    self.pos += 1;
                    match self.unicode_escape() {
                        Some(ch) => out.push(ch),
                        None => self.error(
                            esc_start..self.pos,
                            "invalid unicode escape; expected `\\u{XXXX}`",
                        ),
                    }
                }
                Piece::Escape { esc_start, .. } => self.unknown_escape(esc_start, ""),
                Piece::Plain(_) => out.push(self.bump_char()),
            }
        }
        Tok::Str(out)
    }

    fn unicode_escape(&mut self) -> Option<char> {
        if self.peek(0) != Some(b'{') {
            return None;
        }
        self.pos += 1;
        let digits_start = self.pos;
        while self.peek(0).is_some_and(|c| c.is_ascii_hexdigit()) {
            self.pos += 1;
        }
        let digits = &self.src[digits_start..self.pos];
        if self.peek(0) != Some(b'}') {
            return None;
        }
        self.pos += 1;
        if digits.is_empty() || digits.len() > 6 {
            return None;
        }
        u32::from_str_radix(digits, 16)
            .ok()
            .and_then(char::from_u32)
    }

    fn byte_string(&mut self, start: usize) -> Tok {
        let mut out = Vec::new();
        while let Some(piece) = self.literal_piece(start, "byte string") {
            match piece {
                Piece::Byte(b) => out.push(b),
                Piece::Escape {
                    esc_start,
                    letter: b'x',
                } => {
                    self.pos += 1;
                    let hex = self.bytes.get(self.pos..self.pos + 2);
                    match hex
                        .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            self.pos += 2;
                            out.push(b);
                        }
                        None => self.error(
                            esc_start..self.pos,
                            "invalid byte escape; expected `\\xNN` with two hex digits",
                        ),
                    }
                }
                Piece::Escape { esc_start, .. } => {
                    self.unknown_escape(esc_start, " in byte string")
                }
                Piece::Plain(c) if c.is_ascii() => {
                    self.pos += 1;
                    out.push(c);
                }
                Piece::Plain(_) => {
                    let s = self.pos;
                    self.bump_char();
                    self.error(
                        s..self.pos,
                        "non-ASCII character in byte string; use `\\xNN` escapes",
                    );
                }
            }
        }
        Tok::Bytes(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        let mut d = Vec::new();
        let t = lex(src, &mut d);
        assert!(d.is_empty(), "{d:?}");
        t.into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn numbers() {
        assert_eq!(
            toks("42 1_000 0xff 0xFF_FF 1.5 2.0 1e9 6.02e-3 1E+2"),
            [
                Tok::Int(42),
                Tok::Int(1000),
                Tok::Int(255),
                Tok::Int(0xffff),
                Tok::Float(1.5),
                Tok::Float(2.0),
                Tok::Float(1e9),
                Tok::Float(6.02e-3),
                Tok::Float(100.0),
                Tok::Eof
            ]
        );
        // `1..5` is a range, `1.x` a field access.
        assert_eq!(
            toks("1..5 1.x"),
            [
                Tok::Int(1),
                Tok::DotDot,
                Tok::Int(5),
                Tok::Int(1),
                Tok::Dot,
                Tok::Ident("x".into()),
                Tok::Eof
            ]
        );
        assert_eq!(toks("9223372036854775807")[0], Tok::Int(i64::MAX));
    }

    #[test]
    fn strings_and_bytes() {
        assert_eq!(
            toks(r#""a\n\t\r\\\"\0\u{1F600}é""#)[0],
            Tok::Str("a\n\t\r\\\"\0\u{1F600}é".into())
        );
        assert_eq!(
            toks(r#"b"A\xff\x00\n\t\r\\\"\0""#)[0],
            Tok::Bytes(vec![b'A', 0xff, 0, b'\n', b'\t', b'\r', b'\\', b'"', 0])
        );
    }

    #[test]
    fn keywords_operators_and_comments() {
        assert_eq!(
            toks("let x += 1 // comment\n-= == != <= >= < > % remote bx b"),
            [
                Tok::Let,
                Tok::Ident("x".into()),
                Tok::PlusAssign,
                Tok::Int(1),
                Tok::MinusAssign,
                Tok::EqEq,
                Tok::NotEq,
                Tok::Le,
                Tok::Ge,
                Tok::Lt,
                Tok::Gt,
                Tok::Percent,
                Tok::Remote,
                Tok::Ident("bx".into()),
                Tok::Ident("b".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn line_start_flags() {
        let mut d = Vec::new();
        let t = lex("a (b)\n(c) // x\n  [d]", &mut d);
        let flags: Vec<bool> = t.iter().map(|t| t.line_start).collect();
        // a ( b ) | ( c ) | [ d ] | eof
        assert_eq!(
            flags,
            [true, false, false, false, true, false, false, true, false, false, false]
        );
    }

    #[test]
    fn errors_do_not_stop_lexing() {
        let mut d = Vec::new();
        let t = lex("a @ b # \"x", &mut d);
        assert_eq!(d.len(), 3);
        assert_eq!(t.last().map(|t| &t.tok), Some(&Tok::Eof));
        assert!(t.iter().any(|t| t.tok == Tok::Ident("b".into())));
    }
}
