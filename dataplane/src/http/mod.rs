//! A lean HTTP/1.1 server side on `httparse`: request heads ([`request`]), bodies with
//! Content-Length or chunked framing ([`chunked`]) and gzip ([`body`]), responses ([`response`]) and the
//! keep-alive connection loop ([`conn`]). Why not a framework: `docs/http.md`.

pub mod body;
pub mod chunked;
pub mod conn;
pub mod request;
pub mod response;
