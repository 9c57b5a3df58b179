//! Rollback targets against stand-ins of the platforms on loopback: the
//! documented request shapes, and how refusals, rate limits, server errors
//! and the deadline are handled. `exec` runs real commands.
//!
//! The stand-ins' shapes were checked against each platform's own published
//! definitions: Railway's public GraphQL schema (`src/gql/schema.json` of
//! github.com/railwayapp/cli: `deployments(input: DeploymentListInput!,
//! first: Int)`, `enum DeploymentStatus`, `deploymentRollback(id:
//! String!): Boolean!`); Render's OpenAPI spec as its generated client in
//! github.com/render-oss/cli has it (`pkg/client/types_gen.go`:
//! `DeployWithCursor`, `DeployStatus`, `ListDeploysParams` with `status`
//! and `limit`); Vercel's OpenAPI spec as its SDK github.com/vercel/sdk has
//! it (`GET /v6/deployments` with a deployment's `isRollbackCandidate`,
//! `GET /v9/projects/{idOrName}` with `targets.production.id` and
//! `lastAliasRequest` — `toDeploymentId`, `jobStatus`, `requestedAt`,
//! `type` —, `POST /v1/projects/{projectId}/rollback/{deploymentId}`), with
//! the body `{}` and the polling of `lastAliasRequest.jobStatus` of
//! Vercel's CLI (github.com/vercel/vercel `packages/cli/src/commands/
//! rollback/request-rollback.ts` and `status.ts`); Heroku's Platform API
//! schema (`v6/schema.json` of github.com/heroku/heroku-go, downloaded from
//! api.heroku.com/schema: a release's `id`, `version`, `status`, `current`
//! and `eligible_for_rollback`), with the `Range` and `Next-Range` headers
//! of Heroku's Platform API reference (a `206` carries `Next-Range`, sent
//! back as the next `Range`); Render's `PATCH /services/{serviceId}` with
//! `autoDeploy` `yes` or `no` (`ServicePATCH`, `AutoDeploy` in the same
//! generated client).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::config::Config;
use backstop::evidence::{Reconciled, RollbackRequest};
use backstop::rollback::{RollbackError, Target};
use backstop_judge::evidence::Evidence;
use backstop_tests::{HttpServer, Recorded, Reply};
use serde_json::{json, Value};

/// Builds the target of a `[rollback]` section, the way the agent does.
fn target(rollback: &str) -> Target {
    let text = format!("[service]\nname = \"web\"\n\n{rollback}");
    let config = Config::parse(&text, |_| None).unwrap_or_else(|e| panic!("{e}"));
    config.rollback.expect("[rollback]").build().unwrap()
}

fn request(deployment: &str, return_to: Option<&str>) -> RollbackRequest {
    RollbackRequest {
        service: "web".into(),
        deployment: deployment.into(),
        return_to: return_to.map(str::to_string),
        rule: "health failing".into(),
        reason: "health: 3 consecutive failures".into(),
        evidence: vec![Evidence {
            rule: "health failing".into(),
            probe: "health".into(),
            expression: "consecutive_failures >= 3".into(),
            signal: Some("consecutive_failures".into()),
            observed: Some(3.0),
            threshold: Some(3.0),
            window: None,
            baseline: None,
            ratio: None,
            p_value: None,
            judged_by: None,
            summary: "health failed 3 times in a row".into(),
        }],
        fencing_token: None,
    }
}

/// What the n-th (from 0) rollback call is answered with; `None` for the
/// platform's own success.
type Script = Arc<dyn Fn(usize) -> Option<Reply> + Send + Sync>;

fn always(status: u16) -> Script {
    Arc::new(move |_| Some(error_reply(status)))
}

fn then_ok(first: Vec<Reply>) -> Script {
    let first = std::sync::Mutex::new(first.into_iter().map(Some).collect::<Vec<_>>());
    Arc::new(move |n| first.lock().unwrap().get_mut(n).and_then(Option::take))
}

fn error_reply(status: u16) -> Reply {
    Reply::json(status, json!({"message": format!("refused with {status}")}))
}

/// A platform stand-in: its configuration, the deployment the agent is on,
/// and which recorded requests are the rollback call itself.
#[derive(Clone, Copy)]
struct Platform {
    name: &'static str,
    token: &'static str,
    deployment: &'static str,
}

const PLATFORMS: &[Platform] = &[
    Platform {
        name: "webhook",
        token: "hook-SECRET-path-123",
        deployment: "dep-new",
    },
    Platform {
        name: "railway",
        token: "railway-SECRET-tok-123",
        deployment: "dep-new",
    },
    Platform {
        name: "render",
        token: "rnd_SECRET-key-123",
        deployment: "dep-new",
    },
    Platform {
        name: "vercel",
        token: "vercel-SECRET-tok-123",
        deployment: "dpl_new",
    },
    Platform {
        name: "heroku",
        token: "heroku-SECRET-key-123",
        deployment: "v42",
    },
];

impl Platform {
    fn config(&self, server: &HttpServer, deadline: &str) -> String {
        let head = format!(
            "[rollback]\ntarget = \"{}\"\ndeadline = \"{deadline}\"\n",
            self.name
        );
        let t = self.token;
        let table = match self.name {
            "webhook" => format!(
                "[rollback.webhook]\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer {t}\" }}\n",
                server.url(&format!("/hooks/{t}"))
            ),
            "railway" => format!(
                "[rollback.railway]\ntoken = \"{t}\"\nproject_id = \"prj-1\"\nservice_id = \"svc-1\"\nenvironment_id = \"env-1\"\napi_url = \"{}\"\n",
                server.url("/graphql/v2")
            ),
            "render" => format!(
                "[rollback.render]\napi_key = \"{t}\"\nservice_id = \"srv-1\"\napi_url = \"{}\"\n",
                server.url("/v1")
            ),
            "vercel" => format!(
                "[rollback.vercel]\ntoken = \"{t}\"\nproject_id = \"prj_1\"\nteam_id = \"team_1\"\napi_url = \"{}\"\n",
                server.url("")
            ),
            "heroku" => format!(
                "[rollback.heroku]\napi_key = \"{t}\"\napp = \"web-app\"\napi_url = \"{}\"\n",
                server.url("")
            ),
            other => unreachable!("{other}"),
        };
        format!("{head}{table}")
    }

    fn is_rollback_call(&self, r: &Recorded) -> bool {
        match self.name {
            "webhook" => true,
            "railway" => r.json()["query"]
                .as_str()
                .unwrap_or("")
                .contains("deploymentRollback"),
            _ => r.method == "POST",
        }
    }

    /// Starts the stand-in; rollback calls are answered by `script`.
    async fn start(self, script: Script) -> (HttpServer, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let server = HttpServer::start(move |r| {
            if self.is_rollback_call(r) {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = script(n) {
                    return reply;
                }
                return self.accepted();
            }
            self.listing(r)
        })
        .await;
        (server, calls)
    }

