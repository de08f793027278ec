//! Qwen3-Coder calls: `<function=NAME><parameter=KEY>VALUE</parameter>...</function>`,
//! inside `<tool_call>`...`</tool_call>` or bare.
//!
//! Entered after `<function=NAME>`. The arguments are built as a JSON object
//! of strings and streamed as the values stream: `{` at once, `"KEY": "`
//! when a parameter opens, the value escaped as it comes (one leading and
//! one trailing newline dropped, so the last newline waits for what follows
//! it), `"` and `}` at the closers. A value may contain `</parameter>` or
//! `</function>` (or even `</tool_call>`): after one, the whitespace and the
//! next marker are held until it is clear whether it closed anything (see
//! [`LOOK_PARAM`], [`LOOK_FUNCTION`], [`LOOK_TOOL_CALL`]; the end of the
//! stream confirms too); if not, they are part of the value. `<parameter=`,
//! `<function=` and `<tool_call>` end a value whose closers are missing.

use super::error::Result;
use super::event::Cx;
use super::json::escape_into;
use super::scan::{find_byte, is_ws, opener_cut_short, starts_marker, ws_run, Match, Matcher};
use super::scan::{FUNCTION, FUNCTION_END, PARAMETER, PARAMETER_END, TOOL_CALL, TOOL_CALL_END};
use super::{Exit, Step};

/// Longest function name or parameter key: past it, it is not one.
pub(crate) const NAME_MAX: usize = 256;

/// Markers between parameters; also what confirms a `</parameter>` in a value.
const BODY: &[&[u8]] = &[PARAMETER, FUNCTION_END, TOOL_CALL_END, FUNCTION, TOOL_CALL];
/// Markers that may end a value (`<parameter=`: the next parameter began,
/// so the value's `</parameter>` is missing, as vLLM and sglang read it).
const VALUE: &[&[u8]] = &[
    PARAMETER_END,
    FUNCTION_END,
    TOOL_CALL_END,
    FUNCTION,
    TOOL_CALL,
    PARAMETER,
];
/// After `</parameter>` in a value, these (after whitespace) make it a closer.
const LOOK_PARAM: &[&[u8]] = BODY;
/// After `</function>` in a value, these (after whitespace) make it a closer;
/// they are also what may follow a function's `</function>`.
const LOOK_FUNCTION: &[&[u8]] = &[TOOL_CALL_END, FUNCTION, TOOL_CALL];
/// After `</tool_call>` in a value, these (after whitespace) make it a
/// closer; followed by text, it is a value quoting the markup.
const LOOK_TOOL_CALL: &[&[u8]] = &[FUNCTION, TOOL_CALL];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Between parameters: anything but markup is dropped.
    Body,
    /// Inside `<parameter=` before `>`.
    Key,
    Value,
    /// After `</parameter>` in a value: closer or content?
    LookParam,
    /// After `</function>` in a value: closer or content?
    LookFunction,
    /// After `</tool_call>` in a value: closer or content?
    LookToolCall,
    /// After the function's `</function>`.
    AfterFunction,
}

/// One call in the XML format, from just after `<function=NAME>`.
#[derive(Debug)]
pub(crate) struct XmlCall {
    index: usize,
    in_block: bool,
    st: St,
    m: Matcher,
    ws: Vec<u8>,
    key: Vec<u8>,
    params: usize,
    at_start: bool,
    pending_nl: bool,
    args_closed: bool,
    reason: Option<&'static str>,
}

fn exit(ws: Vec<u8>, replay: &[u8]) -> Option<Exit> {
    Some(Exit {
        ws,
        replay: replay.to_vec(),
    })
}

impl XmlCall {
    /// Starts the arguments (the "start" event has been sent).
    pub(crate) fn new(index: usize, in_block: bool, cx: &mut Cx) -> Self {
        cx.args(index, |out| out.push(b'{'));
        XmlCall {
            index,
            in_block,
            st: St::Body,
            m: Matcher::default(),
            ws: Vec::new(),
            key: Vec::new(),
            params: 0,
            at_start: false,
            pending_nl: false,
            args_closed: false,
            reason: None,
        }
    }

    pub(crate) fn step(&mut self, rest: &[u8], cx: &mut Cx) -> Result<Step> {
        match self.st {
            St::Body => self.body(rest, cx),
            St::Key => Ok(Step {
                used: self.key(rest, cx),
                exit: None,
            }),
            St::Value => self.value(rest, cx),
            St::LookParam => self.look(rest, cx, LOOK_PARAM, PARAMETER_END),
            St::LookFunction => self.look(rest, cx, LOOK_FUNCTION, FUNCTION_END),
            St::LookToolCall => self.look(rest, cx, LOOK_TOOL_CALL, TOOL_CALL_END),
            St::AfterFunction => self.after_function(rest, cx),
        }
    }

