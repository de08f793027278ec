//! Hermes / Qwen2.5 calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
//!
//! Entered after `<tool_call>` and the `{` that opens the call object (the
//! envelope). The envelope's keys are read one by one: `"name"` (a string),
//! `"arguments"` or `"parameters"` (an object, streamed as its JSON text, or
//! a string holding JSON, streamed decoded); other keys are checked and
//! skipped. Arguments seen before the name wait, bounded by max_buffer.
//! Several objects in one block are several calls. JSON that breaks off
//! (`<` where the object should go on: usually `</tool_call>` after a
//! missing `}`) or turns invalid closes the call there, and the rest of the
//! block is skipped up to `</tool_call>` or the next call.

use super::error::Result;
use super::event::Cx;
use super::json::{JsonStr, JsonValue, Progress};
use super::scan::{find_byte, is_ws, opener_cut_short, ws_run, Match, Matcher};
use super::scan::{FUNCTION, TOOL_CALL, TOOL_CALL_END};
use super::{Exit, Step};

/// What may end the block after the call object.
const AFTER: &[&[u8]] = &[TOOL_CALL_END, TOOL_CALL, FUNCTION];
/// Only these keys are compared: longer ones are "other".
const KEY_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Name,
    Args,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    /// Before the `{` of the JSON inside the string.
    Before,
    In,
    /// After it: only whitespace may follow.
    Tail,
    /// After something went wrong: the rest of the string is ignored.
    Over,
}

#[derive(Debug)]
enum Env {
    KeyOrEnd,
    Key {
        dec: JsonStr,
        buf: Vec<u8>,
    },
    Colon(Target),
    ValueStart(Target),
    Name {
        dec: JsonStr,
        buf: Vec<u8>,
    },
    ArgsObj(JsonValue),
    ArgsStr {
        dec: JsonStr,
        v: JsonValue,
        inner: Inner,
    },
    Skip(JsonValue),
    CommaOrEnd,
    /// The object is closed: whitespace, then `</tool_call>` (or another object).
    After {
        ws: Vec<u8>,
        m: Matcher,
    },
    /// Broken JSON: everything up to the end of the block is dropped.
    Bad {
        m: Matcher,
    },
}

/// One call's bookkeeping: its arguments wait in `args` until the name is known.
#[derive(Debug)]
struct Call {
    index: usize,
    name: Option<String>,
    started: bool,
    any_args: bool,
    args: Vec<u8>,
    reason: Option<&'static str>,
}

impl Call {
    fn new(index: usize) -> Self {
        Call {
            index,
            name: None,
            started: false,
            any_args: false,
            args: Vec::new(),
            reason: None,
        }
    }

    fn recovered(&mut self, why: &'static str) {
        self.reason.get_or_insert(why);
    }

    /// Sends arguments bytes, or keeps them until the name is known
    /// (bounded: checked before the buffer grows).
    fn write(&mut self, cx: &mut Cx, bytes: &[u8]) -> Result<()> {
        if !self.started {
            let what = "arguments of a call whose name is not known yet";
            return cx.hold(&mut self.args, bytes, what);
        }
        if !bytes.is_empty() {
            self.any_args = true;
            cx.args(self.index, |out| out.extend_from_slice(bytes));
        }
        Ok(())
    }

    fn ensure_started(&mut self, cx: &mut Cx) -> Result<()> {
        if self.started {
            return Ok(());
        }
        let name = self.name.take().unwrap_or_else(|| {
            self.recovered("missing name");
            String::new()
        });
        cx.start(self.index, name);
        self.started = true;
        let waiting = std::mem::take(&mut self.args);
        self.write(cx, &waiting)
    }

    /// After this, the arguments sent are a whole JSON object.
    fn finish_args(&mut self, cx: &mut Cx) -> Result<()> {
        self.ensure_started(cx)?;
        if !self.any_args {
            self.any_args = true;
            cx.args(self.index, |out| out.extend_from_slice(b"{}"));
        }
        Ok(())
    }

