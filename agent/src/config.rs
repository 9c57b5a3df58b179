//! The TOML configuration: read in two phases. First the text is parsed with
//! its spans kept, `${VAR}` is interpolated, and every section is
//! deserialized on its own; then the typed result is validated. Every problem
//! found in either phase is reported at once, each with its key path and,
//! where it has one, its line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backstop_probes::{Context, ProbeSpec, PROBE_TYPES};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use toml_edit::TableLike;

use crate::duration::Dur;
use crate::notify::{NotifyCommon, NotifyConfig, NotifySpec, NOTIFY_COMMON_KEYS, NOTIFY_TYPES};

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

/// `[agent]`: the agent's own listener and storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentSection {
    /// Address of `/healthz`, `/status`, `/metrics` and `/v1/*`. Default `0.0.0.0:9469`.
    #[serde(default = "default_listen")]
    listen: String,
    /// Directory of the embedded store; unused with `[store]`. Default `/var/lib/backstop`.
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    /// Bearer token for the `POST /v1/*` endpoints; empty disables them. Default empty.
    #[serde(default)]
    admin_token: String,
    /// Add the default rule set (see `defaults.rs`) for the probes. Default `true`.
    #[serde(default = "yes")]
    default_rules: bool,
}

fn yes() -> bool {
    true
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            state_dir: default_state_dir(),
            admin_token: String::new(),
            default_rules: true,
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:9469".into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/backstop".into()
}

/// `[store]`: a PostgreSQL store shared by the agents of a service, instead
/// of the embedded one in `state_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    /// `postgres://user:password@host:port/database`; a secret. Required.
    url: crate::secret::Secret,
    /// The schema of backstop's tables, created when missing. Default `public`.
    #[serde(default = "default_schema")]
    schema: String,
    /// Connections kept open to the server. Default `4`.
    #[serde(default = "default_pool_size")]
    pool_size: i64,
    /// Time one store operation may take, connecting included. Default `5s`.
    #[serde(default = "default_store_timeout")]
    timeout: Dur,
}

fn default_schema() -> String {
    "public".into()
}
fn default_pool_size() -> i64 {
    4
}
fn default_store_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

/// `[fleet]`: several replicas of the service, one decision. Each agent
/// publishes its own verdicts; the fleet rolls back only when `quorum` of
/// the live replicas agree, and exactly one agent calls the platform.
/// Coordinates through the PostgreSQL `[store]`, or through `redis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetSection {
    /// This agent's name among its peers, unique per service, e.g. `"${HOSTNAME}"`. Required.
    replica: String,
    /// Share of live replicas whose own verdict must hold, 0 < quorum ≤ 1. Default `0.5`.
    #[serde(default = "default_quorum")]
    quorum: f64,
    /// `redis://…` to coordinate through Redis instead of `[store]`; a secret. Default none.
    #[serde(default)]
    redis: Option<crate::secret::Secret>,
    /// How often the agent publishes its verdicts (and at once when one changes). Default `5s`.
    #[serde(default = "default_heartbeat")]
    heartbeat: Dur,
    /// A replica not heard from for this long is not live; more than `heartbeat`. Default 3 × `heartbeat`.
    #[serde(default)]
    expiry: Option<Dur>,
    /// How long the lease to call the platform lasts unless renewed. Default `30s`.
    #[serde(default = "default_lease")]
    lease: Dur,
    /// `"hold"` (no fleet rollback while the coordination store is unreachable) or `"local"` (decide on this replica's own verdicts). Default `"hold"`.
    #[serde(default)]
    on_coordination_loss: crate::fleet::LossPolicy,
}

fn default_quorum() -> f64 {
    0.5
}
fn default_heartbeat() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_lease() -> Dur {
    Dur(Duration::from_secs(30))
}

/// `[service]`: which service this agent watches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    /// The service's name, shared by all its replicas. Required.
    name: String,
}

/// `[deployment]`: how the agent learns which deployment is running.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentSection {
    /// A fixed deployment id for this process. Default empty (use `id_url`, `id_file` or `from_platform`).
    #[serde(default)]
    id: String,
    /// A URL polled for the id; a new value is a new deployment. Default none.
    #[serde(default)]
    id_url: Option<String>,
    /// JSON pointer into the `id_url` body. Default: the whole body, trimmed.
    #[serde(default)]
    id_pointer: Option<String>,
    /// A file whose trimmed content is the id, re-read when polled. Default none.
    #[serde(default)]
    id_file: Option<PathBuf>,
    /// Ask the `[rollback]` target's platform which deployment is live (Railway's deployment, the Deployment's or Rollout's revision, Render's live deploy, Vercel's production deployment, Heroku's current release), so a service that is down entirely is still seen to change; a `webhook` or `exec` target cannot be asked. Default `false`.
    #[serde(default)]
    from_platform: bool,
    /// How often the id is read again: `id_url` or `id_file` are local and cheap, a platform's API with `from_platform` limits its rate. Default `1s` with `id_url` or `id_file`, `10s` with `from_platform`.
    #[serde(default)]
    poll_interval: Option<Dur>,
    /// Time after a new deployment during which rules are not armed. Default `30s`.
    #[serde(default = "default_warmup")]
    warmup: Dur,
    /// Time with armed rules before a deployment becomes stable. Default `15m`.
    #[serde(default = "default_watch")]
    watch: Dur,
}

