//! The parser's one error type. Only caps and misuse are errors: malformed
//! markup is recovered (the call's "end" says why), never refused.

use std::fmt;

/// Why `feed` or `finish` refused; after any of these the parser is finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolCallError {
    /// More than `max` bytes would have to be held back or buffered; `what`
    /// names the buffer (e.g. the arguments of a call whose name comes last).
    BufferFull { what: &'static str, max: usize },
    /// JSON arguments (or another value of a JSON call) nest deeper than `max`.
    TooDeep { max: usize },
    /// The stream holds more than `max` calls.
    TooManyCalls { max: usize },
    /// `feed` or `finish` was called after `finish` or after an error.
    Finished,
}

impl fmt::Display for ToolCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferFull { what, max } => {
                write!(
                    f,
                    "max_buffer exceeded: more than {max} bytes held back ({what})"
                )
            }
            Self::TooDeep { max } => {
                write!(
                    f,
                    "max_depth exceeded: JSON nested deeper than {max} levels"
                )
            }
            Self::TooManyCalls { max } => {
                write!(
                    f,
                    "max_calls exceeded: more than {max} tool calls in one stream"
                )
            }
            Self::Finished => {
                f.write_str("the parser is finished: finish() was called or a cap was exceeded")
            }
        }
    }
}

impl std::error::Error for ToolCallError {}

pub type Result<T> = std::result::Result<T, ToolCallError>;
