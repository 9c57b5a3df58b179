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

#[cfg(test)]
mod tests {
    use super::redact_url;

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