    fn accepted(&self) -> Reply {
        match self.name {
            "webhook" => Reply::text(200, "ok"),
            "railway" => Reply::json(200, json!({"data": {"deploymentRollback": true}})),
            "render" => Reply::json(201, json!({"id": "dep-rb", "status": "created"})),
            "vercel" => Reply::status(201),
            "heroku" => Reply::json(
                201,
                json!({"id": "r-43", "version": 43, "status": "succeeded", "current": true}),
            ),
            other => unreachable!("{other}"),
        }
    }

    fn listing(&self, r: &Recorded) -> Reply {
        match self.name {
            "railway" => railway_listing(),
            "render" if r.path == "/v1/services/srv-1/deploys" => render_deploys(
                r,
                &[
                    ("dep-new", "live", "2026-01-03T00:00:00Z"),
                    ("dep-broken", "build_failed", "2026-01-02T00:00:00Z"),
                    ("dep-good", "deactivated", "2026-01-01T00:00:00Z"),
                ],
            ),
            "vercel" if r.path == "/v9/projects/prj_1" => vercel_project("dpl_new"),
            "vercel" if r.path == "/v6/deployments" => Reply::json(
                200,
                json!({"deployments": [
                    {"uid": "dpl_good", "readyState": "READY", "created": 1000, "target": "production", "isRollbackCandidate": true},
                    {"uid": "dpl_new", "readyState": "READY", "created": 3000, "target": "production", "isRollbackCandidate": true},
                    {"uid": "dpl_err", "readyState": "ERROR", "created": 2000, "target": "production", "isRollbackCandidate": false},
                    // Ready, but Vercel will not roll back to it.
                    {"uid": "dpl_stale", "readyState": "READY", "created": 2500, "target": "production", "isRollbackCandidate": false}
                ], "pagination": {"count": 4, "next": null, "prev": null}}),
            ),
            "heroku" if r.path == "/apps/web-app/releases" => Reply::json(
                206,
                json!([
                    {"id": "r-42", "version": 42, "status": "succeeded", "current": true, "eligible_for_rollback": true},
                    {"id": "r-41", "version": 41, "status": "failed", "current": false, "eligible_for_rollback": false},
                    {"id": "r-40", "version": 40, "status": "succeeded", "current": false, "eligible_for_rollback": true}
                ]),
            ),
            "render" if r.method == "PATCH" && r.path == "/v1/services/srv-1" => Reply::json(
                200,
                json!({"id": "srv-1", "type": "web_service", "autoDeploy": r.json()["autoDeploy"]}),
            ),
            _ => Reply::json(404, json!({"message": "no such route"})),
        }
    }

    /// The deployment each stand-in's listing makes the one to return to.
    fn expected_return(&self) -> Option<&'static str> {
        match self.name {
            "webhook" => None,
            "railway" | "render" => Some("dep-good"),
            "vercel" => Some("dpl_good"),
            "heroku" => Some("r-40"),
            other => unreachable!("{other}"),
        }
    }
}

/// `GET /services/{serviceId}/deploys` of `deploys` (newest first), with
/// the `status` filter and the `limit` Render applies.
fn render_deploys(r: &Recorded, deploys: &[(&str, &str, &str)]) -> Reply {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(r.query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let wanted: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "status")
        .map(|(_, v)| v.as_str())
        .collect();
    let limit = query
        .iter()
        .find(|(k, _)| k == "limit")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(20);
    let items: Vec<Value> = deploys
        .iter()
        .filter(|(_, status, _)| wanted.is_empty() || wanted.contains(status))
        .take(limit)
        .enumerate()
        .map(|(i, (id, status, at))| {
            json!({"deploy": {"id": id, "status": status, "createdAt": at, "trigger": "new_commit"}, "cursor": format!("c{i}")})
        })
        .collect();
    Reply::json(200, Value::Array(items))
}

fn railway_listing() -> Reply {
    let node = |id: &str, status: &str, can: bool| json!({"node": {"id": id, "status": status, "createdAt": "2026-01-01T00:00:00Z", "canRollback": can}});
    Reply::json(
        200,
        json!({"data": {"deployments": {"edges": [
            node("dep-new", "SUCCESS", true),
            node("dep-crashed", "CRASHED", false),
            node("dep-expired", "REMOVED", false),
            node("dep-good", "REMOVED", true),
            node("dep-older", "REMOVED", true)
        ]}}}),
    )
}

fn rollback_calls(p: Platform, server: &HttpServer) -> Vec<Recorded> {
    server
        .requests()
        .into_iter()
        .filter(|r| p.is_rollback_call(r))
        .collect()
}

fn assert_hidden(p: Platform, text: &str) {
    assert!(
        !text.contains(p.token),
        "{}: the token shows in {text:?}",
        p.name
    );
}

#[tokio::test]
async fn webhook_posts_specs_json_document_with_its_headers() {
    let p = PLATFORMS[0];
    let (server, _) = p.start(then_ok(vec![])).await;
    let t = target(&p.config(&server, "10s"));
    assert_eq!(t.name(), "webhook");
    let done = t
        .rollback(&request("dep-new", Some("dep-good")))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("dep-good"));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/hooks/{}", p.token));
    assert_eq!(
        r.header("authorization"),
        Some(&*format!("Bearer {}", p.token))
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("idempotency-key"), Some("web:dep-new"));
    let body = r.json();
    assert_eq!(body["event"], "rollback");
    assert_eq!(body["service"], "web");
    assert_eq!(body["deployment"], "dep-new");
    assert_eq!(body["return_to"], "dep-good");
    assert_eq!(body["reason"], "health: 3 consecutive failures");
    assert_eq!(body["rule"], "health failing");
    assert_eq!(body["evidence"][0]["probe"], "health");
    assert_eq!(body["evidence"][0]["observed"], 3.0);
    assert_eq!(body["idempotency_key"], "web:dep-new");
}

