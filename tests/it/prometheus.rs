//! What Prometheus and Grafana read of the agents: the alert rules in
//! `deploy/prometheus` (checked and unit-tested by `promtool`), a real
//! Prometheus server scraping a running agent and loading those rules, and
//! the Grafana dashboard in `deploy/grafana`, which may query only metrics
//! the agent exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backstop_tests::{backstop_bin, closed_port, wait_for_port, HttpServer, Reply};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rules_dir() -> PathBuf {
    repo().join("deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("promtool (Debian's prometheus package; tests/run.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let said = promtool(&["check", "rules", "backstop-rules.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
    let said = promtool(&["test", "rules", "backstop-rules.test.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn every_alert_has_a_unit_test_and_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(rules_dir().join("backstop-rules.yml")).unwrap();
    let rules: Value = serde_norway::from_str(&text).unwrap();
    let tests_text = std::fs::read_to_string(rules_dir().join("backstop-rules.test.yml")).unwrap();
    let tests: Value = serde_norway::from_str(&tests_text).unwrap();
    let tested: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|a| !a["exp_alerts"].as_array().unwrap().is_empty())
        .map(|a| a["alertname"].as_str().unwrap())
        .collect();
    let exported = exported_metrics();
    let mut alerts = BTreeSet::new();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().expect("alerting rules only");
        alerts.insert(name);
        assert!(
            tested.contains(name),
            "{name} has no unit test that sees it fire"
        );
        for metric in metric_names(rule["expr"].as_str().unwrap()) {
            assert!(
                exported.contains(&metric),
                "{name} queries {metric}, which the agent does not export"
            );
        }
        assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: summary"
        );
    }
    for want in [
        "BackstopAgentDown",
        "BackstopProbeFailing",
        "BackstopRollbackPerformed",
        "BackstopRollbackFailed",
        "BackstopRollbackNotEffective",
    ] {
        assert!(alerts.contains(want), "no {want} alert");
    }
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/backstop.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "found only {queries:?}");
    let exported = exported_metrics();
    let mut used = BTreeSet::new();
    for q in &queries {
        for metric in metric_names(q) {
            assert!(
                exported.contains(&metric),
                "the dashboard queries {metric} ({q}), which the agent does not export"
            );
            used.insert(metric);
        }
    }
    // What the dashboard is for: probe status, latency, rollbacks, watch state.
    for want in [
        "backstop_probe_up",
        "backstop_probe_duration_seconds_bucket",
        "backstop_rollbacks_total",
        "backstop_deployment_info",
        "backstop_deployments_total",
        "backstop_detection_seconds_count",
        "backstop_recovery_seconds_bucket",
    ] {
        assert!(used.contains(want), "the dashboard does not show {want}");
    }
    // Every panel reads the data source chosen in the dashboard's variable.
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
}

/// Every PromQL query in a dashboard: panel targets' and annotations' `expr`,
/// and the queries of template variables.
fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("definition", Value::String(s)) => out.push(s.clone()),
                    _ => collect_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let cases: &[(&str, &[&str])] = &[
        ("up{job=~\"(.*/)?backstop\"} == 0", &["up"]),
        (
            "histogram_quantile(0.95, sum by (le, probe) (rate(backstop_probe_duration_seconds_bucket{instance=~\"$instance\"}[$__rate_interval] offset $baseline)))",
            &["backstop_probe_duration_seconds_bucket"],
        ),
        (
            "increase(a_total[15m]) > 0 or (b unless on (job) group_left(x) c offset 15m)",
            &["a_total", "b", "c"],
        ),
        (
            "count by (version) (backstop_build_info) and bool max without (instance) (d:rule)",
            &["backstop_build_info", "d:rule"],
        ),
        ("label_values(backstop_build_info{job=~\"$job\"}, instance)", &["backstop_build_info"]),
        ("label_values(backstop_build_info, job)", &["backstop_build_info"]),
    ];
    for (expr, want) in cases {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(metric_names(expr), want, "{expr}");
    }
}

/// The metric names a PromQL expression (or a Grafana `label_values(...)`
/// query) reads. Not a PromQL parser: strings, label matchers, ranges,
/// grouping clauses and function names are taken out, and what is left of
/// the identifiers are metric names.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut e = expr.to_string();
    // label_values(metric, label): the label is no metric.
    let lv = regex::Regex::new(r"label_values\(([^,()]*),\s*[A-Za-z_]+\s*\)").unwrap();
    e = lv.replace_all(&e, "($1)").into_owned();
    for (pattern, with) in [
        (r#""(?:[^"\\]|\\.)*""#, "\"\""),
        (r"\{[^}]*\}", " "),
        (r"\[[^\]]*\]", " "),
        (
            r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
            " ",
        ),
        (r"\boffset\s+\S+", " "),
        (r"\$\{?[A-Za-z_]+\}?", " "),
    ] {
        e = regex::Regex::new(pattern)
            .unwrap()
            .replace_all(&e, with)
            .into_owned();
    }
    let ident = regex::Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").unwrap();
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "inf",
        "nan",
        "Inf",
        "NaN",
    ];
    let bytes = e.as_bytes();
    ident
        .find_iter(&e)
        // Not the tail of a number or duration (`15m`, `1e3`, `0.95`).
        .filter(|m| {
            m.start() == 0 || {
                let b = bytes[m.start() - 1];
                !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            }
        })
        // Not a function.
        .filter(|m| !e[m.end()..].trim_start().starts_with('('))
        .map(|m| m.as_str().to_string())
        .filter(|n| !KEYWORDS.contains(&n.as_str()))
        .collect()
}

