//! A lean HTTP/1.1 server side on `httparse` that knows no handler: request heads
//! ([`request`]), bodies with Content-Length or chunked framing ([`chunked`]) and gzip
//! ([`body`]), responses ([`response`]), the layer's error contract ([`error`]), what a
//! surface plugs in ([`handler`]) and the keep-alive connection loop ([`conn`]). The
//! accept loop is `crate::server`, the route table `crate::router`. Why not a framework:
//! `docs/http.md`.

pub mod body;
pub mod chunked;
pub mod conn;
pub mod error;
pub mod handler;
pub mod request;
pub mod response;
