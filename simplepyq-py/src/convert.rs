//! Task arguments and results between Python objects and MessagePack, as the original's
//! `msgpack.dumps` and `msgpack.loads` give them: `None`, `bool`, `int`, `float`, `str`,
//! `bytes`, lists, tuples (as lists) and dicts, nested.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};
use rmpv::Value;

/// How deep arguments may nest: the `msgpack` package's own limit.
const MAX_DEPTH: usize = 511;

/// A Python object as a MessagePack value. Errors as the `msgpack` package's: `TypeError`
/// for an object MessagePack cannot carry, `OverflowError` for an integer past 64 bits,
/// `ValueError` for nesting deeper than 511 (a list that holds itself, say).
pub(crate) fn to_value(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(
            "the value nests deeper than 511 levels",
        ));
    }
    if obj.is_none() {
        return Ok(Value::Nil);
    }
    // `bool` before `int`: it is a subclass of it.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Boolean(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(PyOverflowError::new_err(
            "an integer is out of MessagePack's 64-bit range",
        ));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::F64(f.value()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::from(s.to_cow()?.into_owned()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Binary(b.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Value::Binary(b.to_vec()));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        return obj
            .try_iter()?
            .map(|item| to_value(&item?, depth + 1))
            .collect::<PyResult<_>>()
            .map(Value::Array);
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut pairs = Vec::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            pairs.push((to_value(&k, depth + 1)?, to_value(&v, depth + 1)?));
        }
        return Ok(Value::Map(pairs));
    }
    let type_name = obj.get_type().name()?;
    Err(PyTypeError::new_err(format!(
        "can not serialize {type_name:?} object: MessagePack carries None, bool, int, float, \
         str, bytes, list, tuple and dict"
    )))
}

/// A MessagePack value as a Python object: maps become dicts (a list used as a key becomes
/// a tuple), arrays lists, binaries `bytes`.
pub(crate) fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Nil => py.None().into_bound(py),
        Value::Boolean(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => n.into_pyobject(py)?.into_any(),
            (None, Some(n)) => n.into_pyobject(py)?.into_any(),
            (None, None) => unreachable!("a MessagePack integer is an i64 or a u64"),
        },
        Value::F32(f) => PyFloat::new(py, f64::from(*f)).into_any(),
        Value::F64(f) => PyFloat::new(py, *f).into_any(),
        Value::String(s) => match s.as_str() {
            Some(text) => PyString::new(py, text).into_any(),
            None => {
                return Err(PyValueError::new_err(
                    "the task arguments hold a string that is not UTF-8",
                ));
            }
        },
        Value::Binary(b) => PyBytes::new(py, b).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python(py, item)?)?;
            }
            list.into_any()
        }
        Value::Map(pairs) => {
            let dict = PyDict::new(py);
            for (k, v) in pairs {
                let key = to_python(py, k)?;
                let key = match key.cast::<PyList>() {
                    Ok(list) => list.to_tuple().into_any(),
                    Err(_) => key,
                };
                dict.set_item(key, to_python(py, v)?)?;
            }
            dict.into_any()
        }
        Value::Ext(code, _) => {
            return Err(PyValueError::new_err(format!(
                "the task arguments hold a MessagePack extension (type {code}), which the Python \
                 package does not decode"
            )));
        }
    })
}
