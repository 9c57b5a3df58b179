//! End to end at level 4: a real local service reports its traffic on
//! `/metrics` and answers `/work` with real latency; the agent — the real
//! binary — learns v1 as the baseline, then judges v2 against it. A v2 whose
//! latency or error rate is worse beyond its rule is rolled back exactly
//! once; one that is only noisier, faster or slightly slower is not, and one
//! with too little traffic to judge is shown inconclusive and left alone.
//!
//! Every case runs its own service, stand-in platform and agent (own ports,
//! own state directory), all at once, so the file takes about as long as one
//! case: two watches of a few seconds each.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_tests::{backstop_bin, closed_port, wait_for_port, HttpServer, Reply};
use serde_json::{json, Value};
use tokio::time::Instant;

/// How a version of the service behaves.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// Median latency of the synthetic requests, in ms.
    median_ms: f64,
    /// σ of the log of their latency: the spread.
    sigma: f64,
    /// Share of requests answered 500.
    error_rate: f64,
    /// Requests served between two scrapes of `/metrics`...
    requests: u32,
    /// ...on every `every`-th scrape only (1: every scrape).
    every: u64,
    /// Median real latency of `/work`, in ms (spread `sigma`).
    work_ms: f64,
}

const V1: Profile = Profile {
    median_ms: 40.0,
    sigma: 0.25,
    error_rate: 0.01,
    requests: 60,
    every: 1,
    work_ms: 30.0,
};

/// Upper bounds of the latency histogram, in seconds: 1 ms to about 20 s,
/// 20% apart, as fine as a service that cares about its p95 would choose.
fn bounds() -> Vec<f64> {
    (0..55).map(|i| 0.001 * 1.2f64.powi(i)).collect()
}

/// SplitMix64: a small seeded generator, so each case's traffic is the same
/// from run to run.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Lognormal with this median and σ (Box-Muller).
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }
}

/// The service's state: its version and the counters `/metrics` shows.
struct State {
    version: String,
    profile: Profile,
    rng: Rng,
    scrapes: u64,
    ok: u64,
    errors: u64,
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: Vec<u64>,
    sum: f64,
}

impl State {
    fn new(seed: u64) -> Self {
        Self {
            version: "v1".into(),
            profile: V1,
            rng: Rng(seed),
            scrapes: 0,
            ok: 0,
            errors: 0,
            buckets: vec![0; bounds().len() + 1],
            sum: 0.0,
        }
    }

    /// The traffic served since the last scrape.
    fn serve(&mut self) {
        self.scrapes += 1;
        let p = self.profile;
        if self.scrapes % p.every != 0 {
            return;
        }
        let bounds = bounds();
        for _ in 0..p.requests {
            let secs = self.rng.lognormal(p.median_ms, p.sigma) / 1e3;
            let b = bounds.iter().position(|le| secs <= *le);
            self.buckets[b.unwrap_or(bounds.len())] += 1;
            self.sum += secs;
            if self.rng.uniform() < p.error_rate {
                self.errors += 1;
            } else {
                self.ok += 1;
            }
        }
    }

    fn exposition(&self) -> String {
        let mut out = format!(
            "# HELP http_requests_total Requests served.\n\
             # TYPE http_requests_total counter\n\
             http_requests_total{{code=\"200\"}} {}\n\
             http_requests_total{{code=\"500\"}} {}\n\
             # HELP http_request_duration_seconds Time to serve a request.\n\
             # TYPE http_request_duration_seconds histogram\n",
            self.ok, self.errors
        );
        let mut cumulative = 0;
        for (le, n) in bounds().iter().zip(&self.buckets) {
            cumulative += n;
            out.push_str(&format!(
                "http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}\n"
            ));
        }
        let count: u64 = self.buckets.iter().sum();
        out.push_str(&format!(
            "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             http_request_duration_seconds_sum {}\n\
             http_request_duration_seconds_count {count}\n",
            self.sum
        ));
        out
    }
}

#[derive(Clone)]
struct Service(Arc<Mutex<State>>);

impl Service {
    /// Deploys a version: a new process, so its counters start from zero.
    fn deploy(&self, version: &str, profile: Profile) {
        let mut s = self.0.lock().unwrap();
        s.version = version.to_string();
        s.profile = profile;
        s.scrapes = 0;
        s.ok = 0;
        s.errors = 0;
        s.buckets.iter_mut().for_each(|n| *n = 0);
        s.sum = 0.0;
    }

    fn version(&self) -> String {
        self.0.lock().unwrap().version.clone()
    }
}

