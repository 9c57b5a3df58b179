//! No secret ever comes out: the real binary is given a configuration full
//! of distinctive secret values — passwords in database URLs, bearer tokens,
//! webhook URLs, a routing key, token files, the admin token — and made to
//! fail in every way it can (`validate`, `check`, `run` with failing probes,
//! a rollback and notifications through stand-ins that answer errors and
//! echo what they were sent, configuration errors). Every byte it prints,
//! logs (human and JSON, at debug level), serves on `/status`, `/` (the
//! page) and `/metrics` is then searched for every secret.

use std::time::Duration;

use backstop_tests::{closed_port, postgres_url, redis_url, HttpServer, Recorded, Reply};
use serde_json::json;

use crate::daemon::{run_cli, Daemon};

const DB_PASSWORD: &str = "pgpw-S3CR3T-7f1a9e";
const REDIS_PASSWORD: &str = "redispw-S3CR3T-2b9c4d";
const API_TOKEN: &str = "httptok-S3CR3T-91ee0b";
const SMOKE_PASSWORD: &str = "smokepw-S3CR3T-55aa01";
const SLACK_PATH_TOKEN: &str = "slackhook-S3CR3T-44d0c2";
const ROUTING_KEY: &str = "pdkey-S3CR3T-0c3d8f2a";
const HOOK_PATH_TOKEN: &str = "rbpath-S3CR3T-5e6f7a";
const HOOK_HEADER_TOKEN: &str = "rbhdr-S3CR3T-a1b2c3";
const NOTIFY_HEADER_TOKEN: &str = "nthdr-S3CR3T-77d1e0";
const EXEC_ENV_TOKEN: &str = "execenv-S3CR3T-c3d4e5";
const EXEC_ARG_TOKEN: &str = "execarg-S3CR3T-9a8b7c";
const ADMIN_TOKEN: &str = "admintok-S3CR3T-e5f6a7b8";
const RAILWAY_TOKEN: &str = "railtok-S3CR3T-3c4d5e";
const KUBE_TOKEN: &str = "k8stok-S3CR3T-6f7a8b";
const SMTP_PASSWORD: &str = "smtppw-S3CR3T-1d2e3f";

/// Every secret above; the fragment `S3CR3T` is searched for as well, so a
/// secret cut short or re-encoded still shows.
const SECRETS: &[&str] = &[
    DB_PASSWORD,
    REDIS_PASSWORD,
    API_TOKEN,
    SMOKE_PASSWORD,
    SLACK_PATH_TOKEN,
    ROUTING_KEY,
    HOOK_PATH_TOKEN,
    HOOK_HEADER_TOKEN,
    NOTIFY_HEADER_TOKEN,
    EXEC_ENV_TOKEN,
    EXEC_ARG_TOKEN,
    ADMIN_TOKEN,
    RAILWAY_TOKEN,
    KUBE_TOKEN,
    SMTP_PASSWORD,
    "S3CR3T",
];

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.is_empty(), "{what}: nothing to search");
    for s in SECRETS {
        if let Some(at) = text.find(s) {
            let from = text[..at]
                .char_indices()
                .rev()
                .nth(300)
                .map_or(0, |(i, _)| i);
            let to = (at + 200).min(text.len());
            let to = (to..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            panic!("{what} shows the secret {s:?}:\n...{}...", &text[from..to]);
        }
    }
}

/// What a hostile or careless platform answers: everything it was sent,
/// echoed back in the body of an error.
fn echo(r: &Recorded, status: u16) -> Reply {
    let headers: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    Reply::json(
        status,
        json!({
            "error": "rejected",
            "message": format!(
                "{} {}?{} headers [{}] body {}",
                r.method,
                r.path,
                r.query.clone().unwrap_or_default(),
                headers.join(", "),
                String::from_utf8_lossy(&r.body)
            ),
        }),
    )
}

