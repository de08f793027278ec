//! The Python binding of the GGUF scanner (`rust_ext._native`): argument
//! conversion, the GIL released while scanning, results as plain dicts, and
//! one function mapping scanner errors to Python exceptions.

use std::path::PathBuf;

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString};
use pyo3::IntoPyObjectExt;

use crate::gguf::{self, ArraySelection, ArrayValues, ErrorKind, Field, GgufError, Header, Int};
use crate::gguf::{Options, Scalar, Value};

create_exception!(
    rust_ext,
    GGUFError,
    PyValueError,
    "Malformed GGUF data; `offset` is the byte where it was found."
);

/// The one place scanner errors become Python exceptions: I/O errors are
/// OSError (FileNotFoundError...), everything else GGUFError with `.offset`.
fn to_py_err(py: Python<'_>, e: GgufError, path: Option<&Bound<'_, PyAny>>) -> PyErr {
    if let ErrorKind::Io(io) = &e.kind {
        let text = io.to_string();
        let msg = text
            .split(" (os error")
            .next()
            .unwrap_or_default()
            .to_owned();
        return match (io.raw_os_error(), path) {
            (Some(code), Some(p)) => PyOSError::new_err((code, msg, p.clone().unbind())),
            (Some(code), None) => PyOSError::new_err((code, msg)),
            (None, _) => PyOSError::new_err(msg),
        };
    }
    let err = GGUFError::new_err(e.to_string());
    match err.value(py).setattr("offset", e.offset) {
        Ok(()) => err,
        Err(setattr_failed) => setattr_failed,
    }
}

fn options(tensors: bool, array_values: Option<&Bound<'_, PyAny>>) -> PyResult<Options> {
    let array_values = match array_values {
        None => ArraySelection::None,
        Some(v) if v.is_none() => ArraySelection::None,
        Some(v) if v.is_instance_of::<PyBool>() => {
            if v.is_truthy()? {
                ArraySelection::All
            } else {
                ArraySelection::None
            }
        }
        Some(v) if v.is_instance_of::<PyString>() => {
            return Err(PyTypeError::new_err(
                "array_values must be a bool or a collection of keys, not a str",
            ))
        }
        Some(v) => ArraySelection::Keys(
            v.try_iter()?
                .map(|k| k?.extract::<String>())
                .collect::<PyResult<_>>()?,
        ),
    };
    Ok(Options {
        tensors,
        array_values,
    })
}

#[pyfunction]
#[pyo3(signature = (path, *, tensors = false, array_values = None))]
fn scan_file<'py>(
    py: Python<'py>,
    path: &Bound<'py, PyAny>,
    tensors: bool,
    array_values: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = options(tensors, array_values)?;
    let file: PathBuf = path.extract()?;
    match py.detach(|| gguf::scan_file(&file, &opts)) {
        Ok(h) => header_dict(py, &h),
        Err(e) => Err(to_py_err(py, e, Some(path))),
    }
}

#[pyfunction]
#[pyo3(signature = (data, *, tensors = false, array_values = None))]
fn scan_bytes<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    tensors: bool,
    array_values: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = options(tensors, array_values)?;
    // bytes are immutable: scanned in place. Other buffers (bytearray,
    // memoryview) could change under us once the GIL is released: copied.
    let copy;
    let bytes: &[u8] = if let Ok(b) = data.cast::<PyBytes>() {
        b.as_bytes()
    } else if let Ok(buf) = PyBuffer::<u8>::get(data) {
        copy = buf.to_vec(py)?;
        &copy
    } else {
        return Err(PyTypeError::new_err(
            "data must be bytes, bytearray or a memoryview of unsigned bytes",
        ));
    };
    match py.detach(|| gguf::scan_bytes(bytes, &opts)) {
        Ok(h) => header_dict(py, &h),
        Err(e) => match e.bytes_needed(bytes.len() as u64) {
            Some(needed) => {
                let d = PyDict::new(py);
                d.set_item("complete", false)?;
                d.set_item("bytes_needed", needed)?;
                Ok(d)
            }
            None => Err(to_py_err(py, e, None)),
        },
    }
}

fn int<'py>(py: Python<'py>, i: Int) -> PyResult<Bound<'py, PyAny>> {
    match i {
        Int::Unsigned(v) => v.into_bound_py_any(py),
        Int::Signed(v) => v.into_bound_py_any(py),
    }
}

fn ints<'py>(py: Python<'py>, v: &[Int]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyList::new(
        py,
        v.iter()
            .map(|&i| int(py, i))
            .collect::<PyResult<Vec<_>>>()?,
    )?
    .into_any())
}

