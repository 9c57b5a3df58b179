//! Notifier URLs, which may be secrets: checked without being repeated,
//! and taken apart into what a server might echo.

use crate::secret::Secret;

/// Checks a URL setting without ever repeating it: the URL may be a secret.
pub(super) fn check_url(key: &str, url: &str) -> Vec<(String, String)> {
    let problem = if url.is_empty() {
        Some("must not be empty")
    } else {
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => None,
            _ => Some("expected an https URL (or http, for a local stand-in)"),
        }
    };
    problem
        .map(|p| vec![(key.to_string(), p.to_string())])
        .unwrap_or_default()
}

/// A secret URL and the parts of it a server might echo on its own: the
/// path, its longer segments, the query and the password.
pub(super) fn url_secrets(url: &Secret) -> Vec<String> {
    let raw = url.expose();
    let mut out = vec![raw.to_string()];
    if let Ok(u) = url::Url::parse(raw) {
        if u.path().len() > 1 {
            out.push(u.path().to_string());
        }
        out.extend(
            u.path_segments()
                .into_iter()
                .flatten()
                .filter(|s| s.len() >= 8)
                .map(str::to_string),
        );
        out.extend(u.query().map(str::to_string));
        out.extend(u.password().map(str::to_string));
    }
    out
}
