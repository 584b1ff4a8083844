//! Stream entries as the worker reads them, and the Redis commands it uses.

use croupier_protocol::resp::{self, Frame};
use croupier_protocol::stream::StreamKind;

/// One stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream it was read from: its key (or its partition's) is where it is
    /// acknowledged and dead-lettered.
    pub stream: StreamKind,
    /// Entry ID (`<ms>-<seq>`).
    pub id: String,
    /// Field/value pairs; empty when the entry was deleted (trimmed) while pending.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The value of `field`.
    pub fn get(&self, field: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(k, _)| k == field.as_bytes()).map(|(_, v)| v.as_slice())
    }

    /// The first of `fields` the entry gives more than once (Redis keeps a field given
    /// twice in `XADD` twice).
    pub fn repeated<'f>(&self, fields: &[&'f str]) -> Option<&'f str> {
        fields.iter().copied().find(|f| self.fields.iter().filter(|(k, _)| k == f.as_bytes()).nth(1).is_some())
    }

    /// Bytes of its ID, field names and values.
    pub fn byte_len(&self) -> usize {
        self.fields.iter().fold(self.id.len(), |n, (k, v)| n.saturating_add(k.len()).saturating_add(v.len()))
    }
}

fn bulk(f: Frame) -> Option<Vec<u8>> {
    match f {
        Frame::BulkString(b) | Frame::SimpleString(b) => Some(b),
        _ => None,
    }
}

fn entry(f: Frame, stream: StreamKind) -> Option<Entry> {
    let Frame::Array(mut parts) = f else { return None };
    if parts.len() != 2 {
        return None;
    }
    let kv = parts.pop()?;
    let id = String::from_utf8(bulk(parts.pop()?)?).ok()?;
    let fields = match kv {
        Frame::Array(kv) => {
            let mut fields = Vec::with_capacity(kv.len() / 2);
            let mut it = kv.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                fields.push((bulk(k)?, bulk(v)?));
            }
            fields
        }
        _ => Vec::new(),
    };
    Some(Entry { stream, id, fields })
}

fn entries(f: Frame, stream: StreamKind) -> Option<Vec<Entry>> {
    match f {
        Frame::Array(items) => items.into_iter().map(|i| entry(i, stream)).collect(),
        Frame::Null => Some(Vec::new()),
        _ => None,
    }
}

/// Entries of an `XREADGROUP` reply (none on timeout), each tagged with the stream
/// `keys` names for the key Redis sent it under; an unknown key is an error.
pub fn xreadgroup_reply(f: Frame, keys: &[(&str, StreamKind)]) -> Result<Vec<Entry>, String> {
    match f {
        Frame::Null => Ok(Vec::new()),
        Frame::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                let Frame::Array(s) = s else { return Err("XREADGROUP: malformed stream".into()) };
                let mut it = s.into_iter();
                let (Some(key), Some(list)) = (it.next().and_then(bulk), it.next()) else {
                    return Err("XREADGROUP: malformed stream".into());
                };
                let Some(&(_, stream)) = keys.iter().find(|(k, _)| k.as_bytes() == key) else {
                    return Err(format!(
                        "XREADGROUP: entries of a stream not asked for: {}",
                        String::from_utf8_lossy(&key)
                    ));
                };
                out.extend(entries(list, stream).ok_or("XREADGROUP: malformed entries")?);
            }
            Ok(out)
        }
        Frame::Error(e) => Err(e),
        other => Err(format!("XREADGROUP: unexpected {other:?}")),
    }
}

/// Entries of an `XRANGE` reply.
pub fn xrange_reply(f: Frame, stream: StreamKind) -> Result<Vec<Entry>, String> {
    match f {
        Frame::Error(e) => Err(e),
        other => entries(other, stream).ok_or_else(|| "XRANGE: malformed entries".to_owned()),
    }
}

/// What one `XAUTOCLAIM` call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Where the next call goes on scanning the pending list (`0-0`: the scan is done).
    pub cursor: String,
    /// Entries now owned by the caller, with their fields.
    pub entries: Vec<Entry>,
    /// IDs that were pending but no longer in the stream (deleted or trimmed); Redis 7
    /// reports them here and removes them from the pending list.
    pub deleted: Vec<String>,
    /// Entries Redis 6.2 claimed but answered as nil (deleted from the stream while
    /// pending): it names none of them and keeps them pending, now the caller's.
    pub unnamed_deleted: usize,
}

/// An `XAUTOCLAIM` reply: the cursor, the claimed entries and (Redis 7 and later) the
/// IDs of pending entries that were deleted from the stream.
pub fn xautoclaim_reply(f: Frame, stream: StreamKind) -> Result<Claimed, String> {
    match f {
        Frame::Array(parts) => {
            let mut it = parts.into_iter();
            let cursor =
                it.next().and_then(bulk).and_then(|c| String::from_utf8(c).ok()).ok_or("XAUTOCLAIM: cursor")?;
            // Redis 6.2 answers a claimed entry that was deleted as a nil among the others.
            let (entries, unnamed_deleted) = match it.next() {
                Some(Frame::Array(items)) => {
                    let total = items.len();
                    let named = items.into_iter().filter(|i| !matches!(i, Frame::Null)).map(|i| entry(i, stream));
                    let named = named.collect::<Option<Vec<Entry>>>().ok_or("XAUTOCLAIM: entries")?;
                    let unnamed = total - named.len();
                    (named, unnamed)
                }
                Some(Frame::Null) => (Vec::new(), 0),
                _ => return Err("XAUTOCLAIM: entries".into()),
            };
            let deleted = match it.next() {
                None | Some(Frame::Null) => Vec::new(),
                Some(Frame::Array(ids)) => ids
                    .into_iter()
                    .map(|i| bulk(i).and_then(|b| String::from_utf8(b).ok()))
                    .collect::<Option<Vec<String>>>()
                    .ok_or("XAUTOCLAIM: deleted IDs")?,
                Some(other) => return Err(format!("XAUTOCLAIM: unexpected deleted IDs {other:?}")),
            };
            Ok(Claimed { cursor, entries, deleted, unnamed_deleted })
        }
        Frame::Error(e) => Err(e),
        other => Err(format!("XAUTOCLAIM: unexpected {other:?}")),
    }
}