/// The stand-in for everything remote: the service's own endpoints, Slack,
/// PagerDuty, a webhook receiver, the rollback webhook, Railway and the
/// Kubernetes API. Every one of them fails, loudly.
async fn stand_in() -> HttpServer {
    HttpServer::start(|r| {
        let p = r.path.as_str();
        match p {
            "/health" => Reply::text(200, "ok"),
            // The service says who it thinks the caller is, then refuses.
            "/api/me" => echo(r, 401),
            // The service echoes the token back in a body the probe checks.
            "/api/echo" => Reply::json(
                200,
                json!({ "authorization": r.header("authorization").unwrap_or("") }),
            ),
            "/api/login" => echo(r, 403),
            "/pd/v2/enqueue" => echo(r, 400),
            _ if p.starts_with("/slack/") => echo(r, 404),
            _ if p.starts_with("/notify/") => echo(r, 503),
            _ if p.starts_with("/hooks/") => echo(r, 500),
            "/graphql/v2" => Reply::json(
                200,
                json!({ "errors": [{ "message": format!(
                    "Not Authorized: {}",
                    r.header("authorization").unwrap_or("")
                ) }] }),
            ),
            _ if p.starts_with("/apis/") || p.starts_with("/api/") => echo(r, 403),
            _ => echo(r, 404),
        }
    })
    .await
}