async fn service(seed: u64) -> (Service, HttpServer) {
    let svc = Service(Arc::new(Mutex::new(State::new(seed))));
    let s = svc.clone();
    let server = HttpServer::start(move |r| {
        let mut st = s.0.lock().unwrap();
        match r.path.as_str() {
            "/version" => Reply::json(200, json!({ "version": st.version })),
            "/health" => Reply::text(200, "ok"),
            "/metrics" => {
                st.serve();
                Reply::text(200, &st.exposition())
                    .header("content-type", "text/plain; version=0.0.4")
            }
            "/work" => {
                let p = st.profile;
                let ms = st.rng.lognormal(p.work_ms, p.sigma);
                Reply::text(200, "done").after(Duration::from_secs_f64(ms / 1e3))
            }
            _ => Reply::status(404),
        }
    })
    .await;
    (svc, server)
}

const WARMUP_S: u64 = 2;
const WATCH_S: u64 = 15;

fn config(
    dir: &std::path::Path,
    port: u16,
    svc: &HttpServer,
    platform: &HttpServer,
) -> std::path::PathBuf {
    let path = dir.join("backstop.toml");
    std::fs::write(
        &path,
        format!(
            r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"
default_rules = false

[service]
name = "shop"

[deployment]
id_url = "{version}"
id_pointer = "/version"
poll_interval = "200ms"
warmup = "{WARMUP_S}s"
watch = "{WATCH_S}s"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{health}"
interval = "250ms"
timeout = "250ms"

[[probe]]
name = "app"
level = 4
type = "scrape"
url = "{metrics}"
requests = "http_requests_total"
latency = "http_request_duration_seconds"
interval = "250ms"
timeout = "250ms"

[[probe]]
name = "work"
level = 4
type = "http"
url = "{work}"
interval = "250ms"
timeout = "250ms"

[[rule]]
name = "health failing"
probe = "health"
when = "consecutive_failures >= 3"
action = "rollback"

[[rule]]
name = "latency regression"
probe = "app"
when = "p95_ms > 2x baseline for 10s"
action = "rollback"

[[rule]]
name = "error regression"
probe = "app"
when = "error_rate > 3x baseline for 10s"
action = "rollback"

[[rule]]
name = "error rate"
probe = "app"
when = "error_rate > 5% for 10s"
action = "rollback"

[[rule]]
name = "work latency regression"
probe = "work"
when = "latency_ms > 2x baseline for 10s"
action = "rollback"

[rollback]
target = "webhook"
cooldown = "1s"
verify = "10s"
deadline = "5s"

[rollback.webhook]
url = "{hook}"
"#,
            state = dir.join("state").display(),
            version = svc.url("/version"),
            health = svc.url("/health"),
            metrics = svc.url("/metrics"),
            work = svc.url("/work"),
            hook = platform.url("/rollback"),
        ),
    )
    .unwrap();
    path
}

/// The agent, logging to `agent.log` beside its configuration; the log's
/// end is printed when a case fails.
struct Agent {
    child: Child,
    log: std::path::PathBuf,
}

impl Agent {
    async fn start(config: &std::path::Path, port: u16) -> Self {
        let log = config.with_file_name("agent.log");
        let child = Command::new(backstop_bin())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        tokio::task::spawn_blocking(move || wait_for_port(port))
            .await
            .unwrap();
        Self { child, log }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- end of {}:\n{}", self.log.display(), tail.join("\n"));
        }
    }
}

async fn status(port: u16) -> Value {
    reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `/status` until `f` holds, for up to `secs` seconds.
async fn until(port: u16, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(port).await;
        if f(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}; last /status:\n{s:#}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rule<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no rule {name:?} in /status:\n{status:#}"))
}

/// The rule's only finding (each rule here has one comparison).
fn finding<'a>(status: &'a Value, name: &str) -> &'a Value {
    &rule(status, name)["detail"]["findings"][0]
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

/// What v2 must lead to.
enum Expect {
    /// One rollback, by this rule, on this signal; `ratio` bounds
    /// observed / baseline in its evidence.
    RollBack {
        rule: &'static str,
        signal: &'static str,
        ratio: (f64, f64),
    },
    /// v2 becomes stable untouched. Each named rule is judged with this
    /// verdict at least [`JUDGED`] times while v2 is watched; a `clear` one
    /// with its ratio to the baseline within bounds, an `inconclusive` one
    /// with a reason containing the text.
    Stays(&'static [(&'static str, Verdict)]),
}