    fn end(&mut self, cx: &mut Cx, why: Option<&'static str>) -> Result<()> {
        self.finish_args(cx)?;
        cx.end(self.index, self.reason.or(why));
        Ok(())
    }
}

/// A `<tool_call>` block in the JSON format, from just after its first `{`.
#[derive(Debug)]
pub(crate) struct HermesBlock {
    call: Call,
    env: Env,
    seen_name: bool,
    seen_args: bool,
    /// Decoded string content, before it is checked as JSON.
    scratch: Vec<u8>,
    /// Checked JSON, before it is sent or kept.
    out: Vec<u8>,
}

fn exit(ws: Vec<u8>, replay: &[u8]) -> Option<Exit> {
    Some(Exit {
        ws,
        replay: replay.to_vec(),
    })
}

impl HermesBlock {
    pub(crate) fn new(index: usize) -> Self {
        HermesBlock {
            call: Call::new(index),
            env: Env::KeyOrEnd,
            seen_name: false,
            seen_args: false,
            scratch: Vec::new(),
            out: Vec::new(),
        }
    }

    pub(crate) fn step(&mut self, rest: &[u8], cx: &mut Cx) -> Result<Step> {
        let b = rest[0];
        let used = match &mut self.env {
            Env::KeyOrEnd | Env::Colon(_) | Env::ValueStart(_) | Env::CommaOrEnd if is_ws(b) => {
                ws_run(rest)
            }
            Env::KeyOrEnd => match b {
                b'"' => {
                    self.env = Env::Key {
                        dec: JsonStr::new(),
                        buf: Vec::new(),
                    };
                    1
                }
                b'}' => {
                    self.close_object(cx)?;
                    1
                }
                _ => self.bad(cx, b)?,
            },
            Env::Key { dec, buf } => {
                let (n, closed) = dec.step(rest, buf);
                buf.truncate(KEY_MAX + 1);
                if closed {
                    let target = match buf.as_slice() {
                        b"name" if !self.seen_name => Target::Name,
                        b"arguments" | b"parameters" if !self.seen_args => Target::Args,
                        _ => Target::Other,
                    };
                    self.env = Env::Colon(target);
                }
                n
            }
            Env::Colon(target) => match b {
                b':' => {
                    self.env = Env::ValueStart(*target);
                    1
                }
                _ => self.bad(cx, b)?,
            },
            Env::ValueStart(target) => {
                let target = *target;
                self.value_start(target, b, cx)
            }
            Env::Name { dec, buf } => {
                self.scratch.clear();
                let (n, closed) = dec.step(rest, &mut self.scratch);
                cx.hold(buf, &self.scratch, "the name of a call")?;
                if closed {
                    self.call.name = Some(String::from_utf8_lossy(buf).into_owned());
                    self.call.ensure_started(cx)?;
                    self.env = Env::CommaOrEnd;
                }
                n
            }
            Env::ArgsObj(v) => {
                self.out.clear();
                let (n, progress) = v.step(rest, &mut self.out)?;
                self.call.write(cx, &self.out)?;
                match progress {
                    Progress::More => {}
                    Progress::Done => self.env = Env::CommaOrEnd,
                    Progress::Invalid => {
                        return Ok(Step {
                            used: n + self.bad(cx, rest[n])?,
                            exit: None,
                        })
                    }
                }
                n
            }
            Env::ArgsStr { dec, v, inner } => {
                self.scratch.clear();
                let (n, closed) = dec.step(rest, &mut self.scratch);
                self.out.clear();
                let why = inner_json(v, inner, &self.scratch, &mut self.out)?;
                if closed && *inner == Inner::In {
                    v.close(&mut self.out);
                    self.call.recovered("unclosed JSON in the arguments string");
                }
                if let Some(why) = why {
                    self.call.recovered(why);
                }
                self.call.write(cx, &self.out)?;
                if closed {
                    self.env = Env::CommaOrEnd;
                }
                n
            }
            Env::Skip(v) => {
                self.scratch.clear();
                let (n, progress) = v.step(rest, &mut self.scratch)?;
                match progress {
                    Progress::More => {}
                    Progress::Done => self.env = Env::CommaOrEnd,
                    Progress::Invalid => {
                        return Ok(Step {
                            used: n + self.bad(cx, rest[n])?,
                            exit: None,
                        })
                    }
                }
                n
            }
            Env::CommaOrEnd => match b {
                b',' => {
                    self.env = Env::KeyOrEnd;
                    1
                }
                b'}' => {
                    self.close_object(cx)?;
                    1
                }
                _ => self.bad(cx, b)?,
            },
            Env::After { .. } => return self.after(rest, cx),
            Env::Bad { .. } => return self.skip_bad(rest, cx),
        };
        Ok(Step { used, exit: None })
    }

