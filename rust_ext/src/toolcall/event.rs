//! What the parser reports, and the sink that collects it during one feed:
//! adjacent pieces of the same kind are merged there, so a feed returns one
//! "text" event per run of text however many steps produced it.

use super::error::{Result, ToolCallError};

/// One thing the stream said, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Visible text: never markup the parser took as a call.
    Text(String),
    /// Text inside `<think>`...`</think>`.
    Reasoning(String),
    /// A call begins; `index` counts calls in the stream from 0.
    Start {
        index: usize,
        id: String,
        name: String,
    },
    /// A piece of the call's arguments JSON (the pieces concatenated are a JSON object).
    Args { index: usize, delta: String },
    /// The call ended: `reason` is None when it was closed properly, else why it was recovered.
    End {
        index: usize,
        reason: Option<&'static str>,
    },
}

#[derive(Debug)]
enum Raw {
    Text(Vec<u8>),
    Reasoning(Vec<u8>),
    Start {
        index: usize,
        id: String,
        name: String,
    },
    Args {
        index: usize,
        delta: Vec<u8>,
    },
    End {
        index: usize,
        reason: Option<&'static str>,
    },
}

/// The caps, and what every part of the parser writes to.
#[derive(Debug)]
pub(crate) struct Cx {
    events: Vec<Raw>,
    pub(crate) max_buffer: usize,
    pub(crate) max_depth: usize,
    max_calls: usize,
    calls: usize,
    id_prefix: String,
}

impl Cx {
    pub(crate) fn new(
        max_buffer: usize,
        max_calls: usize,
        max_depth: usize,
        id_prefix: String,
    ) -> Self {
        Cx {
            events: Vec::new(),
            max_buffer,
            max_depth,
            max_calls,
            calls: 0,
            id_prefix,
        }
    }

    /// Fails when a buffer of `len` bytes is over the cap.
    pub(crate) fn check(&self, len: usize, what: &'static str) -> Result<()> {
        if len > self.max_buffer {
            return Err(ToolCallError::BufferFull {
                what,
                max: self.max_buffer,
            });
        }
        Ok(())
    }

    /// Appends `more` to a held-back buffer, unless that would take it over the cap.
    pub(crate) fn hold(&self, buf: &mut Vec<u8>, more: &[u8], what: &'static str) -> Result<()> {
        self.check(buf.len() + more.len(), what)?;
        buf.extend_from_slice(more);
        Ok(())
    }

    /// The index of a call that has just been recognised.
    pub(crate) fn begin_call(&mut self) -> Result<usize> {
        if self.calls >= self.max_calls {
            return Err(ToolCallError::TooManyCalls {
                max: self.max_calls,
            });
        }
        self.calls += 1;
        Ok(self.calls - 1)
    }

    pub(crate) fn text(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        match self.events.last_mut() {
            Some(Raw::Text(v)) => v.extend_from_slice(b),
            _ => self.events.push(Raw::Text(b.to_vec())),
        }
    }

    pub(crate) fn reasoning(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        match self.events.last_mut() {
            Some(Raw::Reasoning(v)) => v.extend_from_slice(b),
            _ => self.events.push(Raw::Reasoning(b.to_vec())),
        }
    }

    pub(crate) fn start(&mut self, index: usize, name: String) {
        let id = format!("{}{index}", self.id_prefix);
        self.events.push(Raw::Start { index, id, name });
    }

    /// Lets `write` append the call's next arguments bytes (merged with the
    /// last event when that is this call's arguments too).
    pub(crate) fn args(&mut self, index: usize, write: impl FnOnce(&mut Vec<u8>)) {
        match self.events.last_mut() {
            Some(Raw::Args { index: i, delta }) if *i == index => write(delta),
            _ => {
                let mut delta = Vec::new();
                write(&mut delta);
                self.events.push(Raw::Args { index, delta });
            }
        }
    }

    pub(crate) fn end(&mut self, index: usize, reason: Option<&'static str>) {
        self.events.push(Raw::End { index, reason });
    }

    /// The events collected since the last call, as strings.
    pub(crate) fn take(&mut self) -> Vec<Event> {
        fn string(v: Vec<u8>) -> String {
            // Every cut is at an ASCII byte or a chunk boundary, so the bytes
            // are whole characters; lossy conversion is only a fallback.
            String::from_utf8(v)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        }
        let mut out = Vec::with_capacity(self.events.len());
        for raw in self.events.drain(..) {
            out.push(match raw {
                Raw::Text(v) => Event::Text(string(v)),
                Raw::Reasoning(v) => Event::Reasoning(string(v)),
                Raw::Start { index, id, name } => Event::Start { index, id, name },
                Raw::Args { delta, .. } if delta.is_empty() => continue,
                Raw::Args { index, delta } => Event::Args {
                    index,
                    delta: string(delta),
                },
                Raw::End { index, reason } => Event::End { index, reason },
            });
        }
        out
    }

    pub(crate) fn discard(&mut self) {
        self.events.clear();
    }
}
