//! What the AWS targets (`aws_lambda`, `aws_ecs`, `aws_codedeploy`) share:
//! SigV4 signing (the `aws-sigv4` crate), the credentials to sign with and
//! the reading of AWS's error answers.
//!
//! # Credentials
//!
//! Credentials come only from the standard chain, never from the
//! configuration, and are never logged or put in a message. The chain is
//! tried in the SDKs' order, without shared config or credentials files:
//!
//! 1. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, for
//!    temporary ones, `AWS_SESSION_TOKEN`;
//! 2. a web identity token (EKS IRSA, and the like):
//!    `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN` (with
//!    `AWS_ROLE_SESSION_NAME`, default `backstop`), exchanged with STS
//!    `AssumeRoleWithWebIdentity` (an unsigned call) at
//!    `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`, else
//!    `https://sts.{region}.amazonaws.com`;
//! 3. ECS container credentials: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`
//!    on `http://169.254.170.2`, or `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//!    (https, or http to a loopback or the ECS/EKS link-local address) with
//!    the `Authorization` of `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN`;
//! 4. EC2 instance metadata (IMDSv2): `PUT /latest/api/token`, then
//!    `GET /latest/meta-data/iam/security-credentials/` for the role and
//!    `.../{role}` for its credentials, at `AWS_EC2_METADATA_SERVICE_ENDPOINT`
//!    (default `http://169.254.169.254`); skipped when
//!    `AWS_EC2_METADATA_DISABLED` is `true`.
//!
//! The first source whose variables are set is the one used (IMDS when
//! none is); its failure is not covered up by trying the next. Temporary
//! credentials are kept until [`REFRESH_BEFORE`] their `Expiration`, and
//! dropped at once when AWS answers that they expired.
//!
//! # Errors
//!
//! AWS names an error in the `x-amzn-ErrorType` header, or as `__type`
//! (JSON 1.1 protocols, sometimes `namespace#Name`) or `code` in the JSON
//! body, with the text in `message` or `Message`. Throttling (by name, even
//! with a 400, as JSON 1.1 services send it), 429 and 5xx are retried;
//! everything else is final, named with its status and type.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use serde_json::Value;

use super::call::{http_client, scrub, truncate, RollbackError};
use super::problem::Problem;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{classify_error, retry_after, Attempt};

/// Temporary credentials are fetched again this long before they expire.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// How long one call to a credentials source may take.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(5);

/// The ECS agent's credentials endpoint.
const ECS_ENDPOINT: &str = "http://169.254.170.2";

/// The EC2 instance metadata service.
const IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// Checks an AWS region name: lowercase words and a number joined by `-`
/// (`us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`).
pub fn check_region(problems: &mut Vec<Problem>, key: &str, region: &str) {
    let parts: Vec<&str> = region.split('-').collect();
    let ok = parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty();
    if region.trim().is_empty() {
        problems.push(Problem::new(key, "must not be empty"));
    } else if !ok {
        problems.push(Problem::new(
            key,
            format!("expected an AWS region such as \"us-east-1\", got {region:?}"),
        ));
    }
}

/// Where the chain reads its variables: the process environment, or (in
/// tests) a function standing in for it.
#[derive(Clone)]
pub struct AwsEnv(Arc<Lookup>);

/// Reads one variable.
type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl std::fmt::Debug for AwsEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsEnv")
    }
}

impl AwsEnv {
    /// The process environment.
    pub fn process() -> Self {
        Self::from_fn(|k| std::env::var(k).ok())
    }

    pub fn from_fn(f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// A variable that is set and not empty.
    fn get(&self, key: &str) -> Option<String> {
        (self.0)(key).filter(|v| !v.trim().is_empty())
    }
}

/// Why credentials could not be had: `retry` when another try may work
/// (a source that did not answer), never carrying a secret.
#[derive(Debug)]
struct CredError {
    reason: String,
    retry: bool,
}

impl CredError {
    fn fail(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retry: false,
        }
    }
    fn retry(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retry: true,
        }
    }
}

