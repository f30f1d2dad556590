//! The app's static pages: files of one directory served read-only under `/app/`, so a
//! page that follows the app live (over the SSE routes) comes from the same origin as
//! the API.
//!
//! Only plain files inside the directory are served: a request path with `..`, an empty
//! or hidden segment, or one that resolves (through a symlink) outside the directory is
//! not found, as is anything larger than [`FILE_MAX`].

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::AppState;
use crate::error::{ApiError, code};

/// Largest file served, in bytes.
pub const FILE_MAX: u64 = 16 << 20;
/// Where the pages are served.
pub const PREFIX: &str = "/app";

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, "no such page")
}

/// The file a request path (after `/app/`) names inside `root`, if it may be served.
/// A path ending in `/` (or empty) names that directory's `index.html`.
pub fn resolve(root: &Path, rest: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    let rest = if rest.is_empty() || rest.ends_with('/') {
        format!("{rest}index.html")
    } else {
        rest.to_owned()
    };
    for segment in rest.split('/') {
        if segment.is_empty() || segment.starts_with('.') || segment.contains('\\') {
            return None;
        }
        path.push(segment);
    }
    Some(path)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// Reads `file` if it is a plain file inside `root` (after resolving symlinks) and not
/// too large.
fn read_inside(root: &Path, file: &Path) -> Option<Vec<u8>> {
    let root = root.canonicalize().ok()?;
    let file = file.canonicalize().ok()?;
    if !file.starts_with(&root) {
        return None;
    }
    let meta = std::fs::metadata(&file).ok()?;
    if !meta.is_file() || meta.len() > FILE_MAX {
        return None;
    }
    std::fs::read(&file).ok()
}

/// `GET /app/...`.
pub(crate) async fn serve(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let Some(root) = state.inner.options.site_dir.clone() else {
        return Err(not_found());
    };
    let rest = uri.path().strip_prefix(PREFIX).unwrap_or("");
    let Some(rest) = rest.strip_prefix('/') else {
        // `/app` itself: pages resolve their relative links against `/app/`.
        return Ok(Redirect::permanent(&format!("{PREFIX}/")).into_response());
    };
    let file = resolve(&root, rest).ok_or_else(not_found)?;
    let kind = content_type(&file);
    let bytes = tokio::task::spawn_blocking(move || read_inside(&root, &file))
        .await
        .ok()
        .flatten()
        .ok_or_else(not_found)?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, kind)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(bytes))
        .expect("static response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_only_plain_paths_inside_the_directory() {
        let root = Path::new("/site");
        let cases: &[(&str, Option<&str>)] = &[
            ("", Some("/site/index.html")),
            ("index.html", Some("/site/index.html")),
            ("js/app.js", Some("/site/js/app.js")),
            ("docs/", Some("/site/docs/index.html")),
            ("../etc/passwd", None),
            ("a/../../x", None),
            (".env", None),
            ("a//b", None),
            ("a\\..\\b", None),
        ];
        for (rest, want) in cases {
            assert_eq!(
                resolve(root, rest).as_deref(),
                want.map(Path::new),
                "{rest:?}"
            );
        }
    }

    #[test]
    fn symlinks_out_of_the_directory_are_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        std::fs::create_dir(&site).unwrap();
        std::fs::write(site.join("index.html"), "<p>hi</p>").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), site.join("link")).unwrap();
        assert_eq!(
            read_inside(&site, &site.join("index.html")).as_deref(),
            Some(&b"<p>hi</p>"[..])
        );
        assert_eq!(read_inside(&site, &site.join("link")), None);
        assert_eq!(read_inside(&site, &site.join("missing")), None);
        assert_eq!(read_inside(&site, &site), None, "a directory is not a page");
    }
}
