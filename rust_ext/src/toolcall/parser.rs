//! The top level: text, `<think>` blocks, and deciding whether a
//! `<tool_call>` or `<function=` opener starts a call; calls themselves are
//! handed to [`HermesBlock`] and [`XmlCall`].

use super::error::{Result, ToolCallError};
use super::event::{Cx, Event};
use super::hermes::HermesBlock;
use super::scan::{find_byte, starts_marker, ws_run, Match, Matcher};
use super::scan::{FUNCTION, THINK, THINK_END, TOOL_CALL};
use super::xml::{XmlCall, NAME_MAX};
use super::{Exit, Step};

/// Markers that text may hold.
const TEXT: &[&[u8]] = &[TOOL_CALL, FUNCTION, THINK];

/// The parser's caps and the prefix of call ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Most bytes held back or buffered at any one time (per buffer).
    pub max_buffer: usize,
    /// Most calls in one stream.
    pub max_calls: usize,
    /// Deepest nesting of JSON arguments.
    pub max_depth: usize,
    /// Call ids are this followed by the call's index.
    pub id_prefix: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_buffer: 1 << 20,
            max_calls: 64,
            max_depth: 64,
            id_prefix: "call_".to_owned(),
        }
    }
}

#[derive(Debug)]
enum Mode {
    Text,
    Think,
    /// After `<tool_call>`: whitespace, then `{` or `<function=` make it a call.
    Opener {
        ws: Vec<u8>,
    },
    /// After `<function=` (and the opener with its whitespace, if any).
    FuncName {
        opener: Option<Vec<u8>>,
        name: Vec<u8>,
    },
    Json(Box<HermesBlock>),
    Xml(Box<XmlCall>),
    Done,
}

/// What the text-level modes share: the marker being matched, and the
/// whitespace after a call (dropped if another call follows, text otherwise).
#[derive(Debug, Default)]
struct Side {
    m: Matcher,
    after_call: bool,
    ws: Vec<u8>,
}

impl Side {
    /// Text follows the call after all: its whitespace is text too.
    fn flush_ws(&mut self, cx: &mut Cx) {
        cx.text(&self.ws);
        self.ws.clear();
        self.after_call = false;
    }

    fn drop_ws(&mut self) {
        self.ws.clear();
        self.after_call = false;
    }

    /// An opener that turned out not to be a call: all of it is text.
    fn not_a_call(&mut self, cx: &mut Cx, opener: Option<&[u8]>, rest: &[&[u8]]) {
        self.flush_ws(cx);
        if let Some(ws) = opener {
            cx.text(TOOL_CALL);
            cx.text(ws);
        }
        for part in rest {
            cx.text(part);
        }
    }
}

/// The incremental tool-call parser: one per stream.
#[derive(Debug)]
pub struct Parser {
    mode: Mode,
    side: Side,
    cx: Cx,
}

impl Parser {
    pub fn new(opts: Options) -> Self {
        Parser {
            mode: Mode::Text,
            side: Side::default(),
            cx: Cx::new(
                opts.max_buffer,
                opts.max_calls,
                opts.max_depth,
                opts.id_prefix,
            ),
        }
    }

