//! `backstop demo`: a self-contained demonstration that needs nothing
//! installed. On loopback it starts a small demo service, a stand-in
//! platform that can roll the service back, and the agent itself with a demo
//! configuration read by the ordinary loader; a healthy v1 becomes stable, a
//! broken v2 is deployed, the agent rolls it back, and the service is on v1
//! again. The timeline printed is read from the agent's own `/status`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Config;

/// The demo service's state: which version runs, and whether it is healthy.
struct Service {
    version: String,
    healthy: bool,
}

/// The stand-in platform's record of rollback calls.
#[derive(Default)]
struct Platform {
    calls: Vec<Value>,
}

async fn serve<F>(listener: TcpListener, f: F)
where
    F: Fn(String, String, Bytes) -> (u16, String) + Send + Sync + 'static,
{
    let f = Arc::new(f);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let f = f.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let f = f.clone();
                async move {
                    let method = req.method().to_string();
                    let path = req.uri().path().to_string();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let (status, text) = f(method, path, body);
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(text)))
                            .expect("valid response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn demo_config(service: SocketAddr, platform: SocketAddr, state_dir: &std::path::Path) -> String {
    format!(
        r#"# The configuration the demo runs with: an ordinary backstop file.
[agent]
listen = "127.0.0.1:0"
state_dir = "{state}"

[service]
name = "demo"

[deployment]
id_url = "http://{service}/version"
id_pointer = "/version"
poll_interval = "250ms"
warmup = "2s"
watch = "5s"

[[probe]]
name = "health"
level = 1
type = "http"
url = "http://{service}/api/health"
interval = "500ms"
timeout = "300ms"
max_latency = "100ms"
critical = true

[[rule]]
name = "health failing"
probe = "health"
when = "consecutive_failures >= 3"
action = "rollback"

[rollback]
target = "webhook"
cooldown = "1m"
verify = "10s"
deadline = "10s"

[rollback.webhook]
url = "http://{platform}/rollback"
"#,
        state = state_dir.display(),
    )
}

