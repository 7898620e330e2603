//! The operators' web UI at `/ui/`: the cluster, providers, allocations, one
//! request's history and the live event stream, served by every replica on
//! its HTTP port.
//!
//! ```text
//!  browser ──GET /ui/──▶ index.html, app.js, style.css (built into the binary)
//!     │
//!     ├── fetch  /v1/cluster /v1/state /v1/providers /v1/requests /v1/requests/{id}/history /v1/identity
//!     ├── EventSource /v1/events (resumes with Last-Event-ID; each event refreshes the view shown)
//!     └── POST /v1/release (admin or the namespace's consumer, after a confirmation dialog)
//! ```
//!
//! The page is a client of the HTTP JSON API and nothing else: it reads
//! what `curl` reads, under the same roles and namespaces (with mutual TLS
//! the browser presents its certificate, and a consumer's page sees its
//! namespace only, because the API answers it so). On a follower it reads
//! with `?stale` and says so, since a linearizable read would be redirected
//! to the leader's origin, which a page may not follow; writes there point
//! to the leader's page instead.
//!
//! # Why plain HTML, JavaScript and CSS
//!
//! The three files beside this module are the whole front end, embedded
//! with `include_str!`: no npm build step, no bundler, no framework, nothing
//! to deploy and nothing fetched at run time (the page loads no CDN; the
//! `Content-Security-Policy` below forbids any other origin). The views are
//! tables, bars and one SVG chart, which the DOM does well without a
//! framework; a toolchain would add a build to every `cargo build` and a
//! lock file of hundreds of packages for no feature the page needs. Editing
//! a file and rebuilding `qm-node` is the whole workflow. Only the browser
//! tests use npm (Playwright), installed by `scripts/install-services.sh`.
//!
//! # Layout
//!
//! * [`router`]: `/ui` (redirect), `/ui/` and `/ui/{file}`.
//! * [`same_origin_writes`]: refuses a browser's cross-origin writes, so a
//!   page elsewhere cannot make an operator's browser (and certificate)
//!   release an allocation.
//! * `index.html`, `app.js`, `style.css`: the page.

use axum::extract::{Path, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION, ORIGIN};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::json;

use super::access::{admit, PeerCertificate};
use super::error::HttpError;
use super::Shared;
use crate::security::Call;

/// The page's files, by name under `/ui/`.
pub const ASSETS: [(&str, &str, &str); 3] = [
    ("index.html", "text/html; charset=utf-8", include_str!("index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("app.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("style.css")),
];

/// What the page may load and connect to: this origin only, no inline
/// script, not framed. Inline `style` attributes are allowed: the bars'
/// widths are set that way (from numbers the page computes).
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The UI's routes.
pub fn router() -> Router<Shared> {
    Router::new()
        .route("/ui", get(|| async { (StatusCode::MOVED_PERMANENTLY, [(LOCATION, "/ui/")]) }))
        .route("/ui/", get(index))
        .route("/ui/{file}", get(asset))
}

async fn index(state: State<Shared>, peer: Extension<PeerCertificate>) -> Result<Response, HttpError> {
    asset(state, peer, Path("index.html".to_owned())).await
}

/// One of [`ASSETS`]; any role may load the page (it shows only what the
/// API then answers that role).
async fn asset(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    Path(file): Path<String>,
) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ClusterStatus)?;
    let Some((_, content_type, body)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return Err(HttpError {
            status: StatusCode::NOT_FOUND,
            body: json!({"error": "no_route", "message": format!("no file /ui/{file}")}),
            location: None,
            retry_after: false,
        });
    };
    let headers = [
        (CONTENT_TYPE, *content_type),
        // The files change only with the binary; a reload after an upgrade
        // must not mix old and new.
        (CACHE_CONTROL, "no-cache"),
        (axum::http::header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (axum::http::header::REFERRER_POLICY, "no-referrer"),
    ];
    Ok((headers, *body).into_response())
}

/// Refuses (`403`) a write (`POST`, `PUT`, `PATCH`, `DELETE`) whose
/// `Origin` header names another origin than the `Host` it was sent to.
/// Browsers send `Origin` on cross-origin writes, and with mutual TLS they
/// would present the operator's certificate; other clients (curl, the
/// libraries) send no `Origin` and are unaffected.
pub async fn same_origin_writes(request: Request, next: Next) -> Response {
    let write = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if write && !same_origin(request.headers()) {
        return HttpError {
            status: StatusCode::FORBIDDEN,
            body: json!({"error": "cross_origin", "message": "a write from a page of another origin is refused"}),
            location: None,
            retry_after: false,
        }
        .into_response();
    }
    next.run(request).await
}

/// No `Origin`, or an `Origin` whose host and port are the request's `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN) else { return true };
    let host = headers.get(HOST).and_then(|host| host.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, host)| host.trim_end_matches('/'));
    matches!((origin_host, host), (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn writes_from_another_origin_are_told_apart() {
        assert!(
            same_origin(&headers(&[(HOST, "127.0.0.1:7210")])),
            "no Origin: not a browser's cross-origin write"
        );
        assert!(same_origin(&headers(&[
            (HOST, "127.0.0.1:7210"),
            (ORIGIN, "http://127.0.0.1:7210")
        ])));
        assert!(same_origin(&headers(&[(HOST, "qm-1:7210"), (ORIGIN, "https://QM-1:7210")])));
        assert!(!same_origin(&headers(&[
            (HOST, "127.0.0.1:7210"),
            (ORIGIN, "http://127.0.0.1:7220")
        ])));
        assert!(!same_origin(&headers(&[(HOST, "127.0.0.1:7210"), (ORIGIN, "null")])));
        assert!(!same_origin(&headers(&[(ORIGIN, "http://evil.example")])));
    }

    #[test]
    fn every_asset_the_page_names_is_served() {
        let index = ASSETS[0].2;
        for (name, _, body) in ASSETS {
            assert!(!body.is_empty(), "{name}");
            if name != "index.html" {
                assert!(index.contains(&format!("\"{name}\"")), "index.html does not load {name}");
            }
        }
        assert!(
            !index.contains("http://") && !index.contains("https://"),
            "the page loads nothing from elsewhere"
        );
    }
}
