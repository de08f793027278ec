//! The Python binding of the tool-call parser (`rust_ext._native.ToolCallParser`):
//! events as plain tuples (cheap to build: a feed of a few characters costs
//! well under a microsecond), and one function mapping parser errors to
//! `ToolCallParseError`. Registered by `python.rs`.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::toolcall::{Event, Options, Parser, ToolCallError};

create_exception!(
    rust_ext,
    ToolCallParseError,
    PyValueError,
    "A cap of the tool-call parser was exceeded (the message says which), or it was used after finish(); the parser is then finished."
);

/// The one place parser errors become Python exceptions.
fn to_py_err(e: ToolCallError) -> PyErr {
    ToolCallParseError::new_err(e.to_string())
}

#[pyclass(module = "llamagate.rust_ext._native", name = "ToolCallParser")]
struct ToolCallParser {
    inner: Parser,
}

#[pymethods]
impl ToolCallParser {
    #[new]
    #[pyo3(signature = (*, max_buffer = 1 << 20, max_calls = 64, max_depth = 64, id_prefix = "call_".to_owned()))]
    fn new(max_buffer: usize, max_calls: usize, max_depth: usize, id_prefix: String) -> Self {
        let opts = Options {
            max_buffer,
            max_calls,
            max_depth,
            id_prefix,
        };
        ToolCallParser {
            inner: Parser::new(opts),
        }
    }

    fn feed<'py>(&mut self, py: Python<'py>, chunk: &str) -> PyResult<Bound<'py, PyList>> {
        let events = self.inner.feed(chunk).map_err(to_py_err)?;
        event_list(py, events)
    }

    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let events = self.inner.finish().map_err(to_py_err)?;
        event_list(py, events)
    }
}

fn event_list(py: Python<'_>, events: Vec<Event>) -> PyResult<Bound<'_, PyList>> {
    let tuples = events
        .into_iter()
        .map(|e| event_tuple(py, e))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, tuples)
}

fn event_tuple<'py>(py: Python<'py>, event: Event) -> PyResult<Bound<'py, PyTuple>> {
    let kind = |k: &Bound<'py, PyString>| k.clone().into_any();
    let s = |s: &str| PyString::new(py, s).into_any();
    match event {
        Event::Text(t) => PyTuple::new(py, [kind(intern!(py, "text")), s(&t)]),
        Event::Reasoning(t) => PyTuple::new(py, [kind(intern!(py, "reasoning")), s(&t)]),
        Event::Start { index, id, name } => PyTuple::new(
            py,
            [
                kind(intern!(py, "start")),
                index.into_bound_py_any(py)?,
                s(&id),
                s(&name),
            ],
        ),
        Event::Args { index, delta } => PyTuple::new(
            py,
            [
                kind(intern!(py, "args")),
                index.into_bound_py_any(py)?,
                s(&delta),
            ],
        ),
        Event::End { index, reason } => PyTuple::new(
            py,
            [
                kind(intern!(py, "end")),
                index.into_bound_py_any(py)?,
                reason.into_bound_py_any(py)?,
            ],
        ),
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add(
        "ToolCallParseError",
        m.py().get_type::<ToolCallParseError>(),
    )?;
    m.add_class::<ToolCallParser>()
}