/// The metric names the agent describes (every `describe_*!` in `agent/src`,
/// and the per-probe families of `telemetry::PROBE_FAMILIES`, which the agent
/// writes itself), with a histogram's `_bucket`, `_sum` and `_count` series,
/// and `up`, which Prometheus adds to every target.
fn exported_metrics() -> BTreeSet<String> {
    let mut sources = String::new();
    let mut stack = vec![repo().join("agent/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let consts: BTreeMap<String, String> =
        regex::Regex::new(r#"const ([A-Z_][A-Z0-9_]*): &str = "([a-z_:]+)";"#)
            .unwrap()
            .captures_iter(&sources)
            .map(|c| (c[1].to_string(), c[2].to_string()))
            .collect();
    let described = regex::Regex::new(
        r#"describe_(counter|gauge|histogram)!\(\s*(?:"([a-z_:]+)"|([A-Z_][A-Z0-9_]*))"#,
    )
    .unwrap();
    let mut out = BTreeSet::from(["up".to_string()]);
    let families =
        regex::Regex::new(r#"\(\s*"([a-z_:]+)",\s*"(counter|gauge|histogram)","#).unwrap();
    let table = sources
        .split("PROBE_FAMILIES: [")
        .nth(1)
        .and_then(|t| t.split("];").next())
        .expect("telemetry::PROBE_FAMILIES");
    for c in families.captures_iter(table) {
        if &c[2] == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{}{suffix}", &c[1]));
            }
        }
        out.insert(c[1].to_string());
    }
    for c in described.captures_iter(&sources) {
        let name = match (c.get(2), c.get(3)) {
            (Some(n), _) => n.as_str().to_string(),
            (_, Some(k)) => consts
                .get(k.as_str())
                .unwrap_or_else(|| panic!("const {} not found", k.as_str()))
                .clone(),
            _ => unreachable!(),
        };
        if &c[1] == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"));
            }
        }
        out.insert(name);
    }
    assert!(
        out.contains("backstop_probe_up"),
        "no metrics found: {out:?}"
    );
    out
}

/// A process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn query(client: &reqwest::Client, base: &str, path: &str) -> Option<Value> {
    let resp = client.get(format!("{base}{path}")).send().await.ok()?;
    let v: Value = resp.json().await.ok()?;
    (v["status"] == "success").then(|| v["data"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_agent_and_loads_the_rules() {
    let target = HttpServer::start(|_| Reply::text(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let agent_port = closed_port();
    let config = dir.path().join("backstop.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
listen = "127.0.0.1:{agent_port}"
state_dir = "{state}"

[service]
name = "web"

[deployment]
id = "v1"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{url}"
interval = "200ms"
timeout = "150ms"
"#,
            state = dir.path().join("state").display(),
            url = target.url("/health"),
        ),
    )
    .unwrap();
    let _agent = Proc(
        Command::new(backstop_bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(agent_port);

    let prom_port = closed_port();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: backstop
    static_configs:
      - targets: ["127.0.0.1:{agent_port}"]
"#,
            rules = rules_dir().join("backstop-rules.yml").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's package; tests/run.sh installs it)"),
    );
    let base = format!("http://127.0.0.1:{prom_port}");
    let client = reqwest::Client::new();

    // Wait for a scrape that saw the probe up (up to 60 s: Prometheus starts slowly).
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        if let Some(data) = query(&client, &base, "/api/v1/query?query=backstop_probe_up").await {
            let result = data["result"].as_array().cloned().unwrap_or_default();
            if result.iter().any(|s| s["value"][1] == "1") {
                break result;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no backstop_probe_up after 60s; prometheus said:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(series.len(), 1, "{series:?}");
    let m = &series[0]["metric"];
    assert_eq!(m["__name__"], "backstop_probe_up");
    assert_eq!(m["job"], "backstop");
    assert_eq!(m["instance"], format!("127.0.0.1:{agent_port}"));
    assert_eq!(m["probe"], "health");
    assert_eq!(m["level"], "1");
    assert_eq!(m["type"], "http");

    // Every name Prometheus stored from the agent is one the agent describes.
    let exported = exported_metrics();
    let names = query(
        &client,
        &base,
        "/api/v1/label/__name__/values?match[]=%7Bjob%3D%22backstop%22%7D",
    )
    .await
    .expect("label values");
    let names: BTreeSet<String> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .filter(|n| !n.starts_with("scrape_"))
        .collect();
    assert!(names.contains("backstop_build_info"), "{names:?}");
    for name in &names {
        assert!(
            exported.contains(name),
            "the agent exports {name}, described nowhere"
        );
    }

    // The rules file loads in a real server, and a healthy agent fires nothing.
    let rules = query(&client, &base, "/api/v1/rules").await.expect("rules");
    let loaded: Vec<&Value> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let text = std::fs::read_to_string(rules_dir().join("backstop-rules.yml")).unwrap();
    let written: Value = serde_norway::from_str(&text).unwrap();
    let want = written["groups"][0]["rules"].as_array().unwrap().len();
    assert_eq!(loaded.len(), want, "{rules}");
    for rule in loaded {
        assert_ne!(rule["health"], "err", "{rule}");
        assert_ne!(rule["state"], "firing", "{rule}");
    }
}