/// Runs the demonstration and prints its timeline; returns the exit code.
pub async fn run() -> anyhow::Result<u8> {
    let start = Instant::now();
    let say = move |text: String| {
        println!("{:>6.1}s  {text}", start.elapsed().as_secs_f64());
    };
    println!("backstop demo: a healthy v1, a broken v2, exactly one rollback\n");

    let service = Arc::new(Mutex::new(Service {
        version: "v1".into(),
        healthy: true,
    }));
    let svc_listener = TcpListener::bind("127.0.0.1:0").await?;
    let svc_addr = svc_listener.local_addr()?;
    let s = service.clone();
    tokio::spawn(serve(svc_listener, move |_, path, _| {
        let s = s.lock().expect("service lock");
        match path.as_str() {
            "/version" => (200, json!({ "version": s.version }).to_string()),
            "/api/health" if s.healthy => (200, r#"{"status":"ok"}"#.into()),
            "/api/health" => (503, r#"{"status":"database connection refused"}"#.into()),
            _ => (404, "{}".into()),
        }
    }));

    let platform = Arc::new(Mutex::new(Platform::default()));
    let plat_listener = TcpListener::bind("127.0.0.1:0").await?;
    let plat_addr = plat_listener.local_addr()?;
    let (p, s) = (platform.clone(), service.clone());
    tokio::spawn(serve(plat_listener, move |method, path, body| {
        if method != "POST" || path != "/rollback" {
            return (404, "{}".into());
        }
        let call: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let to = call["return_to"].as_str().unwrap_or("v1").to_string();
        p.lock().expect("platform lock").calls.push(call);
        let mut s = s.lock().expect("service lock");
        s.version = to;
        s.healthy = true;
        (200, r#"{"accepted":true}"#.into())
    }));

    let state = tempfile_dir()?;
    let text = demo_config(svc_addr, plat_addr, state.path());
    let config = Config::parse(&text, |_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let agent = tokio::spawn(crate::run::run(config, None, stop_rx, Some(bound_tx)));
    let agent_addr = bound_rx.await?;
    say(format!(
        "demo service v1 on {svc_addr}, stand-in platform on {plat_addr}, agent on {agent_addr}"
    ));

    let client = reqwest::Client::new();
    let status_url = format!("http://{agent_addr}/status");
    let mut last_dep = (String::new(), String::new());
    let mut last_probe = String::new();
    let mut fired = false;
    let mut deployed_v2 = false;
    let mut printed_calls = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        if Instant::now() > deadline {
            say("the demo did not finish within 60s".into());
            break 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(resp) = client.get(&status_url).send().await else {
            continue;
        };
        let Ok(st) = resp.json::<Value>().await else {
            continue;
        };
        let dep = st["deployment"]["id"].as_str().unwrap_or("").to_string();
        let state = st["deployment"]["state"].as_str().unwrap_or("").to_string();
        if !dep.is_empty() && (dep.clone(), state.clone()) != last_dep {
            let line = match state.as_str() {
                "warming" => {
                    format!("agent sees deployment {dep}: warming up, rules not armed yet")
                }
                "watching" => format!("{dep}: watching, rules armed"),
                "stable" if last_dep.0 == dep => {
                    format!("{dep}: stable, it becomes the deployment to return to")
                }
                "stable" => format!("agent sees deployment {dep} again: the rollback took effect"),
                "rolled_back" => format!("{dep}: rolled back"),
                other => format!("{dep}: {other}"),
            };
            say(line);
            last_dep = (dep.clone(), state.clone());
        }
        if let Some(p) = st["probes"].as_array().and_then(|a| a.first()) {
            let outcome = p["last"]["outcome"].as_str().unwrap_or("").to_string();
            let n = p["consecutive_failures"].as_u64().unwrap_or(0);
            let line = if outcome == "failed" {
                format!(
                    "probe health failed ({n} in a row): {}",
                    p["last"]["error"].as_str().unwrap_or("")
                )
            } else {
                format!("probe health {outcome}")
            };
            if !outcome.is_empty() && line != last_probe {
                say(line.clone());
                last_probe = line;
            }
        }
        if !fired {
            if let Some(rule) = st["rules"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["verdict"] == "holds"))
            {
                if state == "watching" || state == "rolled_back" {
                    say(format!(
                        "rule {:?} fired: {}",
                        rule["name"].as_str().unwrap_or(""),
                        rule["summary"].as_str().unwrap_or("")
                    ));
                    fired = true;
                }
            }
        }
        let calls = platform.lock().expect("platform lock").calls.clone();
        if calls.len() > printed_calls {
            for c in &calls[printed_calls..] {
                say(format!(
                    "platform received a rollback call: deployment {}, return to {}, rule {:?}",
                    c["deployment"].as_str().unwrap_or("?"),
                    c["return_to"].as_str().unwrap_or("?"),
                    c["rule"].as_str().unwrap_or("?")
                ));
            }
            printed_calls = calls.len();
        }
        if state == "stable" && dep == "v1" && !deployed_v2 {
            let mut s = service.lock().expect("service lock");
            s.version = "v2".into();
            s.healthy = false;
            deployed_v2 = true;
            drop(s);
            say("deploying v2: its /api/health answers 503".into());
        }
        if deployed_v2 && dep == "v1" && printed_calls > 0 {
            let rb = &st["last_rollback"];
            println!();
            say(format!(
                "done: v2 was rolled back to v1 by rule {:?} with {} platform call; the service runs {}",
                rb["rule"].as_str().unwrap_or("?"),
                printed_calls,
                service.lock().expect("service lock").version
            ));
            break if printed_calls == 1 { 0 } else { 1 };
        }
    };
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    Ok(outcome)
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let base = std::env::temp_dir().join(format!("backstop-demo-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(TempDir(base))
}

/// A directory removed when the demo ends.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