    /// The events that `chunk` completes, in order.
    pub fn feed(&mut self, chunk: &str) -> Result<Vec<Event>> {
        if matches!(self.mode, Mode::Done) {
            return Err(ToolCallError::Finished);
        }
        match self.run(chunk.as_bytes()) {
            Ok(()) => Ok(self.cx.take()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Flushes what was held back and closes what is open; afterwards the
    /// parser is finished.
    pub fn finish(&mut self) -> Result<Vec<Event>> {
        match self.close() {
            Ok(()) => Ok(self.cx.take()),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn close(&mut self) -> Result<()> {
        // A call first hands back what follows it (whitespace, an opener cut
        // short) to the text level, which then closes like any other.
        let left = match std::mem::replace(&mut self.mode, Mode::Text) {
            Mode::Done => {
                self.mode = Mode::Done;
                return Err(ToolCallError::Finished);
            }
            Mode::Json(h) => h.finish(&mut self.cx)?,
            Mode::Xml(x) => x.finish(&mut self.cx),
            other => {
                self.mode = other;
                None
            }
        };
        if let Some(exit) = left {
            self.go(Go::AfterCall(exit))?;
        }
        let (side, cx) = (&mut self.side, &mut self.cx);
        match std::mem::replace(&mut self.mode, Mode::Done) {
            Mode::Text => {
                side.flush_ws(cx);
                cx.text(side.m.held());
            }
            Mode::Think => cx.reasoning(side.m.held()),
            Mode::Opener { ws } => {
                let held = side.m.held().to_vec();
                side.not_a_call(cx, Some(&ws), &[&held]);
            }
            Mode::FuncName { opener, name } => {
                side.not_a_call(cx, opener.as_deref(), &[FUNCTION, &name])
            }
            // a replayed opener cut short cannot have become a call
            Mode::Json(_) | Mode::Xml(_) | Mode::Done => {}
        }
        Ok(())
    }

    fn fail(&mut self, e: ToolCallError) -> ToolCallError {
        self.mode = Mode::Done;
        self.cx.discard();
        e
    }

    fn run(&mut self, input: &[u8]) -> Result<()> {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            let (side, cx) = (&mut self.side, &mut self.cx);
            let (used, next) = match &mut self.mode {
                Mode::Text => text(side, cx, rest)?,
                Mode::Think => think(side, cx, rest),
                Mode::Opener { ws } => opener(side, cx, ws, rest)?,
                Mode::FuncName { opener, name } => func_name(side, cx, opener, name, rest)?,
                Mode::Json(h) => call(h.step(rest, cx)?),
                Mode::Xml(x) => call(x.step(rest, cx)?),
                Mode::Done => return Err(ToolCallError::Finished),
            };
            pos += used;
            if let Some(next) = next {
                self.go(next)?;
            }
        }
        Ok(())
    }

    fn go(&mut self, next: Go) -> Result<()> {
        self.mode = match next {
            Go::Text => Mode::Text,
            Go::Think => Mode::Think,
            Go::Opener => Mode::Opener { ws: Vec::new() },
            Go::FuncName(opener) => Mode::FuncName {
                opener,
                name: Vec::new(),
            },
            Go::Json(h) => Mode::Json(h),
            Go::Xml(x) => Mode::Xml(x),
            Go::AfterCall(exit) => {
                self.mode = Mode::Text;
                self.side.after_call = true;
                self.side.ws = exit.ws;
                self.cx
                    .check(self.side.ws.len(), "whitespace after a call")?;
                // at most one marker's bytes, looked at again as text
                return self.run(&exit.replay);
            }
        };
        Ok(())
    }
}

/// Where the top level goes next.
enum Go {
    Text,
    Think,
    Opener,
    FuncName(Option<Vec<u8>>),
    Json(Box<HermesBlock>),
    Xml(Box<XmlCall>),
    AfterCall(Exit),
}

type Next = (usize, Option<Go>);

fn call(step: Step) -> Next {
    (step.used, step.exit.map(Go::AfterCall))
}

fn text(side: &mut Side, cx: &mut Cx, rest: &[u8]) -> Result<Next> {
    if side.m.active() {
        return Ok(match side.m.push(rest[0], TEXT) {
            Match::Partial => (1, None),
            Match::Full(THINK) => {
                side.flush_ws(cx);
                (1, Some(Go::Think))
            }
            Match::Full(TOOL_CALL) => (1, Some(Go::Opener)),
            Match::Full(_) => (1, Some(Go::FuncName(None))),
            Match::Fail => {
                side.flush_ws(cx);
                cx.text(side.m.held());
                side.m.clear();
                (0, None)
            }
        });
    }
    if side.after_call {
        let n = ws_run(rest);
        if n > 0 {
            cx.hold(&mut side.ws, &rest[..n], "whitespace after a call")?;
            return Ok((n, None));
        }
        if rest[0] == b'<' {
            side.m.push(b'<', TEXT);
            return Ok((1, None));
        }
        side.flush_ws(cx);
    }
    Ok(match find_byte(rest, b'<') {
        Some(i) => {
            cx.text(&rest[..i]);
            side.m.push(b'<', TEXT);
            (i + 1, None)
        }
        None => {
            cx.text(rest);
            (rest.len(), None)
        }
    })
}

fn think(side: &mut Side, cx: &mut Cx, rest: &[u8]) -> Next {
    if side.m.active() {
        return match side.m.push(rest[0], &[THINK_END]) {
            Match::Partial => (1, None),
            Match::Full(_) => (1, Some(Go::Text)),
            Match::Fail => {
                cx.reasoning(side.m.held());
                side.m.clear();
                (0, None)
            }
        };
    }
    match find_byte(rest, b'<') {
        Some(i) => {
            cx.reasoning(&rest[..i]);
            side.m.push(b'<', &[THINK_END]);
            (i + 1, None)
        }
        None => {
            cx.reasoning(rest);
            (rest.len(), None)
        }
    }
}

fn opener(side: &mut Side, cx: &mut Cx, ws: &mut Vec<u8>, rest: &[u8]) -> Result<Next> {
    let b = rest[0];
    if side.m.active() {
        return Ok(match side.m.push(b, &[FUNCTION]) {
            Match::Partial => (1, None),
            Match::Full(_) => (1, Some(Go::FuncName(Some(std::mem::take(ws))))),
            Match::Fail => {
                let held = side.m.held().to_vec();
                side.m.clear();
                side.not_a_call(cx, Some(ws), &[]);
                // the failed `<...` may still start another marker
                if starts_marker(&held, TEXT) {
                    side.m.set(&held);
                } else {
                    cx.text(&held);
                }
                (0, Some(Go::Text))
            }
        });
    }
    let n = ws_run(rest);
    if n > 0 {
        cx.hold(ws, &rest[..n], "whitespace after <tool_call>")?;
        return Ok((n, None));
    }
    Ok(match b {
        b'{' => {
            side.drop_ws();
            (
                1,
                Some(Go::Json(Box::new(HermesBlock::new(cx.begin_call()?)))),
            )
        }
        b'<' => {
            side.m.push(b, &[FUNCTION]);
            (1, None)
        }
        _ => {
            side.not_a_call(cx, Some(ws), &[]);
            (0, Some(Go::Text))
        }
    })
}

fn func_name(
    side: &mut Side,
    cx: &mut Cx,
    opener: &Option<Vec<u8>>,
    name: &mut Vec<u8>,
    rest: &[u8],
) -> Result<Next> {
    for (i, &b) in rest.iter().enumerate() {
        let trimmed = if b == b'>' { name.trim_ascii() } else { &[] };
        if !trimmed.is_empty() {
            side.drop_ws();
            let index = cx.begin_call()?;
            cx.start(index, String::from_utf8_lossy(trimmed).into_owned());
            let x = XmlCall::new(index, opener.is_some(), cx);
            return Ok((i + 1, Some(Go::Xml(Box::new(x)))));
        }
        // `<function=>` (no name), a line break or markup first: not a call
        if matches!(b, b'>' | b'<' | b'\n') || name.len() >= NAME_MAX {
            side.not_a_call(cx, opener.as_deref(), &[FUNCTION, name]);
            return Ok((i, Some(Go::Text)));
        }
        name.push(b);
    }
    Ok((rest.len(), None))
}