#[derive(Debug, Clone, Copy)]
enum Verdict {
    Clear { ratio: (f64, f64) },
    Inconclusive(&'static str),
}

/// How many times, at least, a rule must be seen judged over a covered
/// window while v2 is watched before "no rollback" counts.
const JUDGED: usize = 10;

struct Case {
    name: &'static str,
    v2: Profile,
    expect: Expect,
}

fn cases() -> Vec<Case> {
    use Expect::*;
    use Verdict::*;
    vec![
        Case {
            name: "p95 latency 3x",
            v2: Profile {
                median_ms: 3.0 * V1.median_ms,
                ..V1
            },
            expect: RollBack {
                rule: "latency regression",
                signal: "p95_ms",
                ratio: (2.4, 3.8),
            },
        },
        Case {
            name: "real latency 3.5x",
            v2: Profile {
                // The agent's own share of a real request's time grows
                // with the machine's load and narrows the ratio.
                work_ms: 3.5 * V1.work_ms,
                ..V1
            },
            expect: RollBack {
                rule: "work latency regression",
                signal: "latency_ms",
                ratio: (2.0, 4.5),
            },
        },
        Case {
            name: "error rate 20% after 1%",
            v2: Profile {
                error_rate: 0.20,
                ..V1
            },
            expect: RollBack {
                rule: "error regression",
                signal: "error_rate",
                ratio: (10.0, 40.0),
            },
        },
        Case {
            name: "noisier",
            v2: Profile {
                sigma: 2.0 * V1.sigma,
                ..V1
            },
            // p95 grows by e^(1.645 × 0.25) ≈ 1.5, short of 2x.
            expect: Stays(&[
                ("latency regression", Clear { ratio: (1.2, 1.9) }),
                ("work latency regression", Clear { ratio: (0.6, 1.6) }),
                ("error regression", Clear { ratio: (0.0, 3.0) }),
            ]),
        },
        Case {
            name: "faster",
            v2: Profile {
                median_ms: 0.4 * V1.median_ms,
                work_ms: 0.4 * V1.work_ms,
                ..V1
            },
            expect: Stays(&[
                ("latency regression", Clear { ratio: (0.25, 0.6) }),
                ("work latency regression", Clear { ratio: (0.1, 1.2) }),
            ]),
        },
        Case {
            // The real latency of `/work` carries the agent's own share,
            // which the machine's load moves: its bounds are loose.
            name: "slightly slower",
            v2: Profile {
                median_ms: 1.2 * V1.median_ms,
                work_ms: 1.2 * V1.work_ms,
                ..V1
            },
            expect: Stays(&[
                ("latency regression", Clear { ratio: (1.05, 1.5) }),
                ("work latency regression", Clear { ratio: (0.6, 1.8) }),
            ]),
        },
        Case {
            // One request a second, every one of them a slow error: it
            // looks bad, but there is too little of it to say.
            name: "thin traffic",
            v2: Profile {
                median_ms: 3.0 * V1.median_ms,
                error_rate: 1.0,
                requests: 1,
                every: 4,
                ..V1
            },
            expect: Stays(&[
                ("latency regression", Inconclusive("too few samples")),
                ("error regression", Inconclusive("too few requests")),
                ("error rate", Inconclusive("too few requests")),
            ]),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_4_regressions_are_rolled_back_once_and_noise_speed_or_thin_traffic_are_not() {
    // Built before the cases start, so that no case waits for it.
    backstop_bin();
    let mut runs = tokio::task::JoinSet::new();
    for (i, case) in cases().into_iter().enumerate() {
        runs.spawn(async move {
            let name = case.name;
            let started = Instant::now();
            let outcome = tokio::spawn(run(case, 1000 + i as u64)).await;
            (name, started.elapsed(), outcome)
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = runs.join_next().await {
        let (name, took, outcome) = r.unwrap();
        eprintln!("case {name:?}: {:.1}s", took.as_secs_f64());
        if let Err(e) = outcome {
            let msg = e.try_into_panic().ok().and_then(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            });
            failed.push(format!("case {name:?}: {}", msg.unwrap_or_default()));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

async fn run(case: Case, seed: u64) {
    let (svc, server) = service(seed).await;
    let back = svc.clone();
    let platform = HttpServer::start(move |_| {
        // The platform goes back to v1 (the test checks it was asked to).
        back.deploy("v1", V1);
        Reply::json(200, json!({ "ok": true }))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let cfg = config(dir.path(), port, &server, &platform);
    let _agent = Agent::start(&cfg, port).await;
    let whole = WARMUP_S + WATCH_S + 15;
    let s = until(port, whole, "v1 stable", |s| {
        s["deployment"]["id"] == "v1" && s["deployment"]["state"] == "stable"
    })
    .await;
    // v1 had no baseline to compare with while it was watched.
    assert_eq!(s["last_stable"], "v1");

    svc.deploy("v2", case.v2);
    match case.expect {
        Expect::RollBack {
            rule: name,
            signal,
            ratio,
        } => {
            let s = until(port, whole, "the rollback of v2", |s| {
                s["last_rollback"]["deployment"] == "v2"
                    && s["last_rollback"]["status"] == "succeeded"
            })
            .await;
            let rb = &s["last_rollback"];
            assert_eq!(rb["rule"], name, "{s:#}");
            assert_eq!(rb["returned_to"], "v1");
            check_evidence(&rb["evidence"][0], name, signal, ratio);
            // The platform returned to v1, which stays; nothing calls again.
            until(port, 10, "v1 again", |s| s["deployment"]["id"] == "v1").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(svc.version(), "v1");
            let calls = platform.requests();
            assert_eq!(calls.len(), 1, "exactly one rollback call: {calls:?}");
            let body = calls[0].json();
            assert_eq!(body["event"], "rollback");
            assert_eq!(body["deployment"], "v2");
            assert_eq!(body["return_to"], "v1");
            assert_eq!(body["rule"], name);
            check_evidence(&body["evidence"][0], name, signal, ratio);
        }
        Expect::Stays(rules) => {
            let mut judged = vec![0; rules.len()];
            let deadline = Instant::now() + Duration::from_secs(whole);
            let last = loop {
                let s = status(port).await;
                assert!(s["last_rollback"].is_null(), "a rollback: {s:#}");
                let on_v2 = s["deployment"]["id"] == "v2";
                if on_v2 && s["deployment"]["state"] == "stable" {
                    break s;
                }
                assert!(Instant::now() < deadline, "v2 never became stable: {s:#}");
                if on_v2 && s["deployment"]["state"] == "watching" {
                    for r in s["rules"].as_array().unwrap() {
                        assert_ne!(r["verdict"], "holds", "{r:#}");
                    }
                    for ((name, want), n) in rules.iter().zip(&mut judged) {
                        if judged_as(&s, name, *want) {
                            *n += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            for ((name, want), n) in rules.iter().zip(&judged) {
                assert!(
                    *n >= JUDGED,
                    "rule {name:?} was judged {want:?} only {n} times while v2 was watched; \
                     last /status:\n{last:#}"
                );
            }
            assert!(platform.requests().is_empty());
        }
    }
}

/// Whether `/status` shows the rule judged over a covered window with the
/// expected verdict. Panics on the wrong verdict once the window is covered.
fn judged_as(s: &Value, name: &str, want: Verdict) -> bool {
    let r = rule(s, name);
    let f = finding(s, name);
    let covered = !r["reason"]
        .as_str()
        .is_some_and(|why| why.contains("window not yet covered"));
    if !covered {
        return false;
    }
    match want {
        Verdict::Clear { ratio: (lo, hi) } => {
            assert_eq!(r["verdict"], "clear", "{r:#}");
            let ratio = num(&f["ratio"]);
            assert!(
                lo <= ratio && ratio <= hi,
                "ratio {ratio} not in [{lo}, {hi}]: {r:#}"
            );
            assert!(f["p_value"].is_number(), "{r:#}");
            assert!(num(&f["baseline"]) > 0.0, "{r:#}");
            assert!(f["samples"].as_u64().unwrap() >= 20, "{r:#}");
            true
        }
        Verdict::Inconclusive(why) => {
            assert_eq!(r["verdict"], "inconclusive", "{r:#}");
            let reason = r["reason"].as_str().unwrap();
            assert!(reason.contains(why), "{r:#}");
            assert_eq!(f["verdict"], "inconclusive", "{r:#}");
            true
        }
    }
}

/// The evidence of a baseline comparison: the rule, the signal, the current
/// and baseline values, their ratio and a p-value below the agent's alpha.
fn check_evidence(ev: &Value, rule: &str, signal: &str, (lo, hi): (f64, f64)) {
    assert_eq!(ev["rule"], rule, "{ev:#}");
    assert_eq!(ev["signal"], signal, "{ev:#}");
    let (observed, baseline, ratio) = (
        num(&ev["observed"]),
        num(&ev["baseline"]),
        num(&ev["ratio"]),
    );
    assert!((ratio - observed / baseline).abs() < 1e-9 * ratio, "{ev:#}");
    assert!(
        lo <= ratio && ratio <= hi,
        "ratio {ratio} not in [{lo}, {hi}]: {ev:#}"
    );
    assert!(num(&ev["p_value"]) < 0.01, "{ev:#}");
    let summary = ev["summary"].as_str().unwrap();
    assert!(summary.starts_with(signal), "{summary}");
    assert!(
        summary.contains("p<0.0001") || summary.contains("p="),
        "{summary}"
    );
}
