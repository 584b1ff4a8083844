//! A listener's route table: `(method, path)` to the route a surface registered, or the
//! refusal HTTP gives (`404`, or `405` with `Allow`); and the header fields the
//! surface's handlers read from heads. A metrics endpoint, an OTLP receiver or a control
//! API is one more table, or one more row, not a new arm in the connection loop.

use crate::http::error::HttpError;
use crate::http::request::{Fields, Method};

/// The methods a route takes, with the `Allow` value that lists them.
#[derive(Debug, Clone, Copy)]
pub struct Methods {
    accepts: &'static [Method],
    allow: &'static str,
}

impl Methods {
    /// `POST` only.
    pub const POST: Methods = Methods { accepts: &[Method::Post], allow: "POST" };
    /// `GET` and `HEAD` (answered alike, without the body for `HEAD`).
    pub const GET_HEAD: Methods = Methods { accepts: &[Method::Get, Method::Head], allow: "GET, HEAD" };
    /// `POST`, and `OPTIONS` for a browser's CORS preflight.
    pub const POST_OPTIONS: Methods = Methods { accepts: &[Method::Post, Method::Options], allow: "POST, OPTIONS" };
    /// `GET`, `HEAD` and `POST`.
    pub const GET_HEAD_POST: Methods =
        Methods { accepts: &[Method::Get, Method::Head, Method::Post], allow: "GET, HEAD, POST" };
}

/// One row of the table.
#[derive(Debug, Clone)]
struct Row<R> {
    path: &'static str,
    /// The row takes every path that starts with `path` (a directory of files).
    prefix: bool,
    methods: Methods,
    route: R,
}

/// The route table of a listener.
#[derive(Debug, Clone)]
pub struct Router<R> {
    rows: Vec<Row<R>>,
    fields: &'static Fields,
}

impl<R: Copy> Router<R> {
    /// An empty table whose handlers read `fields` from request heads.
    pub fn new(fields: &'static Fields) -> Router<R> {
        Router { rows: Vec::new(), fields }
    }

    /// Adds `route` at `path` (matched exactly, without the query) for `methods`.
    pub fn route(mut self, path: &'static str, methods: Methods, route: R) -> Router<R> {
        self.rows.push(Row { path, prefix: false, methods, route });
        self
    }

    /// Adds `route` for every path that starts with `prefix` (which ends with `/`) and
    /// that no exact row takes; the longest prefix wins.
    pub fn prefix(mut self, prefix: &'static str, methods: Methods, route: R) -> Router<R> {
        self.rows.push(Row { path: prefix, prefix: true, methods, route });
        self
    }

    /// The header fields the handlers read.
    pub fn fields(&self) -> &'static Fields {
        self.fields
    }

    /// The route of a request: 404 for an unknown path, 405 (with what the path allows)
    /// for a method it does not take.
    pub fn find(&self, method: Method, path: &str) -> Result<R, HttpError> {
        let row = self.row(path).ok_or(HttpError::NotFound)?;
        if row.methods.accepts.contains(&method) {
            Ok(row.route)
        } else {
            Err(HttpError::MethodNotAllowed { allow: row.methods.allow })
        }
    }

    /// The route of `path` whatever the method (a surface answering a refusal of its own
    /// route in its own contract: `Handler::refused_head`).
    pub fn route_of(&self, path: &str) -> Option<R> {
        self.row(path).map(|r| r.route)
    }

    /// The row of `path`: its exact row, else the longest prefix row it starts with.
    fn row(&self, path: &str) -> Option<&Row<R>> {
        let exact = self.rows.iter().find(|r| !r.prefix && r.path == path);
        exact.or_else(|| self.rows.iter().filter(|r| r.prefix && path.starts_with(r.path)).max_by_key(|r| r.path.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NONE: Fields = Fields::new(&[]);

    #[test]
    fn finds_routes_and_refuses_the_rest() {
        let r = Router::new(&NONE).route("/a", Methods::POST, 1).route("/b", Methods::GET_HEAD, 2);
        assert_eq!(r.find(Method::Post, "/a"), Ok(1));
        assert_eq!(r.find(Method::Head, "/b"), Ok(2));
        assert_eq!(r.find(Method::Get, "/a"), Err(HttpError::MethodNotAllowed { allow: "POST" }));
        assert_eq!(r.find(Method::Other, "/b"), Err(HttpError::MethodNotAllowed { allow: "GET, HEAD" }));
        assert_eq!(r.find(Method::Get, "/c"), Err(HttpError::NotFound));
        assert_eq!(r.find(Method::Options, "/a"), Err(HttpError::MethodNotAllowed { allow: "POST" }));
        let r = r.route("/d", Methods::POST_OPTIONS, 3);
        assert_eq!((r.find(Method::Options, "/d"), r.find(Method::Post, "/d")), (Ok(3), Ok(3)));
        assert_eq!(r.find(Method::Get, "/d"), Err(HttpError::MethodNotAllowed { allow: "POST, OPTIONS" }));
        assert_eq!((r.route_of("/a"), r.route_of("/d"), r.route_of("/c")), (Some(1), Some(3), None));
    }

    #[test]
    fn prefix_rows_take_what_no_exact_row_takes() {
        let r = Router::new(&NONE)
            .prefix("/assets/", Methods::GET_HEAD, 1)
            .prefix("/assets/big/", Methods::GET_HEAD, 2)
            .route("/assets/exact", Methods::POST, 3);
        assert_eq!(r.find(Method::Get, "/assets/app.js"), Ok(1));
        assert_eq!(r.find(Method::Get, "/assets/big/x"), Ok(2));
        assert_eq!(r.find(Method::Post, "/assets/exact"), Ok(3));
        assert_eq!(r.find(Method::Post, "/assets/app.js"), Err(HttpError::MethodNotAllowed { allow: "GET, HEAD" }));
        assert_eq!(r.find(Method::Get, "/assets"), Err(HttpError::NotFound));
    }
}
