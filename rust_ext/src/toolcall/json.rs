//! Streaming JSON, one byte of state at a time: [`JsonValue`] checks one
//! value and copies it out, [`JsonStr`] decodes a string's content, and
//! [`escape_into`] writes text as JSON string content.
//!
//! [`JsonValue`] only ever writes what is already certain to belong to a
//! valid document, so a value cut short anywhere can be closed without
//! taking a byte back ([`JsonValue::close`]): a comma waits for the next
//! item, an escape sequence until it is complete. Models' usual slips are
//! mended rather than refused: raw control characters in strings are
//! escaped, an unknown escape keeps its backslash (`\'` becomes `\\'`),
//! a trailing comma is dropped.

use super::error::{Result, ToolCallError};
use super::scan::{find_byte2, find_json_special, is_ws};

/// How far a step got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// All input taken; the value goes on.
    More,
    /// The value is complete; what follows the bytes taken is not part of it.
    Done,
    /// The next byte cannot continue the value (it is not taken).
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Obj,
    Arr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    fn next(self, b: u8) -> Option<Num> {
        use Num::*;
        Some(match (self, b) {
            (Minus, b'0') => Zero,
            (Minus, b'1'..=b'9') => Int,
            (Int, b'0'..=b'9') => Int,
            (Zero | Int, b'.') => Dot,
            (Dot | Frac, b'0'..=b'9') => Frac,
            (Zero | Int | Frac, b'e' | b'E') => Exp,
            (Exp, b'+' | b'-') => ExpSign,
            (Exp | ExpSign | ExpDigits, b'0'..=b'9') => ExpDigits,
            _ => return None,
        })
    }

    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// A value is expected (at the start, after `:`, or after `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ArrFirst,
    /// After `{`: a key or `}`.
    ObjFirst,
    /// After `,` in an object: a key.
    ObjKey,
    /// After a key: `:`.
    Colon,
    /// After a value inside a container: `,` or the closer.
    After,
    Str {
        key: bool,
    },
    Esc {
        key: bool,
    },
    Hex {
        key: bool,
        n: u8,
    },
    Num(Num),
    Lit {
        lit: &'static [u8],
        at: u8,
    },
    Done,
}

/// Checks one JSON value, streaming, and copies it to `out`.
#[derive(Debug)]
pub(crate) struct JsonValue {
    st: St,
    stack: Vec<Frame>,
    /// A comma and the whitespace after it, written once the next item starts.
    pending: Vec<u8>,
    hex: [u8; 4],
    max_depth: usize,
    max_buffer: usize,
}

impl JsonValue {
    pub(crate) fn new(max_depth: usize, max_buffer: usize) -> Self {
        JsonValue {
            st: St::Value,
            stack: Vec::new(),
            pending: Vec::new(),
            hex: [0; 4],
            max_depth,
            max_buffer,
        }
    }

