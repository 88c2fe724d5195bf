//! Answers as aiohttp writes them: `web.json_response` (Python's `json.dumps`: `", "`/`": "`
//! separators, non-ASCII escaped) and `web.Response(text=...)`.

use std::io;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use serde_json::ser::{CharEscape, Formatter};

/// `web.json_response(value, status=status)`.
pub fn json(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, Bytes::from(dumps(value))).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    response
}

/// `web.Response(status=status, text=text)`.
pub fn text(status: StatusCode, text: &'static str) -> Response {
    let mut response = (status, text).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// `web.Response(status=status)`: no body.
pub fn empty(status: StatusCode) -> Response {
    let mut response = (status, Body::empty()).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    response
}

/// `json.dumps(value)` with Python's defaults.
pub fn dumps(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Writing a `Value` into a `Vec` cannot fail.
    let _ = value.serialize(&mut serializer);
    out
}

/// Python's `json.dumps` layout: `", "` and `": "`, `ensure_ascii`.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }

    fn write_char_escape<W: ?Sized + io::Write>(&mut self, writer: &mut W, escape: CharEscape) -> io::Result<()> {
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"\\/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return write!(writer, "\\u{byte:04x}"),
        };
        writer.write_all(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_written_like_python_json_dumps() {
        let value = serde_json::json!({"path": "workflows/画.json", "size": 3, "list": [1, "a\n"], "x": null});
        assert_eq!(
            String::from_utf8(dumps(&value)).unwrap_or_default(),
            r#"{"path": "workflows/\u753b.json", "size": 3, "list": [1, "a\n"], "x": null}"#
        );
        assert_eq!(String::from_utf8(dumps(&serde_json::json!("😀"))).unwrap_or_default(), r#""\ud83d\ude00""#);
    }
}
