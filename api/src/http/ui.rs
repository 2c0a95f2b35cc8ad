//! The web UI: a page, a script and a style sheet built into the binary, served under
//! the content path (`/ui/` by default) when `ui_config.enabled` is set.
//!
//! ```text
//!   GET /                       301 to the content path (UI on), or a 200 text saying
//!                               how to turn it on (UI off)
//!   GET /ui/assets/<file>       the file, with an ETag; 404 for an unknown file
//!   GET /ui/<anything else>     index.html with the agent's settings written in; the
//!                               script reads the path and draws the page (or its 404)
//! ```
//!
//! The UI is plain HTML, CSS and one script with no dependencies, so `cargo build` is
//! all it takes and it works with no network. Everything it shows comes from the HTTP
//! API of the agent that served it (`?dc=` for other datacenters), as Consul's does.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::Context;

/// The web UI's settings (`ui_config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiConfig {
    /// Whether the UI is served (`ui_config.enabled`, `-ui`; on with `-dev`).
    pub enabled: bool,
    /// Where it is served: a path starting and ending with `/` (`ui_config.content_path`).
    pub content_path: String,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            enabled: false,
            content_path: UiConfig::DEFAULT_CONTENT_PATH.to_owned(),
        }
    }
}

impl UiConfig {
    /// Consul's default content path.
    pub const DEFAULT_CONTENT_PATH: &'static str = "/ui/";

    /// A content path as configured, checked and given its leading and trailing `/`
    /// (Consul adds them too): letters, digits and `-._~/` only, not `/` alone and not
    /// under `/v1/`, where the API is.
    pub fn content_path(raw: &str) -> Result<String, String> {
        let trimmed = raw.trim_matches('/');
        if trimmed.is_empty() {
            return Err("must name a path other than /".into());
        }
        if !trimmed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~/".contains(c))
        {
            return Err(format!(
                "{raw:?} may use only letters, digits and the characters -._~/"
            ));
        }
        if trimmed
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(format!("{raw:?} has an empty, . or .. segment"));
        }
        if trimmed == "v1" || trimmed.starts_with("v1/") {
            return Err("must not be under /v1/, where the HTTP API is".into());
        }
        Ok(format!("/{trimmed}/"))
    }
}

/// Consul's answer to `GET /` when the UI is off (kept verbatim: people search for it).
pub(crate) const DISABLED_TEXT: &str = "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration and restart.";

/// One built-in file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The files under `<content path>assets/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../ui/favicon.svg"),
    },
];

/// The page every other path under the content path answers with.
const INDEX: &str = include_str!("../../ui/index.html");

/// Content Security Policy of the UI's responses: its own files and API only. The page
/// shows names, tags, check output and KV values written by others; the script renders
/// them as text, and this policy is the second line of defence should that ever slip.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A short, stable tag for a body (FNV-1a, 64 bits): the ETag of an asset and the `?v=`
/// that makes a new build's files new URLs.
fn tag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What the page learns from the agent that served it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Settings<'a> {
    content_path: &'a str,
    acls_enabled: bool,
    local_datacenter: &'a str,
    node_name: &'a str,
    version: &'a str,
}

/// The UI's files and page, built once when the router is.
pub(crate) struct Ui {
    config: UiConfig,
    /// The ETag of each asset, in [`ASSETS`] order.
    tags: Vec<String>,
}

impl Ui {
    pub(crate) fn new(config: UiConfig) -> Ui {
        Ui {
            tags: ASSETS.iter().map(|a| tag(a.body)).collect(),
            config,
        }
    }

    /// `GET /`.
    pub(crate) fn root(&self) -> Response {
        if !self.config.enabled {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                DISABLED_TEXT,
            )
                .into_response();
        }
        redirect(&self.config.content_path)
    }

    /// The answer for `path` when it is the UI's, `None` when it is not (the UI is off,
    /// or the path is outside the content path).
    pub(crate) fn serve(
        &self,
        ctx: &Context,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Response> {
        if !self.config.enabled {
            return None;
        }
        let base = &self.config.content_path;
        if path == base.trim_end_matches('/') {
            return Some(redirect(base));
        }
        let rest = path.strip_prefix(base.as_str())?;
        if method != Method::GET && method != Method::HEAD {
            return Some(
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [(header::ALLOW, "GET, HEAD")],
                    format!("method {method} not allowed"),
                )
                    .into_response(),
            );
        }
        if let Some(file) = rest.strip_prefix("assets/") {
            return Some(self.asset(file, headers));
        }
        Some(self.index(ctx))
    }

    fn asset(&self, file: &str, headers: &HeaderMap) -> Response {
        let Some((asset, etag)) = ASSETS.iter().zip(&self.tags).find(|(a, _)| a.name == file)
        else {
            return (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("no such UI file: {file}"),
            )
                .into_response();
        };
        let quoted = format!("\"{etag}\"");
        let unchanged = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == quoted || t.trim() == "*"));
        let mut response = if unchanged {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
        };
        let h = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&quoted) {
            h.insert(header::ETAG, v);
        }
        // The page links each file with `?v=<etag>`: a new build is a new URL, so a day
        // of caching never shows an old script with a new page.
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=86400"),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }

    fn index(&self, ctx: &Context) -> Response {
        let settings = Settings {
            content_path: &self.config.content_path,
            acls_enabled: ctx.lan.acl_enabled(),
            local_datacenter: ctx.gateway.local_datacenter().as_str(),
            node_name: &ctx.agent.node_name,
            version: &ctx.agent.version,
        };
        let json = serde_json::to_string(&settings).unwrap_or_else(|_| "{}".into());
        // Inside a <script type="application/json"> only `</` could end the element early;
        // `<` never appears escaped otherwise, so escaping all of them is safe JSON.
        let json = json.replace('<', "\\u003c");
        // The settings go in last, so that nothing in them is taken for a placeholder.
        let mut page = INDEX.replace("{{BASE}}", &self.config.content_path);
        for (asset, etag) in ASSETS.iter().zip(&self.tags) {
            page = page.replace(&format!("{{{{V:{}}}}}", asset.name), etag);
        }
        let page = page.replace("{{SETTINGS}}", &json);
        let mut response = (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            page,
        )
            .into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        response
    }
}

fn redirect(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(location) => (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, location)],
        )
            .into_response(),
        // The content path was checked to be letters, digits and `-._~/`.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_paths_are_given_their_slashes_and_checked() {
        assert_eq!(UiConfig::content_path("ui").unwrap(), "/ui/");
        assert_eq!(
            UiConfig::content_path("/consul/ui/").unwrap(),
            "/consul/ui/"
        );
        assert!(UiConfig::content_path("/").is_err());
        assert!(UiConfig::content_path("/v1/ui").is_err());
        assert!(UiConfig::content_path("/a//b").is_err());
        assert!(UiConfig::content_path("/a/../b").is_err());
        assert!(UiConfig::content_path("/<script>").is_err());
    }

    #[test]
    fn the_page_names_every_asset_it_links() {
        for asset in ASSETS {
            assert!(
                INDEX.contains(&format!("{{{{V:{}}}}}", asset.name)),
                "index.html does not link {}",
                asset.name
            );
        }
        assert!(INDEX.contains("{{SETTINGS}}"));
    }

    #[test]
    fn tags_differ_for_different_bodies() {
        assert_ne!(tag(b"a"), tag(b"b"));
        assert_eq!(tag(b"a").len(), 16);
    }
}