    /// Takes bytes of the value from `input`, writing them (mended) to `out`.
    /// Returns how many bytes were taken and whether the value goes on.
    pub(crate) fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, Progress)> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.st {
                St::Done => return Ok((i, Progress::Done)),
                St::Str { key } => {
                    let run = find_json_special(&input[i..]).unwrap_or(input.len() - i);
                    out.extend_from_slice(&input[i..i + run]);
                    i += run;
                    let Some(&b) = input.get(i) else { break };
                    i += 1;
                    match b {
                        b'"' => {
                            out.push(b'"');
                            self.st = if key { St::Colon } else { self.after_value() };
                        }
                        b'\\' => self.st = St::Esc { key },
                        _ => escape_control(b, out),
                    }
                }
                St::Esc { key } => {
                    self.st = St::Str { key };
                    match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                            out.extend_from_slice(&[b'\\', b]);
                            i += 1;
                        }
                        b'u' => {
                            self.st = St::Hex { key, n: 0 };
                            i += 1;
                        }
                        // not an escape: keep the backslash, read `b` as content
                        _ => out.extend_from_slice(b"\\\\"),
                    }
                }
                St::Hex { key, n } => {
                    let n = usize::from(n);
                    if b.is_ascii_hexdigit() && n < 4 {
                        self.hex[n] = b;
                        i += 1;
                        if n == 3 {
                            out.extend_from_slice(b"\\u");
                            out.extend_from_slice(&self.hex);
                            self.st = St::Str { key };
                        } else {
                            self.st = St::Hex {
                                key,
                                n: n as u8 + 1,
                            };
                        }
                    } else {
                        out.extend_from_slice(b"\\\\u");
                        out.extend_from_slice(&self.hex[..n.min(4)]);
                        self.st = St::Str { key };
                    }
                }
                St::Num(s) => match s.next(b) {
                    Some(s) => {
                        out.push(b);
                        i += 1;
                        self.st = St::Num(s);
                    }
                    None if s.complete() => {
                        self.st = self.after_value();
                    }
                    None => return Ok((i, Progress::Invalid)),
                },
                St::Lit { lit, at } => {
                    if lit.get(usize::from(at)) != Some(&b) {
                        return Ok((i, Progress::Invalid));
                    }
                    out.push(b);
                    i += 1;
                    self.st = if usize::from(at) + 1 == lit.len() {
                        self.after_value()
                    } else {
                        St::Lit { lit, at: at + 1 }
                    };
                }
                _ if is_ws(b) => {
                    if self.pending.is_empty() {
                        out.push(b);
                    } else {
                        if self.pending.len() >= self.max_buffer {
                            return Err(ToolCallError::BufferFull {
                                what: "whitespace after a comma in JSON",
                                max: self.max_buffer,
                            });
                        }
                        self.pending.push(b);
                    }
                    i += 1;
                }
                _ => {
                    if !self.structural(b, out)? {
                        return Ok((i, Progress::Invalid));
                    }
                    i += 1;
                }
            }
        }
        let progress = if self.st == St::Done {
            Progress::Done
        } else {
            Progress::More
        };
        Ok((i, progress))
    }

    /// A byte outside strings, numbers and literals; false when it is invalid there.
    fn structural(&mut self, b: u8, out: &mut Vec<u8>) -> Result<bool> {
        let top = self.stack.last().copied();
        match (self.st, b) {
            (St::ObjFirst | St::ObjKey, b'"') => {
                self.flush_pending(out);
                out.push(b);
                self.st = St::Str { key: true };
            }
            (St::ObjFirst | St::ObjKey, b'}') | (St::Value, b']') | (St::ArrFirst, b']')
                if self.closes(b, top) =>
            {
                self.pending.clear(); // a trailing comma: dropped
                self.stack.pop();
                out.push(b);
                self.st = self.after_value();
            }
            (St::Value | St::ArrFirst, _) => return self.value_start(b, out),
            (St::Colon, b':') => {
                out.push(b);
                self.st = St::Value;
            }
            (St::After, b',') => {
                self.pending.push(b);
                self.st = if top == Some(Frame::Obj) {
                    St::ObjKey
                } else {
                    St::Value
                };
            }
            (St::After, b'}' | b']') if self.closes(b, top) => {
                self.stack.pop();
                out.push(b);
                self.st = self.after_value();
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether `b` closes the container on top (in `Value` only after a comma in an array).
    fn closes(&self, b: u8, top: Option<Frame>) -> bool {
        match (b, top) {
            (b'}', Some(Frame::Obj)) => true,
            (b']', Some(Frame::Arr)) => self.st != St::Value || !self.pending.is_empty(),
            _ => false,
        }
    }

    fn value_start(&mut self, b: u8, out: &mut Vec<u8>) -> Result<bool> {
        let st = match b {
            b'{' | b'[' => {
                if self.stack.len() >= self.max_depth {
                    return Err(ToolCallError::TooDeep {
                        max: self.max_depth,
                    });
                }
                let (frame, st) = if b == b'{' {
                    (Frame::Obj, St::ObjFirst)
                } else {
                    (Frame::Arr, St::ArrFirst)
                };
                self.stack.push(frame);
                st
            }
            b'"' => St::Str { key: false },
            b'-' => St::Num(Num::Minus),
            b'0' => St::Num(Num::Zero),
            b'1'..=b'9' => St::Num(Num::Int),
            b't' => St::Lit {
                lit: b"true",
                at: 1,
            },
            b'f' => St::Lit {
                lit: b"false",
                at: 1,
            },
            b'n' => St::Lit {
                lit: b"null",
                at: 1,
            },
            _ => return Ok(false),
        };
        self.flush_pending(out);
        out.push(b);
        self.st = st;
        Ok(true)
    }

    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pending);
        self.pending.clear();
    }

    fn after_value(&self) -> St {
        if self.stack.is_empty() {
            St::Done
        } else {
            St::After
        }
    }

    /// Writes what completes the value as it stands (a string cut short is
    /// closed where it was cut, a number or literal completed, open
    /// containers closed); afterwards the value is done.
    pub(crate) fn close(&mut self, out: &mut Vec<u8>) {
        match self.st {
            St::Str { key } | St::Esc { key } | St::Hex { key, .. } => {
                out.push(b'"');
                if key {
                    out.extend_from_slice(b": null");
                }
            }
            St::Num(s) if !s.complete() => out.push(b'0'),
            St::Lit { lit, at } => {
                out.extend_from_slice(lit.get(usize::from(at)..).unwrap_or_default())
            }
            St::Colon => out.extend_from_slice(b": null"),
            St::Value if self.pending.is_empty() && self.stack.last() == Some(&Frame::Obj) => {
                out.extend_from_slice(b"null")
            }
            _ => {}
        }
        self.pending.clear();
        for f in self.stack.drain(..).rev() {
            out.push(if f == Frame::Obj { b'}' } else { b']' });
        }
        self.st = St::Done;
    }
}

