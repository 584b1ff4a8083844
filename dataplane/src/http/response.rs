//! Responses: a status line, the few headers the API uses, and a JSON body.

use std::io::Write;

/// The standard reason phrase of a status (the `http` crate's table, RFC 9110 and the
/// IANA registry); a status without one gets the phrase of its class.
fn reason(status: u16) -> &'static str {
    let standard = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason());
    standard.unwrap_or(match status / 100 {
        1 => "Informational",
        2 => "Success",
        3 => "Redirection",
        4 => "Client Error",
        _ => "Server Error",
    })
}

/// One response, written with [`Response::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body (JSON unless `content_type` says otherwise; OTLP answers may be protobuf).
    pub body: Vec<u8>,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u64>,
    /// `Allow` (with 405).
    pub allow: Option<&'static str>,
    /// Send `Connection: close` and close after writing.
    pub close: bool,
    /// Send `Connection: keep-alive` (an HTTP/1.0 request asked to keep the connection).
    pub keep_alive: bool,
    /// Omit the body (HEAD), keeping its length.
    pub head_only: bool,
    /// More header fields (CORS's), written after the others.
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            body: body.into_bytes(),
            content_type: "application/json",
            retry_after: None,
            allow: None,
            close: false,
            keep_alive: false,
            head_only: false,
            headers: Vec::new(),
        }
    }

    /// A response with a body of another type (`/metrics`: the Prometheus text format).
    pub fn with_type(status: u16, content_type: &'static str, body: String) -> Response {
        Response { content_type, ..Response::json(status, body) }
    }

    /// A response with a body of bytes (OTLP's protobuf answers).
    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response { content_type, body, ..Response::json(status, String::new()) }
    }

    /// Appends the response's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        if self.status == 204 {
            // No body, and so neither its type nor its length (RFC 9110 §8.6).
            let _ = write!(out, "HTTP/1.1 204 {}\r\n", reason(204));
        } else {
            let _ = write!(
                out,
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
                self.status,
                reason(self.status),
                self.content_type,
                self.body.len()
            );
        }
        if let Some(s) = self.retry_after {
            let _ = write!(out, "Retry-After: {s}\r\n");
        }
        if let Some(a) = self.allow {
            let _ = write!(out, "Allow: {a}\r\n");
        }
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.keep_alive {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// A JSON error body: `{"error":tag,"message":...` then `extra` (more `,"key":value`
/// members), then `}`. The one shape of every refusal, whichever contract it is from.
pub fn error_body(tag: &str, message: &str, extra: &str) -> String {
    format!(r#"{{"error":"{tag}","message":{}{extra}}}"#, json_string(message))
}

/// Encodes `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_sent_has_its_standard_reason_phrase() {
        let cases = [
            (200, "OK"),
            (202, "Accepted"),
            (204, "No Content"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (409, "Conflict"),
            (411, "Length Required"),
            (413, "Payload Too Large"),
            (415, "Unsupported Media Type"),
            (417, "Expectation Failed"),
            (422, "Unprocessable Entity"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (502, "Bad Gateway"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (505, "HTTP Version Not Supported"),
        ];
        for (status, phrase) in cases {
            assert_eq!(reason(status), phrase, "{status}");
        }
        assert_eq!(reason(599), "Server Error");
    }

    #[test]
    fn encodes_status_headers_and_body() {
        let mut r = Response::json(503, r#"{"error":"x"}"#.into());
        r.retry_after = Some(1);
        r.close = true;
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\
Retry-After: 1\r\nConnection: close\r\n\r\n{\"error\":\"x\"}"
        );
    }
}