#[tokio::test]
async fn webhook_fills_a_custom_body_and_headers_escaping_json() {
    let server = HttpServer::start(|_| Reply::status(204)).await;
    let t = target(&format!(
        r#"[rollback]
target = "webhook"
[rollback.webhook]
url = "{}"
method = "PUT"
headers = {{ X-Service = "{{{{service}}}}", X-Reason = "{{{{reason}}}}" }}
body = '{{"text": "rolling back {{{{deployment}}}} of {{{{service}}}}: {{{{reason}}}}", "to": "{{{{return_to}}}}"}}'
"#,
        server.url("/hook")
    ));
    let mut req = request("dep-new", None);
    req.reason = "p95 \"doubled\"\nand more".into();
    t.rollback(&req).await.unwrap();
    let r = &server.requests()[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(r.header("x-service"), Some("web"));
    assert_eq!(r.header("x-reason"), Some("p95 \"doubled\" and more"));
    assert_eq!(
        r.json(),
        json!({"text": "rolling back dep-new of web: p95 \"doubled\"\nand more", "to": ""})
    );
}

#[tokio::test]
async fn railway_lists_deployments_then_rolls_back_to_the_last_one_it_can() {
    let p = PLATFORMS[1];
    let (server, _) = p.start(then_ok(vec![])).await;
    let done = target(&p.config(&server, "10s"))
        .rollback(&request("dep-new", None))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("dep-good"));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/graphql/v2");
        assert_eq!(
            r.header("authorization"),
            Some(&*format!("Bearer {}", p.token))
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let list = reqs[0].json();
    let q = list["query"].as_str().unwrap();
    assert!(
        q.contains("deployments(input:") && q.contains("canRollback"),
        "{q}"
    );
    assert_eq!(
        list["variables"],
        json!({"projectId": "prj-1", "serviceId": "svc-1", "environmentId": "env-1", "first": 20})
    );
    let call = reqs[1].json();
    assert!(call["query"]
        .as_str()
        .unwrap()
        .contains("deploymentRollback(id: $id)"));
    assert_eq!(call["variables"], json!({"id": "dep-good"}));
}

#[tokio::test]
async fn railway_project_tokens_use_their_own_header_and_return_to_wins() {
    let p = PLATFORMS[1];
    let (server, _) = p.start(then_ok(vec![])).await;
    let config = p
        .config(&server, "10s")
        .replace("project_id =", "token_kind = \"project\"\nproject_id =");
    let done = target(&config)
        .rollback(&request("dep-new", Some("dep-older")))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("dep-older"));
    for r in server.requests() {
        assert_eq!(r.header("project-access-token"), Some(p.token));
        assert_eq!(r.header("authorization"), None);
    }
}

#[tokio::test]
async fn railway_graphql_errors_are_failures_even_with_http_200() {
    let p = PLATFORMS[1];
    // "Not Authorized" is final.
    let not_authorized: Script = Arc::new(|_| {
        Some(Reply::json(
            200,
            json!({"data": null, "errors": [{"message": "Not Authorized", "extensions": {"code": "UNAUTHORIZED"}}]}),
        ))
    });
    let (server, calls) = p.start(not_authorized).await;
    let err = target(&p.config(&server, "10s"))
        .rollback(&request("dep-new", None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RollbackError::Final { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(err.to_string().contains("Not Authorized"), "{err}");

    // A rate limit is retried.
    let limited = then_ok(vec![Reply::json(
        200,
        json!({"data": null, "errors": [{"message": "Rate limit exceeded, try again later"}]}),
    )]);
    let (server, calls) = p.start(limited).await;
    target(&p.config(&server, "10s"))
        .rollback(&request("dep-new", None))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn render_finds_the_previous_live_deploy_and_posts_its_id() {
    let p = PLATFORMS[2];
    let (server, _) = p.start(then_ok(vec![])).await;
    let done = target(&p.config(&server, "10s"))
        .rollback(&request("dep-new", None))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("dep-good"));
    assert!(done.detail.contains("dep-rb"), "{}", done.detail);
    // Auto-deploy is left alone, and the outcome says what that means.
    assert!(
        done.detail
            .contains("if it is on, the next push deploys the bad commit again"),
        "{}",
        done.detail
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/v1/services/srv-1/deploys");
    assert_eq!(reqs[0].query.as_deref(), Some("limit=20"));
    assert_eq!(reqs[1].method, "POST");
    assert_eq!(reqs[1].path, "/v1/services/srv-1/rollback");
    assert_eq!(reqs[1].json(), json!({"deployId": "dep-good"}));
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(&*format!("Bearer {}", p.token))
        );
        assert_eq!(r.header("accept"), Some("application/json"));
    }
}

#[tokio::test]
async fn render_uses_return_to_without_guessing() {
    let p = PLATFORMS[2];
    let (server, _) = p.start(then_ok(vec![])).await;
    let err = target(&p.config(&server, "10s"))
        .rollback(&request("dep-new", Some("dep-broken")))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("dep-broken, cannot be rolled back to (status build_failed)"),
        "{err}"
    );
    assert!(rollback_calls(p, &server).is_empty());
}

#[tokio::test]
async fn vercel_lists_production_deployments_and_rolls_back_with_the_team() {
    let p = PLATFORMS[3];
    let (server, _) = p.start(then_ok(vec![])).await;
    let done = target(&p.config(&server, "10s"))
        .rollback(&request("dpl_new", None))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("dpl_good"));
    assert!(
        done.detail.contains("alias job succeeded")
            && done.detail.contains("do not go live until one is promoted"),
        "{}",
        done.detail
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/v6/deployments");
    assert_eq!(
        reqs[0].query.as_deref(),
        Some("projectId=prj_1&target=production&limit=20&teamId=team_1")
    );
    assert_eq!(reqs[1].method, "POST");
    assert_eq!(reqs[1].path, "/v1/projects/prj_1/rollback/dpl_good");
    assert_eq!(
        reqs[1].query.as_deref(),
        Some("description=health%3A+3+consecutive+failures&teamId=team_1")
    );
    // The body the CLI sends.
    assert_eq!(reqs[1].json(), json!({}));
    // The queued rollback's alias job, read until it is done.
    assert_eq!(reqs[2].method, "GET");
    assert_eq!(reqs[2].path, "/v9/projects/prj_1");
    assert_eq!(reqs[2].query.as_deref(), Some("teamId=team_1"));
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(&*format!("Bearer {}", p.token))
        );
    }
}

#[tokio::test]
async fn heroku_rolls_back_to_the_last_succeeded_release_before_the_current_one() {
    let p = PLATFORMS[4];
    let (server, _) = p.start(then_ok(vec![])).await;
    let done = target(&p.config(&server, "10s"))
        .rollback(&request("v42", None))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("r-40"));
    assert!(done.detail.contains("v43"), "{}", done.detail);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/apps/web-app/releases");
    assert_eq!(
        reqs[0].header("range"),
        Some("version ..; order=desc, max=20")
    );
    assert_eq!(reqs[1].method, "POST");
    assert_eq!(reqs[1].path, "/apps/web-app/releases");
    assert_eq!(reqs[1].json(), json!({"release": "r-40"}));
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(&*format!("Bearer {}", p.token))
        );
        assert_eq!(
            r.header("accept"),
            Some("application/vnd.heroku+json; version=3")
        );
    }
}