impl Default for DeploymentSection {
    fn default() -> Self {
        Self {
            id: String::new(),
            id_url: None,
            id_pointer: None,
            id_file: None,
            from_platform: false,
            poll_interval: None,
            warmup: default_warmup(),
            watch: default_watch(),
        }
    }
}

/// How often `id_url` or `id_file` is read when `poll_interval` is not set.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// How often the platform is asked with `from_platform` when
/// `poll_interval` is not set.
pub const DEFAULT_PLATFORM_POLL: Duration = Duration::from_secs(10);

fn default_warmup() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_watch() -> Dur {
    Dur(Duration::from_secs(900))
}

/// The settings every probe has, whatever its type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeCommon {
    /// Unique name; used in metrics and rules. Required.
    name: String,
    /// 1 to 4, see SPEC's levels. Required.
    level: u8,
    /// The probe type. Required.
    #[serde(rename = "type")]
    #[allow(dead_code)] // read before the rest, to pick the type's own settings
    kind: String,
    /// Time between checks. Default `10s`.
    #[serde(default = "default_interval")]
    interval: Dur,
    /// Time one check may take. Default `5s`, and never more than `interval`.
    #[serde(default)]
    timeout: Option<Dur>,
    /// A check that works but takes longer is `degraded`. Default none.
    #[serde(default)]
    max_latency: Option<Dur>,
    /// A failure makes `backstop check` exit 1, and the default rules act on it. Default `false`.
    #[serde(default)]
    critical: bool,
    /// Probes of what this one depends on (a database, a cache): while one of them fails, this probe's rollback rules are held, never acted on. Default none.
    #[serde(default)]
    depends_on: Vec<String>,
}

const PROBE_COMMON_KEYS: &[&str] = &[
    "name",
    "level",
    "type",
    "interval",
    "timeout",
    "max_latency",
    "critical",
    "depends_on",
];

fn default_interval() -> Dur {
    Dur(Duration::from_secs(10))
}

/// `[[rule]]` as written; its `when` expression is parsed by the rules module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name; used in metrics, logs and notifications. Required.
    pub name: String,
    /// The probe whose signals the rule reads. Required.
    pub probe: String,
    /// The condition, in SPEC's rule language. Required.
    pub when: String,
    /// `rollback` or `alert`. Default `alert`.
    #[serde(default)]
    pub action: Action,
    /// Whether a rollback rule still rolls back once the deployment is
    /// stable; otherwise it alerts then. Default `false`.
    #[serde(default)]
    pub after_stable: bool,
    /// Whether this rule comes from the default rule set.
    #[serde(skip)]
    pub default: bool,
    /// `when`, parsed; always `Some` in a validated [`Config`].
    #[serde(skip)]
    pub expr: Option<backstop_judge::rules::Expr>,
}

/// What a rule does when it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Rollback,
    #[default]
    Alert,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rollback => "rollback",
            Self::Alert => "alert",
        }
    }
}

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

/// `[store]`, validated: where the PostgreSQL store is.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// The connection URL; shown only through `redact_url`.
    pub url: crate::secret::Secret,
    /// A valid, unquoted identifier.
    pub schema: String,
    pub pool_size: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// `None` when empty: the admin endpoints are then absent.
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub source: DeploymentSource,
    pub poll_interval: Duration,
    pub warmup: Duration,
    pub watch: Duration,
}

/// Where the deployment id comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DeploymentSource {
    Fixed(String),
    Url {
        url: String,
        pointer: Option<String>,
    },
    File(PathBuf),
    /// What the `[rollback]` target's platform says is live
    /// (`crate::rollback::Target::live_deployment`).
    Platform,
}

/// One `[[probe]]`, validated.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub name: String,
    pub level: u8,
    pub spec: ProbeSpec,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_latency: Option<Duration>,
    pub critical: bool,
    /// The probes this one depends on, by name: while one of them fails,
    /// this probe's rollback rules are held.
    pub depends_on: Vec<String>,
}

