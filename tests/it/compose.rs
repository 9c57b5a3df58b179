//! The Docker Compose example in `deploy/compose/`: the service with
//! backstop beside it in its network namespace, Prometheus scraping backstop
//! with the alert rules loaded, and Grafana provisioned with the dashboard.
//! Every file it mounts exists, Prometheus's configuration passes `promtool`,
//! and backstop's configuration passes `backstop validate` with only the
//! variables its service defines.

use std::path::{Path, PathBuf};
use std::process::Command;

use backstop_tests::backstop_bin;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy/compose")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: serde_norway::Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(value).unwrap()
}

fn compose() -> Value {
    yaml(&dir().join("compose.yaml"))
}

/// A service's bind mounts as (host path relative to deploy/compose,
/// container path); named volumes are left out.
fn binds(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|m| {
                    let m = m.as_str().unwrap();
                    let mut parts = m.split(':');
                    let (host, inside) = (parts.next()?, parts.next()?);
                    host.starts_with('.')
                        .then(|| (host.to_string(), inside.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn backstop_runs_in_the_services_network_namespace_locked_down() {
    let c = compose();
    let services = &c["services"];
    for name in ["app", "backstop", "prometheus", "grafana"] {
        assert!(services[name].is_object(), "no service {name}");
    }
    let b = &services["backstop"];
    assert_eq!(b["network_mode"], "service:app", "{b}");
    assert_eq!(b["read_only"], true);
    assert_eq!(b["cap_drop"], serde_json::json!(["ALL"]));
    let user = b["user"].as_str().unwrap();
    assert!(
        !user.starts_with("0:") && user != "0" && user != "root",
        "{user}"
    );
    // Its ports are published on the service it shares a network with.
    let ports: Vec<&str> = services["app"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.iter().any(|p| p.ends_with(":9469")), "{ports:?}");
    // The configuration the command names is the one mounted.
    let command: Vec<&str> = b["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let config = command[command.iter().position(|a| *a == "--config").unwrap() + 1];
    assert!(
        binds(b)
            .iter()
            .any(|(host, inside)| host == "./backstop.toml" && inside == config),
        "{b}"
    );
    // The store is on a named volume: it survives a recreate.
    assert!(
        b["volumes"].as_array().unwrap().iter().any(|v| v
            .as_str()
            .unwrap()
            .starts_with("backstop-state:/var/lib/backstop")),
        "{b}"
    );
}

#[test]
fn every_mounted_file_exists() {
    let c = compose();
    for (name, service) in c["services"].as_object().unwrap() {
        for (host, _) in binds(service) {
            let path = dir().join(&host);
            assert!(path.exists(), "{name} mounts {host}, which does not exist");
        }
    }
}

#[test]
fn prometheus_scrapes_backstop_with_the_alert_rules_and_passes_promtool() {
    let c = compose();
    let p = &c["services"]["prometheus"];
    let binds = binds(p);
    let config = yaml(&dir().join("prometheus.yml"));
    let job = config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "backstop")
        .expect("a scrape job named backstop, as the alert rules expect");
    assert_eq!(job["static_configs"][0]["targets"][0], "app:9469");
    // The rule file it names is the one mounted from deploy/prometheus.
    let rules = config["rule_files"][0].as_str().unwrap();
    let (host, _) = binds
        .iter()
        .find(|(_, inside)| inside == rules)
        .unwrap_or_else(|| panic!("{rules} is not mounted: {binds:?}"));
    assert_eq!(host, "../prometheus/backstop-rules.yml");

    // promtool checks the configuration with the rules where it names them.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir().join(host), tmp.path().join("backstop-rules.yml")).unwrap();
    let text = std::fs::read_to_string(dir().join("prometheus.yml"))
        .unwrap()
        .replace(rules, "backstop-rules.yml");
    std::fs::write(tmp.path().join("prometheus.yml"), text).unwrap();
    let out = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(tmp.path())
        .output()
        .expect("promtool (from Debian's prometheus package; tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grafana_is_provisioned_with_the_dashboard_and_a_prometheus_data_source() {
    let c = compose();
    let g = &c["services"]["grafana"];
    let binds = binds(g);
    let provisioning = binds
        .iter()
        .find(|(_, inside)| inside == "/etc/grafana/provisioning")
        .map(|(host, _)| dir().join(host))
        .expect("provisioning mounted");
    let providers = yaml(&provisioning.join("dashboards/backstop.yaml"));
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let (host, _) = binds
        .iter()
        .find(|(_, inside)| inside == &format!("{path}/backstop.json"))
        .unwrap_or_else(|| panic!("no dashboard mounted in {path}: {binds:?}"));
    assert_eq!(host, "../grafana/backstop.json");
    let sources = yaml(&provisioning.join("datasources/prometheus.yaml"));
    let source = &sources["datasources"][0];
    assert_eq!(source["type"], "prometheus");
    assert_eq!(source["url"], "http://prometheus:9090");
}

#[test]
fn backstops_configuration_passes_validate_with_only_its_services_variables() {
    let c = compose();
    let mut cmd = Command::new(backstop_bin());
    cmd.args(["validate", "--config"])
        .arg(dir().join("backstop.toml"))
        .env_clear();
    for name in c["services"]["backstop"]["environment"]
        .as_object()
        .unwrap()
        .keys()
    {
        let value = match name.as_str() {
            "BACKSTOP_ADMIN_TOKEN" => "0123456789abcdef0123456789abcdef",
            n if n.ends_with("_URL") => "https://ci.example.com/hooks/redeploy",
            _ => "a-token",
        };
        cmd.env(name, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
