//! A stand-in of an AWS API endpoint on loopback that checks every
//! request's Signature Version 4 the way AWS does, computed here by hand
//! (HMAC-SHA256 with the `hmac` and `sha2` crates, not with the agent's
//! signer), following the AWS documentation "Create a signed AWS API
//! request" (IAM User Guide, `reference_sigv-create-signed-request`): the
//! canonical request (method, the path with each segment URI-encoded once
//! more, as every service but S3 expects, the sorted query, the signed
//! headers lowercased with their values trimmed, the signed header names,
//! the hex SHA-256 of the payload), the string to sign
//! (`AWS4-HMAC-SHA256`, `X-Amz-Date`, the credential scope, the hash of
//! the canonical request) and the signing key (`AWS4` + secret, then date,
//! region, service and `aws4_request`).
//!
//! A request that does not verify is refused as AWS refuses it: `403` with
//! `x-amzn-ErrorType: InvalidSignatureException` and the JSON body
//! `{"__type": "InvalidSignatureException", "message": "The request
//! signature we calculated does not match the signature you provided. ..."}`;
//! an access key it does not know with `UnrecognizedClientException`
//! ("The security token included in the request is invalid.").

use std::sync::{Arc, Mutex};

use backstop_tests::{HttpServer, Recorded, Reply};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The example key pair of the AWS documentation.
pub const ACCESS_KEY: &str = "AKIDEXAMPLE";
pub const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// The key pair a stand-in accepts, with the session token it requires
/// when it has one.
#[derive(Clone, Debug)]
pub struct Key {
    pub access: String,
    pub secret: String,
    pub token: Option<String>,
}

impl Key {
    pub fn example() -> Self {
        Self {
            access: ACCESS_KEY.into(),
            secret: SECRET_KEY.into(),
            token: None,
        }
    }
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// URI-encodes every byte but the unreserved ones, as SigV4 wants.
fn uri_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a request was refused: the AWS error type and its message.
#[derive(Debug)]
pub struct Refusal {
    pub kind: &'static str,
    pub message: String,
}

const MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// Checks the SigV4 signature of `r` for `service` in `region` with the
/// accepted `keys`.
pub fn verify(r: &Recorded, service: &str, region: &str, keys: &[Key]) -> Result<(), Refusal> {
    let refuse = |kind: &'static str, message: &str| Refusal {
        kind,
        message: message.to_string(),
    };
    let auth = r.header("authorization").ok_or_else(|| {
        refuse(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        )
    })?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| refuse("IncompleteSignatureException", "unsupported algorithm"))?;
    let mut credential = "";
    let mut signed = "";
    let mut signature = "";
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = v;
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = v;
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = v;
        }
    }
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" || signed.is_empty() || signature.is_empty() {
        return Err(refuse(
            "IncompleteSignatureException",
            "incomplete Authorization header",
        ));
    }
    let (access, date, reg, svc) = (scope[0], scope[1], scope[2], scope[3]);
    let Some(key) = keys.iter().find(|k| k.access == access) else {
        return Err(refuse(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    if reg != region || svc != service {
        return Err(refuse(
            "InvalidSignatureException",
            &format!("Credential should be scoped to a valid region and service, not {reg}/{svc}"),
        ));
    }
    let amz_date = r
        .header("x-amz-date")
        .ok_or_else(|| refuse("IncompleteSignatureException", "no X-Amz-Date"))?;
    if !amz_date.starts_with(date) {
        return Err(refuse(
            "InvalidSignatureException",
            "date does not match the scope",
        ));
    }
    let names: Vec<&str> = signed.split(';').collect();
    for must in ["host", "x-amz-date"] {
        if !names.contains(&must) {
            return Err(refuse(
                "InvalidSignatureException",
                &format!("{must} must be a signed header"),
            ));
        }
    }
    match (&key.token, r.header("x-amz-security-token")) {
        (Some(want), Some(got)) if want == got && names.contains(&"x-amz-security-token") => {}
        (None, None) => {}
        (Some(_), _) => {
            return Err(refuse(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ))
        }
        (None, Some(_)) => {
            return Err(refuse(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ))
        }
    }
    let mut headers = String::new();
    for name in &names {
        let values: Vec<String> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(refuse("InvalidSignatureException", MISMATCH));
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let path = if r.path.is_empty() { "/" } else { &r.path };
    let canonical_uri = path
        .split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/");
    let mut query: Vec<(String, String)> =
        url::form_urlencoded::parse(r.query.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (uri_encode(&k), uri_encode(&v)))
            .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical = format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{headers}\n{signed}\n{}",
        r.method,
        hex::encode(Sha256::digest(&r.body))
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{reg}/{svc}/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{}", key.secret).as_bytes(), date);
    let k = hmac(&k, reg);
    let k = hmac(&k, svc);
    let k = hmac(&k, "aws4_request");
    let want = hex::encode(hmac(&k, &to_sign));
    if want != signature {
        return Err(refuse("InvalidSignatureException", MISMATCH));
    }
    Ok(())
}

/// The refusal as AWS sends it.
pub fn refusal_reply(f: &Refusal) -> Reply {
    Reply::json(403, json!({"__type": f.kind, "message": f.message}))
        .header("x-amzn-ErrorType", f.kind)
}

/// An AWS JSON error answer: `x-amzn-ErrorType` and `__type`, as the
/// JSON 1.1 and REST-JSON services send them.
pub fn aws_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(status, json!({"__type": kind, "message": message}))
        .header("x-amzn-ErrorType", kind)
}

/// An AWS endpoint stand-in: every request is verified first; `handler`
/// sees only those that verify. `verified` counts them.
pub struct AwsServer {
    pub server: HttpServer,
    pub refused: Arc<Mutex<Vec<String>>>,
}

impl AwsServer {
    pub async fn start(
        service: &'static str,
        region: &'static str,
        keys: Vec<Key>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let refused = Arc::new(Mutex::new(Vec::new()));
        let log = refused.clone();
        let server = HttpServer::start(move |r| match verify(r, service, region, &keys) {
            Ok(()) => handler(r),
            Err(f) => {
                log.lock().unwrap().push(f.kind.to_string());
                refusal_reply(&f)
            }
        })
        .await;
        Self { server, refused }
    }

    pub fn url(&self) -> String {
        self.server.url("")
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.server.requests()
    }

    /// The JSON 1.1 operations received, in order (`X-Amz-Target` without
    /// its prefix).
    pub fn operations(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| {
                r.header("x-amz-target")
                    .and_then(|t| t.split('.').nth(1))
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{} {}", r.method, r.path))
            })
            .collect()
    }

    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }
}