    fn value_start(&mut self, target: Target, b: u8, cx: &Cx) -> usize {
        let value = || JsonValue::new(cx.max_depth, cx.max_buffer);
        let (env, used) = match (target, b) {
            (Target::Name, b'"') => (
                Env::Name {
                    dec: JsonStr::new(),
                    buf: Vec::new(),
                },
                1,
            ),
            (Target::Args, b'{') => (Env::ArgsObj(value()), 0),
            (Target::Args, b'"') => (
                Env::ArgsStr {
                    dec: JsonStr::new(),
                    v: value(),
                    inner: Inner::Before,
                },
                1,
            ),
            _ => (Env::Skip(value()), 0),
        };
        match target {
            Target::Name => self.seen_name = true,
            Target::Args => {
                self.seen_args = true;
                if !matches!(b, b'{' | b'"') {
                    self.call.recovered("arguments not a JSON object");
                }
            }
            Target::Other => {}
        }
        self.env = env;
        used
    }

    /// The `}` of the call object.
    fn close_object(&mut self, cx: &mut Cx) -> Result<()> {
        self.call.finish_args(cx)?;
        self.env = Env::After {
            ws: Vec::new(),
            m: Matcher::default(),
        };
        Ok(())
    }

    /// `b` broke the JSON: close what is open, skip to the end of the block.
    /// Takes nothing (the byte is looked at again while skipping).
    fn bad(&mut self, cx: &mut Cx, b: u8) -> Result<usize> {
        let env = std::mem::replace(
            &mut self.env,
            Env::Bad {
                m: Matcher::default(),
            },
        );
        self.out.clear();
        match env {
            Env::ArgsObj(mut v) => v.close(&mut self.out),
            Env::ArgsStr {
                mut v,
                inner: Inner::In,
                ..
            } => v.close(&mut self.out),
            _ => {}
        }
        self.call.write(cx, &self.out)?;
        self.call.recovered(if b == b'<' {
            "unclosed JSON"
        } else {
            "malformed JSON"
        });
        self.call.finish_args(cx)?;
        Ok(0)
    }

    fn after(&mut self, rest: &[u8], cx: &mut Cx) -> Result<Step> {
        let Env::After { ws, m } = &mut self.env else {
            return Ok(Step {
                used: 0,
                exit: None,
            });
        };
        let b = rest[0];
        let (used, exit) = if m.active() {
            match m.push(b, AFTER) {
                Match::Partial => (1, None),
                Match::Full(TOOL_CALL_END) => {
                    self.call.end(cx, None)?;
                    (1, exit(Vec::new(), b""))
                }
                Match::Full(marker) => {
                    let ws = std::mem::take(ws);
                    self.call.end(cx, Some("missing </tool_call>"))?;
                    (1, exit(ws, marker))
                }
                Match::Fail => {
                    let (ws, held) = (std::mem::take(ws), m.held().to_vec());
                    self.call.end(cx, Some("missing </tool_call>"))?;
                    (0, exit(ws, &held))
                }
            }
        } else if is_ws(b) {
            let n = ws_run(rest);
            cx.hold(ws, &rest[..n], "whitespace after a call")?;
            (n, None)
        } else {
            match b {
                b'<' => {
                    m.push(b, AFTER);
                    (1, None)
                }
                b'}' | b']' => (1, None), // a stray closer: part of the call
                b'{' => {
                    // another call object in the same block
                    self.call.end(cx, None)?;
                    *self = HermesBlock::new(cx.begin_call()?);
                    (1, None)
                }
                _ => {
                    let ws = std::mem::take(ws);
                    self.call.end(cx, Some("missing </tool_call>"))?;
                    (0, exit(ws, b""))
                }
            }
        };
        Ok(Step { used, exit })
    }

