//! OTLP responses, in the encoding of the request: `Export*ServiceResponse` (with
//! `partial_success` when records were rejected) and `google.rpc.Status` for refusals.

use super::any::write_str;
use super::wire::{put_bytes, put_tag, put_varint};
use super::{Format, Signal};

/// `google.rpc.Code` values the receiver answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    /// 3: the payload cannot be decoded.
    InvalidArgument = 3,
    /// 7: the credential does not grant this.
    PermissionDenied = 7,
    /// 8: rate limited.
    ResourceExhausted = 8,
    /// 12: the signal is not supported.
    Unimplemented = 12,
    /// 13: a server fault.
    Internal = 13,
    /// 14: retry later (Redis down, backlog full).
    Unavailable = 14,
    /// 16: no valid credential.
    Unauthenticated = 16,
}

/// Appends the success response of `signal`: empty when nothing was rejected, else
/// `partial_success` with the count and `message`.
pub fn export(out: &mut Vec<u8>, signal: Signal, format: Format, rejected: u64, message: &str) {
    match format {
        Format::Protobuf => {
            if rejected == 0 && message.is_empty() {
                return;
            }
            let mut partial = Vec::with_capacity(message.len() + 16);
            if rejected > 0 {
                put_tag(&mut partial, 1, 0);
                put_varint(&mut partial, rejected);
            }
            if !message.is_empty() {
                put_bytes(&mut partial, 2, message.as_bytes());
            }
            put_bytes(out, 1, &partial);
        }
        Format::Json => {
            if rejected == 0 && message.is_empty() {
                out.extend_from_slice(b"{}");
                return;
            }
            let field = match signal {
                Signal::Logs => "rejectedLogRecords",
                Signal::Traces => "rejectedSpans",
            };
            let mut s = String::with_capacity(message.len() + 64);
            s.push_str("{\"partialSuccess\":{\"");
            s.push_str(field);
            s.push_str("\":\"");
            s.push_str(&rejected.to_string());
            s.push_str("\",\"errorMessage\":");
            write_str(&mut s, message);
            s.push_str("}}");
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Appends a `google.rpc.Status`.
pub fn status(out: &mut Vec<u8>, format: Format, code: Code, message: &str) {
    match format {
        Format::Protobuf => {
            put_tag(out, 1, 0);
            put_varint(out, code as i32 as u64);
            put_bytes(out, 2, message.as_bytes());
        }
        Format::Json => {
            let mut s = String::with_capacity(message.len() + 32);
            s.push_str("{\"code\":");
            s.push_str(&(code as i32).to_string());
            s.push_str(",\"message\":");
            write_str(&mut s, message);
            s.push('}');
            out.extend_from_slice(s.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_in_both_encodings() {
        let mut out = Vec::new();
        export(&mut out, Signal::Logs, Format::Protobuf, 0, "");
        assert!(out.is_empty());
        export(&mut out, Signal::Logs, Format::Protobuf, 1, "bad");
        assert_eq!(out, [0x0a, 7, 0x08, 1, 0x12, 3, b'b', b'a', b'd']);
        out.clear();
        export(&mut out, Signal::Traces, Format::Json, 2, "x\"y");
        assert_eq!(std::str::from_utf8(&out), Ok(r#"{"partialSuccess":{"rejectedSpans":"2","errorMessage":"x\"y"}}"#));
        out.clear();
        status(&mut out, Format::Protobuf, Code::Unavailable, "later");
        assert_eq!(out, [0x08, 14, 0x12, 5, b'l', b'a', b't', b'e', b'r']);
        out.clear();
        status(&mut out, Format::Json, Code::InvalidArgument, "no");
        assert_eq!(std::str::from_utf8(&out), Ok(r#"{"code":3,"message":"no"}"#));
    }
}