    fn body(&mut self, rest: &[u8], cx: &mut Cx) -> Result<Step> {
        if !self.m.active() {
            let used = match find_byte(rest, b'<') {
                Some(i) => {
                    self.m.push(b'<', BODY);
                    i + 1
                }
                None => rest.len(),
            };
            return Ok(Step { used, exit: None });
        }
        Ok(match self.m.push(rest[0], BODY) {
            Match::Partial => Step {
                used: 1,
                exit: None,
            },
            Match::Full(marker) => Step {
                used: 1,
                exit: self.body_marker(marker, cx)?,
            },
            Match::Fail => {
                self.m.clear();
                Step {
                    used: 0,
                    exit: None,
                }
            }
        })
    }

    fn body_marker(&mut self, marker: &[u8], cx: &mut Cx) -> Result<Option<Exit>> {
        Ok(match marker {
            PARAMETER => {
                self.st = St::Key;
                self.key.clear();
                None
            }
            FUNCTION_END => {
                self.close_args(cx);
                self.st = St::AfterFunction;
                self.ws.clear();
                None
            }
            TOOL_CALL_END => {
                self.end(cx, Some("missing </function>"));
                exit(Vec::new(), b"")
            }
            _ => {
                self.end(cx, Some(next_began(marker)));
                exit(Vec::new(), marker)
            }
        })
    }

    fn key(&mut self, rest: &[u8], cx: &mut Cx) -> usize {
        for (i, &b) in rest.iter().enumerate() {
            if b == b'>' {
                let key = self.key.trim_ascii();
                let first = self.params == 0;
                cx.args(self.index, |out| {
                    if !first {
                        out.extend_from_slice(b", ");
                    }
                    out.push(b'"');
                    escape_into(out, key);
                    out.extend_from_slice(b"\": \"");
                });
                self.params += 1;
                self.st = St::Value;
                self.at_start = true;
                self.pending_nl = false;
                return i + 1;
            }
            if b == b'<' || b == b'\n' || self.key.len() >= NAME_MAX {
                // not a parameter after all: dropped like other stray text
                self.st = St::Body;
                return i;
            }
            self.key.push(b);
        }
        rest.len()
    }

    fn value(&mut self, rest: &[u8], cx: &mut Cx) -> Result<Step> {
        if !self.m.active() {
            let used = match find_byte(rest, b'<') {
                Some(i) => {
                    self.content(&rest[..i], cx);
                    self.m.push(b'<', VALUE);
                    i + 1
                }
                None => {
                    self.content(rest, cx);
                    rest.len()
                }
            };
            return Ok(Step { used, exit: None });
        }
        let exit = match self.m.push(rest[0], VALUE) {
            Match::Partial => None,
            Match::Full(PARAMETER_END) => {
                self.st = St::LookParam;
                self.ws.clear();
                None
            }
            Match::Full(FUNCTION_END) => {
                self.st = St::LookFunction;
                self.ws.clear();
                None
            }
            Match::Full(TOOL_CALL_END) => {
                self.st = St::LookToolCall;
                self.ws.clear();
                None
            }
            Match::Full(PARAMETER) => {
                self.close_value(cx);
                self.recovered("missing </parameter>");
                self.st = St::Key;
                self.key.clear();
                None
            }
            Match::Full(marker) => {
                self.close_value(cx);
                self.end(cx, Some(next_began(marker)));
                exit(Vec::new(), marker)
            }
            Match::Fail => {
                let held = self.m.held().to_vec();
                self.m.clear();
                self.content(&held, cx);
                return Ok(Step {
                    used: 0,
                    exit: None,
                });
            }
        };
        Ok(Step { used: 1, exit })
    }