fn scalar<'py>(py: Python<'py>, s: &Scalar) -> PyResult<Bound<'py, PyAny>> {
    match s {
        Scalar::U8(v) => v.into_bound_py_any(py),
        Scalar::I8(v) => v.into_bound_py_any(py),
        Scalar::U16(v) => v.into_bound_py_any(py),
        Scalar::I16(v) => v.into_bound_py_any(py),
        Scalar::U32(v) => v.into_bound_py_any(py),
        Scalar::I32(v) => v.into_bound_py_any(py),
        Scalar::F32(v) => f64::from(*v).into_bound_py_any(py),
        Scalar::Bool(v) => v.into_bound_py_any(py),
        Scalar::String(v) => v.into_bound_py_any(py),
        Scalar::U64(v) => v.into_bound_py_any(py),
        Scalar::I64(v) => v.into_bound_py_any(py),
        Scalar::F64(v) => v.into_bound_py_any(py),
    }
}

fn array_values<'py>(py: Python<'py>, values: &ArrayValues) -> PyResult<Bound<'py, PyAny>> {
    let list = match values {
        ArrayValues::U8(v) => PyList::new(py, v.iter().copied())?,
        ArrayValues::I8(v) => PyList::new(py, v.iter().copied())?,
        ArrayValues::U16(v) => PyList::new(py, v.iter().copied())?,
        ArrayValues::I16(v) => PyList::new(py, v.iter().copied())?,
        ArrayValues::U32(v) => PyList::new(py, v.iter().copied())?,
        ArrayValues::I32(v) => PyList::new(py, v.iter().copied())?,
        ArrayValues::F32(v) => PyList::new(py, v.iter().map(|&x| f64::from(x)))?,
        ArrayValues::Bool(v) => PyList::new(py, v.iter().copied())?,
        ArrayValues::String(v) => PyList::new(py, v.iter().map(String::as_str))?,
        ArrayValues::U64(v) => PyList::new(py, v.iter().copied())?,
        ArrayValues::I64(v) => PyList::new(py, v.iter().copied())?,
        ArrayValues::F64(v) => PyList::new(py, v.iter().copied())?,
        ArrayValues::Array(v) => {
            let inner = v.iter().map(|a| match &a.values {
                Some(vals) => array_values(py, vals),
                None => Ok(py.None().into_bound(py)),
            });
            PyList::new(py, inner.collect::<PyResult<Vec<_>>>()?)?
        }
    };
    Ok(list.into_any())
}

fn header_dict<'py>(py: Python<'py>, h: &Header) -> PyResult<Bound<'py, PyDict>> {
    let metadata = PyDict::new(py);
    let arrays = PyDict::new(py);
    for kv in &h.metadata.entries {
        match &kv.value {
            Value::Scalar(s) => metadata.set_item(&kv.key, scalar(py, s)?)?,
            Value::Array(a) => {
                let info = PyDict::new(py);
                info.set_item("type", a.elem.name())?;
                info.set_item("length", a.len)?;
                info.set_item(
                    "values",
                    a.values.as_ref().map(|v| array_values(py, v)).transpose()?,
                )?;
                arrays.set_item(&kv.key, info)?;
            }
        }
    }
    let split = match &h.split {
        None => None,
        Some(s) => {
            let d = PyDict::new(py);
            for (name, value) in [
                ("count", s.count),
                ("no", s.no),
                ("tensors_count", s.tensors_count),
            ] {
                d.set_item(name, value.map(|i| int(py, i)).transpose()?)?;
            }
            Some(d)
        }
    };
    let tensors = match &h.tensors {
        None => None,
        Some(infos) => {
            let list = PyList::empty(py);
            for t in infos {
                let d = PyDict::new(py);
                d.set_item("name", &t.name)?;
                d.set_item("shape", PyList::new(py, t.shape.iter().copied())?)?;
                d.set_item("type", t.ggml_type)?;
                d.set_item("offset", t.offset)?;
                d.set_item("n_bytes", t.n_bytes)?;
                list.append(d)?;
            }
            Some(list)
        }
    };

    let model = PyDict::new(py);
    for (name, value) in h.model.fields() {
        let value = match value {
            None => None,
            Some(Field::Int(i)) => Some(int(py, i)?),
            Some(Field::Ints(l)) => Some(ints(py, l)?),
            Some(Field::Flags(l)) => Some(PyList::new(py, l.iter().copied())?.into_any()),
        };
        model.set_item(name, value)?;
    }

    let d = PyDict::new(py);
    d.set_item("complete", true)?;
    d.set_item("version", h.version)?;
    d.set_item("tensor_count", h.tensor_count)?;
    d.set_item("kv_count", h.kv_count)?;
    d.set_item("alignment", h.alignment)?;
    d.set_item("architecture", h.architecture.as_deref())?;
    d.set_item("metadata", metadata)?;
    d.set_item("arrays", arrays)?;
    d.set_item("chat_template", h.chat_template.as_deref())?;
    d.set_item("split", split)?;
    d.set_item("header_size", h.header_size)?;
    d.set_item("tensor_data_size", h.tensor_data_size)?;
    d.set_item("tensors", tensors)?;
    d.set_item("model", model)?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("GGUFError", m.py().get_type::<GGUFError>())?;
    m.add_function(wrap_pyfunction!(scan_file, m)?)?;
    m.add_function(wrap_pyfunction!(scan_bytes, m)?)?;
    crate::python_toolcall::register(m)?;
    Ok(())
}