impl ProbeConfig {
    pub fn type_name(&self) -> &'static str {
        self.spec.type_name()
    }

    /// Whether `p50_ms` … `p99_ms` are percentiles of this probe's
    /// `latency_ms` rather than signals it yields itself (a `scrape`
    /// probe's, from the service's histogram).
    /// A type that can yield percentiles of its own (`scrape`, from the
    /// service's histogram; `promql`, a chosen signal) never has them
    /// computed from its own duration.
    pub fn latency_percentiles(&self) -> bool {
        let own_kind = backstop_probes::type_signals(self.type_name()).unwrap_or_default();
        self.spec
            .signals()
            .iter()
            .any(|s| s.name == backstop_judge::rules::LATENCY)
            && !own_kind
                .iter()
                .any(|s| backstop_judge::rules::percentile_of(&s.name).is_some())
    }

    /// Every signal a rule on this probe may read: what it yields, the
    /// percentiles of its latency, and `consecutive_failures`.
    pub fn rule_signals(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .spec
            .signals()
            .into_iter()
            .map(|s| s.name.into_owned())
            .collect();
        if self.latency_percentiles() {
            names.extend(
                backstop_judge::rules::PERCENTILES
                    .iter()
                    .map(|(n, _)| n.to_string()),
            );
        }
        names.push(backstop_judge::rules::CONSECUTIVE_FAILURES.to_string());
        names
    }

    /// Builds the runtime probe; the configuration was validated, so this
    /// only fails if the environment changed in between.
    pub fn build(&self) -> Result<backstop_probes::Probe, Vec<backstop_probes::ConfigProblem>> {
        self.build_shared(&backstop_probes::Clients::default())
    }

    /// Like [`ProbeConfig::build`], sharing `http` clients with the other
    /// probes built with `clients`.
    pub fn build_shared(
        &self,
        clients: &backstop_probes::Clients,
    ) -> Result<backstop_probes::Probe, Vec<backstop_probes::ConfigProblem>> {
        self.spec.build_shared(
            Context {
                timeout: self.timeout,
            },
            clients,
        )
    }
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
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("invalid TOML: {}", first_line(e.message())),
                line,
            }])
        })?;
        let mut cx = Reader {
            line_starts: line_starts(text),
            env: &env,
            lines: HashMap::new(),
            errors: Vec::new(),
            clients: Default::default(),
        };
        let root = cx.table(doc.as_table(), "");
        let config = cx.config(root);
        if cx.errors.is_empty() {
            if let Some(c) = config {
                return Ok(c);
            }
        }
        let mut errors = cx.errors;
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        errors.dedup();
        Err(ConfigErrors(errors))
    }
}

struct Reader<'a, F> {
    /// Byte offsets where each line starts, to turn a span into a line.
    line_starts: Vec<usize>,
    env: &'a F,
    lines: HashMap<String, usize>,
    errors: Vec<ConfigError>,
    /// Clients for the probes built to validate them, shared among them.
    clients: backstop_probes::Clients,
}

