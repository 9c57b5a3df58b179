//! The TOML configuration: read in two phases. First the text is parsed with
//! its spans kept, `${VAR}` is interpolated, and the line of every key is
//! noted (`read.rs`); then each section is read and validated by the module
//! that owns it, through a [`Problems`] that collects what is wrong with key
//! paths, and the sections are composed here. Every problem found in either
//! phase is reported at once, each with its key path and, where it has one,
//! its line.
//!
//! Owners: `[agent]` and `[service]` in `agent.rs`; `[deployment]` in
//! `crate::deployment::config`; `[[probe]]` in `crate::probe_config` (each
//! type's own settings in the probes crate); `[[rule]]` in
//! `crate::rule_config`; `[rollback]` in `crate::rollback::config`;
//! `[[notify]]` in `crate::notify::config`; `[store]` in
//! `crate::store::config`; `[fleet]` in `crate::fleet::config`.

mod agent;
mod read;

use std::fmt;
use std::path::Path;

use serde_json::Value;

pub use self::read::{interpolate, key_lines};

// The types of `Config`'s fields, where its readers look for them; each is
// defined by the module that owns its section.
pub use self::agent::Agent;
pub use crate::deployment::config::{Deployment, DeploymentSource};
pub use crate::probe_config::ProbeConfig;
pub use crate::rule_config::{Action, RuleConfig};
pub use crate::store::config::StoreConfig;

use crate::notify::NotifyConfig;
use crate::problems::Problems;

/// The top-level sections of a configuration file.
pub const SECTIONS: &[&str] = &[
    "agent",
    "service",
    "deployment",
    "probe",
    "rule",
    "rollback",
    "notify",
    "store",
    "fleet",
];

/// Sections the loader knows but this version does not support yet.
pub const UNSUPPORTED_SECTIONS: &[&str] = &[];

/// Where `--config` points when neither the flag nor `$BACKSTOP_CONFIG` is set.
pub const DEFAULT_PATH: &str = "/etc/backstop/backstop.toml";

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path such as `probe[2].interval`; empty for the file as a whole.
    pub path: String,
    pub message: String,
    pub line: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// Every problem found in one file, in the order of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} configuration {}",
            if n == 1 { "problem" } else { "problems" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub agent: Agent,
    pub service: String,
    pub deployment: Deployment,
    pub probes: Vec<ProbeConfig>,
    pub rules: Vec<RuleConfig>,
    pub notify: Vec<NotifyConfig>,
    /// `[rollback]`; `None` when the section is absent (nothing is rolled back).
    pub rollback: Option<crate::rollback::RollbackConfig>,
    /// `[store]`; `None` when the section is absent (the embedded store in
    /// `state_dir`).
    pub store: Option<StoreConfig>,
    /// `[fleet]`; `None` when the section is absent (this agent decides alone).
    pub fleet: Option<crate::fleet::FleetConfig>,
}

impl Config {
    /// Reads and validates a file. Refuses a file anyone may write, since it
    /// decides what gets rolled back and which commands run.
    pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
        let whole = |message: String| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message,
                line: None,
            }])
        };
        let meta = std::fs::metadata(path)
            .map_err(|e| whole(format!("cannot read {}: {e}", path.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o002 != 0 {
                return Err(whole(format!(
                    "{} is world-writable; run chmod o-w on it",
                    path.display()
                )));
            }
        }
        let _ = meta;
        let text = std::fs::read_to_string(path)
            .map_err(|e| whole(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text, |k| std::env::var(k).ok())
    }

    /// Parses and validates configuration text, looking variables up with `env`.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
            let line = e.span().map(|s| read::line_of(text, s.start));
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("invalid TOML: {}", read::first_line(e.message())),
                line,
            }])
        })?;
        let read = read::read(text, &doc, &env);
        let mut cx = Problems::new(read.problems);
        let config = compose(&mut cx, read.value);
        if cx.is_empty() {
            if let Some(c) = config {
                return Ok(c);
            }
        }
        let mut errors: Vec<ConfigError> = cx
            .into_vec()
            .into_iter()
            .map(|p| ConfigError {
                line: read.lines.near(&p.path),
                path: p.path,
                message: p.message,
            })
            .collect();
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        errors.dedup();
        Err(ConfigErrors(errors))
    }
}

