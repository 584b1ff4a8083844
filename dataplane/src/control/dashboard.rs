//! The web dashboard's files on the control listener (`docs/dashboard.md`): the build of
//! `dashboard/` (`index.html` and the hashed files of `assets/`) is read from
//! `control.dashboard_dir` once, when the listener starts, and served from memory.
//!
//! Only what was read can be served: a request names a key of a map, never a path on
//! disk, so `..`, encoded slashes or symbolic links cannot reach another file. The
//! dashboard's page paths (`PAGES`) answer `index.html` (the app routes in the browser);
//! an asset that is not there is a 404, never the page. A missing or unreadable build is
//! a 404 that says what to run, and a warning in the log, never a failure to start.

use std::collections::HashMap;
use std::path::Path;

use crate::http::error::HttpError;
use crate::http::response::Response;

/// The dashboard's page paths: each answers `index.html`.
pub const PAGES: &[&str] = &[
    "/",
    "/login",
    "/realtime",
    "/overview",
    "/retention",
    "/behavior",
    "/payments",
    "/levels",
    "/ltv",
    "/attribution",
    "/operations",
];

/// Where the built files are served from (a prefix row of the route table).
pub const ASSETS: &str = "/assets/";

/// At most this many files are read from `assets/`.
const MAX_FILES: usize = 512;
/// At most this many bytes are read in all.
const MAX_BYTES: u64 = 32 << 20;

/// `Cache-Control` of the hashed assets: their names change with their content.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of `index.html`: checked at each load, so a new build is seen at once.
const REVALIDATE: &str = "no-cache";

/// `Content-Security-Policy` of the pages: scripts, styles, data and frames of this origin
/// only (the built files are external scripts; the charts set inline styles), never framed.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// One file in memory.
#[derive(Debug)]
struct File {
    content_type: &'static str,
    bytes: Vec<u8>,
}

/// A build read from disk.
#[derive(Debug)]
struct Build {
    index: Vec<u8>,
    assets: HashMap<String, File>,
}

/// The dashboard as the control listener serves it: a build read at start, or why there
/// is none.
#[derive(Debug)]
pub struct Dashboard {
    build: Result<Build, String>,
}

/// The `Content-Type` of a file by its extension.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map_or("", |(_, ext)| ext) {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A file name an asset may have: ASCII letters, digits, `.`, `_`, `-`, not starting
/// with a dot.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn read_build(dir: &Path) -> Result<Build, String> {
    let index_path = dir.join("index.html");
    let index = std::fs::read(&index_path).map_err(|e| format!("{}: {e}", index_path.display()))?;
    let mut total = index.len() as u64;
    let mut assets = HashMap::new();
    let assets_dir = dir.join("assets");
    let entries = match std::fs::read_dir(&assets_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Build { index, assets }),
        Err(e) => return Err(format!("{}: {e}", assets_dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", assets_dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        // Regular files with plain names only: no symbolic links, no directories.
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || !plain_name(&name) {
            continue;
        }
        if assets.len() == MAX_FILES {
            return Err(format!("{}: more than {MAX_FILES} files", assets_dir.display()));
        }
        let bytes = std::fs::read(entry.path()).map_err(|e| format!("{}: {e}", entry.path().display()))?;
        total += bytes.len() as u64;
        if total > MAX_BYTES {
            return Err(format!("{}: more than {MAX_BYTES} bytes", dir.display()));
        }
        assets.insert(name.clone(), File { content_type: content_type(&name), bytes });
    }
    Ok(Build { index, assets })
}