#[tokio::test]
async fn refusals_are_final_after_one_call_and_never_show_the_token() {
    for &p in PLATFORMS {
        for status in [401, 403, 404, 409, 422] {
            // The platform echoes the token back, as some do.
            let token = p.token;
            let script: Script = Arc::new(move |_| {
                Some(Reply::json(
                    status,
                    json!({"message": format!("refused: token {token} is not allowed")}),
                ))
            });
            let (server, calls) = p.start(script).await;
            let t = target(&p.config(&server, "10s"));
            let err = t.rollback(&request(p.deployment, None)).await.unwrap_err();
            let case = format!("{} {status}", p.name);
            assert!(
                matches!(err, RollbackError::Final { attempts: 1, .. }),
                "{case}: {err:?}"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{case}");
            assert_eq!(err.target(), p.name);
            let shown = err.to_string();
            assert!(
                shown.starts_with(&format!("{} rollback failed:", p.name)),
                "{case}: {shown}"
            );
            assert!(shown.contains(&status.to_string()), "{case}: {shown}");
            assert!(
                shown.contains("refused: token *** is not allowed"),
                "{case}: {shown}"
            );
            assert_hidden(p, &shown);
            assert_hidden(p, &format!("{err:?}"));
            assert_hidden(p, &format!("{t:?}"));
        }
    }
}

#[tokio::test]
async fn a_refused_lookup_sends_no_rollback_call() {
    for &p in &PLATFORMS[1..] {
        let server = HttpServer::start(|_| error_reply(401)).await;
        let err = target(&p.config(&server, "10s"))
            .rollback(&request(p.deployment, None))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RollbackError::Final { .. }),
            "{}: {err:?}",
            p.name
        );
        assert!(err.to_string().contains("401"), "{err}");
        assert_eq!(server.requests().len(), 1, "{}", p.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_retried_after_retry_after() {
    let mut runs = Vec::new();
    for &p in PLATFORMS {
        runs.push(tokio::spawn(async move {
            let script = then_ok(vec![error_reply(429).header("retry-after", "1")]);
            let (server, calls) = p.start(script).await;
            let start = Instant::now();
            let done = target(&p.config(&server, "20s"))
                .rollback(&request(p.deployment, None))
                .await;
            let elapsed = start.elapsed();
            assert!(done.is_ok(), "{}: {done:?}", p.name);
            assert_eq!(calls.load(Ordering::SeqCst), 2, "{}", p.name);
            assert!(
                elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(15),
                "{}: retried after {elapsed:?}",
                p.name
            );
            // The retried call asks for the same deployment as the first.
            let bodies: Vec<_> = rollback_calls(p, &server)
                .iter()
                .map(|r| r.body.clone())
                .collect();
            assert_eq!(bodies[0], bodies[1], "{}", p.name);
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_the_call_succeeds() {
    let mut runs = Vec::new();
    for &p in PLATFORMS {
        runs.push(tokio::spawn(async move {
            let script = then_ok(vec![error_reply(503), error_reply(502)]);
            let (server, calls) = p.start(script).await;
            let done = target(&p.config(&server, "30s"))
                .rollback(&request(p.deployment, None))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert_eq!(calls.load(Ordering::SeqCst), 3, "{}", p.name);
            assert_eq!(done.returned_to.as_deref(), p.expected_return());
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_deadline_with_a_clear_error() {
    let mut runs = Vec::new();
    for &p in PLATFORMS {
        runs.push(tokio::spawn(async move {
            let (server, calls) = p.start(always(503)).await;
            let start = Instant::now();
            let err = target(&p.config(&server, "2s"))
                .rollback(&request(p.deployment, None))
                .await
                .unwrap_err();
            assert!(start.elapsed() < Duration::from_secs(10), "{}", p.name);
            let RollbackError::Exhausted { attempts, .. } = &err else {
                panic!("{}: {err:?}", p.name)
            };
            assert_eq!(*attempts as usize, calls.load(Ordering::SeqCst));
            assert!(*attempts >= 2, "{}: {err}", p.name);
            let shown = err.to_string();
            assert!(
                shown.starts_with(&format!(
                    "{} rollback gave up after {attempts} attempts",
                    p.name
                )) && shown.contains("503"),
                "{shown}"
            );
            assert_hidden(p, &shown);
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
}

#[tokio::test]
async fn a_platform_that_cannot_be_reached_is_retried_until_the_deadline() {
    let port = backstop_tests::closed_port();
    let t = target(&format!(
        "[rollback]\ntarget = \"render\"\ndeadline = \"1s\"\n[rollback.render]\napi_key = \"k-SECRET\"\nservice_id = \"srv-1\"\napi_url = \"http://127.0.0.1:{port}/v1\"\n"
    ));
    let err = t.rollback(&request("dep-new", None)).await.unwrap_err();
    assert!(matches!(err, RollbackError::Exhausted { .. }), "{err:?}");
    assert!(err.to_string().contains("connection failed"), "{err}");
}

#[tokio::test]
async fn nothing_to_return_to_is_final_and_sends_no_rollback_call() {
    let p = PLATFORMS[4];
    let server = HttpServer::start(|r| {
        if r.method == "GET" {
            Reply::json(
                200,
                json!([{"id": "r-1", "version": 1, "status": "succeeded", "current": true}]),
            )
        } else {
            Reply::status(201)
        }
    })
    .await;
    let err = target(&p.config(&server, "10s"))
        .rollback(&request("v1", None))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("heroku rollback failed: no earlier deployment to return to"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1);
}

fn exec_target(command: &[&str], extra: &str) -> Target {
    let argv: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    target(&format!(
        "[rollback]\ntarget = \"exec\"\ndeadline = \"10s\"\n[rollback.exec]\ncommand = [{}]\n{extra}",
        argv.join(", ")
    ))
}

#[tokio::test]
async fn exec_passes_the_rollback_in_the_environment_and_succeeds_on_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let script = format!(
        "printf '%s|%s|%s|%s|%s|%s' \"$BACKSTOP_SERVICE\" \"$BACKSTOP_DEPLOYMENT\" \"$BACKSTOP_RETURN_TO\" \"$BACKSTOP_REASON\" \"$BACKSTOP_RULE\" \"$BACKSTOP_IDEMPOTENCY_KEY\" > {}; printf '%s' \"$BACKSTOP_EVIDENCE\" > {}.json; echo noise; echo rolled back to \"$BACKSTOP_RETURN_TO\"",
        out.display(),
        out.display()
    );
    let t = exec_target(&["sh", "-c", &script], "");
    assert_eq!(t.name(), "exec");
    let done = t
        .rollback(&request("dep-new", Some("dep-good")))
        .await
        .unwrap();
    assert!(
        done.detail.ends_with("rolled back to dep-good"),
        "{}",
        done.detail
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "web|dep-new|dep-good|health: 3 consecutive failures|health failing|web:dep-new"
    );
    let evidence: Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(evidence[0]["rule"], "health failing");
}

#[tokio::test]
async fn exec_failure_reports_the_exit_code_and_last_stderr_line_only() {
    let t = exec_target(
        &[
            "sh",
            "-c",
            "echo first problem >&2; echo 'kubectl: context not found' >&2; exit 3",
            "arg-SECRET-value",
        ],
        "",
    );
    let err = t.rollback(&request("dep-new", None)).await.unwrap_err();
    assert!(
        matches!(err, RollbackError::Final { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "exec rollback failed: \"sh\" exited with code 3: kubectl: context not found"
    );
    assert!(!format!("{err:?}{t:?}").contains("arg-SECRET-value"));
    let text = "[service]\nname = \"web\"\n[rollback]\ntarget = \"exec\"\n[rollback.exec]\ncommand = [\"deploy\", \"--token\", \"arg-SECRET-value\"]\n";
    let config = Config::parse(text, |_| None).unwrap();
    assert!(!format!("{config:?}").contains("arg-SECRET-value"));
}

#[tokio::test]
async fn exec_retries_only_the_configured_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 3 ] || exit 75",
        c = count.display()
    );
    let t = exec_target(&["sh", "-c", &script], "retry_exit_codes = [75]\n");
    t.rollback(&request("dep-new", None)).await.unwrap();
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");

    std::fs::remove_file(&count).unwrap();
    let t = exec_target(&["sh", "-c", &script], "retry_exit_codes = [76]\n");
    let err = t.rollback(&request("dep-new", None)).await.unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "1");
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let t = exec_target(&["sh", "-c", &script], "timeout = \"500ms\"\n");
    let start = Instant::now();
    let err = t.rollback(&request("dep-new", None)).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(
        err.to_string(),
        "exec rollback failed: \"sh\" did not finish within 500ms and was killed"
    );
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    // The background `sleep` is gone too (or a zombie nobody has reaped yet).
    let mut gone = false;
    for _ in 0..50 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => gone = true,
            Ok(stat) => gone = stat.split_whitespace().nth(2) == Some("Z"),
        }
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "sleep {pid} outlived the timeout");
}

#[tokio::test]
async fn exec_reports_a_program_that_cannot_start() {
    let t = exec_target(&["/nonexistent/rollback-tool"], "");
    let err = t.rollback(&request("dep-new", None)).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("exec rollback failed: cannot start \"/nonexistent/rollback-tool\""),
        "{err}"
    );
}

impl Platform {
    /// What the platform lists once a rollback call has been accepted:
    /// Railway and Render a new deployment, Heroku a new release, all on
    /// top; Vercel lists the same and points its production elsewhere.
    fn listing_now(&self, r: &Recorded, rolled: bool) -> Reply {
        if !rolled {
            return match (self.name, r.path.as_str()) {
                ("vercel", "/v9/projects/prj_1") => vercel_project("dpl_new"),
                _ => self.listing(r),
            };
        }
        match (self.name, r.path.as_str()) {
            ("railway", _) => {
                let node = |id: &str, status: &str, can: bool| json!({"node": {"id": id, "status": status, "createdAt": "2026-01-01T00:00:00Z", "canRollback": can}});
                Reply::json(
                    200,
                    json!({"data": {"deployments": {"edges": [
                        node("dep-rolled-back", "DEPLOYING", false),
                        node("dep-new", "SUCCESS", true),
                        node("dep-good", "REMOVED", true)
                    ]}}}),
                )
            }
            ("render", "/v1/services/srv-1/deploys") => Reply::json(
                200,
                json!([
                    {"deploy": {"id": "dep-rb", "status": "update_in_progress", "trigger": "rollback"}, "cursor": "c4"},
                    {"deploy": {"id": "dep-new", "status": "live"}, "cursor": "c3"},
                    {"deploy": {"id": "dep-good", "status": "deactivated"}, "cursor": "c1"}
                ]),
            ),
            ("heroku", "/apps/web-app/releases") => Reply::json(
                206,
                json!([
                    {"id": "r-42", "version": 42, "status": "succeeded", "current": false},
                    {"id": "r-43", "version": 43, "status": "succeeded", "current": true, "description": "Rollback to v40"},
                    {"id": "r-40", "version": 40, "status": "succeeded", "current": false}
                ]),
            ),
            ("vercel", "/v9/projects/prj_1") => vercel_project("dpl_good"),
            _ => self.listing(r),
        }
    }
}

/// `GET /v9/projects/{id}`, with the deployment production points at.
/// Its `lastAliasRequest` is the rollback to `dpl_good`, done.
fn vercel_project(production: &str) -> Reply {
    vercel_project_job(production, "dpl_good", "succeeded")
}

/// `GET /v9/projects/{id}` whose last alias request, a rollback to `to`,
/// has `status`.
fn vercel_project_job(production: &str, to: &str, status: &str) -> Reply {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    vercel_project_job_at(production, to, status, now)
}

/// [`vercel_project_job`], the alias request made at `requested_at` (ms).
fn vercel_project_job_at(production: &str, to: &str, status: &str, requested_at: u64) -> Reply {
    Reply::json(
        200,
        json!({"id": "prj_1", "name": "web",
               "targets": {"production": {"id": production, "readyState": "READY", "target": "production"}},
               "lastAliasRequest": {"fromDeploymentId": "dpl_new", "toDeploymentId": to,
                                    "jobStatus": status, "requestedAt": requested_at, "type": "rollback"}}),
    )
}

#[tokio::test]
async fn every_platform_tells_whether_an_interrupted_rollback_took_effect_and_only_reads() {
    for p in &PLATFORMS[1..] {
        let p = *p;
        let rolled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = rolled.clone();
        let server = HttpServer::start(move |r| {
            if p.is_rollback_call(r) {
                flag.store(true, Ordering::SeqCst);
                return p.accepted();
            }
            p.listing_now(r, flag.load(Ordering::SeqCst))
        })
        .await;
        let t = target(&p.config(&server, "10s"));
        let req = request(p.deployment, None);

        let before = t.reconcile(&req).await;
        assert!(
            matches!(before, Reconciled::NotDone(_)),
            "{}: {before:?}",
            p.name
        );
        assert!(
            rollback_calls(p, &server).is_empty(),
            "{}: asking is not calling",
            p.name
        );

        t.rollback(&req).await.unwrap();
        let after = t.reconcile(&req).await;
        match &after {
            Reconciled::Done(d) => assert!(!d.detail.is_empty(), "{}", p.name),
            other => panic!("{}: after the call: {other:?}", p.name),
        }
        assert_eq!(rollback_calls(p, &server).len(), 1, "{}", p.name);

        // An id the platform does not list (the agent's own version
        // string, say) cannot be placed: the platform cannot tell.
        let unknown = t.reconcile(&request("release-2026.11", None)).await;
        assert!(
            matches!(&unknown, Reconciled::Unknown(m) if m.contains("release-2026.11")),
            "{}: {unknown:?}",
            p.name
        );
        assert_hidden(p, &format!("{before:?}{after:?}{unknown:?}"));
    }
}

#[tokio::test]
async fn a_platform_that_cannot_be_asked_is_unknown_not_done() {
    let p = PLATFORMS[1];
    let server =
        HttpServer::start(|_| Reply::json(401, json!({"errors": [{"message": "Not Authorized"}]})))
            .await;
    let t = target(&p.config(&server, "2s"));
    match t.reconcile(&request(p.deployment, None)).await {
        Reconciled::Unknown(m) => {
            assert!(m.contains("401"), "{m}");
            assert_hidden(p, &m);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn webhook_and_exec_are_sent_again_only_when_configured_idempotent() {
    let hook = |extra: &str| {
        target(&format!(
            "[rollback]\ntarget = \"webhook\"\n[rollback.webhook]\nurl = \"http://127.0.0.1:9/hook\"\n{extra}"
        ))
    };
    let req = request("dep-new", None);
    assert!(
        matches!(hook("").reconcile(&req).await, Reconciled::Unknown(m) if m.contains("idempotent"))
    );
    assert!(matches!(
        hook("idempotent = true\n").reconcile(&req).await,
        Reconciled::NotDone(_)
    ));
    let exec = |extra: &str| {
        target(&format!(
            "[rollback]\ntarget = \"exec\"\n[rollback.exec]\ncommand = [\"/bin/true\"]\n{extra}"
        ))
    };
    assert!(matches!(
        exec("").reconcile(&req).await,
        Reconciled::Unknown(_)
    ));
    assert!(matches!(
        exec("idempotent = true\n").reconcile(&req).await,
        Reconciled::NotDone(_)
    ));
}

// Which deployment is live: what `[deployment] from_platform` asks.

impl Platform {
    /// Whether `r` is the read of the live deployment.
    fn is_live_read(&self, r: &Recorded) -> bool {
        match self.name {
            "railway" => r.json()["query"]
                .as_str()
                .unwrap_or("")
                .contains("deployments(input:"),
            "render" => {
                r.method == "GET"
                    && r.path == "/v1/services/srv-1/deploys"
                    && r.query.as_deref().unwrap_or("").contains("status=live")
            }
            "vercel" => r.method == "GET" && r.path == "/v9/projects/prj_1",
            "heroku" => r.method == "GET" && r.path == "/apps/web-app/releases",
            _ => false,
        }
    }

    /// The deployment each stand-in says is live.
    fn expected_live(&self) -> &'static str {
        match self.name {
            "railway" | "render" => "dep-new",
            "vercel" => "dpl_new",
            "heroku" => "v42",
            other => unreachable!("{other}"),
        }
    }

    /// Starts the stand-in; reads of the live deployment are answered by
    /// `script`, then as the platform would.
    async fn start_live(self, script: Script) -> (HttpServer, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let counter = reads.clone();
        let server = HttpServer::start(move |r| {
            if self.is_live_read(r) {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = script(n) {
                    return reply;
                }
            }
            self.listing(r)
        })
        .await;
        (server, reads)
    }
}

#[tokio::test]
async fn every_platform_says_which_deployment_is_live_with_one_documented_read() {
    for &p in &PLATFORMS[1..] {
        let (server, reads) = p.start_live(then_ok(vec![])).await;
        let t = target(&p.config(&server, "10s"));
        let live = t
            .live_deployment()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert_eq!(live, p.expected_live(), "{}", p.name);
        assert_eq!(reads.load(Ordering::SeqCst), 1, "{}", p.name);
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1, "{}: one request: {reqs:?}", p.name);
        let r = &reqs[0];
        assert!(
            rollback_calls(p, &server).is_empty(),
            "{}: reading only",
            p.name
        );
        match p.name {
            "railway" => {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str()),
                    ("POST", "/graphql/v2")
                );
                assert_eq!(
                    r.json()["variables"],
                    json!({"projectId": "prj-1", "serviceId": "svc-1", "environmentId": "env-1", "first": 20})
                );
                assert!(!r.json()["query"].as_str().unwrap().contains("mutation"));
            }
            "render" => {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str()),
                    ("GET", "/v1/services/srv-1/deploys")
                );
                assert_eq!(r.query.as_deref(), Some("status=live&limit=1"));
                assert_eq!(r.header("accept"), Some("application/json"));
            }
            "vercel" => {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str()),
                    ("GET", "/v9/projects/prj_1")
                );
                assert_eq!(r.query.as_deref(), Some("teamId=team_1"));
            }
            "heroku" => {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str()),
                    ("GET", "/apps/web-app/releases")
                );
                assert_eq!(r.header("range"), Some("version ..; order=desc, max=20"));
                assert_eq!(
                    r.header("accept"),
                    Some("application/vnd.heroku+json; version=3")
                );
            }
            other => unreachable!("{other}"),
        }
        assert_eq!(
            r.header("authorization"),
            Some(&*format!("Bearer {}", p.token)),
            "{}",
            p.name
        );
    }
}

#[tokio::test]
async fn railway_counts_a_crashed_deployment_as_live_and_one_on_its_way_as_not() {
    let p = PLATFORMS[1];
    let node = |id: &str, status: &str| json!({"node": {"id": id, "status": status, "createdAt": "2026-01-01T00:00:00Z", "canRollback": status != "FAILED"}});
    // Railway's deployments, newest first, and what it says is live.
    type Case<'a> = (&'a [(&'a str, &'a str)], Result<&'a str, &'a str>);
    let cases: &[Case] = &[
        // A crash-looping new deployment took over: it is the live one.
        (&[("dep-2", "CRASHED"), ("dep-1", "REMOVED")], Ok("dep-2")),
        // A new deployment on its way, or one that never took over, leaves
        // the one before it serving.
        (
            &[
                ("dep-5", "BUILDING"),
                ("dep-4", "DEPLOYING"),
                ("dep-3", "FAILED"),
                ("dep-2", "SKIPPED"),
                ("dep-1", "SUCCESS"),
            ],
            Ok("dep-1"),
        ),
        (
            &[
                ("dep-3", "QUEUED"),
                ("dep-2", "INITIALIZING"),
                ("dep-1", "SLEEPING"),
            ],
            Ok("dep-1"),
        ),
        (
            &[("dep-2", "WAITING"), ("dep-1", "REMOVED")],
            Err("none of the 2 newest deployments is live (SUCCESS, SLEEPING, CRASHED)"),
        ),
    ];
    for (list, want) in cases {
        let edges: Vec<Value> = list.iter().map(|(id, s)| node(id, s)).collect();
        let reply = json!({"data": {"deployments": {"edges": edges}}});
        let server = HttpServer::start(move |_| Reply::json(200, reply.clone())).await;
        let got = target(&p.config(&server, "10s")).live_deployment().await;
        match (want, &got) {
            (Ok(id), Ok(live)) => assert_eq!(live, id, "{list:?}"),
            (Err(m), Err(e)) => {
                assert!(
                    matches!(e, RollbackError::Final { attempts: 1, .. }),
                    "{e:?}"
                );
                assert!(e.to_string().contains(m), "{e}");
            }
            _ => panic!("{list:?}: {got:?}"),
        }
        assert_eq!(server.requests().len(), 1, "{list:?}");
    }
}

#[tokio::test]
async fn render_heroku_and_vercel_say_so_when_nothing_is_live() {
    let cases: Vec<(Platform, Reply, &str)> = vec![
        (
            PLATFORMS[2],
            Reply::json(200, json!([])),
            "render lists no live deploy of the service",
        ),
        (
            PLATFORMS[3],
            Reply::json(
                200,
                json!({"id": "prj_1", "name": "web", "targets": {"production": null}}),
            ),
            "vercel's project shows no production deployment",
        ),
        (
            PLATFORMS[4],
            Reply::json(
                206,
                json!([{"id": "r-2", "version": 2, "status": "pending", "current": false},
                       {"id": "r-1", "version": 1, "status": "failed", "current": false}]),
            ),
            "none of the 2 newest releases is current or succeeded",
        ),
    ];
    for (p, reply, want) in cases {
        let reply = std::sync::Mutex::new(Some(reply));
        let server = HttpServer::start(move |_| reply.lock().unwrap().take().unwrap()).await;
        let err = target(&p.config(&server, "10s"))
            .live_deployment()
            .await
            .unwrap_err();
        assert!(
            matches!(err, RollbackError::Final { attempts: 1, .. })
                && err.to_string().contains(want),
            "{}: {err:?}",
            p.name
        );
    }
}

#[tokio::test]
async fn heroku_names_the_current_release_by_its_version() {
    let p = PLATFORMS[4];
    // A new release whose release phase is still running, above the
    // current one, and a failed one: the current one is live.
    let server = HttpServer::start(|_| {
        Reply::json(
            206,
            json!([
                {"id": "r-44", "version": 44, "status": "pending", "current": false},
                {"id": "r-43", "version": 43, "status": "failed", "current": false},
                {"id": "r-42", "version": 42, "status": "succeeded", "current": true},
                {"id": "r-41", "version": 41, "status": "succeeded", "current": false}
            ]),
        )
    })
    .await;
    let live = target(&p.config(&server, "10s"))
        .live_deployment()
        .await
        .unwrap();
    assert_eq!(live, "v42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reads_are_retried_after_retry_after_and_server_errors() {
    let mut runs = Vec::new();
    for &p in &PLATFORMS[1..] {
        runs.push(tokio::spawn(async move {
            let script = then_ok(vec![
                error_reply(429).header("retry-after", "1"),
                error_reply(503),
                error_reply(502),
            ]);
            let (server, reads) = p.start_live(script).await;
            let start = Instant::now();
            let live = target(&p.config(&server, "20s"))
                .live_deployment()
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert_eq!(live, p.expected_live(), "{}", p.name);
            assert_eq!(reads.load(Ordering::SeqCst), 4, "{}", p.name);
            // Not before the platform said it may be asked again.
            assert!(
                start.elapsed() >= Duration::from_millis(900),
                "{}: {:?}",
                p.name,
                start.elapsed()
            );
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
}

#[tokio::test]
async fn a_refused_live_read_is_final_after_one_call_and_never_shows_the_token() {
    for &p in &PLATFORMS[1..] {
        for status in [401, 403] {
            let token = p.token;
            let script: Script = Arc::new(move |_| {
                Some(Reply::json(
                    status,
                    json!({"message": format!("token {token} is not allowed here")}),
                ))
            });
            let (server, reads) = p.start_live(script).await;
            let t = Arc::new(target(&p.config(&server, "10s")));
            let case = format!("{} {status}", p.name);
            let err = t.live_deployment().await.unwrap_err();
            assert!(
                matches!(err, RollbackError::Final { attempts: 1, .. }),
                "{case}: {err:?}"
            );
            assert_eq!(reads.load(Ordering::SeqCst), 1, "{case}");
            assert!(err.reason().contains(&status.to_string()), "{case}: {err}");
            assert!(
                err.reason().contains("token *** is not allowed"),
                "{case}: {err}"
            );
            assert_hidden(p, &format!("{err}{err:?}"));

            // What the agent logs: one line, the target named, no token.
            let ids = backstop::deployment::IdSource::new(
                backstop::config::DeploymentSource::Platform,
                Some(t),
            )
            .unwrap();
            let line = ids.current().await.unwrap_err();
            assert!(
                line.starts_with(&format!("asking {} which deployment is live: ", p.name)),
                "{case}: {line}"
            );
            assert!(!line.contains('\n'), "{case}: {line}");
            assert_hidden(p, &line);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_read_gives_up_at_the_deadline() {
    let mut runs = Vec::new();
    for &p in &PLATFORMS[1..] {
        runs.push(tokio::spawn(async move {
            let (server, reads) = p.start_live(Arc::new(|_| Some(error_reply(503)))).await;
            let err = target(&p.config(&server, "2s"))
                .live_deployment()
                .await
                .unwrap_err();
            let RollbackError::Exhausted { attempts, .. } = &err else {
                panic!("{}: {err:?}", p.name)
            };
            assert!(*attempts >= 2, "{}: {err}", p.name);
            assert_eq!(
                *attempts as usize,
                reads.load(Ordering::SeqCst),
                "{}",
                p.name
            );
            assert!(err.reason().contains("503"), "{err}");
            assert_hidden(p, &err.to_string());
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
}

#[tokio::test]
async fn a_webhook_or_a_command_cannot_say_which_deployment_is_live() {
    let hook = target(
        "[rollback]\ntarget = \"webhook\"\n[rollback.webhook]\nurl = \"http://127.0.0.1:9/hook\"\n",
    );
    let exec =
        target("[rollback]\ntarget = \"exec\"\n[rollback.exec]\ncommand = [\"/bin/true\"]\n");
    for t in [hook, exec] {
        let err = t.live_deployment().await.unwrap_err();
        assert!(matches!(err, RollbackError::Setup { .. }), "{err:?}");
        assert!(
            err.reason()
                .contains("cannot tell which deployment is live"),
            "{err}"
        );
    }
}

// What each platform does after its rollback call: Vercel's alias job,
// Heroku's pages of releases, Render's auto-deploy.

/// A Vercel stand-in whose project shows the alias job of the rollback as
/// `statuses` (one read each, the last one from then on).
async fn vercel_with_job(statuses: &'static [&'static str]) -> (HttpServer, Arc<AtomicUsize>) {
    let p = PLATFORMS[3];
    let reads = Arc::new(AtomicUsize::new(0));
    let counter = reads.clone();
    let server = HttpServer::start(move |r| {
        if p.is_rollback_call(r) {
            return p.accepted();
        }
        if r.path == "/v9/projects/prj_1" {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let status = statuses[n.min(statuses.len() - 1)];
            if status.is_empty() {
                // An earlier request, to another deployment.
                return vercel_project_job("dpl_new", "dpl_older", "succeeded");
            }
            if status == "stale" {
                // An earlier rollback to the same deployment, long done.
                return vercel_project_job_at(
                    "dpl_new",
                    "dpl_good",
                    "succeeded",
                    1_700_000_000_000,
                );
            }
            return vercel_project_job("dpl_new", "dpl_good", status);
        }
        p.listing(r)
    })
    .await;
    (server, reads)
}

#[tokio::test]
async fn vercel_waits_for_the_alias_job_of_the_queued_rollback() {
    let p = PLATFORMS[3];
    let (server, reads) =
        vercel_with_job(&["", "stale", "pending", "in-progress", "succeeded"]).await;
    let done = target(&p.config(&server, "10s"))
        .rollback(&request("dpl_new", None))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("dpl_good"));
    assert_eq!(reads.load(Ordering::SeqCst), 5);
    assert!(
        done.detail.contains("do not go live until one is promoted"),
        "{}",
        done.detail
    );
    assert_eq!(rollback_calls(p, &server).len(), 1);
}

#[tokio::test]
async fn vercel_a_failed_alias_job_fails_the_rollback_without_calling_again() {
    let p = PLATFORMS[3];
    let (server, _) = vercel_with_job(&["pending", "failed"]).await;
    let err = target(&p.config(&server, "10s"))
        .rollback(&request("dpl_new", None))
        .await
        .unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("alias job for the rollback to dpl_good failed"),
        "{err}"
    );
    assert_eq!(rollback_calls(p, &server).len(), 1);
    assert_hidden(p, &err.to_string());
}

#[tokio::test]
async fn vercel_an_alias_job_that_never_ends_gives_up_at_the_deadline() {
    let p = PLATFORMS[3];
    let (server, reads) = vercel_with_job(&["in-progress"]).await;
    let start = Instant::now();
    let err = target(&p.config(&server, "2s"))
        .rollback(&request("dpl_new", None))
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(err, RollbackError::Exhausted { .. }), "{err:?}");
    assert!(err.to_string().contains("in-progress"), "{err}");
    assert!(reads.load(Ordering::SeqCst) >= 2);
    assert_eq!(rollback_calls(p, &server).len(), 1);
}

#[tokio::test]
async fn vercel_never_rolls_back_to_a_deployment_that_is_not_a_candidate() {
    let p = PLATFORMS[3];
    let (server, _) = p.start(then_ok(vec![])).await;
    // Between the current deployment and dpl_good, dpl_stale is READY but
    // marked isRollbackCandidate: false: it is passed over.
    let done = target(&p.config(&server, "10s"))
        .rollback(&request("dpl_new", None))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("dpl_good"));
    // Asked for by name, it is refused without a call.
    let err = target(&p.config(&server, "10s"))
        .rollback(&request("dpl_new", Some("dpl_stale")))
        .await
        .unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err:?}");
    assert!(err.to_string().contains("dpl_stale"), "{err}");
    assert_eq!(rollback_calls(p, &server).len(), 1);
}

/// A release of Heroku's list.
fn release(v: u64, status: &str, current: bool, eligible: bool) -> Value {
    json!({"id": format!("r-{v}"), "version": v, "status": status, "current": current,
           "eligible_for_rollback": eligible})
}

#[tokio::test]
async fn heroku_follows_next_range_and_skips_releases_not_eligible_for_rollback() {
    let p = PLATFORMS[4];
    const NEXT: &str = "version ]41..; order=desc, max=20";
    let server = HttpServer::start(move |r| {
        if r.method == "POST" {
            return p.accepted();
        }
        match r.header("range") {
            Some("version ..; order=desc, max=20") => Reply::json(
                206,
                json!([
                    release(42, "succeeded", true, true),
                    // Succeeded, but Heroku will not roll back to it.
                    release(41, "succeeded", false, false)
                ]),
            )
            .header("next-range", NEXT),
            Some(NEXT) => Reply::json(
                200,
                json!([
                    release(40, "succeeded", false, true),
                    release(39, "succeeded", false, true)
                ]),
            ),
            other => Reply::json(
                416,
                json!({"id": "requested_range_not_satisfiable", "message": format!("{other:?}")}),
            ),
        }
    })
    .await;
    let done = target(&p.config(&server, "10s"))
        .rollback(&request("v42", None))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("r-40"));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[1].method, "GET");
    assert_eq!(reqs[1].header("range"), Some(NEXT));
    assert_eq!(reqs[2].json(), json!({"release": "r-40"}));

    // Asked for by name, the ineligible release is refused without a call.
    let err = target(&p.config(&server, "10s"))
        .rollback(&request("v42", Some("r-41")))
        .await
        .unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err:?}");
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count(),
        1
    );
}

#[tokio::test]
async fn heroku_reads_a_bounded_number_of_pages() {
    let p = PLATFORMS[4];
    let pages = Arc::new(AtomicUsize::new(0));
    let counter = pages.clone();
    // Every page says there is another; none holds a release to return to.
    let server = HttpServer::start(move |r| {
        if r.method == "POST" {
            return p.accepted();
        }
        let n = counter.fetch_add(1, Ordering::SeqCst) as u64;
        let rel = if n == 0 {
            release(1000, "succeeded", true, true)
        } else {
            release(1000 - n, "failed", false, false)
        };
        Reply::json(206, json!([rel])).header(
            "next-range",
            &format!("version ]{}..; order=desc, max=20", 1000 - n),
        )
    })
    .await;
    let err = target(&p.config(&server, "10s"))
        .rollback(&request("v1000", None))
        .await
        .unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err:?}");
    assert_eq!(pages.load(Ordering::SeqCst), 5);
    assert!(server.requests().iter().all(|r| r.method == "GET"));

    // The live release is on the first page: one read.
    pages.store(0, Ordering::SeqCst);
    let live = target(&p.config(&server, "10s"))
        .live_deployment()
        .await
        .unwrap();
    assert_eq!(live, "v1000");
    assert_eq!(pages.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn render_turns_auto_deploy_off_only_when_asked() {
    let p = PLATFORMS[2];
    let (server, _) = p.start(then_ok(vec![])).await;
    let asked = format!("{}disable_autodeploy = true\n", p.config(&server, "10s"));
    let done = target(&asked)
        .rollback(&request("dep-new", None))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("dep-good"));
    assert!(
        done.detail
            .contains("auto-deploy for the service is now off"),
        "{}",
        done.detail
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[1].path, "/v1/services/srv-1/rollback");
    assert_eq!(reqs[2].method, "PATCH");
    assert_eq!(reqs[2].path, "/v1/services/srv-1");
    assert_eq!(reqs[2].json(), json!({"autoDeploy": "no"}));
    assert_eq!(
        reqs[2].header("authorization"),
        Some(&*format!("Bearer {}", p.token))
    );

    // Not asked: no PATCH (`false` is the default, and can be said).
    let (server, _) = p.start(then_ok(vec![])).await;
    let not_asked = format!("{}disable_autodeploy = false\n", p.config(&server, "10s"));
    target(&not_asked)
        .rollback(&request("dep-new", None))
        .await
        .unwrap();
    assert!(server.requests().iter().all(|r| r.method != "PATCH"));
}

#[tokio::test]
async fn render_a_refused_auto_deploy_change_leaves_the_rollback_done_and_says_so() {
    let p = PLATFORMS[2];
    let server = HttpServer::start(move |r| {
        if r.method == "PATCH" {
            return error_reply(403);
        }
        if p.is_rollback_call(r) {
            return p.accepted();
        }
        p.listing(r)
    })
    .await;
    let asked = format!("{}disable_autodeploy = true\n", p.config(&server, "10s"));
    let done = target(&asked)
        .rollback(&request("dep-new", None))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("dep-good"));
    assert!(
        done.detail
            .contains("turning the service's auto-deploy off failed")
            && done.detail.contains("403")
            && done
                .detail
                .contains("the next push deploys the bad commit again"),
        "{}",
        done.detail
    );
    assert_hidden(p, &done.detail);
    // A refusal is final: one PATCH.
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count(),
        1
    );
}