    fn skip_bad(&mut self, rest: &[u8], cx: &mut Cx) -> Result<Step> {
        let Env::Bad { m } = &mut self.env else {
            return Ok(Step {
                used: 0,
                exit: None,
            });
        };
        if !m.active() {
            return Ok(match find_byte(rest, b'<') {
                Some(i) => {
                    m.push(b'<', AFTER);
                    Step {
                        used: i + 1,
                        exit: None,
                    }
                }
                None => Step {
                    used: rest.len(),
                    exit: None,
                },
            });
        }
        let (used, exit) = match m.push(rest[0], AFTER) {
            Match::Partial => (1, None),
            Match::Full(TOOL_CALL_END) => {
                self.call.end(cx, None)?;
                (1, exit(Vec::new(), b""))
            }
            Match::Full(marker) => {
                self.call.end(cx, None)?;
                (1, exit(Vec::new(), marker))
            }
            Match::Fail => {
                m.clear();
                (0, None)
            }
        };
        Ok(Step { used, exit })
    }

    /// The stream ended inside the block: close what is open. Returns what
    /// the text level still has to show (see [`super::xml::XmlCall::finish`]).
    pub(crate) fn finish(mut self, cx: &mut Cx) -> Result<Option<Exit>> {
        let mut left = None;
        self.out.clear();
        let why = match std::mem::replace(&mut self.env, Env::KeyOrEnd) {
            Env::After { ws, m } => {
                left = exit(ws, opener_cut_short(m.held()));
                "missing </tool_call>"
            }
            Env::Bad { .. } => "stream ended",
            Env::ArgsObj(mut v) => {
                v.close(&mut self.out);
                "stream ended"
            }
            Env::ArgsStr { mut v, inner, .. } => {
                if inner == Inner::In {
                    v.close(&mut self.out);
                }
                "stream ended"
            }
            Env::Name { buf, .. } => {
                // a name cut short is still the best name there is
                self.call.name = Some(String::from_utf8_lossy(&buf).into_owned());
                "stream ended"
            }
            _ => "stream ended",
        };
        self.call.write(cx, &self.out)?;
        self.call.end(cx, Some(why))?;
        Ok(left)
    }
}

/// Feeds decoded string content to the JSON it holds; says why when that
/// JSON is not an object.
fn inner_json(
    v: &mut JsonValue,
    inner: &mut Inner,
    mut text: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<&'static str>> {
    if *inner == Inner::Before {
        let n = ws_run(text);
        text = &text[n..];
        match text.first() {
            None => return Ok(None),
            Some(b'{') => *inner = Inner::In,
            Some(_) => {
                *inner = Inner::Over;
                return Ok(Some("arguments string is not a JSON object"));
            }
        }
    }
    if *inner == Inner::Tail {
        if ws_run(text) == text.len() {
            return Ok(None);
        }
        *inner = Inner::Over;
        return Ok(Some("text after the JSON in the arguments string"));
    }
    if *inner != Inner::In {
        return Ok(None);
    }
    let (n, progress) = v.step(text, out)?;
    match progress {
        Progress::More => Ok(None),
        Progress::Done => {
            *inner = Inner::Tail;
            inner_json(v, inner, &text[n..], out)
        }
        Progress::Invalid => {
            v.close(out);
            *inner = Inner::Over;
            Ok(Some("malformed JSON in the arguments string"))
        }
    }
}
