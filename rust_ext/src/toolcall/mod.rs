//! Incremental tool-call parser: pure Rust, no Python (llamagate issue 10).
//!
//! One [`Parser`] per stream of model output: [`Parser::feed`] takes each
//! chunk and returns the [`Event`]s it completes (text, reasoning, call
//! start, argument deltas, call end), [`Parser::finish`] flushes what was
//! held back and closes what is open. Formats:
//!
//! - Hermes / Qwen2.5 JSON: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
//!   ([`hermes`]);
//! - Qwen3-Coder XML: `<tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></tool_call>`,
//!   and the same `<function=...>` block without `<tool_call>` ([`xml`]).
//!
//! A `<tool_call>` opener is a call only once what follows it (after
//! whitespace) is `{` or `<function=NAME>`; until then it is held back, and
//! otherwise it is text, so prose that mentions the tag stays prose.
//! Missing closers are recovered at the next marker or at the end of the
//! stream, and the call's end says why. Argument deltas are never taken
//! back: what has been sent is always the prefix of a JSON object that the
//! end completes.
//!
//! Reasoning policy: `<think>`...`</think>` in the stream is reported as
//! reasoning, and markup inside it is not parsed as calls (the model is
//! thinking about a call, not making it; vLLM and sglang likewise parse
//! calls only after the reasoning). Without `</think>`, everything after
//! `<think>` is reasoning. A `</think>` without `<think>` is text.
//!
//! Text is held back only while it could still be the start of a marker
//! (`<tool_c` at the end of a chunk), with one exception: whitespace right
//! after a call waits for what follows, since whitespace between two calls
//! is not text (before other text or at the end of the stream, it is).
//!
//! Work is linear: every byte is looked at a bounded number of times
//! (markers are matched byte by byte as they arrive, JSON is checked by a
//! push-down automaton that keeps its state between chunks), so a chunk
//! costs the same at the end of a 100 KB argument as at its start. Every
//! buffer is capped ([`Options`]); exceeding a cap is an error.

mod error;
mod event;
mod hermes;
mod json;
mod parser;
mod scan;
mod xml;

#[cfg(test)]
mod tests;

pub use error::{Result, ToolCallError};
pub use event::Event;
pub use parser::{Options, Parser};

/// How far a call's parser got with some input.
#[derive(Debug)]
pub(crate) struct Step {
    /// Bytes taken.
    pub(crate) used: usize,
    /// Set when the call has ended (its "end" event sent).
    pub(crate) exit: Option<Exit>,
}

/// What a call leaves to the text that follows it.
#[derive(Debug)]
pub(crate) struct Exit {
    /// Whitespace after the call, held back.
    pub(crate) ws: Vec<u8>,
    /// Bytes already taken that belong to what follows (the start of the
    /// next marker), to be read again as text.
    pub(crate) replay: Vec<u8>,
}