    /// After a possible closer in a value: whitespace, then a marker from
    /// `set` confirms it; anything else makes it (and the whitespace) content.
    fn look(
        &mut self,
        rest: &[u8],
        cx: &mut Cx,
        set: &[&'static [u8]],
        closer: &'static [u8],
    ) -> Result<Step> {
        let b = rest[0];
        if self.m.active() {
            return Ok(match self.m.push(b, set) {
                Match::Partial => Step {
                    used: 1,
                    exit: None,
                },
                Match::Full(marker) => {
                    self.close_value(cx);
                    let exit = if closer == FUNCTION_END {
                        self.recovered("missing </parameter>");
                        self.close_args(cx);
                        self.st = St::AfterFunction;
                        self.after_marker(marker, cx)
                    } else if closer == TOOL_CALL_END {
                        self.end(cx, Some("missing </parameter>"));
                        exit(std::mem::take(&mut self.ws), marker)
                    } else {
                        self.st = St::Body;
                        self.body_marker(marker, cx)?
                    };
                    Step { used: 1, exit }
                }
                Match::Fail => {
                    let held = self.m.held().to_vec();
                    self.m.clear();
                    self.not_a_closer(closer, cx);
                    if starts_marker(&held, VALUE) {
                        self.m.set(&held);
                    } else {
                        self.content(&held, cx);
                    }
                    Step {
                        used: 0,
                        exit: None,
                    }
                }
            });
        }
        let used = if is_ws(b) {
            let n = ws_run(rest);
            let what = "whitespace after </parameter> or </function> in a value";
            cx.hold(&mut self.ws, &rest[..n], what)?;
            n
        } else if b == b'<' {
            self.m.push(b, set);
            1
        } else {
            self.not_a_closer(closer, cx);
            0
        };
        Ok(Step { used, exit: None })
    }

    fn not_a_closer(&mut self, closer: &[u8], cx: &mut Cx) {
        self.content(closer, cx);
        let ws = std::mem::take(&mut self.ws);
        self.content(&ws, cx);
        self.st = St::Value;
    }

    fn after_function(&mut self, rest: &[u8], cx: &mut Cx) -> Result<Step> {
        let b = rest[0];
        let (used, exit) = if self.m.active() {
            match self.m.push(b, LOOK_FUNCTION) {
                Match::Partial => (1, None),
                Match::Full(marker) => (1, self.after_marker(marker, cx)),
                Match::Fail => {
                    let held = self.m.held().to_vec();
                    self.m.clear();
                    self.end(cx, self.missing_block_end());
                    (0, exit(std::mem::take(&mut self.ws), &held))
                }
            }
        } else if is_ws(b) {
            let n = ws_run(rest);
            cx.hold(&mut self.ws, &rest[..n], "whitespace after a call")?;
            (n, None)
        } else if b == b'<' {
            self.m.push(b, LOOK_FUNCTION);
            (1, None)
        } else {
            self.end(cx, self.missing_block_end());
            (0, exit(std::mem::take(&mut self.ws), b""))
        };
        Ok(Step { used, exit })
    }

    /// A marker right after the function's `</function>`.
    fn after_marker(&mut self, marker: &'static [u8], cx: &mut Cx) -> Option<Exit> {
        if marker == TOOL_CALL_END {
            self.end(cx, None);
            return exit(Vec::new(), b"");
        }
        self.end(cx, self.missing_block_end());
        exit(std::mem::take(&mut self.ws), marker)
    }

    /// Why a call closed by `</function>` but not by `</tool_call>` is flagged.
    fn missing_block_end(&self) -> Option<&'static str> {
        self.in_block.then_some("missing </tool_call>")
    }

    /// Value text: escaped into the arguments, its first newline dropped and
    /// its last one held back (it is dropped if the value ends there).
    fn content(&mut self, mut text: &[u8], cx: &mut Cx) {
        if self.at_start && !text.is_empty() {
            self.at_start = false;
            if text[0] == b'\n' {
                text = &text[1..];
            }
        }
        if text.is_empty() {
            return;
        }
        let nl = self.pending_nl;
        let (body, trailing) = match text.split_last() {
            Some((b'\n', body)) => (body, true),
            _ => (text, false),
        };
        self.pending_nl = trailing;
        cx.args(self.index, |out| {
            if nl {
                out.extend_from_slice(b"\\n");
            }
            escape_into(out, body);
        });
    }

    fn close_value(&mut self, cx: &mut Cx) {
        self.pending_nl = false;
        cx.args(self.index, |out| out.push(b'"'));
    }

    fn close_args(&mut self, cx: &mut Cx) {
        if !self.args_closed {
            self.args_closed = true;
            cx.args(self.index, |out| out.push(b'}'));
        }
    }

    fn recovered(&mut self, why: &'static str) {
        self.reason.get_or_insert(why);
    }

    fn end(&mut self, cx: &mut Cx, why: Option<&'static str>) {
        self.close_args(cx);
        cx.end(self.index, self.reason.or(why));
    }

    /// The stream ended inside the call: close what is open (a marker cut
    /// short is dropped, as is a value's last newline). Returns what the
    /// text level still has to show: the whitespace after a closed call and
    /// an opener cut short.
    pub(crate) fn finish(mut self, cx: &mut Cx) -> Option<Exit> {
        match self.st {
            St::Body | St::Key => self.end(cx, Some("stream ended")),
            St::Value | St::LookParam => {
                self.close_value(cx);
                self.end(cx, Some("stream ended"));
            }
            St::LookFunction => {
                self.close_value(cx);
                self.recovered("missing </parameter>");
                self.end(cx, self.missing_block_end());
            }
            St::LookToolCall => {
                self.close_value(cx);
                self.end(cx, Some("missing </parameter>"));
                return exit(std::mem::take(&mut self.ws), b"");
            }
            St::AfterFunction => {
                self.end(cx, self.missing_block_end());
                return exit(
                    std::mem::take(&mut self.ws),
                    opener_cut_short(self.m.held()),
                );
            }
        }
        None
    }
}

fn next_began(marker: &[u8]) -> &'static str {
    if marker == TOOL_CALL {
        "next <tool_call> began"
    } else {
        "next <function= began"
    }
}