/// `(id, deliveries)` from an extended `XPENDING` reply.
pub fn xpending_reply(f: Frame) -> Result<Vec<(String, u64)>, String> {
    match f {
        Frame::Array(items) => Ok(items
            .into_iter()
            .filter_map(|i| {
                let Frame::Array(p) = i else { return None };
                let mut it = p.into_iter();
                let id = String::from_utf8(bulk(it.next()?)?).ok()?;
                let deliveries = match it.nth(2)? {
                    Frame::Integer(n) => n.max(0) as u64,
                    _ => return None,
                };
                Some((id, deliveries))
            })
            .collect()),
        Frame::Error(e) => Err(e),
        other => Err(format!("XPENDING: unexpected {other:?}")),
    }
}

/// Encodes a command from string-like arguments.
pub fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    resp::command(&mut out, args);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(raw: &[u8]) -> Frame {
        resp::decode_reply(raw).expect("valid").expect("complete").0
    }

    #[test]
    fn reads_entries_including_deleted_ones() {
        let f = frame(b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\ndata\r\n$2\r\n{}\r\n*2\r\n$3\r\n2-0\r\n*-1\r\n");
        let e = xreadgroup_reply(f, &[("s", StreamKind::Events)]).expect("parses");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].get("data"), Some(b"{}".as_slice()));
        assert!(e[1].fields.is_empty());
        assert_eq!(xreadgroup_reply(frame(b"*-1\r\n"), &[("s", StreamKind::Events)]), Ok(Vec::new()));
    }

    #[test]
    fn a_read_of_two_streams_tags_each_entry_with_its_stream() {
        let keys = [("e", StreamKind::Events), ("c", StreamKind::Custom)];
        let f = frame(
            b"*2\r\n*2\r\n$1\r\nc\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*0\r\n*2\r\n$1\r\ne\r\n*1\r\n*2\r\n$3\r\n2-0\r\n*0\r\n",
        );
        let got: Vec<(StreamKind, String)> =
            xreadgroup_reply(f, &keys).expect("parses").into_iter().map(|e| (e.stream, e.id)).collect();
        assert_eq!(got, vec![(StreamKind::Custom, "1-0".to_owned()), (StreamKind::Events, "2-0".to_owned())]);
        // Entries of a key not asked for are not taken as another stream's.
        let f = frame(b"*1\r\n*2\r\n$1\r\nx\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*0\r\n");
        assert!(xreadgroup_reply(f, &keys).is_err());
    }

    #[test]
    fn c2_claims_report_the_ids_deleted_while_pending() {
        let f = frame(b"*3\r\n$3\r\n7-0\r\n*0\r\n*2\r\n$3\r\n5-0\r\n$3\r\n6-1\r\n");
        let c = xautoclaim_reply(f, StreamKind::Custom).expect("parses");
        assert_eq!(c.cursor, "7-0");
        assert!(c.entries.is_empty());
        assert_eq!(c.deleted, vec!["5-0".to_owned(), "6-1".to_owned()]);
        // Redis 6.2 sends two elements.
        let f = frame(b"*2\r\n$3\r\n0-0\r\n*0\r\n");
        assert!(xautoclaim_reply(f, StreamKind::Custom).expect("parses").deleted.is_empty());
        // ...and a claimed entry deleted while pending as a nil among the others: the
        // others are taken, the nil counted (the reply before failed whole).
        let f = frame(
            b"*2\r\n$3\r\n9-0\r\n*3\r\n*2\r\n$3\r\n5-0\r\n*2\r\n$1\r\nk\r\n$1\r\nv\r\n$-1\r\n*2\r\n$3\r\n8-0\r\n*0\r\n",
        );
        let c = xautoclaim_reply(f, StreamKind::Custom).expect("parses");
        let ids: Vec<&str> = c.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!((ids, c.unnamed_deleted, c.deleted.len()), (vec!["5-0", "8-0"], 1, 0));
    }

    #[test]
    fn reads_claims_and_delivery_counts() {
        let f = frame(b"*3\r\n$3\r\n0-0\r\n*1\r\n*2\r\n$3\r\n5-0\r\n*2\r\n$1\r\nk\r\n$1\r\nv\r\n*0\r\n");
        let c = xautoclaim_reply(f, StreamKind::Custom).expect("parses");
        assert_eq!((c.cursor.as_str(), c.entries[0].id.as_str()), ("0-0", "5-0"));
        assert!(c.deleted.is_empty());
        let p = frame(b"*1\r\n*4\r\n$3\r\n5-0\r\n$1\r\nc\r\n:100\r\n:3\r\n");
        assert_eq!(xpending_reply(p), Ok(vec![("5-0".to_owned(), 3)]));
    }
}