/// The credential chain, with its cache of the last credentials.
#[derive(Debug)]
pub struct Chain {
    env: AwsEnv,
    region: String,
    client: reqwest::Client,
    cache: tokio::sync::Mutex<Option<(Credentials, &'static str)>>,
}

impl Chain {
    pub fn new(target: &'static str, env: AwsEnv, region: &str) -> Result<Self, RollbackError> {
        Ok(Self {
            env,
            region: region.to_string(),
            client: http_client(target, SOURCE_TIMEOUT)?,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// Credentials and the name of their source: the cached ones while they
    /// hold, else fetched again.
    async fn get(&self) -> Result<(Credentials, &'static str), CredError> {
        let mut cache = self.cache.lock().await;
        if let Some((c, source)) = cache.as_ref() {
            let fresh = match c.expiry() {
                None => true,
                Some(exp) => SystemTime::now() + REFRESH_BEFORE < exp,
            };
            if fresh {
                return Ok((c.clone(), source));
            }
        }
        let got = self.fetch().await?;
        *cache = Some(got.clone());
        Ok(got)
    }

    /// Forgets the cached credentials (AWS said they expired).
    async fn forget(&self) {
        *self.cache.lock().await = None;
    }

    async fn fetch(&self) -> Result<(Credentials, &'static str), CredError> {
        let e = &self.env;
        if let Some(id) = e.get("AWS_ACCESS_KEY_ID") {
            let Some(secret) = e.get("AWS_SECRET_ACCESS_KEY") else {
                return Err(CredError::fail(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
                ));
            };
            let token = e.get("AWS_SESSION_TOKEN");
            return Ok((
                Credentials::new(id, secret, token, None, "environment"),
                "the environment",
            ));
        }
        if let Some(file) = e.get("AWS_WEB_IDENTITY_TOKEN_FILE") {
            return self
                .web_identity(&file)
                .await
                .map(|c| (c, "a web identity"));
        }
        if e.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
            || e.get("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
        {
            return self
                .container()
                .await
                .map(|c| (c, "ECS container credentials"));
        }
        if e.get("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Err(CredError::fail(
                "no AWS credentials: none in the environment (AWS_ACCESS_KEY_ID), no web identity \
(AWS_WEB_IDENTITY_TOKEN_FILE), no container credentials, and instance metadata is disabled \
(AWS_EC2_METADATA_DISABLED)",
            ));
        }
        self.imds().await.map(|c| (c, "EC2 instance metadata"))
    }

    /// STS `AssumeRoleWithWebIdentity` with the token in `file`.
    async fn web_identity(&self, file: &str) -> Result<Credentials, CredError> {
        let e = &self.env;
        let Some(role) = e.get("AWS_ROLE_ARN") else {
            return Err(CredError::fail(
                "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not",
            ));
        };
        let token = std::fs::read_to_string(file).map_err(|err| {
            CredError::fail(format!(
                "cannot read the web identity token file (AWS_WEB_IDENTITY_TOKEN_FILE): {}",
                err.kind()
            ))
        })?;
        let session = e
            .get("AWS_ROLE_SESSION_NAME")
            .unwrap_or_else(|| "backstop".into());
        let region = e.get("AWS_REGION").unwrap_or_else(|| self.region.clone());
        let base = e
            .get("AWS_ENDPOINT_URL_STS")
            .or_else(|| e.get("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        let what = "STS AssumeRoleWithWebIdentity";
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role.as_str()),
            ("RoleSessionName", session.as_str()),
            ("WebIdentityToken", token.trim()),
        ];
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = self
            .client
            .post(format!("{}/", base.trim_end_matches('/')))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        let text = fetch_text(r, what, &[token.trim()]).await?;
        // The query protocol answers XML: `<AssumeRoleWithWebIdentityResponse>
        // <AssumeRoleWithWebIdentityResult><Credentials>` with `AccessKeyId`,
        // `SecretAccessKey`, `SessionToken` and `Expiration`.
        let tag = |name: &str| xml_tag(&text, name);
        match (
            tag("AccessKeyId"),
            tag("SecretAccessKey"),
            tag("SessionToken"),
        ) {
            (Some(id), Some(secret), Some(session)) => Ok(Credentials::new(
                id,
                secret,
                Some(session),
                tag("Expiration").and_then(|t| parse_time(&t)),
                "web-identity",
            )),
            _ => Err(CredError::retry(format!(
                "{what}: unexpected answer (no Credentials)"
            ))),
        }
    }

    /// The ECS (or EKS Pod Identity) container credentials endpoint.
    async fn container(&self) -> Result<Credentials, CredError> {
        let e = &self.env;
        let url = match e.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
            Some(rel) => format!("{ECS_ENDPOINT}{rel}"),
            None => {
                let full = e
                    .get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                    .unwrap_or_default();
                check_container_uri(&full)?;
                full
            }
        };
        let auth = match e.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
            Some(file) => Some(
                std::fs::read_to_string(&file)
                    .map_err(|err| {
                        CredError::fail(format!(
                            "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: {}",
                            err.kind()
                        ))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => e.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        };
        let mut r = self.client.get(url).header("accept", "application/json");
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        let secrets: Vec<&str> = auth.iter().map(String::as_str).collect();
        let text = fetch_text(r, "the container credentials endpoint", &secrets).await?;
        json_credentials(&text, "the container credentials endpoint", "container")
    }

    /// EC2 instance metadata, version 2 (a session token first).
    async fn imds(&self) -> Result<Credentials, CredError> {
        let base = self
            .env
            .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or_else(|| IMDS_ENDPOINT.into());
        let base = base.trim_end_matches('/');
        let what = "EC2 instance metadata";
        let r = self
            .client
            .put(format!("{base}/latest/api/token"))
            .header("x-aws-ec2-metadata-token-ttl-seconds", "21600");
        let token = fetch_text(r, what, &[]).await?;
        let token = token.trim().to_string();
        let path = format!("{base}/latest/meta-data/iam/security-credentials/");
        let r = self
            .client
            .get(&path)
            .header("x-aws-ec2-metadata-token", &token);
        let roles = fetch_text(r, what, &[&token]).await?;
        let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Err(CredError::fail(
                "EC2 instance metadata: the instance has no IAM role (instance profile)",
            ));
        };
        let r = self
            .client
            .get(format!("{path}{}", super::call::segment(role)))
            .header("x-aws-ec2-metadata-token", &token);
        let text = fetch_text(r, what, &[&token]).await?;
        json_credentials(&text, what, "imds")
    }
}

/// A full container credentials URI is https, or http to a loopback
/// address or the ECS/EKS link-local ones (as the SDKs allow).
fn check_container_uri(raw: &str) -> Result<(), CredError> {
    let bad = || {
        CredError::fail(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https, or http to a loopback address, \
169.254.170.2 or 169.254.170.23",
        )
    };
    let u = url::Url::parse(raw).map_err(|_| bad())?;
    match u.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = u.host_str().unwrap_or("");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback || matches!(host, "169.254.170.2" | "169.254.170.23" | "fd00:ec2::23") {
                Ok(())
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

/// One GET or PUT to a credentials source: its body as text on a 2xx.
async fn fetch_text(
    r: reqwest::RequestBuilder,
    what: &str,
    secrets: &[&str],
) -> Result<String, CredError> {
    let resp = match r.send().await {
        Ok(r) => r,
        Err(e) => {
            let reason = match classify_error::<()>(e, what) {
                Attempt::Retry { reason, .. } | Attempt::Fail(reason) => reason,
                Attempt::Done(()) => what.to_string(),
            };
            return Err(CredError::retry(reason));
        }
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_default();
    if status.is_success() {
        return Ok(String::from_utf8_lossy(&body).into_owned());
    }
    let err = AwsError::read(status, &headers, &body);
    let reason = scrub(&format!("{what} answered {}", err.describe()), secrets);
    if status.as_u16() == 429 || status.is_server_error() || err.throttled() {
        Err(CredError::retry(reason))
    } else {
        Err(CredError::fail(reason))
    }
}

/// The JSON of the container endpoint and of instance metadata:
/// `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`.
fn json_credentials(
    text: &str,
    what: &str,
    provider: &'static str,
) -> Result<Credentials, CredError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|_| CredError::retry(format!("{what}: unexpected answer (not JSON)")))?;
    if let Some(code) = v.get("Code").and_then(Value::as_str) {
        if code != "Success" {
            return Err(CredError::fail(format!("{what} answered Code {code:?}")));
        }
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    match (s("AccessKeyId"), s("SecretAccessKey")) {
        (Some(id), Some(secret)) => Ok(Credentials::new(
            id,
            secret,
            s("Token"),
            s("Expiration").and_then(|t| parse_time(&t)),
            provider,
        )),
        _ => Err(CredError::retry(format!(
            "{what}: unexpected answer (no AccessKeyId and SecretAccessKey)"
        ))),
    }
}

/// An RFC 3339 time, as AWS writes `Expiration`.
fn parse_time(s: &str) -> Option<SystemTime> {
    use aws_smithy_types::date_time::{DateTime, Format};
    let t = DateTime::from_str(s.trim(), Format::DateTime)
        .or_else(|_| DateTime::from_str(s.trim(), Format::DateTimeWithOffset))
        .ok()?;
    SystemTime::try_from(t).ok()
}

/// The text of the first `<name>...</name>` element.
fn xml_tag(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim().to_string())
}

/// An AWS error answer, read from its status, headers and body.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsError {
    pub status: u16,
    /// The error's name without namespace (`ThrottlingException`), when given.
    pub kind: Option<String>,
    pub message: Option<String>,
}

impl AwsError {
    pub fn read(
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Self {
        let v: Option<Value> = serde_json::from_slice(body).ok();
        let from_body = |k: &str| {
            v.as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let kind = headers
            .get("x-amzn-errortype")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| from_body("__type"))
            .or_else(|| from_body("code"))
            .or_else(|| from_body("Code"))
            .or_else(|| {
                // The query protocol's XML (STS): `<Error><Code>`.
                let text = String::from_utf8_lossy(body);
                xml_tag(&text, "Code")
            })
            .map(|k| short_kind(&k))
            .filter(|k| !k.is_empty());
        let message = from_body("message")
            .or_else(|| from_body("Message"))
            .or_else(|| xml_tag(&String::from_utf8_lossy(body), "Message"))
            .map(|m| truncate(&m.split_whitespace().collect::<Vec<_>>().join(" "), 200))
            .filter(|m| !m.is_empty());
        Self {
            status: status.as_u16(),
            kind,
            message,
        }
    }

    /// Throttling by name (JSON 1.1 services answer it with a 400).
    pub fn throttled(&self) -> bool {
        matches!(
            self.kind.as_deref(),
            Some(
                "ThrottlingException"
                    | "Throttling"
                    | "ThrottledException"
                    | "RequestThrottledException"
                    | "TooManyRequestsException"
                    | "RequestLimitExceeded"
                    | "ProvisionedThroughputExceededException"
                    | "RequestThrottled"
                    | "SlowDown"
                    | "PriorRequestNotComplete"
                    | "ServiceUnavailable"
                    | "ServiceUnavailableException"
            )
        )
    }

    /// The credentials expired: fetched again once, and the call repeated.
    pub fn expired(&self) -> bool {
        matches!(
            self.kind.as_deref(),
            Some("ExpiredTokenException" | "ExpiredToken" | "TokenRefreshRequired")
        )
    }

    /// `403 Forbidden, AccessDeniedException: <message>`.
    pub fn describe(&self) -> String {
        let status = reqwest::StatusCode::from_u16(self.status)
            .map(|s| s.to_string())
            .unwrap_or_else(|_| self.status.to_string());
        let mut out = status;
        if let Some(k) = &self.kind {
            out.push_str(", ");
            out.push_str(k);
        }
        if let Some(m) = &self.message {
            out.push_str(": ");
            out.push_str(m);
        }
        out
    }

    /// What to make of it: why the credentials were refused, where that is
    /// the reason, so the fix is clear.
    fn hint(&self) -> &'static str {
        match self.kind.as_deref() {
            Some("UnrecognizedClientException" | "InvalidClientTokenId") => {
                " (the access key is not known to AWS: check the credentials the chain finds)"
            }
            Some("InvalidSignatureException" | "SignatureDoesNotMatch") => {
                " (the secret access key does not match the access key id, or the clock is off)"
            }
            Some("ExpiredTokenException" | "ExpiredToken") => {
                " (the credentials expired and fresh ones were refused too)"
            }
            Some(
                "AccessDeniedException" | "AccessDenied" | "AccessDeniedFault" | "NotAuthorized",
            ) => " (the role or user lacks a permission: see SECURITY.md for the policy)",
            Some("ResourceConflictException" | "PreconditionFailedException") => {
                " (something else changed it at the same time; nothing was overwritten)"
            }
            _ => "",
        }
    }
}

/// `com.amazonaws.ecs#ClientException` and `Name:http://...` to `Name`.
fn short_kind(k: &str) -> String {
    let k = k.rsplit('#').next().unwrap_or(k);
    k.split(':').next().unwrap_or(k).trim().to_string()
}

/// A signed request's parts.
pub struct Request<'a> {
    pub method: reqwest::Method,
    pub url: String,
    /// Headers to send and sign besides `host`, `x-amz-date` and the
    /// session token.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// What the call does, for messages: `reading the alias`.
    pub what: &'a str,
}

/// Sends SigV4-signed requests for one target to one AWS service.
#[derive(Debug)]
pub struct Signer {
    pub target: &'static str,
    /// The signing name: `lambda`, `ecs`, `codedeploy`.
    pub service: &'static str,
    pub region: String,
    client: reqwest::Client,
    chain: Chain,
}

impl Signer {
    pub fn new(
        target: &'static str,
        service: &'static str,
        region: &str,
        client: reqwest::Client,
        env: AwsEnv,
    ) -> Result<Self, RollbackError> {
        Ok(Self {
            target,
            service,
            region: region.to_string(),
            client,
            chain: Chain::new(target, env, region)?,
        })
    }

