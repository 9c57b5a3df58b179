//! End to end with `[deployment] from_platform = true`: the real binary
//! learns the deployment from the rollback target's platform, so a new
//! deployment that takes the whole service down (its `/version` with it:
//! connection refused) is still seen, judged after its warm-up and rolled
//! back with exactly one call. The stand-ins are those of
//! `rollback_targets.rs` (Railway's GraphQL API) and `rollback_kubernetes.rs`
//! (the Kubernetes API), whose comments name the published definitions
//! their shapes were checked against.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_tests::{closed_port, wait_for_port, HttpServer, Recorded, Reply};
use serde_json::{json, Value};

use crate::aws_standin::{AwsServer, Key, ACCESS_KEY, SECRET_KEY};
use crate::daemon::Daemon;
use crate::rollback_aws::{alias, lambda_answer, REGION};
use crate::rollback_kubernetes::{
    deployment, replica_set, replica_set_list, DEPLOYMENT, DEPLOYMENT_UID, REPLICA_SETS, TOKEN,
};

/// The service under watch, reduced to its health endpoint on a port of its
/// own. Up, it answers 200; down, nothing listens on the port (connection
/// refused), as when the whole service is down.
struct Service {
    port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Starts it up, and waits until it accepts connections.
    fn start() -> Self {
        let port = closed_port();
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (u, s) = (up.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(port, &u, &s));
        wait_for_port(port);
        Self {
            port,
            up,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }

    /// The switch a platform stand-in turns when it rolls back.
    fn switch(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listens on `port` while `up`, answering one connection at a time; down,
/// the listener is closed.
fn serve(port: u16, up: &AtomicBool, stop: &AtomicBool) {
    let mut listener: Option<TcpListener> = None;
    while !stop.load(Ordering::SeqCst) {
        if !up.load(Ordering::SeqCst) {
            listener = None;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if listener.is_none() {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        match listener.as_ref().map(TcpListener::accept) {
            Some(Ok((stream, _))) => answer(stream),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn answer(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = s.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    );
    let _ = s.shutdown(Shutdown::Write);
}

/// An agent that asks the platform which deployment is live, with one
/// critical health probe, and the `[rollback]` section `rollback`.
fn config(dir: &std::path::Path, port: u16, service: &Service, rollback: &str) -> String {
    format!(
        r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"

[service]
name = "shop"

[deployment]
from_platform = true
poll_interval = "200ms"
warmup = "1s"
watch = "2s"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{health}"
interval = "300ms"
timeout = "300ms"
critical = true

{rollback}"#,
        state = dir.join("state").display(),
        health = service.url(),
    )
}

/// What every run checks once the rollback is recorded: the rule that held
/// (the default rule of a critical probe), why, and where it returned.
fn assert_rolled_back(s: &Value, deployment: &str, returned_to: &str) {
    let r = &s["last_rollback"];
    assert_eq!(r["deployment"], deployment, "{s:#}");
    assert_eq!(r["status"], "succeeded", "{s:#}");
    assert_eq!(r["rule"], "health failing", "{s:#}");
    assert_eq!(r["returned_to"], returned_to, "{s:#}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("consecutive_failures"),
        "{s:#}"
    );
}

/// `[rollback]` through the Railway stand-in at `api_url`: `common` goes
/// into `[rollback]` itself, `timeout` is each call's.
fn railway_rollback(token: &str, api_url: &str, common: &str, timeout: &str) -> String {
    format!(
        r#"[rollback]
target = "railway"
{common}  [rollback.railway]
  token = "{token}"
  project_id = "prj-1"
  service_id = "svc-1"
  environment_id = "env-1"
  api_url = "{api_url}"
  timeout = "{timeout}"
"#
    )
}

/// Railway's deployments of the service, newest first: (id, status).
type Listing = Arc<Mutex<Vec<(&'static str, &'static str)>>>;

fn railway_answer(
    r: &Recorded,
    list: &Listing,
    mutations: &Mutex<Vec<Value>>,
    up: &AtomicBool,
) -> Reply {
    let body = r.json();
    let query = body["query"].as_str().unwrap_or_default();
    if query.contains("deploymentRollback") {
        // Railway makes the rollback a new deployment of the one returned
        // to; it takes over, and the service is back.
        mutations.lock().unwrap().push(body["variables"].clone());
        *list.lock().unwrap() = vec![
            ("dep-3", "SUCCESS"),
            ("dep-2", "REMOVED"),
            ("dep-1", "REMOVED"),
        ];
        up.store(true, Ordering::SeqCst);
        return Reply::json(200, json!({"data": {"deploymentRollback": true}}));
    }
    if !query.contains("deployments(input:") {
        return Reply::json(200, json!({"errors": [{"message": "unknown query"}]}));
    }
    let edges: Vec<Value> = list
        .lock()
        .unwrap()
        .iter()
        .map(|(id, status)| {
            json!({"node": {"id": id, "status": status, "createdAt": "2026-11-01T00:00:00Z",
                            "canRollback": matches!(*status, "SUCCESS" | "REMOVED")}})
        })
        .collect();
    Reply::json(200, json!({"data": {"deployments": {"edges": edges}}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_railway_deployment_that_takes_the_service_down_is_seen_and_rolled_back_once() {
    let service = Service::start();
    let list: Listing = Arc::new(Mutex::new(vec![("dep-1", "SUCCESS")]));
    let mutations = Arc::new(Mutex::new(Vec::new()));
    let (l, m, up) = (list.clone(), mutations.clone(), service.switch());
    let platform = HttpServer::start(move |r| railway_answer(r, &l, &m, &up)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let token = "railway-e2e-token-0123";
    let path = Daemon::write_config(
        dir.path(),
        &config(
            dir.path(),
            port,
            &service,
            &railway_rollback(
                token,
                &platform.url("/graphql/v2"),
                "deadline = \"5s\"\n",
                "2s",
            ),
        ),
    );
    let agent = Daemon::start(&path, port, "json", &[]);
    agent
        .until("dep-1 stable", |s| {
            s["deployment"]["id"] == "dep-1" && s["deployment"]["state"] == "stable"
        })
        .await;

    // The new deployment crash-loops: the service is down entirely, and
    // Railway lists it CRASHED above the one it replaced.
    service.set_up(false);
    *list.lock().unwrap() = vec![("dep-2", "CRASHED"), ("dep-1", "REMOVED")];
    agent
        .until("dep-2 seen", |s| s["deployment"]["id"] == "dep-2")
        .await;
    let s = agent
        .until("the rollback of dep-2", |s| {
            s["last_rollback"]["deployment"] == "dep-2" && s["last_rollback"]["status"] != "intent"
        })
        .await;
    assert_rolled_back(&s, "dep-2", "dep-1");
    assert_eq!(
        *mutations.lock().unwrap(),
        vec![json!({"id": "dep-1"})],
        "one call, to the last stable deployment"
    );

    // The deployment Railway made of dep-1 is seen and watched to the end;
    // no second call is made.
    agent
        .until("dep-3 stable", |s| {
            s["deployment"]["id"] == "dep-3" && s["deployment"]["state"] == "stable"
        })
        .await;
    assert_eq!(
        mutations.lock().unwrap().len(),
        1,
        "exactly one rollback call"
    );
    let calls = platform.requests();
    assert!(
        calls
            .iter()
            .all(|r| r.header("authorization") == Some(&*format!("Bearer {token}"))),
        "every request carries the token"
    );
    assert!(
        !agent.output().contains(token),
        "the token shows in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_version_that_takes_the_service_down_is_seen_and_the_alias_returned_once() {
    let service = Service::start();
    let state = alias("7");
    let (s, up) = (state.clone(), service.switch());
    // The Lambda API (see rollback_aws.rs), every request's SigV4 signature
    // verified; the alias pointed back at 7 brings the service back.
    let aws = AwsServer::start("lambda", REGION, vec![Key::example()], move |r| {
        let reply = lambda_answer(r, &s);
        if r.method == "PUT" && reply.status == 200 && s.lock().unwrap().version == "7" {
            up.store(true, Ordering::SeqCst);
        }
        reply
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let rollback = format!(
        "[rollback]\ntarget = \"aws_lambda\"\ndeadline = \"5s\"\n  [rollback.aws_lambda]\n  function = \"web-fn\"\n  alias = \"live\"\n  region = \"{REGION}\"\n  api_url = \"{}\"\n  timeout = \"2s\"\n",
        aws.url()
    );
    let path = Daemon::write_config(dir.path(), &config(dir.path(), port, &service, &rollback));
    // Credentials only from the environment: the standard chain's first link.
    let agent = Daemon::start(
        &path,
        port,
        "json",
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    agent
        .until("version 7 stable", |s| {
            s["deployment"]["id"] == "7" && s["deployment"]["state"] == "stable"
        })
        .await;

    // Version 8 is published and the alias moved to it: the service is down.
    service.set_up(false);
    {
        let mut a = state.lock().unwrap();
        a.version = "8".into();
        a.revision += 1;
    }
    agent
        .until("version 8 seen", |s| s["deployment"]["id"] == "8")
        .await;
    let s = agent
        .until("the rollback of 8", |s| {
            s["last_rollback"]["deployment"] == "8" && s["last_rollback"]["status"] != "intent"
        })
        .await;
    assert_rolled_back(&s, "8", "7");
    let puts: Vec<Recorded> = aws
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 1, "one UpdateAlias");
    assert_eq!(puts[0].json()["FunctionVersion"], "7");
    assert_eq!(puts[0].json()["RevisionId"], "rev-2");
    agent
        .until("version 7 again", |s| s["deployment"]["id"] == "7")
        .await;
    assert!(aws.refused().is_empty(), "{:?}", aws.refused());
    assert_eq!(
        aws.requests().iter().filter(|r| r.method == "PUT").count(),
        1,
        "exactly one rollback call"
    );
    assert!(
        !agent.output().contains(SECRET_KEY),
        "the secret key shows in the log"
    );
}

/// The Kubernetes API's view of the Deployment `prod/web`: its revision
/// and image, the ReplicaSets it controls, the undo's patches.
struct Cluster {
    revision: u32,
    replica_sets: Vec<(&'static str, u32, &'static str)>,
    patches: Vec<Value>,
}

impl Cluster {
    fn image(&self) -> &'static str {
        self.replica_sets
            .iter()
            .find(|(_, rev, _)| *rev == self.revision)
            .map(|(_, _, image)| *image)
            .unwrap()
    }
}

/// The image of the pod template a JSON patch puts back.
fn template_image(patch: &Value) -> Option<String> {
    patch
        .as_array()?
        .iter()
        .find(|op| op["path"] == "/spec/template")?
        .pointer("/value/spec/containers/0/image")?
        .as_str()
        .map(str::to_string)
}

fn kubernetes_answer(r: &Recorded, cluster: &Mutex<Cluster>, up: &AtomicBool) -> Reply {
    let mut c = cluster.lock().unwrap();
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", DEPLOYMENT) => {
            let rv = format!("{}", 48000 + c.revision);
            Reply::json(200, deployment(c.revision, c.image(), &rv))
        }
        ("GET", REPLICA_SETS) => {
            let items = c
                .replica_sets
                .iter()
                .map(|(name, rev, image)| replica_set(name, *rev, image, DEPLOYMENT_UID))
                .collect();
            Reply::json(200, replica_set_list(items))
        }
        ("PATCH", DEPLOYMENT) => {
            // What the Deployment controller does with kubectl's undo: the
            // old ReplicaSet's template is back, under a new revision.
            let patch = r.json();
            let image = template_image(&patch);
            c.patches.push(patch);
            let new = c.revision + 1;
            for rs in &mut c.replica_sets {
                if Some(rs.2) == image.as_deref() {
                    rs.1 = new;
                }
            }
            c.revision = new;
            up.store(true, Ordering::SeqCst);
            let rv = format!("{}", 48000 + c.revision);
            Reply::json(200, deployment(c.revision, c.image(), &rv))
        }
        _ => Reply::json(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": "the server could not find the requested resource",
                   "reason": "NotFound", "code": 404}),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_rollout_that_takes_the_service_down_is_seen_and_undone_once() {
    let service = Service::start();
    let cluster = Arc::new(Mutex::new(Cluster {
        revision: 1,
        replica_sets: vec![("web-5d8f7c9b6", 1, "registry.example/web:1")],
        patches: Vec::new(),
    }));
    let (c, up) = (cluster.clone(), service.switch());
    let api = HttpServer::start(move |r| kubernetes_answer(r, &c, &up)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let port = closed_port();
    let path = Daemon::write_config(
        dir.path(),
        &config(
            dir.path(),
            port,
            &service,
            &format!(
                r#"[rollback]
target = "kubernetes"
deadline = "5s"
  [rollback.kubernetes]
  deployment = "web"
  namespace = "prod"
  api_url = "{}"
  token_file = "{}"
  timeout = "2s"
"#,
                api.url(""),
                token_file.display()
            ),
        ),
    );
    let agent = Daemon::start(&path, port, "json", &[]);
    agent
        .until("revision 1 stable", |s| {
            s["deployment"]["id"] == "1" && s["deployment"]["state"] == "stable"
        })
        .await;

    // A new rollout whose pods crash-loop: the service is down entirely,
    // and the Deployment's revision annotation says 2.
    service.set_up(false);
    {
        let mut c = cluster.lock().unwrap();
        c.replica_sets
            .insert(0, ("web-7c9d5f6b8", 2, "registry.example/web:2"));
        c.revision = 2;
    }
    agent
        .until("revision 2 seen", |s| s["deployment"]["id"] == "2")
        .await;
    let s = agent
        .until("the undo of revision 2", |s| {
            s["last_rollback"]["deployment"] == "2" && s["last_rollback"]["status"] != "intent"
        })
        .await;
    assert_rolled_back(&s, "2", "revision 1 (web-5d8f7c9b6)");
    {
        let c = cluster.lock().unwrap();
        assert_eq!(c.patches.len(), 1, "one patch");
        assert_eq!(
            template_image(&c.patches[0]).as_deref(),
            Some("registry.example/web:1"),
            "back to revision 1's template: {:#}",
            c.patches[0]
        );
    }

    // The undo made revision 3 of revision 1's template; it is seen and
    // watched to the end, and no second patch is sent.
    agent
        .until("revision 3 stable", |s| {
            s["deployment"]["id"] == "3" && s["deployment"]["state"] == "stable"
        })
        .await;
    assert_eq!(
        cluster.lock().unwrap().patches.len(),
        1,
        "exactly one rollback call"
    );
    assert!(
        api.requests()
            .iter()
            .all(|r| r.header("authorization") == Some(&*format!("Bearer {TOKEN}"))),
        "every request carries the service account's token"
    );
    assert!(
        !agent.output().contains(TOKEN),
        "the token shows in the log"
    );
}

/// A platform whose API stops answering (each listing held for two
/// minutes, within the target's timeout) while a deployment is watched:
/// the read of the live deployment is in flight all along, and the watch
/// goes on without it — the warm-up ends and the watch ends on time, and
/// the deployment becomes stable while the read still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_api_that_stops_answering_does_not_hold_the_watch() {
    let service = Service::start();
    let list: Listing = Arc::new(Mutex::new(vec![("dep-1", "SUCCESS")]));
    let mutations = Arc::new(Mutex::new(Vec::new()));
    let slow = Arc::new(AtomicBool::new(false));
    let (l, m, up, s) = (
        list.clone(),
        mutations.clone(),
        service.switch(),
        slow.clone(),
    );
    let platform = HttpServer::start(move |r| {
        let reply = railway_answer(r, &l, &m, &up);
        // The first listing is answered at once; every later one is held.
        if s.swap(true, Ordering::SeqCst) {
            reply.after(Duration::from_secs(120))
        } else {
            reply
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let path = Daemon::write_config(
        dir.path(),
        &config(
            dir.path(),
            port,
            &service,
            &railway_rollback(
                "railway-e2e-token-0123",
                &platform.url("/graphql/v2"),
                "",
                "150s",
            ),
        ),
    );
    let agent = Daemon::start(&path, port, "json", &[]);
    agent
        .until("dep-1 seen", |s| s["deployment"]["id"] == "dep-1")
        .await;
    assert!(slow.load(Ordering::SeqCst));
    // The agent reads the live deployment every 200 ms: from here on a
    // read is always in flight, held by the platform.
    agent
        .until("dep-1 watching, then stable", |s| {
            s["deployment"]["id"] == "dep-1" && s["deployment"]["state"] == "stable"
        })
        .await;
    assert!(
        platform.requests().len() >= 2,
        "a second listing was asked for (and is held): {:?}",
        platform.requests().len()
    );
    assert!(mutations.lock().unwrap().is_empty(), "no rollback call");
}