/// The environment the secrets come from, as an operator's env file would.
fn env(server: &HttpServer) -> Vec<(&'static str, String)> {
    let pg = url::Url::parse(&postgres_url()).unwrap();
    let redis = url::Url::parse(&redis_url()).unwrap();
    vec![
        (
            "DATABASE_URL",
            format!(
                "postgres://backstop:{DB_PASSWORD}@{}:{}/backstop",
                pg.host_str().unwrap(),
                pg.port().unwrap()
            ),
        ),
        (
            "DOWN_DATABASE_URL",
            format!(
                "postgres://app:{DB_PASSWORD}@127.0.0.1:{}/app",
                closed_port()
            ),
        ),
        (
            "REDIS_URL",
            format!(
                "redis://:{REDIS_PASSWORD}@{}:{}/0",
                redis.host_str().unwrap(),
                redis.port().unwrap()
            ),
        ),
        (
            "DOWN_REDIS_URL",
            format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", closed_port()),
        ),
        ("API_TOKEN", API_TOKEN.into()),
        ("SMOKE_PASSWORD", SMOKE_PASSWORD.into()),
        (
            "SLACK_WEBHOOK_URL",
            server.url(&format!("/slack/services/T0/B0/{SLACK_PATH_TOKEN}")),
        ),
        ("PAGERDUTY_ROUTING_KEY", ROUTING_KEY.into()),
        (
            "ROLLBACK_HOOK_URL",
            server.url(&format!("/hooks/{HOOK_PATH_TOKEN}?token={HOOK_PATH_TOKEN}")),
        ),
        ("ROLLBACK_HOOK_TOKEN", HOOK_HEADER_TOKEN.into()),
        ("NOTIFY_TOKEN", NOTIFY_HEADER_TOKEN.into()),
        ("EXEC_TOKEN", EXEC_ENV_TOKEN.into()),
        ("EXEC_ARG_TOKEN", EXEC_ARG_TOKEN.into()),
        ("BACKSTOP_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        ("RAILWAY_TOKEN", RAILWAY_TOKEN.into()),
        (
            "SMTP_URL",
            format!(
                "smtp://backstop:{SMTP_PASSWORD}@127.0.0.1:{}",
                closed_port()
            ),
        ),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Every probe type that can carry a secret, each failing, and every
/// notifier. `rollback` is the `[rollback]` section.
fn config(port: u16, state: &std::path::Path, server: &HttpServer, rollback: &str) -> String {
    format!(
        r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"
admin_token = "${{BACKSTOP_ADMIN_TOKEN}}"

[service]
name = "web"

[deployment]
id = "v1"
warmup = "200ms"
watch = "1h"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{health}"
interval = "300ms"
timeout = "250ms"

[[probe]]
name = "me"
level = 2
type = "http"
url = "{me}"
headers = {{ Authorization = "Bearer ${{API_TOKEN}}" }}
interval = "300ms"
timeout = "250ms"

[[probe]]
name = "echo"
level = 2
type = "http"
url = "{echo}"
headers = {{ Authorization = "Bearer ${{API_TOKEN}}" }}
expect_body = [{{ pointer = "/authorization", equals = "Bearer nothing" }}]
interval = "300ms"
timeout = "250ms"

[[probe]]
name = "db"
level = 2
type = "postgres"
url = "${{DATABASE_URL}}"
interval = "300ms"
timeout = "250ms"

[[probe]]
name = "db-down"
level = 2
type = "postgres"
url = "${{DOWN_DATABASE_URL}}"
interval = "300ms"
timeout = "250ms"

[[probe]]
name = "cache"
level = 2
type = "redis"
url = "${{REDIS_URL}}"
interval = "300ms"
timeout = "250ms"

[[probe]]
name = "cache-down"
level = 2
type = "redis"
url = "${{DOWN_REDIS_URL}}"
interval = "300ms"
timeout = "250ms"

[[probe]]
name = "login"
level = 3
type = "scenario"
interval = "300ms"
timeout = "250ms"
  [[probe.step]]
  method = "POST"
  url = "{login}"
  json = {{ username = "smoke", password = "${{SMOKE_PASSWORD}}" }}
  expect_status = [200]

[[rule]]
name = "me failing"
probe = "me"
when = "consecutive_failures >= 2"
action = "alert"

{rollback}

[[notify]]
type = "slack"
url = "${{SLACK_WEBHOOK_URL}}"
timeout = "500ms"
deadline = "1s"

[[notify]]
type = "pagerduty"
routing_key = "${{PAGERDUTY_ROUTING_KEY}}"
api_url = "{pd}"
timeout = "500ms"
deadline = "1s"

[[notify]]
type = "webhook"
url = "{notify}"
headers = {{ Authorization = "Bearer ${{NOTIFY_TOKEN}}" }}
timeout = "500ms"
deadline = "1s"

[[notify]]
type = "email"
url = "${{SMTP_URL}}"
from = "backstop@web.example"
to = ["ops@web.example"]
timeout = "500ms"
deadline = "1s"
"#,
        state = state.display(),
        health = server.url("/health"),
        me = server.url("/api/me"),
        echo = server.url("/api/echo"),
        login = server.url("/api/login"),
        pd = server.url("/pd"),
        notify = server.url("/notify/in"),
    )
}

fn webhook_rollback() -> &'static str {
    r#"[rollback]
target = "webhook"
deadline = "1s"
  [rollback.webhook]
  url = "${ROLLBACK_HOOK_URL}"
  headers = { X-Token = "${ROLLBACK_HOOK_TOKEN}" }
  timeout = "500ms""#
}

/// A command that does what careless tools do: says its arguments and its
/// environment's token on stderr, then fails.
fn exec_rollback(dir: &std::path::Path) -> String {
    let script = dir.join("rollback.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"deploy-tool: invoked as $0 $*\" >&2\necho \"token $EXEC_TOKEN rejected for $*\" >&2\nexit 3\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    format!(
        r#"[rollback]
target = "exec"
deadline = "1s"
  [rollback.exec]
  command = ["{}", "--token", "${{EXEC_ARG_TOKEN}}", "--service", "web"]
  timeout = "5s""#,
        script.display()
    )
}

fn railway_rollback(server: &HttpServer) -> String {
    format!(
        r#"[rollback]
target = "railway"
deadline = "1s"
  [rollback.railway]
  token = "${{RAILWAY_TOKEN}}"
  project_id = "prj-1"
  service_id = "svc-1"
  environment_id = "env-1"
  api_url = "{}"
  timeout = "500ms""#,
        server.url("/graphql/v2")
    )
}

fn kubernetes_rollback(server: &HttpServer, dir: &std::path::Path) -> String {
    let token = dir.join("token");
    std::fs::write(&token, format!("{KUBE_TOKEN}\n")).unwrap();
    format!(
        r#"[rollback]
target = "kubernetes"
deadline = "1s"
  [rollback.kubernetes]
  deployment = "web"
  namespace = "prod"
  api_url = "{}"
  token_file = "{}"
  timeout = "500ms""#,
        server.url(""),
        token.display()
    )
}

/// Runs the agent with `rollback`, makes every probe fail, asks for a
/// manual rollback that fails, pokes the admin API with wrong tokens, and
/// searches everything it said.
async fn run_and_search(rollback: impl Fn(&std::path::Path) -> String, log_format: &str) {
    let server = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let text = config(
        port,
        &dir.path().join("state"),
        &server,
        &rollback(dir.path()),
    );
    let path = Daemon::write_config(dir.path(), &text);
    let env = env(&server);
    let agent = Daemon::start(&path, port, log_format, &env_refs(&env));
    let client = reqwest::Client::new();

    // Every probe has failed at least twice, so the alert has fired.
    agent
        .until("every failing probe failed twice", |s| {
            // `db` and `cache` have the wrong password: the agent's own
            // fault, an `error` that never counts as a failure.
            ["db", "cache"]
                .iter()
                .all(|n| crate::daemon::probe(s, n)["last"]["outcome"] == "error")
                && ["me", "echo", "db-down", "cache-down", "login"]
                    .iter()
                    .all(|n| {
                        crate::daemon::probe(s, n)["consecutive_failures"]
                            .as_u64()
                            .unwrap_or(0)
                            >= 2
                    })
        })
        .await;

    // Wrong tokens, one a near miss of the real one, then the real one.
    for auth in [
        format!("Bearer {ADMIN_TOKEN}x"),
        format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        ADMIN_TOKEN.to_string(),
        format!("Basic {ADMIN_TOKEN}"),
    ] {
        let r = client
            .post(agent.url("/v1/pause"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let head = format!("{:?}", r.headers());
        assert_no_secret(
            "a 401 answer",
            &format!("{head}{}", r.text().await.unwrap()),
        );
    }
    let r = client
        .post(agent.url("/v1/rollback"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "reason": "secrets test" }))
        .send()
        .await
        .unwrap();
    let answer = r.text().await.unwrap();
    assert_no_secret("the manual rollback's answer", &answer);
    let status = agent
        .until("the rollback failed", |s| {
            s["last_rollback"]["status"] == "failed"
        })
        .await;
    // Give the notifiers time to fail their retries and say so.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (_, status_text) = agent.get("/status").await;
    let (_, metrics) = agent.get("/metrics").await;
    let (_, page) = agent.get("/").await;
    assert!(page.contains("<section id=\"rollback\">"), "{page}");
    assert_no_secret("/", &page);
    assert_no_secret("/status", &status_text);
    assert_no_secret("/metrics", &metrics);
    let log = agent.output();
    assert!(
        log.contains("rollback") && log.len() > 1000,
        "the log says little:\n{log}"
    );
    assert_no_secret(&format!("the {log_format} log"), &log);
    assert!(
        log.contains("email: SMTP"),
        "the email notifier's failure is logged:\n{log}"
    );
    assert!(
        status["last_rollback"]["detail"].as_str().is_some()
            || status["last_rollback"]["reason"].as_str().is_some(),
        "{status:#}"
    );

    // The stand-in did get the secrets: they were sent where they belong.
    let seen: String = server
        .requests()
        .iter()
        .map(|r| format!("{} {:?} {:?}", r.path, r.headers, r.body))
        .collect();
    for s in [API_TOKEN, SMOKE_PASSWORD, ROUTING_KEY, NOTIFY_HEADER_TOKEN] {
        assert!(seen.contains(s), "{s} was never sent to its destination");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_rollback_and_failing_notifiers_show_no_secret_in_json_logs() {
    run_and_search(|_| webhook_rollback().to_string(), "json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_exec_rollback_shows_no_secret_in_human_logs() {
    run_and_search(exec_rollback, "human").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_railway_rollback_shows_no_secret() {
    let railway = stand_in().await;
    let section = railway_rollback(&railway);
    run_and_search(move |_| section.clone(), "json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_kubernetes_rollback_shows_no_token_from_its_file() {
    let api = stand_in().await;
    run_and_search(|dir| kubernetes_rollback(&api, dir), "human").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_validate_show_no_secret() {
    let server = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        closed_port(),
        &dir.path().join("state"),
        &server,
        webhook_rollback(),
    );
    let path = Daemon::write_config(dir.path(), &text);
    let path = path.to_str().unwrap();
    let env = env(&server);
    let env = env_refs(&env);
    let (code, out) = run_cli(&["validate", "--config", path], &env);
    assert_eq!(code, Some(0), "{out}");
    assert_no_secret("validate", &out);
    for format in ["table", "json"] {
        for log in ["human", "json"] {
            let (code, out) = tokio::task::spawn_blocking({
                let env: Vec<(String, String)> = env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let path = path.to_string();
                move || {
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    run_cli(
                        &[
                            "--log-format",
                            log,
                            "check",
                            "--config",
                            &path,
                            "--format",
                            format,
                        ],
                        &[env.as_slice(), &[("RUST_LOG", "debug")]].concat(),
                    )
                }
            })
            .await
            .unwrap();
            assert!(matches!(code, Some(0 | 1)), "{out}");
            assert!(out.contains("db-down"), "{out}");
            assert_no_secret(&format!("check --format {format} --log-format {log}"), &out);
        }
    }
}

#[test]
fn configuration_errors_show_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, KUBE_TOKEN).unwrap();
    // Each a broken setting whose value is, or holds, a secret.
    let cases = [
        format!(
            "[[probe]]\nname = \"db\"\nlevel = 2\ntype = \"postgres\"\nurl = \"postgres://app:{DB_PASSWORD}@db:99999/app\"\n"
        ),
        format!(
            "[[probe]]\nname = \"db\"\nlevel = 2\ntype = \"postgres\"\nurl = \"postgresql://app:{DB_PASSWORD}@db/app?sslmode=bogus\"\n"
        ),
        format!(
            "[[probe]]\nname = \"db\"\nlevel = 2\ntype = \"postgres\"\nurl = \"mysql://app:{DB_PASSWORD}@db/app\"\n"
        ),
        format!(
            "[[probe]]\nname = \"cache\"\nlevel = 2\ntype = \"redis\"\nurl = \"redis://:{REDIS_PASSWORD}@cache:http/0\"\n"
        ),
        format!(
            "[[probe]]\nname = \"cache\"\nlevel = 2\ntype = \"redis\"\nurl = \"rediss://:{REDIS_PASSWORD}@cache/zero\"\n"
        ),
        format!(
            "[[probe]]\nname = \"me\"\nlevel = 1\ntype = \"http\"\nurl = \"http://h/\"\nheaders = {{ Authorization = \"Bearer {API_TOKEN}\\n\" }}\n"
        ),
        format!(
            "[[probe]]\nname = \"me\"\nlevel = 1\ntype = \"http\"\nurl = \"http://user:{API_TOKEN}@[::1/\"\n"
        ),
        format!(
            "[[probe]]\nname = \"me\"\nlevel = 1\ntype = \"http\"\nurl = \"ftp://user:{API_TOKEN}@h/\"\n"
        ),
        format!("[[notify]]\ntype = \"slack\"\nurl = \"hooks.slack.com/services/T0/B0/{SLACK_PATH_TOKEN}\"\n"),
        format!("[[notify]]\ntype = \"slack\"\nurl = \"ftp://hooks.slack.com/services/T0/B0/{SLACK_PATH_TOKEN}\"\n"),
        format!("[[notify]]\ntype = \"pagerduty\"\nrouting_key = 12\napi_url = \"http://x/{ROUTING_KEY}\"\nextra = 1\n"),
        format!("[[notify]]\ntype = \"pagerduty\"\nrouting_key = \"{ROUTING_KEY}\"\napi_url = \"nope\"\n"),
        format!("[[notify]]\ntype = \"webhook\"\nurl = \"http://h/\"\nheaders = {{ \"bad header\" = \"{NOTIFY_HEADER_TOKEN}\" }}\n"),
        format!("[[notify]]\ntype = \"email\"\nurl = \"http://u:{SMTP_PASSWORD}@mail.example\"\nfrom = \"a@b.example\"\nto = [\"c@d.example\"]\n"),
        format!("[[notify]]\ntype = \"email\"\nurl = \"smtp://u:{SMTP_PASSWORD}@mail.example\"\nfrom = \"a@b.example\"\nto = [\"not an address\"]\n"),
        format!("[rollback]\ntarget = \"webhook\"\n[rollback.webhook]\nurl = \"hooks/{HOOK_PATH_TOKEN}\"\n"),
        format!("[rollback]\ntarget = \"webhook\"\n[rollback.webhook]\nurl = \"http://h/{HOOK_PATH_TOKEN}\"\nheaders = {{ X-Token = \"{{{{{HOOK_HEADER_TOKEN}\" }}\n"),
        format!("[rollback]\ntarget = \"webhook\"\n[rollback.webhook]\nurl = \"http://h/{HOOK_PATH_TOKEN}\"\nbody = \"{{ {HOOK_HEADER_TOKEN}\"\n"),
        format!("[rollback]\ntarget = \"railway\"\n[rollback.railway]\ntoken = \"{RAILWAY_TOKEN}\"\nproject_id = \"p\"\n"),
        format!("[rollback]\ntarget = \"railway\"\n[rollback.railway]\ntoken = [\"{RAILWAY_TOKEN}\"]\nproject_id = \"p\"\nservice_id = \"s\"\nenvironment_id = \"e\"\n"),
        format!("[rollback]\ntarget = \"kubernetes\"\n[rollback.kubernetes]\ndeployment = \"Web_\"\nnamespace = \"p\"\ntoken_file = \"{}\"\napi_url = \"x\"\n", token.display()),
        format!("[rollback]\ntarget = \"exec\"\n[rollback.exec]\ncommand = [\"\", \"--token\", \"{EXEC_ARG_TOKEN}\"]\n"),
        format!("[agent]\nadmin_token = \"{}\"\n", &ADMIN_TOKEN[..10]),
        format!("[agent]\nadmin_token = {{ value = \"{ADMIN_TOKEN}\" }}\n"),
        format!("[[probe]]\nname = \"db\"\nlevel = 2\ntype = \"postgres\"\nurl = \"postgres://app:{DB_PASSWORD}@db/app\nbroken toml\n"),
        format!("[[probe]]\nname = \"db\"\nlevel = 2\ntype = \"postgres\"\nurl = \"postgres://app:{DB_PASSWORD}@db/app\"\nurl = \"postgres://app:{DB_PASSWORD}@db/app\"\n"),
    ];
    for (i, case) in cases.iter().enumerate() {
        let text = format!("[service]\nname = \"web\"\n\n{case}");
        let path = Daemon::write_config(dir.path(), &text);
        let path = path.to_str().unwrap();
        for command in ["validate", "check", "run"] {
            let (code, out) = run_cli(&[command, "--config", path], &[]);
            assert_eq!(code, Some(2), "case {i}, {command}:\n{text}\n{out}");
            assert_no_secret(&format!("case {i}, {command}:\n{text}\n"), &out);
        }
    }
}