    /// A JSON 1.1 call (`POST /`, `X-Amz-Target: {prefix}.{operation}`),
    /// its answer parsed.
    pub async fn json11(
        &self,
        base: &str,
        target: &str,
        body: &Value,
        what: &str,
    ) -> Attempt<Value> {
        let req = Request {
            method: reqwest::Method::POST,
            url: format!("{}/", base.trim_end_matches('/')),
            headers: vec![
                ("content-type", "application/x-amz-json-1.1".into()),
                ("x-amz-target", target.into()),
            ],
            body: body.to_string().into_bytes(),
            what,
        };
        super::call::then(self.send(&req).await, |b| {
            super::call::json_body(if b.is_empty() { b"{}" } else { &b }, what)
        })
    }

    /// Signs and sends `req`; when AWS answers that the credentials
    /// expired, fetches fresh ones and sends it once more.
    pub async fn send(&self, req: &Request<'_>) -> Attempt<Bytes> {
        let mut refreshed = false;
        loop {
            let (creds, source) = match self.chain.get().await {
                Ok(c) => c,
                Err(e) if e.retry => {
                    return Attempt::Retry {
                        reason: format!("getting AWS credentials: {}", e.reason),
                        after: None,
                    }
                }
                Err(e) => return Attempt::Fail(format!("getting AWS credentials: {}", e.reason)),
            };
            let secrets: Vec<&str> = [Some(creds.secret_access_key()), creds.session_token()]
                .into_iter()
                .flatten()
                .collect();
            let built = match self.signed(req, &creds) {
                Ok(b) => b,
                Err(reason) => return Attempt::Fail(reason),
            };
            let resp = match built.send().await {
                Ok(r) => r,
                Err(e) => return classify_error(e, req.what),
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.unwrap_or_default();
            if status.is_success() {
                return Attempt::Done(body);
            }
            let err = AwsError::read(status, &headers, &body);
            if err.expired() && !refreshed {
                tracing::info!(
                    target_name = self.target,
                    "AWS credentials expired; fetching fresh ones"
                );
                self.chain.forget().await;
                refreshed = true;
                continue;
            }
            let reason = scrub(
                &format!(
                    "{} answered {}{}; credentials from {source}",
                    req.what,
                    err.describe(),
                    err.hint()
                ),
                &secrets,
            );
            return if status.as_u16() == 429 || status.is_server_error() || err.throttled() {
                Attempt::Retry {
                    reason,
                    after: retry_after(&headers),
                }
            } else {
                Attempt::Fail(reason)
            };
        }
    }

    /// The request, signed with SigV4 for this service and region.
    fn signed(
        &self,
        req: &Request<'_>,
        creds: &Credentials,
    ) -> Result<reqwest::RequestBuilder, String> {
        let identity = creds.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("cannot sign the request: {e}"))?
            .into();
        let signable = SignableRequest::new(
            req.method.as_str(),
            req.url.as_str(),
            req.headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(&req.body),
        )
        .map_err(|e| format!("cannot sign the request: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("cannot sign the request: {e}"))?
            .into_parts();
        let mut r = self
            .client
            .request(req.method.clone(), &req.url)
            .body(req.body.clone());
        for (k, v) in &req.headers {
            r = r.header(*k, v);
        }
        for (k, v) in instructions.headers() {
            r = r.header(k, v);
        }
        Ok(r)
    }
}

/// Where a bad deployment stands after an interrupted call, by what is
/// live now: still the bad one, the call never took effect; anything else
/// (the one to return to, or a deployment since), a call now would be one
/// too many.
pub fn settled_live(platform: &str, live: &str, req: &RollbackRequest) -> Reconciled {
    if live == req.deployment {
        return Reconciled::NotDone(format!("{platform} still serves {live}"));
    }
    let detail = match req.return_to.as_deref() {
        Some(to) if to == live => format!("{platform} serves {live}, the deployment to return to"),
        _ => format!("{platform} serves {live}, no longer {}", req.deployment),
    };
    Reconciled::Done(RollbackDone {
        returned_to: (req.return_to.as_deref() == Some(live)).then(|| live.to_string()),
        detail,
    })
}

/// The value of an optional `api_url`, else the service's regional
/// endpoint `https://{service}.{region}.amazonaws.com`.
pub fn api_base(api_url: &Option<String>, service: &str, region: &str) -> String {
    match api_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!("https://{service}.{region}.amazonaws.com"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_checked() {
        for good in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "cn-north-1",
            "ap-southeast-4",
        ] {
            let mut p = vec![];
            check_region(&mut p, "region", good);
            assert!(p.is_empty(), "{good}: {p:?}");
        }
        for bad in [
            "",
            "us-east",
            "US-EAST-1",
            "us_east_1",
            "useast1",
            "us-east-1a",
            "us--1",
        ] {
            let mut p = vec![];
            check_region(&mut p, "region", bad);
            assert_eq!(p.len(), 1, "{bad}");
        }
    }

    #[test]
    fn error_types_are_read_from_the_header_or_the_body() {
        let mut h = reqwest::header::HeaderMap::new();
        let e = AwsError::read(
            reqwest::StatusCode::BAD_REQUEST,
            &h,
            br#"{"__type":"com.amazonaws.ecs#ThrottlingException","message":"Rate exceeded"}"#,
        );
        assert_eq!(e.kind.as_deref(), Some("ThrottlingException"));
        assert!(e.throttled());
        assert_eq!(
            e.describe(),
            "400 Bad Request, ThrottlingException: Rate exceeded"
        );
        h.insert(
            "x-amzn-errortype",
            "ExpiredTokenException:http://internal.amazon.com/coral/"
                .parse()
                .unwrap(),
        );
        let e = AwsError::read(
            reqwest::StatusCode::FORBIDDEN,
            &h,
            br#"{"Message":"expired"}"#,
        );
        assert_eq!(e.kind.as_deref(), Some("ExpiredTokenException"));
        assert!(e.expired() && !e.throttled());
        let xml = b"<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>bad</Message></Error></ErrorResponse>";
        let e = AwsError::read(
            reqwest::StatusCode::BAD_REQUEST,
            &reqwest::header::HeaderMap::new(),
            xml,
        );
        assert_eq!(e.kind.as_deref(), Some("InvalidIdentityToken"));
        assert_eq!(e.message.as_deref(), Some("bad"));
    }

    #[test]
    fn full_container_uris_are_https_or_local() {
        assert!(check_container_uri("https://creds.example/x").is_ok());
        assert!(check_container_uri("http://127.0.0.1:9/creds").is_ok());
        assert!(check_container_uri("http://169.254.170.23/v1/credentials").is_ok());
        assert!(check_container_uri("http://10.0.0.1/creds").is_err());
        assert!(check_container_uri("file:///etc/passwd").is_err());
    }

    #[test]
    fn expirations_are_read() {
        let t = parse_time("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_893_553_445
        );
        assert!(parse_time("soon").is_none());
    }

    #[tokio::test]
    async fn environment_credentials_are_used_first_and_a_missing_secret_is_said() {
        let env = AwsEnv::from_fn(|k| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret-value".into()),
            _ => None,
        });
        let chain = Chain::new("aws_lambda", env, "us-east-1").unwrap();
        let (c, source) = chain.get().await.unwrap();
        assert_eq!(c.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(source, "the environment");
        assert!(!format!("{chain:?}").contains("secret-value"));
        let env = AwsEnv::from_fn(|k| (k == "AWS_ACCESS_KEY_ID").then(|| "AKID".into()));
        let err = Chain::new("aws_lambda", env, "us-east-1")
            .unwrap()
            .get()
            .await
            .unwrap_err();
        assert!(
            err.reason.contains("AWS_SECRET_ACCESS_KEY is not"),
            "{}",
            err.reason
        );
        let env = AwsEnv::from_fn(|k| (k == "AWS_EC2_METADATA_DISABLED").then(|| "true".into()));
        let err = Chain::new("aws_lambda", env, "us-east-1")
            .unwrap()
            .get()
            .await
            .unwrap_err();
        assert!(
            err.reason.starts_with("no AWS credentials"),
            "{}",
            err.reason
        );
    }
}
