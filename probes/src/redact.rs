//! Keeps secrets out of what a probe says: passwords in URLs, tokens in
//! query strings.

/// Query parameters whose values are hidden as well as the userinfo password.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "pass",
    "pwd",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "secret",
    "signature",
    "sig",
];

/// Returns `raw` with any password in the userinfo and any secret-looking
/// query parameter replaced by `***`. Input that is not a URL is returned
/// with everything after a `user:password@` part hidden, to be safe.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query().is_some() {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let hide = SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s));
                        (
                            k.into_owned(),
                            if hide { "***".into() } else { v.into_owned() },
                        )
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => match (raw.find("://"), raw.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***@{}", &raw[..s + 3], &raw[at + 1..]),
            _ => raw.to_string(),
        },
    }
}

/// The password of a URL's userinfo, percent-decoded, so text that might
/// repeat it (a driver's error) can be scrubbed with [`scrub`].
pub fn url_password(raw: &str) -> Option<String> {
    let u = url::Url::parse(raw).ok()?;
    let p = u.password()?;
    Some(
        url::form_urlencoded::parse(format!("p={}", p.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| p.to_string()),
    )
}

/// `text` with every occurrence of `secret` replaced by `***`.
pub fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}

/// Milliseconds, as signals report durations.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::{redact_url, scrub, url_password};

    #[test]
    fn finds_the_decoded_password_and_scrubs_it() {
        let pw = url_password("postgres://app:p%40ss+w@db/app");
        assert_eq!(pw.as_deref(), Some("p@ss+w"));
        assert_eq!(
            scrub("auth failed for p@ss+w", pw.as_deref()),
            "auth failed for ***"
        );
        assert_eq!(url_password("redis://127.0.0.1:6379"), None);
    }

    #[test]
    fn hides_passwords_and_secret_parameters() {
        let cases = [
            (
                "postgres://app:hunter2@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("http://h/x?token=abc&page=2", "http://h/x?token=***&page=2"),
            (
                "http://127.0.0.1:8080/health",
                "http://127.0.0.1:8080/health",
            ),
            ("not a url://user:pw@host", "not a url://***@host"),
        ];
        for (raw, want) in cases {
            assert_eq!(redact_url(raw), want, "{raw}");
        }
    }
}