fn escape_control(b: u8, out: &mut Vec<u8>) {
    match b {
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        }
    }
}

/// Appends `text` as the content of a JSON string.
pub(crate) fn escape_into(out: &mut Vec<u8>, mut text: &[u8]) {
    while let Some(i) = find_json_special(text) {
        out.extend_from_slice(&text[..i]);
        match text[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b => escape_control(b, out),
        }
        text = &text[i + 1..];
    }
    out.extend_from_slice(text);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dec {
    Raw,
    Esc,
    Hex(u8),
}

/// Decodes a JSON string's content (after its opening quote), streaming.
/// Surrogate pairs written as two escapes are joined; a lone surrogate
/// becomes U+FFFD; a malformed escape is kept as written.
#[derive(Debug)]
pub(crate) struct JsonStr {
    st: Dec,
    hex: [u8; 4],
    high: Option<u16>,
}

impl JsonStr {
    pub(crate) fn new() -> Self {
        JsonStr {
            st: Dec::Raw,
            hex: [0; 4],
            high: None,
        }
    }

    /// Decodes from `input` into `out`; returns the bytes taken and whether
    /// the closing quote was among them.
    pub(crate) fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.st {
                Dec::Raw => {
                    let run = find_byte2(&input[i..], b'"', b'\\').unwrap_or(input.len() - i);
                    if run > 0 {
                        self.lone_high(out);
                        out.extend_from_slice(&input[i..i + run]);
                        i += run;
                        continue;
                    }
                    i += 1;
                    if b == b'"' {
                        self.lone_high(out);
                        return (i, true);
                    }
                    self.st = Dec::Esc;
                }
                Dec::Esc => {
                    self.st = Dec::Raw;
                    let c = match b {
                        b'"' | b'\\' | b'/' => b,
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            self.st = Dec::Hex(0);
                            i += 1;
                            continue;
                        }
                        _ => {
                            self.lone_high(out);
                            out.push(b'\\'); // not an escape: kept, `b` read as content
                            continue;
                        }
                    };
                    self.lone_high(out);
                    out.push(c);
                    i += 1;
                }
                Dec::Hex(n) => {
                    let n = usize::from(n).min(3);
                    if b.is_ascii_hexdigit() {
                        self.hex[n] = b;
                        i += 1;
                        if n == 3 {
                            self.st = Dec::Raw;
                            self.code_unit(out);
                        } else {
                            self.st = Dec::Hex(n as u8 + 1);
                        }
                    } else {
                        self.lone_high(out);
                        out.extend_from_slice(b"\\u");
                        out.extend_from_slice(&self.hex[..n]);
                        self.st = Dec::Raw;
                    }
                }
            }
        }
        (i, false)
    }

    fn code_unit(&mut self, out: &mut Vec<u8>) {
        let hex = std::str::from_utf8(&self.hex).unwrap_or("0");
        let u = u16::from_str_radix(hex, 16).unwrap_or(0xFFFD);
        let c = match (self.high.take(), u) {
            (Some(h), 0xDC00..=0xDFFF) => {
                char::from_u32(0x10000 + ((u32::from(h) - 0xD800) << 10) + (u32::from(u) - 0xDC00))
            }
            (high, 0xD800..=0xDBFF) => {
                if high.is_some() {
                    push_char(out, '\u{FFFD}');
                }
                self.high = Some(u);
                return;
            }
            (high, _) => {
                if high.is_some() {
                    push_char(out, '\u{FFFD}');
                }
                char::from_u32(u32::from(u))
            }
        };
        push_char(out, c.unwrap_or('\u{FFFD}'));
    }

    /// A high surrogate that no low one followed.
    fn lone_high(&mut self, out: &mut Vec<u8>) {
        if self.high.take().is_some() {
            push_char(out, '\u{FFFD}');
        }
    }
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, chunk: usize) -> (String, Progress) {
        let mut v = JsonValue::new(64, 1 << 20);
        let mut out = Vec::new();
        let mut progress = Progress::More;
        for piece in text.as_bytes().chunks(chunk.max(1)) {
            let (n, p) = v.step(piece, &mut out).expect("within caps");
            progress = p;
            if p != Progress::More {
                assert!(n <= piece.len());
                break;
            }
            assert_eq!(n, piece.len());
        }
        if progress == Progress::More {
            v.close(&mut out);
        }
        (String::from_utf8(out).expect("utf-8"), progress)
    }

    #[test]
    fn valid_json_is_copied_unchanged_whatever_the_chunking() {
        let doc = r#"{"a": [1, -2.5e+3, true, false, null, {"b": "x\"y\u00e9"}], "c": {}}"#;
        for chunk in 1..doc.len() {
            assert_eq!(run(doc, chunk), (doc.to_owned(), Progress::Done));
        }
    }

    #[test]
    fn every_prefix_closes_to_valid_json() {
        let doc = r#"{"key": [1, -2.5e+3, "s\n\u12", true, {"k"#;
        for end in 0..=doc.len() {
            let (text, _) = run(&doc[..end], 3);
            if end > 0 {
                assert!(text.starts_with('{'), "{text}");
            }
            // balanced, and what a JSON parser would need: checked in Python tests
            assert_eq!(
                text.matches('{').count(),
                text.matches('}').count(),
                "{text}"
            );
        }
        assert_eq!(run(r#"{"a": [1, 2,"#, 1).0, r#"{"a": [1, 2]}"#);
        assert_eq!(run(r#"{"a": 1, "#, 1).0, r#"{"a": 1}"#);
        assert_eq!(run(r#"{"a": -"#, 1).0, r#"{"a": -0}"#);
        assert_eq!(run(r#"{"a": 1.5e"#, 1).0, r#"{"a": 1.5e0}"#);
        assert_eq!(run(r#"{"a": fa"#, 1).0, r#"{"a": false}"#);
        assert_eq!(run(r#"{"a"#, 1).0, r#"{"a": null}"#);
        assert_eq!(run(r#"{"a" "#, 1).0, r#"{"a" : null}"#);
        assert_eq!(run(r#"{"a":"#, 1).0, r#"{"a":null}"#);
        assert_eq!(run(r#"{"a": "x\u12"#, 1).0, r#"{"a": "x"}"#);
    }

    #[test]
    fn slips_are_mended() {
        assert_eq!(run("{\"a\": \"x\ny\"}", 2).0, r#"{"a": "x\ny"}"#);
        assert_eq!(run(r#"{"a": "it\'s"}"#, 2).0, r#"{"a": "it\\'s"}"#);
        assert_eq!(run(r#"{"a": [1,], }"#, 2).0, r#"{"a": [1]}"#);
    }

    #[test]
    fn invalid_bytes_are_reported_not_taken() {
        let mut v = JsonValue::new(64, 1 << 20);
        let mut out = Vec::new();
        assert_eq!(
            v.step(br#"{"a": 1 x"#, &mut out).ok(),
            Some((8, Progress::Invalid))
        );
        let mut v = JsonValue::new(64, 1 << 20);
        assert_eq!(v.step(b"12,", &mut out).ok(), Some((2, Progress::Done)));
    }

    #[test]
    fn depth_is_capped() {
        let mut v = JsonValue::new(3, 1 << 20);
        let mut out = Vec::new();
        assert!(v.step(b"[[[", &mut out).is_ok());
        assert_eq!(
            v.step(b"[", &mut out),
            Err(ToolCallError::TooDeep { max: 3 })
        );
    }

    #[test]
    fn strings_decode_with_surrogate_pairs_across_chunks() {
        let enc = r#"a\"\n\u00e9\ud83d\ude00\ud800x\q"#.to_owned() + "\"rest";
        for chunk in 1..enc.len() {
            let mut d = JsonStr::new();
            let mut out = Vec::new();
            let mut taken = 0;
            for piece in enc.as_bytes().chunks(chunk) {
                let (n, closed) = d.step(piece, &mut out);
                taken += n;
                if closed {
                    break;
                }
            }
            assert_eq!(taken, enc.len() - 4);
            assert_eq!(
                String::from_utf8(out).expect("utf-8"),
                "a\"\n\u{e9}\u{1F600}\u{FFFD}x\\q"
            );
        }
    }

    #[test]
    fn escape_writes_json_string_content() {
        let mut out = Vec::new();
        escape_into(&mut out, "a\"b\\c\nd\u{1}é".as_bytes());
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"a\"b\\c\nd\u0001é"#
        );
    }
}