impl<F: Fn(&str) -> Option<String>> Reader<'_, F> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = self.line_near(&path);
        self.errors.push(ConfigError {
            path,
            message: message.into(),
            line,
        });
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    fn line_near(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    fn note_line(&mut self, path: &str, span: Option<std::ops::Range<usize>>) {
        if let Some(s) = span {
            self.lines
                .entry(path.to_string())
                .or_insert_with(|| self.line_starts.partition_point(|&start| start <= s.start));
        }
    }

    /// Turns a TOML table into JSON, interpolating strings and noting lines.
    fn table(&mut self, t: &dyn TableLike, path: &str) -> Value {
        let mut map = serde_json::Map::new();
        for (k, item) in t.iter() {
            let p = join(path, k);
            self.note_line(&p, t.key(k).and_then(|k| k.span()));
            if let Some(v) = self.item(item, &p) {
                map.insert(k.to_string(), v);
            }
        }
        Value::Object(map)
    }

    fn item(&mut self, item: &toml_edit::Item, path: &str) -> Option<Value> {
        use toml_edit::Item;
        match item {
            Item::None => None,
            Item::Value(v) => Some(self.value(v, path)),
            Item::Table(t) => {
                self.note_line(path, t.span());
                Some(self.table(t, path))
            }
            Item::ArrayOfTables(a) => {
                let mut out = Vec::new();
                for (i, t) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.note_line(&p, t.span());
                    out.push(self.table(t, &p));
                }
                Some(Value::Array(out))
            }
        }
    }

    fn value(&mut self, v: &toml_edit::Value, path: &str) -> Value {
        use toml_edit::Value as T;
        self.note_line(path, v.span());
        match v {
            T::String(s) => match interpolate(s.value(), self.env) {
                Ok(s) => Value::String(s),
                Err(msg) => {
                    self.error(path, msg);
                    Value::String(String::new())
                }
            },
            T::Integer(i) => Value::from(*i.value()),
            T::Float(f) => serde_json::Number::from_f64(*f.value())
                .map(Value::Number)
                .unwrap_or(Value::Null),
            T::Boolean(b) => Value::Bool(*b.value()),
            T::Datetime(d) => Value::String(d.value().to_string()),
            T::Array(a) => Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| self.value(v, &format!("{path}[{i}]")))
                    .collect(),
            ),
            T::InlineTable(t) => self.table(t, path),
        }
    }

    /// Deserializes `value` into `T`, recording any problem under `path`.
    fn section<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut p = path.to_string();
                for seg in e.path().iter() {
                    use serde_path_to_error::Segment;
                    match seg {
                        Segment::Seq { index } => p.push_str(&format!("[{index}]")),
                        Segment::Map { key } => p = join(&p, key),
                        Segment::Enum { .. } | Segment::Unknown => {}
                    }
                }
                let (p, msg) = refine(p, e.inner().to_string());
                self.error(p, msg);
                None
            }
        }
    }

    fn config(&mut self, root: Value) -> Option<Config> {
        let Value::Object(mut root) = root else {
            return None;
        };
        for key in root.keys().cloned().collect::<Vec<_>>() {
            if !SECTIONS.contains(&key.as_str()) {
                self.error(
                    key.clone(),
                    format!("unknown section, expected one of {}", SECTIONS.join(", ")),
                );
            }
        }
        let agent: Option<AgentSection> = match root.remove("agent") {
            Some(v) => self.section("agent", v),
            None => Some(AgentSection::default()),
        };
        let service: Option<ServiceSection> = match root.remove("service") {
            Some(v) => self.section("service", v),
            None => {
                self.error("service.name", "required key is missing");
                None
            }
        };
        let deployment: Option<DeploymentSection> = match root.remove("deployment") {
            Some(v) => self.section("deployment", v),
            None => Some(DeploymentSection::default()),
        };
        let mut written = HashSet::new();
        let probes = match root.remove("probe") {
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    if let Some(name) = v.get("name").and_then(Value::as_str) {
                        written.insert(name.to_string());
                    }
                    self.probe(i, v)
                })
                .collect::<Vec<_>>(),
            Some(_) => {
                self.error("probe", "must be an array of tables: write [[probe]]");
                vec![]
            }
            None => vec![],
        };
        let rules: Option<Vec<RuleConfig>> = match root.remove("rule") {
            Some(v) => self.section("rule", v),
            None => Some(vec![]),
        };
        let notify = match root.remove("notify") {
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| self.notify(i, v).map(|n| (i, n)))
                .collect::<Vec<_>>(),
            Some(_) => {
                self.error("notify", "must be an array of tables: write [[notify]]");
                vec![]
            }
            None => vec![],
        };
        let mut notify_names = HashSet::new();
        for (i, n) in &notify {
            if !notify_names.insert(n.name.as_str()) {
                self.error(
                    format!("notify[{i}].name"),
                    format!("duplicate notifier name {:?}: give each a name", n.name),
                );
            }
        }
        let notify = notify.into_iter().map(|(_, n)| n).collect();
        let rollback = match root.remove("rollback") {
            Some(v) => crate::rollback::read(self, v).map(Some),
            None => Some(None),
        };

        let store = match root.remove("store") {
            Some(v) => self
                .section::<StoreSection>("store", v)
                .and_then(|s| self.store(s))
                .map(Some),
            None => Some(None),
        };

        let fleet = match root.remove("fleet") {
            Some(v) => {
                let has_store = matches!(store, Some(Some(_)));
                self.section::<FleetSection>("fleet", v)
                    .and_then(|f| self.fleet(f, has_store))
                    .map(Some)
            }
            None => Some(None),
        };

        let default_rules = agent.as_ref().is_none_or(|a| a.default_rules);
        let agent = agent.and_then(|a| self.agent(a));
        let service = service.and_then(|s| {
            if s.name.trim().is_empty() {
                self.error("service.name", "must not be empty");
                None
            } else {
                Some(s.name)
            }
        });
        // `None` when [rollback] has a problem (already reported);
        // `Some(None)` when there is no [rollback].
        let rollback_target = rollback.as_ref().map(|r| r.as_ref().map(|r| &r.target));
        let deployment = deployment.and_then(|d| self.deployment(d, rollback_target));
        let probes: Vec<ProbeConfig> = probes.into_iter().flatten().collect();
        let mut rules = rules.unwrap_or_default();
        for (i, r) in rules.iter_mut().enumerate() {
            match backstop_judge::rules::parse(&r.when) {
                Ok(e) => r.expr = Some(e),
                Err(e) => self.error(format!("rule[{i}].when"), format!("{e}: {}", r.when)),
            }
        }
        self.cross_check(&probes, &rules, &written);
        if default_rules {
            rules = crate::defaults::merge(rules, crate::defaults::rules_for(&probes));
            for r in rules.iter_mut().filter(|r| r.expr.is_none() && r.default) {
                r.expr = Some(backstop_judge::rules::parse(&r.when).expect("default rules parse"));
            }
            // A default rule over a signal its probe is not set up to yield
            // (a `scrape` probe without `latency`) is left out.
            rules.retain(|r| {
                let (true, Some(expr)) = (r.default, &r.expr) else {
                    return true;
                };
                probes.iter().find(|p| p.name == r.probe).is_none_or(|p| {
                    let yields = p.rule_signals();
                    expr.comparisons().all(|c| yields.contains(&c.signal))
                })
            });
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

    fn fleet(&mut self, f: FleetSection, has_store: bool) -> Option<crate::fleet::FleetConfig> {
        let mut ok = true;
        if f.replica.trim().is_empty() {
            self.error(
                "fleet.replica",
                "must not be empty: name this replica, e.g. \"${HOSTNAME}\"",
            );
            ok = false;
        }
        if !(f.quorum > 0.0 && f.quorum <= 1.0) {
            self.error(
                "fleet.quorum",
                format!("must be more than 0 and at most 1, got {}", f.quorum),
            );
            ok = false;
        }
        if let Some(url) = &f.redis {
            let raw = url.expose();
            match url::Url::parse(raw) {
                Ok(u) if matches!(u.scheme(), "redis" | "rediss") => {}
                _ => {
                    self.error(
                        "fleet.redis",
                        format!(
                            "expected a redis:// or rediss:// URL, got {:?}",
                            backstop_probes::redact_url(raw)
                        ),
                    );
                    ok = false;
                }
            }
        }
        if f.heartbeat.0 < Duration::from_millis(100) {
            self.error("fleet.heartbeat", "must be at least 100ms");
            ok = false;
        }
        let expiry = f.expiry.map(|d| d.0).unwrap_or(f.heartbeat.0 * 3);
        if expiry <= f.heartbeat.0 {
            self.error(
                "fleet.expiry",
                format!(
                    "must be longer than heartbeat {}",
                    crate::duration::format(f.heartbeat.0)
                ),
            );
            ok = false;
        }
        if f.lease.0 < Duration::from_millis(300) {
            self.error("fleet.lease", "must be at least 300ms");
            ok = false;
        }
        if f.redis.is_none() && !has_store {
            self.error(
                "fleet",
                "needs a coordination store: a PostgreSQL [store], or redis = \"redis://…\" here",
            );
            ok = false;
        }
        ok.then_some(crate::fleet::FleetConfig {
            replica: f.replica.trim().to_string(),
            quorum: f.quorum,
            redis: f.redis,
            heartbeat: f.heartbeat.0,
            expiry,
            lease: f.lease.0,
            on_coordination_loss: f.on_coordination_loss,
        })
    }

    fn store(&mut self, s: StoreSection) -> Option<StoreConfig> {
        let mut ok = true;
        if let Err(message) = crate::store::postgres::check_url(s.url.expose()) {
            self.error("store.url", message);
            ok = false;
        }
        if !crate::store::postgres::valid_identifier(&s.schema) {
            self.error(
                "store.schema",
                format!(
                    "{:?} is not a schema name: use lowercase letters, digits and underscores \
                     (at most 63, not starting with a digit)",
                    s.schema
                ),
            );
            ok = false;
        }
        if !(1..=64).contains(&s.pool_size) {
            self.error("store.pool_size", "must be between 1 and 64");
            ok = false;
        }
        if s.timeout.0 < Duration::from_millis(100) {
            self.error("store.timeout", "must be at least 100ms");
            ok = false;
        }
        ok.then_some(StoreConfig {
            url: s.url,
            schema: s.schema,
            pool_size: s.pool_size as usize,
            timeout: s.timeout.0,
        })
    }

    fn agent(&mut self, a: AgentSection) -> Option<Agent> {
        let listen = match a.listen.parse::<SocketAddr>() {
            Ok(l) => Some(l),
            Err(_) => {
                self.error(
                    "agent.listen",
                    format!("expected ip:port like 0.0.0.0:9469, got {:?}", a.listen),
                );
                None
            }
        };
        let token = (!a.admin_token.is_empty()).then_some(a.admin_token);
        if token.as_ref().is_some_and(|t| t.len() < 16) {
            self.error(
                "agent.admin_token",
                "must be at least 16 characters (or empty to disable the admin endpoints)",
            );
        }
        Some(Agent {
            listen: listen?,
            state_dir: a.state_dir,
            admin_token: token,
        })
    }

    /// `rollback` is the `[rollback]` target: `None` when that section has
    /// a problem of its own, `Some(None)` when there is no such section.
    fn deployment(
        &mut self,
        d: DeploymentSection,
        rollback: Option<Option<&crate::rollback::TargetConfig>>,
    ) -> Option<Deployment> {
        let mut sources = Vec::new();
        if !d.id.is_empty() {
            sources.push(DeploymentSource::Fixed(d.id.clone()));
        }
        if let Some(url) = &d.id_url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => self.error(
                    "deployment.id_url",
                    format!(
                        "expected an http or https URL, got {:?}",
                        backstop_probes::redact_url(url)
                    ),
                ),
            }
            sources.push(DeploymentSource::Url {
                url: url.clone(),
                pointer: d.id_pointer.clone(),
            });
        }
        if let Some(p) = &d.id_pointer {
            if d.id_url.is_none() {
                self.error("deployment.id_pointer", "only applies with id_url");
            } else if !(p.is_empty() || p.starts_with('/')) {
                self.error(
                    "deployment.id_pointer",
                    format!("JSON pointer {p:?} must be empty or start with '/'"),
                );
            }
        }
        if let Some(f) = &d.id_file {
            sources.push(DeploymentSource::File(f.clone()));
        }
        if d.from_platform {
            sources.push(DeploymentSource::Platform);
            let platforms = crate::rollback::TARGETS
                .iter()
                .filter(|t| !matches!(**t, "webhook" | "exec"))
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            match rollback {
                Some(None) => self.error(
                    "deployment.from_platform",
                    format!(
                        "needs a [rollback] section to ask: set its target to a platform \
                         ({platforms}), or use id_url or id_file"
                    ),
                ),
                Some(Some(t)) if !t.can_tell_live() => self.error(
                    "deployment.from_platform",
                    format!(
                        "the {} target cannot say which deployment is live: use id_url or id_file, \
                         or a platform target ({platforms})",
                        t.name()
                    ),
                ),
                _ => {}
            }
        }
        if sources.len() > 1 {
            self.error(
                "deployment",
                "set only one of id, id_url, id_file or from_platform",
            );
        }
        let poll_interval = match d.poll_interval {
            Some(p) => {
                if p.0.is_zero() {
                    self.error("deployment.poll_interval", "must be more than 0s");
                }
                p.0
            }
            None if d.from_platform => DEFAULT_PLATFORM_POLL,
            None => DEFAULT_POLL,
        };
        if d.watch.0.is_zero() {
            self.error("deployment.watch", "must be more than 0s");
        }
        Some(Deployment {
            // No source at all: one unnamed deployment for the life of the process.
            source: sources
                .into_iter()
                .next()
                .unwrap_or(DeploymentSource::Fixed("unknown".into())),
            poll_interval,
            warmup: d.warmup.0,
            watch: d.watch.0,
        })
    }

    fn probe(&mut self, i: usize, v: Value) -> Option<ProbeConfig> {
        let path = format!("probe[{i}]");
        let Value::Object(map) = v else {
            self.error(path, "must be a table");
            return None;
        };
        let (common, specific): (serde_json::Map<_, _>, serde_json::Map<_, _>) = map
            .into_iter()
            .partition(|(k, _)| PROBE_COMMON_KEYS.contains(&k.as_str()));
        let kind = common
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_string);
        let common: Option<ProbeCommon> = self.section(&path, Value::Object(common));
        let kind = kind?;
        let spec = self.spec(&path, &kind, Value::Object(specific));
        let common = common?;
        let mut ok = spec.is_some();
        if !(1..=4).contains(&common.level) {
            self.error(format!("{path}.level"), "must be 1, 2, 3 or 4");
            ok = false;
        } else if !levels_of(&kind).contains(&common.level) {
            self.error(
                format!("{path}.level"),
                format!(
                    "a {kind} probe belongs to level {}",
                    levels_of(&kind)
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            );
            ok = false;
        }
        if !valid_name(&common.name) {
            self.error(
                format!("{path}.name"),
                format!(
                    "{:?} must be 1-64 characters of letters, digits, '_', '-' or '.'",
                    common.name
                ),
            );
            ok = false;
        }
        let interval = common.interval.0;
        if interval < Duration::from_millis(100) {
            self.error(format!("{path}.interval"), "must be at least 100ms");
            ok = false;
        }
        let timeout = common
            .timeout
            .map(|d| d.0)
            .unwrap_or_else(|| Duration::from_secs(5).min(interval));
        if timeout.is_zero() {
            self.error(format!("{path}.timeout"), "must be more than 0s");
            ok = false;
        } else if timeout > interval {
            self.error(
                format!("{path}.timeout"),
                format!(
                    "{} is longer than interval {}",
                    crate::duration::format(timeout),
                    crate::duration::format(interval)
                ),
            );
            ok = false;
        }
        let spec = spec?;
        if let Err(problems) = spec.build_shared(Context { timeout }, &self.clients) {
            for p in problems {
                self.error(format!("{path}.{}", p.key), p.message);
            }
            ok = false;
        }
        ok.then(|| ProbeConfig {
            name: common.name,
            level: common.level,
            spec,
            interval,
            timeout,
            max_latency: common.max_latency.map(|d| d.0),
            critical: common.critical,
            depends_on: common.depends_on,
        })
    }

    fn spec(&mut self, path: &str, kind: &str, v: Value) -> Option<ProbeSpec> {
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(v, &mut track);
        match ProbeSpec::deserialize_typed(kind, de) {
            Ok(Some(spec)) => Some(spec),
            Ok(None) => {
                self.error(
                    format!("{path}.type"),
                    format!(
                        "unknown probe type {kind:?}, expected one of {}",
                        PROBE_TYPES.join(", ")
                    ),
                );
                None
            }
            Err(e) => {
                let mut p = path.to_string();
                for seg in track.path().iter() {
                    use serde_path_to_error::Segment;
                    match seg {
                        Segment::Seq { index } => p.push_str(&format!("[{index}]")),
                        Segment::Map { key } => p = join(&p, key),
                        Segment::Enum { .. } | Segment::Unknown => {}
                    }
                }
                let (p, msg) = refine(p, e.to_string());
                self.error(p, msg);
                None
            }
        }
    }

    /// One `[[notify]]`: `type` first, then that type's own settings, so
    /// errors keep their key path and line.
    fn notify(&mut self, i: usize, v: Value) -> Option<NotifyConfig> {
        let path = format!("notify[{i}]");
        let Value::Object(map) = v else {
            self.error(path, "must be a table");
            return None;
        };
        let (common, specific): (serde_json::Map<_, _>, serde_json::Map<_, _>) = map
            .into_iter()
            .partition(|(k, _)| NOTIFY_COMMON_KEYS.contains(&k.as_str()));
        let kind = common
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_string);
        let common: Option<NotifyCommon> = self.section(&path, Value::Object(common));
        let specific = Value::Object(specific);
        let spec = match kind?.as_str() {
            "slack" => self.section(&path, specific).map(NotifySpec::Slack),
            "pagerduty" => self.section(&path, specific).map(NotifySpec::Pagerduty),
            "webhook" => self.section(&path, specific).map(NotifySpec::Webhook),
            other => {
                let msg = format!(
                    "unknown notifier type {other:?}, expected one of {}",
                    NOTIFY_TYPES.join(", ")
                );
                self.error(format!("{path}.type"), msg);
                None
            }
        };
        match NotifyConfig::validate(common?, spec?) {
            Ok(n) => Some(n),
            Err(problems) => {
                for (key, message) in problems {
                    self.error(join(&path, &key), message);
                }
                None
            }
        }
    }

    fn cross_check(
        &mut self,
        probes: &[ProbeConfig],
        rules: &[RuleConfig],
        written: &HashSet<String>,
    ) {
        let mut seen = HashSet::new();
        for (i, p) in probes.iter().enumerate() {
            if !seen.insert(p.name.as_str()) {
                self.error(
                    format!("probe[{i}].name"),
                    format!("duplicate probe name {:?}", p.name),
                );
            }
        }
        for (i, p) in probes.iter().enumerate() {
            for (j, dep) in p.depends_on.iter().enumerate() {
                let key = format!("probe[{i}].depends_on[{j}]");
                if *dep == p.name {
                    self.error(key, format!("probe {:?} cannot depend on itself", p.name));
                } else if !written.contains(dep) {
                    let others: Vec<&str> = probes
                        .iter()
                        .map(|q| q.name.as_str())
                        .filter(|n| *n != p.name)
                        .collect();
                    self.error(
                        key,
                        format!(
                            "no probe named {dep:?}; name one of the other probes: {}",
                            if others.is_empty() {
                                "(there is none)".to_string()
                            } else {
                                others.join(", ")
                            }
                        ),
                    );
                }
            }
        }
        let mut rule_names = HashSet::new();
        for (i, r) in rules.iter().enumerate() {
            if !rule_names.insert(r.name.as_str()) {
                self.error(
                    format!("rule[{i}].name"),
                    format!("duplicate rule name {:?}", r.name),
                );
            }
            // A probe that was written but has errors of its own is not
            // reported a second time through the rules that name it.
            if !written.contains(&r.probe) {
                self.error(
                    format!("rule[{i}].probe"),
                    format!("no probe named {:?}", r.probe),
                );
            }
            // A rule over a signal its probe never yields can never hold.
            let (Some(expr), Some(p)) = (&r.expr, probes.iter().find(|p| p.name == r.probe)) else {
                continue;
            };
            let yields = p.rule_signals();
            let mut unknown: Vec<&str> = expr
                .comparisons()
                .map(|c| c.signal.as_str())
                .filter(|s| !yields.iter().any(|y| y == s))
                .collect();
            unknown.dedup();
            for signal in unknown {
                self.error(
                    format!("rule[{i}].when"),
                    format!(
                        "probe {:?} ({}) never yields {signal:?}, so this rule could never hold; \
                         its signals are {}",
                        p.name,
                        p.type_name(),
                        yields.join(", ")
                    ),
                );
            }
        }
    }
}

