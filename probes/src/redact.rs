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

/// Words shorter than this are never treated as secrets: hiding them would
/// garble messages more than it protects anything.
const MIN_SECRET_LEN: usize = 8;

/// Headers whose values are never secret, so messages may show them.
const PLAIN_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-type",
    "user-agent",
];

/// The pieces of a request setting that may be a secret should the target
/// echo them back: the whole value, each of its words (split at spaces and
/// at the `&` and `,` of forms and lists) and the value part of a
/// `key=value` or `key:value` word, each of at least eight characters.
pub fn secret_words(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |w: &str| {
        let w = w.trim();
        if w.len() >= MIN_SECRET_LEN && !out.iter().any(|o: &String| o == w) {
            out.push(w.to_string());
        }
    };
    add(value);
    for w in value.split(|c: char| c.is_whitespace() || matches!(c, '&' | ',')) {
        add(w);
        if let Some((_, v)) = w.split_once(['=', ':']) {
            add(v);
        }
    }
    out
}

/// The secret words of a request header, none for a header that never
/// carries one (`Accept`, `Content-Type`, ...).
pub fn header_secrets(name: &str, value: &str) -> Vec<String> {
    if PLAIN_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        vec![]
    } else {
        secret_words(value)
    }
}

/// The secret words of every string in a JSON document (a login body's
/// password, an API key).
pub fn json_secrets(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.extend(secret_words(s)),
        serde_json::Value::Array(items) => items.iter().for_each(|i| json_secrets(i, out)),
        serde_json::Value::Object(map) => map.values().for_each(|i| json_secrets(i, out)),
        _ => {}
    }
}

/// `text` with every one of `secrets` replaced by `***`, longest first so a
/// secret that contains another is hidden whole.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in sorted {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{header_secrets, redact_url, scrub, secret_words};

    #[test]
    fn a_header_value_echoed_back_is_hidden_whole_or_in_part() {
        let secrets = header_secrets("Authorization", "Bearer tok-0123456789");
        assert_eq!(
            scrub(
                "body at /auth is \"Bearer tok-0123456789\"; saw tok-0123456789",
                &secrets
            ),
            "body at /auth is \"***\"; saw ***"
        );
        assert!(header_secrets("Content-Type", "application/json").is_empty());
        assert_eq!(
            secret_words("user=smoke&password=hunter2-long"),
            vec![
                "user=smoke&password=hunter2-long",
                "user=smoke",
                "password=hunter2-long",
                "hunter2-long"
            ]
        );
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