/// Reads every section through the module that owns it, and composes them;
/// `None` when a section has a problem (reported to `cx`).
fn compose(cx: &mut Problems, root: Value) -> Option<Config> {
    let Value::Object(mut root) = root else {
        return None;
    };
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            cx.report(
                key.clone(),
                format!("unknown section, expected one of {}", SECTIONS.join(", ")),
            );
        }
    }
    let (agent, default_rules) = agent::read_agent(cx, root.remove("agent"));
    let service = agent::read_service(cx, root.remove("service"));
    // Clients for the probes built to validate them, shared among them.
    let clients = backstop_probes::Clients::default();
    let (probes, written) = crate::probe_config::read(cx, root.remove("probe"), &clients);
    let mut rules = crate::rule_config::read(cx, root.remove("rule"));
    let notify = crate::notify::config::read(cx, root.remove("notify"));
    let rollback = match root.remove("rollback") {
        Some(v) => crate::rollback::config::read(cx, v).map(Some),
        None => Some(None),
    };
    let store = match root.remove("store") {
        Some(v) => crate::store::config::read(cx, v).map(Some),
        None => Some(None),
    };
    let fleet_written = root.contains_key("fleet");
    let fleet = match root.remove("fleet") {
        Some(v) => crate::fleet::config::read(cx, v, matches!(store, Some(Some(_)))).map(Some),
        None => Some(None),
    };
    // `None` when [rollback] has a problem (already reported);
    // `Some(None)` when there is no [rollback].
    let rollback_target = rollback.as_ref().map(|r| r.as_ref().map(|r| &r.target));
    let deployment =
        crate::deployment::config::read(cx, root.remove("deployment"), rollback_target);
    crate::probe_config::check(cx, &probes, &written);
    crate::rule_config::check(cx, &rules, &probes, &written, fleet_written);
    if default_rules {
        rules = crate::defaults::with_defaults(rules, &probes);
    }
    Some(Config {
        agent: agent?,
        service: service?,
        deployment: deployment?,
        probes,
        rules,
        notify,
        rollback: rollback?,
        store: store?,
        fleet: fleet?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const BASE: &str = r#"[service]
name = "web"

[[probe]]
name = "health"
level = 1
type = "http"
url = "http://127.0.0.1:8080/health"
"#;

    fn errors(text: &str) -> Vec<String> {
        let env = |k: &str| (k == "SET").then(|| "value".to_string());
        match Config::parse(text, env) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_rule_over_a_percentile_of_an_http_probes_latency_is_accepted() {
        let text = format!(
            "{BASE}[[rule]]\nname = \"slow\"\nprobe = \"health\"\nwhen = \"p95_ms > 2x baseline for 5m or p99_ms > 10000 for 5m\"\naction = \"rollback\"\n"
        );
        let config = Config::parse(&text, |_| None).unwrap();
        assert!(config.probes[0].latency_percentiles());
        assert!(config.rules.iter().any(|r| r.name == "slow"));
    }

    #[test]
    fn a_default_rule_over_a_signal_its_probe_is_not_set_up_to_yield_is_left_out() {
        // A scrape probe without `latency` has no p95_ms: no latency rule.
        let text = r#"[service]
name = "web"

[[probe]]
name = "app"
level = 4
type = "scrape"
url = "http://127.0.0.1:8080/metrics"
requests = "http_requests_total"
"#;
        let config = Config::parse(text, |_| None).unwrap();
        let names: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["app error rate"]);
    }

    #[test]
    fn each_problem_names_its_key_and_line() {
        let cases: &[(&str, &str)] = &[
            ("interval = \"10x\"", r#"probe[0].interval: invalid duration "10x" (use a number and a unit: 250ms, 5s, 15m, 1h) (line 9)"#),
            ("[agent]\nbogus = 1", "agent.bogus: unknown key, expected one of listen, state_dir, admin_token, default_rules, history_retention, history_max (line 10)"),
            ("[agent]\nhistory_retention = \"10m\"", "agent.history_retention: must be at least 1h (got 10m); the default is 90d (line 10)"),
            ("[agent]\nhistory_max = 1", "agent.history_max: must be at least 2 (got 1); the default is 1000 (line 10)"),
            ("[[probe]]\nname = \"p\"\nlevel = 1\ntype = \"tcp\"\naddress = \"h:1\"\nurl = \"x\"", "probe[1].url: unknown key, expected address (line 14)"),
            ("timeout = \"20s\"", "probe[0].timeout: 20s is longer than interval 10s (line 9)"),
            ("[[probe]]\nname = \"p\"\nlevel = 9\ntype = \"tcp\"\naddress = \"h:1\"", "probe[1].level: must be 1, 2, 3 or 4 (line 11)"),
            ("[[probe]]\nname = \"p\"\nlevel = 3\ntype = \"tcp\"\naddress = \"h:1\"", "probe[1].level: a tcp probe belongs to level 1 or 2 (line 11)"),
            ("method = \"G T\"", r#"probe[0].method: invalid HTTP method "G T" (line 9)"#),
            ("expect_status = [700]", "probe[0].expect_status[0]: 700 is not an HTTP status (100-599) (line 9)"),
            ("headers = { Authorization = \"${UNSET}\" }", "probe[0].headers.Authorization: environment variable UNSET is not set (write ${UNSET:-default} to allow that) (line 9)"),
            ("[agent]\nlisten = \"nowhere\"", r#"agent.listen: expected ip:port like 0.0.0.0:9469, got "nowhere" (line 10)"#),
            ("[agent]\nadmin_token = \"short\"", "agent.admin_token: must be at least 16 characters (or empty to disable the admin endpoints) (line 10)"),
            ("[deployment]\nid = \"a\"\nid_file = \"/x\"", "deployment: set only one of id, id_url, id_file or from_platform (line 9)"),
            ("[deployment]\nwarmup = 5", "deployment.warmup: invalid type: integer 5, expected a duration string like \"5s\" (line 10)"),
            ("[[rule]]\nname = \"r\"\nprobe = \"nope\"\nwhen = \"status >= 500\"", r#"rule[0].probe: no probe named "nope" (line 11)"#),
            ("[[rule]]\nname = \"r\"\nprobe = \"health\"\nwhen = \"status >= 500\"\naction = \"explode\"", r#"rule[0].action: unknown value "explode", expected rollback or alert (line 13)"#),
            ("[fleet]\nquorum = 0.5", "fleet.replica: required key is missing (line 9)"),
            ("[fleet]\nreplica = \"a\"", "fleet: needs a coordination store: a PostgreSQL [store], or redis = \"redis://…\" here (line 9)"),
            ("[fleet]\nreplica = \" \"\nredis = \"redis://r:6379\"", "fleet.replica: must not be empty: name this replica, e.g. \"${HOSTNAME}\" (line 10)"),
            ("[fleet]\nreplica = \"a\"\nredis = \"redis://r:6379\"\nquorum = 0", "fleet.quorum: must be more than 0 and at most 1, got 0 (line 12)"),
            ("[fleet]\nreplica = \"a\"\nredis = \"redis://r:6379\"\nquorum = 1.5", "fleet.quorum: must be more than 0 and at most 1, got 1.5 (line 12)"),
            ("[fleet]\nreplica = \"a\"\nredis = \"http://u:hunter2@r\"", r#"fleet.redis: expected a redis:// or rediss:// URL, got "http://u:***@r/" (line 11)"#),
            ("[fleet]\nreplica = \"a\"\nredis = \"redis://r:6379\"\nheartbeat = \"5s\"\nexpiry = \"5s\"", "fleet.expiry: must be longer than heartbeat 5s (line 13)"),
            ("[fleet]\nreplica = \"a\"\nredis = \"redis://r:6379\"\nlease = \"10ms\"", "fleet.lease: must be at least 300ms (line 12)"),
            ("[fleet]\nreplica = \"a\"\nredis = \"redis://r:6379\"\nlive_baseline_min_peers = 0", "fleet.live_baseline_min_peers: must be at least 1 (the default is 2) (line 12)"),
            ("[[rule]]\nname = \"r\"\nprobe = \"health\"\nwhen = \"latency_ms > 500 for 1m\"\nbaseline = \"stored\"", "rule[0].baseline: \"stored\" applies only to a rule with an `Nx baseline` comparison, and \"latency_ms > 500 for 1m\" has none: remove it (line 13)"),
            ("[[rule]]\nname = \"r\"\nprobe = \"health\"\nwhen = \"latency_ms > 2x baseline for 1m\"\nbaseline = \"live\"", "rule[0].baseline: \"live\" compares with the other replicas' agents, which needs [fleet]; without it use \"auto\" or \"stored\" (line 13)"),
            ("[[rule]]\nname = \"r\"\nprobe = \"health\"\nwhen = \"latency_ms > 2x baseline for 1m\"\nbaseline = \"peers\"", "rule[0].baseline: unknown value \"peers\", expected one of auto, live, stored (line 13)"),
            ("[fleet]\nreplica = \"a\"\nredis = \"redis://r:6379\"\non_coordination_loss = \"panic\"", "fleet.on_coordination_loss: unknown value \"panic\", expected hold or local (line 12)"),
            ("[store]\nschema = \"backstop\"", "store.url: required key is missing (line 9)"),
            ("[store]\nurl = \"mysql://app:hunter2@db/app\"", r#"store.url: scheme "mysql" is not postgres or postgresql (line 10)"#),
            ("[store]\nurl = \"postgres://app:hunter2@db/app?sslmode=require\"", "store.url: sslmode=require is not supported: the store connects without TLS; use sslmode=disable or sslmode=prefer, or reach the server over a trusted network (line 10)"),
            ("[store]\nurl = \"postgres://app:hunter2@db:x/app\"", r#"store.url: invalid URL "postgres://***@db:x/app": invalid port number (line 10)"#),
            ("[store]\nurl = \"postgres://app@db/app\"\nschema = \"Ops-Data\"", r#"store.schema: "Ops-Data" is not a schema name: use lowercase letters, digits and underscores (at most 63, not starting with a digit) (line 11)"#),
            ("[store]\nurl = \"postgres://app@db/app\"\npool_size = 0", "store.pool_size: must be between 1 and 64 (line 11)"),
            ("[store]\nurl = \"postgres://app@db/app\"\ntimeout = \"10ms\"", "store.timeout: must be at least 100ms (line 11)"),
            ("[store]\nurl = \"postgres://app@db/app\"\nreplica = \"a\"", "store.replica: unknown key, expected one of url, schema, pool_size, timeout (line 11)"),
            ("[nonsense]", "nonsense: unknown section, expected one of agent, service, deployment, probe, rule, rollback, notify, store, fleet (line 9)"),
            ("[[rule]]\nname = \"r\"\nprobe = \"health\"\nwhen = \"bogus_signal > 5 for 1m\"", r#"rule[0].when: probe "health" (http) never yields "bogus_signal", so this rule could never hold; its signals are latency_ms, status, p50_ms, p90_ms, p95_ms, p99_ms, consecutive_failures (line 12)"#),
            ("[[probe]]\nname = \"port\"\nlevel = 1\ntype = \"tcp\"\naddress = \"h:1\"\n[[rule]]\nname = \"r\"\nprobe = \"port\"\nwhen = \"error_rate > 5% for 5m\"", r#"rule[0].when: probe "port" (tcp) never yields "error_rate", so this rule could never hold; its signals are latency_ms, p50_ms, p90_ms, p95_ms, p99_ms, consecutive_failures (line 17)"#),
            ("depends_on = [\"health\"]", r#"probe[0].depends_on[0]: probe "health" cannot depend on itself (line 9)"#),
            ("depends_on = [\"db\"]\n[[probe]]\nname = \"port\"\nlevel = 1\ntype = \"tcp\"\naddress = \"h:1\"", r#"probe[0].depends_on[0]: no probe named "db"; name one of the other probes: port (line 9)"#),
        ];
        for (extra, want) in cases {
            let text = format!("{BASE}{extra}\n");
            let got = errors(&text);
            assert_eq!(got, vec![want.to_string()], "with {extra:?}");
        }
    }

    const RAILWAY: &str = "[rollback]\ntarget = \"railway\"\n[rollback.railway]\ntoken = \"tok-123456\"\nproject_id = \"p\"\nservice_id = \"s\"\nenvironment_id = \"e\"\n";

    #[test]
    fn from_platform_asks_the_rollback_target_and_refuses_what_cannot_tell() {
        let text = format!("{BASE}[deployment]\nfrom_platform = true\n\n{RAILWAY}");
        let c = Config::parse(&text, |_| None).unwrap();
        assert_eq!(c.deployment.source, DeploymentSource::Platform);
        assert!(c.rollback.unwrap().target.can_tell_live());

        let platforms = "railway, kubernetes, argo_rollouts, render, vercel, heroku, aws_lambda, aws_ecs, aws_codedeploy";
        let cases = [
            (
                String::new(),
                format!("deployment.from_platform: needs a [rollback] section to ask: set its target to a platform ({platforms}), or use id_url or id_file (line 10)"),
            ),
            (
                "[rollback]\ntarget = \"webhook\"\n[rollback.webhook]\nurl = \"https://hooks.example/x\"\n".into(),
                format!("deployment.from_platform: the webhook target cannot say which deployment is live: use id_url or id_file, or a platform target ({platforms}) (line 10)"),
            ),
            (
                "[rollback]\ntarget = \"exec\"\n[rollback.exec]\ncommand = [\"true\"]\n".into(),
                format!("deployment.from_platform: the exec target cannot say which deployment is live: use id_url or id_file, or a platform target ({platforms}) (line 10)"),
            ),
        ];
        for (rollback, want) in cases {
            let text = format!("{BASE}[deployment]\nfrom_platform = true\n\n{rollback}");
            assert_eq!(errors(&text), vec![want], "with {rollback:?}");
        }
        // `false` is the default and asks nothing.
        let text = format!("{BASE}[deployment]\nfrom_platform = false\n");
        assert_eq!(
            Config::parse(&text, |_| None).unwrap().deployment.source,
            DeploymentSource::Fixed("unknown".into())
        );
    }

    #[test]
    fn from_platform_is_one_more_source_and_excludes_the_others() {
        for other in [
            "id = \"v1\"",
            "id_url = \"http://127.0.0.1:8080/version\"",
            "id_file = \"/etc/web/release\"",
        ] {
            let text = format!("{BASE}[deployment]\n{other}\nfrom_platform = true\n\n{RAILWAY}");
            assert_eq!(
                errors(&text),
                vec![
                    "deployment: set only one of id, id_url, id_file or from_platform (line 9)"
                        .to_string()
                ],
                "with {other}"
            );
        }
    }

    #[test]
    fn poll_interval_defaults_to_1s_locally_and_10s_on_a_platform() {
        let poll = |deployment: &str, rollback: &str| {
            let text = format!("{BASE}[deployment]\n{deployment}\n\n{rollback}");
            Config::parse(&text, |_| None)
                .unwrap_or_else(|e| panic!("{deployment}: {e}"))
                .deployment
                .poll_interval
        };
        assert_eq!(poll("", ""), Duration::from_secs(1));
        assert_eq!(
            poll("id_url = \"http://127.0.0.1:8080/version\"", ""),
            Duration::from_secs(1)
        );
        assert_eq!(
            poll("id_file = \"/etc/web/release\"", ""),
            Duration::from_secs(1)
        );
        assert_eq!(
            poll("from_platform = true", RAILWAY),
            Duration::from_secs(10)
        );
        assert_eq!(
            poll("from_platform = true\npoll_interval = \"2s\"", RAILWAY),
            Duration::from_secs(2)
        );
        assert_eq!(
            poll("id_file = \"/x\"\npoll_interval = \"250ms\"", ""),
            Duration::from_millis(250)
        );
        let text = format!("{BASE}[deployment]\nid_file = \"/x\"\npoll_interval = \"0s\"\n");
        assert_eq!(
            errors(&text),
            vec!["deployment.poll_interval: must be more than 0s (line 11)".to_string()]
        );
    }

    #[test]
    fn a_fleet_section_has_its_defaults_and_coordinates_through_the_store_or_redis() {
        let text = format!(
            "{BASE}[store]\nurl = \"postgres://app@db/app\"\n\n[fleet]\nreplica = \"${{HOST}}\"\n"
        );
        let env = |k: &str| (k == "HOST").then(|| "web-1".to_string());
        let f = Config::parse(&text, env).unwrap().fleet.unwrap();
        assert_eq!(f.replica, "web-1");
        assert_eq!(f.quorum, 0.5);
        assert!(f.redis.is_none());
        assert_eq!(
            (f.heartbeat, f.expiry, f.lease),
            (
                Duration::from_secs(5),
                Duration::from_secs(15),
                Duration::from_secs(30)
            )
        );
        assert_eq!(f.on_coordination_loss, crate::fleet::LossPolicy::Hold);
        assert_eq!(f.live_baseline_min_peers, 2);
        let text = format!(
            "{BASE}[fleet]\nreplica = \"web-2\"\nredis = \"redis://:hunter2@r:6379\"\nquorum = 1\nheartbeat = \"2s\"\non_coordination_loss = \"local\"\n"
        );
        let f = Config::parse(&text, |_| None).unwrap().fleet.unwrap();
        assert_eq!(f.quorum, 1.0);
        assert_eq!(f.expiry, Duration::from_secs(6));
        assert_eq!(f.on_coordination_loss, crate::fleet::LossPolicy::Local);
        assert_eq!(f.redis.unwrap().expose(), "redis://:hunter2@r:6379");
        assert!(
            Config::parse(BASE, |_| None).unwrap().fleet.is_none(),
            "no [fleet]: this agent decides alone"
        );
    }

    #[test]
    fn every_problem_in_a_file_is_reported_at_once() {
        let text = r#"[service]
name = ""

[[probe]]
name = "a"
level = 1
type = "tcp"
address = "nowhere"

[[probe]]
name = "a"
level = 1
type = "smtp"
"#;
        let got = errors(text);
        assert_eq!(
            got,
            vec![
                "service.name: must not be empty (line 2)".to_string(),
                r#"probe[0].address: expected host:port, got "nowhere" (line 8)"#.to_string(),
                r#"probe[1].type: unknown probe type "smtp", expected one of http, tcp, postgres, redis, resources, scenario, scrape, promql (line 13)"#.to_string(),
            ]
        );
    }

    #[test]
    fn a_toml_syntax_error_points_at_its_line() {
        let got = errors("[service]\nname = \"web\"\n\n[[probe]\n");
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("invalid TOML:") && got[0].ends_with("(line 4)"),
            "{got:?}"
        );
    }

    #[test]
    fn variables_are_interpolated_with_defaults_and_escapes() {
        let env = |k: &str| (k == "SET").then(|| "value".to_string());
        let cases = [
            ("${SET}", Ok("value")),
            ("a-${SET}-b", Ok("a-value-b")),
            ("${UNSET:-fallback}", Ok("fallback")),
            ("${UNSET:-}", Ok("")),
            ("$${SET}", Ok("${SET}")),
            ("cost $5", Ok("cost $5")),
            ("${SET", Err("unterminated")),
            ("${1X}", Err("invalid variable name")),
            ("${UNSET}", Err("UNSET is not set")),
        ];
        for (text, want) in cases {
            match (interpolate(text, &env), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{text}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{text}: {got}"),
                (got, w) => panic!("{text}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn defaults_fill_what_is_not_written() {
        let c = Config::parse(BASE, |_| None).unwrap();
        assert_eq!(c.agent.listen.to_string(), "0.0.0.0:9469");
        assert_eq!(c.agent.admin_token, None);
        assert_eq!(c.deployment.warmup, Duration::from_secs(30));
        assert_eq!(c.deployment.watch, Duration::from_secs(900));
        let p = &c.probes[0];
        assert_eq!(
            (p.interval, p.timeout),
            (Duration::from_secs(10), Duration::from_secs(5))
        );
        assert!(!p.critical);
    }

    #[test]
    fn a_store_section_chooses_postgres_with_defaults_and_hides_its_password() {
        let c = Config::parse(BASE, |_| None).unwrap();
        assert_eq!(c.store, None, "no [store]: the embedded store");
        let text = format!("{BASE}[store]\nurl = \"${{STORE_URL}}\"\n");
        let env = |k: &str| (k == "STORE_URL").then(|| "postgres://app:hunter2@db/app".into());
        let c = Config::parse(&text, env).unwrap();
        let store = c.store.clone().unwrap();
        assert_eq!(store.url.expose(), "postgres://app:hunter2@db/app");
        assert_eq!(
            (store.schema.as_str(), store.pool_size, store.timeout),
            ("public", 4, Duration::from_secs(5))
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        let text = format!("{BASE}[store]\nurl = \"postgres://app:hunter2@db/app\"\nschema = \"ops\"\npool_size = 2\ntimeout = \"2s\"\n");
        let store = Config::parse(&text, |_| None).unwrap().store.unwrap();
        assert_eq!(
            (store.schema.as_str(), store.pool_size, store.timeout),
            ("ops", 2, Duration::from_secs(2))
        );
    }

    #[test]
    fn a_world_writable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backstop.toml");
        std::fs::write(&path, BASE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = Config::load_file(&path).unwrap_err().to_string();
        assert!(err.contains("world-writable"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Config::load_file(&path).is_ok());
    }
}
