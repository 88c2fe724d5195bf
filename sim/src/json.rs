//! An order-preserving JSON value and Python-compatible output.
//!
//! ComfyUI answers with `json.dumps` defaults (`", "` / `": "` separators, `ensure_ascii`), keeps
//! dict insertion order, and builds some messages with Python's `str()`/`repr()`. This module
//! reproduces those byte for byte without switching on serde_json's `preserve_order` feature for the
//! whole workspace.

use std::cmp::Ordering;
use std::fmt::Write as _;

use indexmap::IndexMap;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// Ordered JSON object.
pub type Obj = IndexMap<String, J>;

/// A JSON value whose objects keep insertion order (like a Python dict).
#[derive(Clone, Debug, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Num(Number),
    Str(String),
    Arr(Vec<J>),
    Obj(Obj),
}

impl J {
    pub fn s(v: impl Into<String>) -> J {
        J::Str(v.into())
    }
    pub fn int(v: i64) -> J {
        J::Num(Number::from(v))
    }
    pub fn u(v: u64) -> J {
        J::Num(Number::from(v))
    }
    pub fn float(v: f64) -> J {
        Number::from_f64(v).map(J::Num).unwrap_or(J::Null)
    }
    pub fn obj<const N: usize>(pairs: [(&str, J); N]) -> J {
        J::Obj(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
    pub fn empty_obj() -> J {
        J::Obj(Obj::new())
    }
    pub fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(m) => m.get(key),
            _ => None,
        }
    }
    pub fn get_mut(&mut self, key: &str) -> Option<&mut J> {
        match self {
            J::Obj(m) => m.get_mut(key),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_obj(&self) -> Option<&Obj> {
        match self {
            J::Obj(m) => Some(m),
            _ => None,
        }
    }
    pub fn as_arr(&self) -> Option<&Vec<J>> {
        match self {
            J::Arr(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            J::Num(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            J::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }
    /// Python truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            J::Null => false,
            J::Bool(b) => *b,
            J::Num(n) => n.as_f64().is_some_and(|f| f != 0.0),
            J::Str(s) => !s.is_empty(),
            J::Arr(a) => !a.is_empty(),
            J::Obj(o) => !o.is_empty(),
        }
    }

    /// `json.dumps(self)` with Python's defaults.
    pub fn dumps(&self) -> String {
        let mut out = String::new();
        write_py_json(&mut out, self);
        out
    }

    /// Python `repr(self)`.
    pub fn py_repr(&self) -> String {
        let mut out = String::new();
        write_py_repr(&mut out, self);
        out
    }

    /// Python `str(self)` (strings are not quoted).
    pub fn py_str(&self) -> String {
        match self {
            J::Str(s) => s.clone(),
            other => other.py_repr(),
        }
    }

    /// Python `==` between JSON-ish values (`1 == 1.0 == True`).
    pub fn py_eq(&self, other: &J) -> bool {
        match (self.as_pynum(), other.as_pynum()) {
            (Some(a), Some(b)) => return pynum_cmp(a, b) == Some(Ordering::Equal),
            (Some(_), None) | (None, Some(_)) => return false,
            _ => {}
        }
        match (self, other) {
            (J::Arr(a), J::Arr(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.py_eq(y)),
            _ => self == other,
        }
    }

    pub fn as_pynum(&self) -> Option<PyNum> {
        match self {
            J::Bool(b) => Some(PyNum::Int(i128::from(*b))),
            J::Num(n) => Some(num_to_pynum(n)),
            _ => None,
        }
    }
}

/// A number as Python sees it.
#[derive(Clone, Copy, Debug)]
pub enum PyNum {
    Int(i128),
    Float(f64),
}

impl PyNum {
    pub fn to_j(self) -> J {
        match self {
            PyNum::Int(i) => {
                if let Ok(v) = i64::try_from(i) {
                    J::int(v)
                } else if let Ok(v) = u64::try_from(i) {
                    J::u(v)
                } else {
                    J::float(i as f64)
                }
            }
            PyNum::Float(f) => J::float(f),
        }
    }
    pub fn py_str(self) -> String {
        match self {
            PyNum::Int(i) => i.to_string(),
            PyNum::Float(f) => py_float_repr(f),
        }
    }
}

pub fn num_to_pynum(n: &Number) -> PyNum {
    if let Some(i) = n.as_i64() {
        PyNum::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        PyNum::Int(i128::from(u))
    } else {
        PyNum::Float(n.as_f64().unwrap_or(0.0))
    }
}

pub fn pynum_cmp(a: PyNum, b: PyNum) -> Option<Ordering> {
    match (a, b) {
        (PyNum::Int(x), PyNum::Int(y)) => Some(x.cmp(&y)),
        (PyNum::Int(x), PyNum::Float(y)) => (x as f64).partial_cmp(&y),
        (PyNum::Float(x), PyNum::Int(y)) => x.partial_cmp(&(y as f64)),
        (PyNum::Float(x), PyNum::Float(y)) => x.partial_cmp(&y),
    }
}

impl From<&str> for J {
    fn from(s: &str) -> J {
        J::Str(s.to_string())
    }
}
impl From<String> for J {
    fn from(s: String) -> J {
        J::Str(s)
    }
}
impl From<bool> for J {
    fn from(b: bool) -> J {
        J::Bool(b)
    }
}
impl From<Vec<J>> for J {
    fn from(v: Vec<J>) -> J {
        J::Arr(v)
    }
}
impl From<Obj> for J {
    fn from(v: Obj) -> J {
        J::Obj(v)
    }
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<J, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = J;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<J, E> {
                Ok(J::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<J, E> {
                Ok(J::int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<J, E> {
                Ok(J::u(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<J, E> {
                Ok(J::float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<J, E> {
                Ok(J::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<J, E> {
                Ok(J::Str(v))
            }
            fn visit_unit<E>(self) -> Result<J, E> {
                Ok(J::Null)
            }
            fn visit_none<E>(self) -> Result<J, E> {
                Ok(J::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<J, D2::Error> {
                J::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element::<J>()? {
                    v.push(x);
                }
                Ok(J::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J, A::Error> {
                let mut m = Obj::new();
                while let Some((k, v)) = map.next_entry::<String, J>()? {
                    // Python dict semantics: a repeated key keeps its first position, last value.
                    m.insert(k, v);
                }
                Ok(J::Obj(m))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses JSON text into an ordered value.
pub fn parse(bytes: &[u8]) -> Result<J, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Python `float.__repr__`.
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Shortest round-trip digits, scientific: "d.ddde[-]x"
    let sci = format!("{f:e}");
    let (mant, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                out.push_str(&digits);
                for _ in 0..(int_len - n) {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len as usize]);
                out.push('.');
                out.push_str(&digits[int_len as usize..]);
            }
        } else {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

fn write_num(out: &mut String, n: &Number) {
    match num_to_pynum(n) {
        PyNum::Int(i) => {
            let _ = write!(out, "{i}");
        }
        PyNum::Float(f) => out.push_str(&py_float_repr(f)),
    }
}

fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

fn write_py_json(out: &mut String, v: &J) {
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => write_num(out, n),
        J::Str(s) => write_json_str(out, s),
        J::Arr(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_py_json(out, x);
            }
            out.push(']');
        }
        J::Obj(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json_str(out, k);
                out.push_str(": ");
                write_py_json(out, x);
            }
            out.push('}');
        }
    }
}

fn write_py_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn write_py_repr(out: &mut String, v: &J) {
    match v {
        J::Null => out.push_str("None"),
        J::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
        J::Num(n) => write_num(out, n),
        J::Str(s) => write_py_str_repr(out, s),
        J::Arr(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_py_repr(out, x);
            }
            out.push(']');
        }
        J::Obj(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_py_str_repr(out, k);
                out.push_str(": ");
                write_py_repr(out, x);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn floats_like_python() {
        assert_eq!(py_float_repr(10.0), "10.0");
        assert_eq!(py_float_repr(0.1), "0.1");
        assert_eq!(py_float_repr(1e16), "1e+16");
        assert_eq!(py_float_repr(1.5e-7), "1.5e-07");
        assert_eq!(py_float_repr(123456.789), "123456.789");
        assert_eq!(py_float_repr(0.0001), "0.0001");
        assert_eq!(py_float_repr(-2.5), "-2.5");
    }

    #[test]
    fn dumps_keeps_order_and_python_spacing() {
        let v = parse(br#"{"b": [1, 2.0, "x\u00e9"], "a": {"z": null, "y": true}}"#).unwrap();
        assert_eq!(v.dumps(), r#"{"b": [1, 2.0, "x\u00e9"], "a": {"z": null, "y": true}}"#);
        assert_eq!(parse(b"[\"a.safetensors\", \"it's\"]").unwrap().py_repr(), r#"['a.safetensors', "it's"]"#);
    }
}