impl Dashboard {
    /// Reads the build in `dir` (`control.dashboard_dir`; empty: no dashboard). Never
    /// fails: what went wrong is what `/` answers, and is logged.
    pub fn load(dir: &str) -> Dashboard {
        let build = if dir.is_empty() {
            Err("the web dashboard is off (control.dashboard_dir is empty)".to_owned())
        } else {
            read_build(Path::new(dir)).map_err(|e| {
                format!(
                    "the web dashboard is not built or cannot be read ({e}). Build it with scripts/setup.sh \
                     (or `npm ci && npm run build` in dashboard/), then restart croupier; \
                     control.dashboard_dir names the directory"
                )
            })
        };
        match &build {
            Ok(b) => {
                let bytes = b.index.len() + b.assets.values().map(|f| f.bytes.len()).sum::<usize>();
                tracing::info!(dir, files = b.assets.len() + 1, bytes, "web dashboard loaded");
            }
            Err(e) => tracing::warn!(reason = %e, "web dashboard not served"),
        }
        Dashboard { build }
    }

    /// The answer to a `GET`/`HEAD` of `path` (one of [`PAGES`] or under [`ASSETS`]).
    pub fn serve(&self, path: &str) -> Response {
        let build = match &self.build {
            Ok(b) => b,
            Err(e) => return Response::with_type(404, "text/plain; charset=utf-8", format!("{e}\n")),
        };
        if PAGES.contains(&path) {
            let mut r = file(content_type("index.html"), &build.index, REVALIDATE);
            // A page holds the API token: not framed by another site (clickjacking), and
            // what it loads and sends restricted to this origin.
            r.headers.push(("Content-Security-Policy", PAGE_POLICY.to_owned()));
            r.headers.push(("X-Frame-Options", "DENY".to_owned()));
            r.headers.push(("Referrer-Policy", "no-referrer".to_owned()));
            return r;
        }
        let asset = path.strip_prefix(ASSETS).filter(|n| plain_name(n)).and_then(|n| build.assets.get(n));
        match asset {
            Some(f) => file(f.content_type, &f.bytes, IMMUTABLE),
            None => HttpError::NotFound.response(),
        }
    }
}

fn file(content_type: &'static str, bytes: &[u8], cache: &'static str) -> Response {
    let mut r = Response::bytes(200, content_type, bytes.to_vec());
    r.headers.push(("Cache-Control", cache.to_owned()));
    r.headers.push(("X-Content-Type-Options", "nosniff".to_owned()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_pages_and_assets_and_nothing_else() {
        let root = std::env::temp_dir().join(format!("croupier-dashboard-{}", std::process::id()));
        let dist = root.join("dist");
        std::fs::create_dir_all(dist.join("assets")).unwrap();
        std::fs::write(dist.join("index.html"), "<html>").unwrap();
        std::fs::write(dist.join("assets/app-1a2b.js"), "js()").unwrap();
        std::fs::write(root.join("secret.txt"), "no").unwrap();
        let d = Dashboard::load(&dist.display().to_string());
        std::fs::remove_dir_all(&root).unwrap();
        let r = d.serve("/overview");
        assert_eq!((r.status, r.content_type, r.body.as_slice()), (200, "text/html; charset=utf-8", &b"<html>"[..]));
        assert_eq!(r.headers[0], ("Cache-Control", REVALIDATE.to_owned()));
        let header = |name: &str| r.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(header("X-Frame-Options"), Some("DENY"));
        assert!(header("Content-Security-Policy").is_some_and(|p| p.contains("frame-ancestors 'none'")));
        let r = d.serve("/assets/app-1a2b.js");
        assert_eq!((r.status, r.content_type), (200, "text/javascript; charset=utf-8"));
        assert_eq!(
            r.headers,
            [("Cache-Control", IMMUTABLE.to_owned()), ("X-Content-Type-Options", "nosniff".to_owned())]
        );
        for p in ["/assets/../secret.txt", "/assets/..%2fsecret.txt", "/assets/missing.js", "/assets/", "/nope"] {
            assert_eq!(d.serve(p).status, 404, "{p}");
        }
    }

    #[test]
    fn a_missing_build_says_what_to_run() {
        let d = Dashboard::load("/nonexistent/dist");
        let r = d.serve("/");
        assert_eq!(r.status, 404);
        let text = String::from_utf8_lossy(&r.body);
        assert!(text.contains("not built") && text.contains("npm run build"), "{text}");
        assert_eq!(Dashboard::load("").serve("/").status, 404);
    }
}