impl<F: Fn(&str) -> Option<String>> crate::rollback::SectionReader for Reader<'_, F> {
    fn section<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        Reader::section(self, path, value)
    }

    fn report(&mut self, path: String, message: String) {
        self.error(path, message);
    }

    fn has_problem(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }
}

/// The levels SPEC assigns to each probe type.
fn levels_of(kind: &str) -> &'static [u8] {
    match kind {
        "http" => &[1, 2, 3, 4],
        "tcp" => &[1, 2],
        "postgres" | "redis" => &[2, 3],
        "resources" => &[2],
        "scenario" => &[3],
        "scrape" | "promql" => &[4],
        _ => &[1, 2, 3, 4],
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
}

/// Rewrites serde's messages to name the key they are about.
fn refine(path: String, msg: String) -> (String, String) {
    let quoted = |m: &str| -> Option<String> {
        let a = m.find('`')?;
        let b = m[a + 1..].find('`')?;
        Some(m[a + 1..a + 1 + b].to_string())
    };
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        if let Some(key) = quoted(rest) {
            let expected = rest
                .split_once(", expected ")
                .map(|(_, e)| format!(", expected {}", e.replace('`', "")))
                .unwrap_or_default();
            let path = if path == key || path.ends_with(&format!(".{key}")) {
                path
            } else {
                join(&path, &key)
            };
            return (path, format!("unknown key{expected}"));
        }
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        if let Some(key) = quoted(rest) {
            return (join(&path, &key), "required key is missing".into());
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e.replace('`', ""))
            .unwrap_or_default();
        let got = quoted(rest).unwrap_or_default();
        return (path, format!("unknown value {got:?}, expected {expected}"));
    }
    (path, msg.replace('`', ""))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The offsets where lines start: 0, then after every newline.
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim_end_matches('.')
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$${` stands for a literal `${`.
pub fn interpolate(s: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "unterminated ${ in string (write $${ for a literal)".to_string())?;
            let inner = &tail[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("invalid variable name {name:?} in ${{...}}"));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to allow that)"
                    ))
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Lines of the keys of a configuration, for tests and tooling.
pub fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else {
        return BTreeMap::new();
    };
    let env = |_: &str| Some(String::new());
    let mut cx = Reader {
        line_starts: line_starts(text),
        env: &env,
        lines: HashMap::new(),
        errors: Vec::new(),
        clients: Default::default(),
    };
    cx.table(doc.as_table(), "");
    cx.lines.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("[agent]\nbogus = 1", "agent.bogus: unknown key, expected one of listen, state_dir, admin_token, default_rules (line 10)"),
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

        let platforms = "railway, kubernetes, argo_rollouts, render, vercel, heroku";
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

/// A rule's `when` is parsed by the rule language (`backstop_judge::rules`);
/// its errors are the configuration's, on the rule's key.
#[cfg(test)]
mod rule_tests {
    use super::Config;

    #[test]
    fn a_bad_when_is_a_configuration_error_on_its_key() {
        let text = r#"
[service]
name = "web"

[[probe]]
name = "app"
level = 1
type = "tcp"
address = "127.0.0.1:8080"

[[rule]]
name = "ok"
probe = "app"
when = "consecutive_failures >= 3"

[[rule]]
name = "typo"
probe = "app"
when = "error_rate > x% for 5m"

[[rule]]
name = "another"
probe = "app"
when = "latency_ms > 200 or"
"#;
        let errors = Config::parse(text, |_| None).unwrap_err();
        let lines: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "rule[1].when: expected a number after \">\", found \"x%\" at column 14: error_rate > x% for 5m (line 19)",
                "rule[2].when: expected a signal name, found the end at column 20: latency_ms > 200 or (line 24)",
            ]
        );
        // Fixed, and over a signal a tcp probe yields.
        let good = text
            .replace("error_rate > x%", "latency_ms > 250")
            .replace(" or\"", "\"");
        let config = Config::parse(&good, |_| None).unwrap();
        assert_eq!(
            config.rules[1]
                .expr
                .as_ref()
                .map(|e| e.to_string())
                .as_deref(),
            Some("latency_ms > 250 for 5m")
        );
        assert!(config.rules.iter().all(|r| r.expr.is_some()));
    }
}
