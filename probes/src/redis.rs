//! `redis`: `PING` latency and what `INFO` says about memory, clients and
//! replication. With `mode = "write_read"` it sets a key of its own (with a
//! TTL, so nothing outlives a check), reads it back and deletes it.
//!
//! One connection per probe, made on the first check and kept across checks.
//! When a check fails, or the link dropped in between, the connection is
//! thrown away and the next check makes a new one: a stopped server fails
//! each check at once with what connecting ran into, and a server back up is
//! used again by the very next check.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fred::prelude::{Builder, Client, ClientLike, Config, KeysInterface, Options};
use fred::types::{ConnectHandle, Expiration};
use serde::Deserialize;

use crate::redact::{ms, scrub_password as scrub};
use crate::{redact_url, ConfigProblem, Context, ProbeError, Report, SignalInfo};

/// The signals a `redis` probe yields; `write_ms` and `read_ms` only in
/// `write_read` mode (see [`RedisConfig::signals`]).
const SIGNALS: [SignalInfo; 9] = [
    SignalInfo::fixed(
        "latency_ms",
        "milliseconds `PING` took (`ping`), or the set, get and delete together (`write_read`)",
    ),
    SignalInfo::fixed(
        "write_ms",
        "milliseconds the `SET` of a scratch key took; `write_read` mode only",
    ),
    SignalInfo::fixed(
        "read_ms",
        "milliseconds the `GET` of it took; `write_read` mode only",
    ),
    SignalInfo::fixed(
        "used_memory",
        "bytes the server uses (`INFO` `used_memory`)",
    ),
    SignalInfo::fixed(
        "maxmemory",
        "the server's `maxmemory` in bytes; 0 for no limit",
    ),
    SignalInfo::fixed(
        "memory_utilization",
        "`used_memory` / `maxmemory`, a fraction; only with a `maxmemory`",
    ),
    SignalInfo::fixed(
        "connected_clients",
        "client connections the server has open",
    ),
    SignalInfo::fixed("is_master", "1 on a master, 0 on a replica"),
    SignalInfo::fixed(
        "master_link_up",
        "on a replica: 1 while its link to the master is up, else 0",
    ),
];

/// The names only `write_read` mode yields.
const WRITE_READ_ONLY: [&str; 2] = ["write_ms", "read_ms"];

pub(crate) fn type_signals() -> Vec<SignalInfo> {
    SIGNALS.to_vec()
}

const DEFAULT_KEY_PREFIX: &str = "backstop:probe:";

/// Settings of a `redis` probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host[:port][/db]`. Required. TLS
    /// (`rediss://`), cluster, sentinel and unix-socket URLs are refused.
    pub url: String,
    /// `ping` sends `PING` and reads `INFO`; `write_read` also sets, gets and
    /// deletes a key. Default `ping`.
    #[serde(default)]
    pub mode: Mode,
    /// Prefix of the keys `write_read` writes; each key lives at most a few
    /// seconds (a TTL of twice the timeout, at least one second). Default
    /// `backstop:probe:`.
    #[serde(default)]
    pub key_prefix: Option<String>,
}

impl crate::ProbeType for RedisConfig {
    fn levels() -> &'static [u8] {
        &[2, 3]
    }
}

/// What one check does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `PING` and `INFO`.
    #[default]
    Ping,
    /// `PING`, `INFO`, then `SET` with a TTL, `GET` and `DEL`.
    WriteRead,
}

impl RedisConfig {
    /// What a check in this configuration's mode can yield.
    pub fn signals(&self) -> Vec<SignalInfo> {
        SIGNALS
            .iter()
            .filter(|s| self.mode == Mode::WriteRead || !WRITE_READ_ONLY.contains(&&*s.name))
            .cloned()
            .collect()
    }
}

/// Where the probe's connection stands between checks.
#[derive(Debug)]
enum Conn {
    /// Not connected; the next check connects.
    Idle,
    /// A connection is being made by its task. A check cancelled by its
    /// timeout leaves it so; the next check picks up where it stood.
    Connecting { client: Client, task: ConnectHandle },
    /// Connected; `task` drives the connection until it drops.
    Ready { client: Client, task: ConnectHandle },
}

impl Conn {
    fn abort(&mut self) {
        if let Conn::Connecting { task, .. } | Conn::Ready { task, .. } = self {
            task.abort();
        }
        *self = Conn::Idle;
    }
}

/// A client builder whose every command is bounded by `timeout` and sent
/// once, with no reconnection policy: a failed command says so instead of
/// being quietly tried again on a new connection, and the caller reconnects
/// on its next use. Shared with the agent's Redis fleet coordinator.
pub fn one_shot_builder(config: Config, timeout: Duration) -> Builder {
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            c.max_command_attempts = 1;
            c.tcp.nodelay = Some(true);
        })
        .with_performance_config(|p| p.default_command_timeout = timeout);
    builder
}

pub struct RedisProbe {
    /// Makes a fresh client for each connection, so no state of a broken
    /// one carries over.
    /// Boxed: it is large, and every probe type shares one enum.
    builder: Box<Builder>,
    conn: tokio::sync::Mutex<Conn>,
    /// The URL with its password hidden, for messages.
    shown: String,
    /// Hidden from every message, whatever the client says.
    password: Option<String>,
    timeout: Duration,
    /// `write_read`: the key prefix; `None` in `ping` mode.
    key_prefix: Option<String>,
}

impl std::fmt::Debug for RedisProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProbe")
            .field("url", &self.shown)
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisProbe {
    pub fn new(cfg: &RedisConfig, ctx: Context) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let timeout = ctx.timeout.max(Duration::from_millis(10));
        let shown = redact_url(&cfg.url);
        let parsed = url::Url::parse(&cfg.url).ok();
        let password = crate::redact::url_password(&cfg.url).filter(|p| !p.is_empty());
        let config = match parsed.as_ref().map(|u| u.scheme()) {
            None => {
                problems.push(ConfigProblem::new(
                    "url",
                    format!("invalid URL {shown:?}: expected redis://[:password@]host[:port][/db]"),
                ));
                None
            }
            Some("redis" | "valkey") => match Config::from_url_centralized(&cfg.url) {
                Ok(c) => Some(c),
                Err(e) => {
                    problems.push(ConfigProblem::new(
                        "url",
                        scrub(
                            &format!("invalid URL {shown:?}: {}", e.details()),
                            password.as_deref(),
                        ),
                    ));
                    None
                }
            },
            Some(tls @ ("rediss" | "valkeys")) => {
                problems.push(ConfigProblem::new(
                    "url",
                    format!(
                        "{tls}:// (TLS) is not supported: the redis probe connects without TLS; \
                         use redis:// over a trusted network"
                    ),
                ));
                None
            }
            Some(other) => {
                problems.push(ConfigProblem::new(
                    "url",
                    format!(
                        "scheme {other:?} is not supported: use redis://host:port/db \
                         (cluster, sentinel and unix-socket URLs are not)"
                    ),
                ));
                None
            }
        };
        let key_prefix = match cfg.mode {
            Mode::Ping => {
                if cfg.key_prefix.is_some() {
                    problems.push(ConfigProblem::new(
                        "key_prefix",
                        "key_prefix is only used with mode = \"write_read\"",
                    ));
                }
                None
            }
            Mode::WriteRead => {
                let prefix = cfg.key_prefix.as_deref().unwrap_or(DEFAULT_KEY_PREFIX);
                if let Err(message) = validate_prefix(prefix) {
                    problems.push(ConfigProblem::new("key_prefix", message));
                }
                Some(prefix.to_string())
            }
        };
        let (Some(config), true) = (config, problems.is_empty()) else {
            return Err(problems);
        };
        let builder = one_shot_builder(config, timeout);
        // No reconnection policy: the probe reconnects on its next check
        // (see `connect`), which keeps every check bounded and its error
        // about this attempt, not an earlier one. Building a client touches
        // nothing; this one proves the settings are accepted.
        if let Err(e) = builder.build() {
            return Err(vec![ConfigProblem::new(
                "url",
                scrub(&format!("cannot build client: {e}"), password.as_deref()),
            )]);
        }
        Ok(Self {
            builder: Box::new(builder),
            conn: tokio::sync::Mutex::new(Conn::Idle),
            shown,
            password,
            timeout,
            key_prefix,
        })
    }

    pub async fn check(&self) -> Result<Report, ProbeError> {
        match tokio::time::timeout(self.timeout, self.run()).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::unhealthy(format!(
                "no answer from {} within {:?}",
                self.shown, self.timeout
            ))),
        }
    }

    async fn run(&self) -> Result<Report, ProbeError> {
        let client = self.connect().await?;
        // Unless the check ends well, the connection is dropped and the next
        // check makes a new one; this also covers a check cancelled by its
        // timeout in the middle of a command.
        let mut keep = KeepOnSuccess {
            conn: &self.conn,
            ok: false,
        };
        // Send each command once and never wait past the timeout.
        let client = client.with_options(&Options {
            fail_fast: true,
            max_attempts: Some(1),
            timeout: Some(self.timeout),
            ..Default::default()
        });
        let mut report = Report::new();
        let start = Instant::now();
        let pong: Result<String, _> = client.ping(None).await;
        if let Err(e) = pong {
            return Err(self.fail("PING failed", e, report));
        }
        let ping_ms = ms(start.elapsed());
        report.push("latency_ms", ping_ms);

        match client.info::<String>(None).await {
            Ok(text) => read_info(&parse_info(&text), &mut report),
            Err(e) => return Err(self.fail("INFO failed", e, report)),
        }

        if let Some(prefix) = &self.key_prefix {
            let key = format!("{prefix}{:032x}", rand::random::<u128>());
            let token = format!("{:016x}", rand::random::<u64>());
            let ttl = ttl(self.timeout);
            let start = Instant::now();
            let set: Result<(), _> = client
                .set(
                    key.as_str(),
                    token.as_str(),
                    Some(Expiration::PX(ttl.as_millis() as i64)),
                    None,
                    false,
                )
                .await;
            if let Err(e) = set {
                return Err(self.fail("SET failed", e, report));
            }
            let written = start.elapsed();
            report.push("write_ms", ms(written));
            let got: Result<Option<String>, _> = client.get(key.as_str()).await;
            report.push("read_ms", ms(start.elapsed() - written));
            let got = match got {
                Ok(v) => v,
                Err(e) => return Err(self.fail("GET failed", e, report)),
            };
            // The TTL removes the key if this never runs.
            let deleted: Result<i64, _> = client.del(key.as_str()).await;
            if let Err(e) = deleted {
                return Err(self.fail("DEL failed", e, report));
            }
            report.push("latency_ms", ms(start.elapsed()));
            if got.as_deref() != Some(token.as_str()) {
                return Err(ProbeError::unhealthy_with(
                    format!("{}: the value just set was not read back", self.shown),
                    report,
                ));
            }
        }
        keep.ok = true;
        Ok(report)
    }

    /// Returns a connected client, connecting if needed.
    async fn connect(&self) -> Result<Client, ProbeError> {
        let mut conn = self.conn.lock().await;
        let mut started = false;
        loop {
            match &mut *conn {
                Conn::Ready { client, task } => {
                    if !task.is_finished() && client.is_connected() {
                        return Ok(client.clone());
                    }
                    // The link dropped since the last check.
                    conn.abort();
                }
                Conn::Idle => {
                    let client = self.builder.build().map_err(|e| {
                        ProbeError::cannot_run(self.scrub(&format!("cannot build client: {e}")))
                    })?;
                    let task = client.connect();
                    *conn = Conn::Connecting { client, task };
                    started = true;
                }
                Conn::Connecting { client, task } => {
                    if client.is_connected() {
                        let Conn::Connecting { client, task } =
                            std::mem::replace(&mut *conn, Conn::Idle)
                        else {
                            unreachable!("matched above")
                        };
                        *conn = Conn::Ready { client, task };
                        continue;
                    }
                    if task.is_finished() && !started {
                        // An attempt a timed-out check left behind that has
                        // failed since is old news: try again instead.
                        conn.abort();
                        continue;
                    }
                    let ended = tokio::select! {
                        ended = &mut *task => Some(ended),
                        () = connected(client) => None,
                    };
                    if let Some(ended) = ended {
                        *conn = Conn::Idle;
                        return Err(match ended {
                            Ok(Err(e)) => self.classify("cannot connect", &e),
                            Ok(Ok(())) => ProbeError::unhealthy(format!(
                                "{}: cannot connect: the connection closed",
                                self.shown
                            )),
                            Err(e) => ProbeError::cannot_run(format!(
                                "{}: the connection task failed: {e}",
                                self.shown
                            )),
                        });
                    }
                }
            }
        }
    }

    fn fail(&self, what: &str, e: fred::error::Error, report: Report) -> ProbeError {
        match self.classify(what, &e) {
            ProbeError::Unhealthy { message, .. } => ProbeError::unhealthy_with(message, report),
            other => other,
        }
    }

    fn scrub(&self, text: &str) -> String {
        scrub(text, self.password.as_deref())
    }

    /// The agent's own credentials, rights or settings being wrong is
    /// [`ProbeError::CannotRun`]; anything else is the target's.
    fn classify(&self, what: &str, e: &fred::error::Error) -> ProbeError {
        let message = scrub(
            &format!("{}: {what}: {}", self.shown, details(e)),
            self.password.as_deref(),
        );
        if agent_fault(e) {
            ProbeError::cannot_run(message)
        } else {
            ProbeError::unhealthy(message)
        }
    }
}

/// Drops the connection when a check did not end well.
struct KeepOnSuccess<'a> {
    conn: &'a tokio::sync::Mutex<Conn>,
    ok: bool,
}

impl Drop for KeepOnSuccess<'_> {
    fn drop(&mut self) {
        if !self.ok {
            // Checks of one probe never overlap, so the lock is free.
            if let Ok(mut conn) = self.conn.try_lock() {
                conn.abort();
            }
        }
    }
}

impl Drop for RedisProbe {
    fn drop(&mut self) {
        // The connection task would otherwise outlive the probe.
        self.conn.get_mut().abort();
    }
}

/// Resolves once the client is connected. The client announces it only to
/// listeners that were there before, so it is polled instead.
async fn connected(client: &Client) {
    while !client.is_connected() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn agent_fault(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    match e.kind() {
        ErrorKind::Auth
        | ErrorKind::Config
        | ErrorKind::Url
        | ErrorKind::InvalidArgument
        | ErrorKind::InvalidCommand => true,
        _ => {
            let details = e.details();
            // ACL denies a command to the agent's user; the agent sends a
            // password the server does not expect.
            details.starts_with("NOPERM") || details.contains("without any password configured")
        }
    }
}

/// What an error says, with an I/O error's debug form (which is how the
/// client words it) reduced to its message.
fn details(e: &fred::error::Error) -> String {
    let text = e.details();
    if *e.kind() != fred::error::ErrorKind::IO {
        return text.to_string();
    }
    if let Some(start) = text.find("message: \"") {
        let rest = &text[start + 10..];
        if let Some(end) = rest.find('"') {
            return rest[..end].to_string();
        }
    }
    text.to_string()
}

/// `INFO` as a map of `field` to `value`, sections flattened.
fn parse_info(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .collect()
}

fn read_info(info: &HashMap<&str, &str>, report: &mut Report) {
    let num = |k: &str| info.get(k).and_then(|v| v.trim().parse::<f64>().ok());
    let used = num("used_memory");
    let max = num("maxmemory");
    if let Some(u) = used {
        report.push("used_memory", u);
    }
    if let Some(m) = max {
        report.push("maxmemory", m);
    }
    if let (Some(u), Some(m)) = (used, max) {
        if m > 0.0 {
            report.push("memory_utilization", u / m);
        }
    }
    if let Some(c) = num("connected_clients") {
        report.push("connected_clients", c);
    }
    match info.get("role").copied() {
        Some("master") => report.push("is_master", 1.0),
        Some(_) => {
            report.push("is_master", 0.0);
            let up = info.get("master_link_status").copied() == Some("up");
            report.push("master_link_up", if up { 1.0 } else { 0.0 });
        }
        None => {}
    }
}

fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty: the probe writes only under its own prefix".into());
    }
    if prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '?' | '[' | ']' | '\\'))
    {
        return Err(format!(
            "{prefix:?} has whitespace, control or glob characters (* ? [ ] \\); \
             keep it matchable with KEYS {prefix}*"
        ));
    }
    Ok(())
}

/// How long a key written by `write_read` lives: long enough to be read back
/// within the check, short enough that an interrupted check leaves nothing
/// for long.
fn ttl(timeout: Duration) -> Duration {
    (timeout * 2).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            timeout: Duration::from_secs(1),
        }
    }

    fn config(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            mode: Mode::Ping,
            key_prefix: None,
        }
    }

    #[test]
    fn builds_without_a_runtime_or_the_network() {
        // Nothing listens on port 1, and no runtime runs here.
        let probe = RedisProbe::new(&config("redis://:hunter2@127.0.0.1:1/0"), ctx());
        let shown = format!("{:?}", probe.unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn refuses_urls_it_cannot_honour_without_echoing_the_password() {
        let cases = [
            "rediss://:hunter2@cache:6380/0",
            "redis-cluster://:hunter2@cache:6379",
            "redis+unix://:hunter2@/run/redis.sock",
            "http://:hunter2@cache:6379",
            "redis://:hunter2@cache:6379/0/extra",
            "redis://:hunter2@cache:6379/notadb",
            "not a url",
        ];
        for url in cases {
            let problems = RedisProbe::new(&config(url), ctx()).unwrap_err();
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert_eq!(problems[0].key, "url", "{url}");
            assert!(
                !problems[0].message.contains("hunter2"),
                "{url}: {problems:?}"
            );
        }
    }

    #[test]
    fn validates_the_key_prefix_of_write_read() {
        let cases = [
            ("backstop:probe:", true),
            ("svc/health-", true),
            ("", false),
            ("has space", false),
            ("glob*", false),
            ("new\nline", false),
        ];
        for (prefix, ok) in cases {
            let mut cfg = config("redis://cache");
            cfg.mode = Mode::WriteRead;
            cfg.key_prefix = Some(prefix.into());
            let result = RedisProbe::new(&cfg, ctx());
            assert_eq!(result.is_ok(), ok, "{prefix:?}");
            if let Err(problems) = result {
                assert_eq!(problems[0].key, "key_prefix");
            }
        }
        let mut ping = config("redis://cache");
        ping.key_prefix = Some("x:".into());
        assert_eq!(
            RedisProbe::new(&ping, ctx()).unwrap_err()[0].key,
            "key_prefix"
        );
    }

    #[test]
    fn reads_memory_clients_and_role_from_info() {
        let master = "# Server\r\nredis_version:7.0.15\r\n\r\n# Clients\r\nconnected_clients:7\r\n\
                      # Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:4194304\r\n\
                      # Replication\r\nrole:master\r\nconnected_slaves:0\r\n";
        let mut report = Report::new();
        read_info(&parse_info(master), &mut report);
        assert_eq!(
            report
                .signals
                .iter()
                .map(|(n, v)| (&**n, *v))
                .collect::<Vec<_>>(),
            vec![
                ("used_memory", 1048576.0),
                ("maxmemory", 4194304.0),
                ("memory_utilization", 0.25),
                ("connected_clients", 7.0),
                ("is_master", 1.0),
            ]
        );

        let replica = "used_memory:100\nmaxmemory:0\nconnected_clients:2\n\
                       role:slave\nmaster_host:10.0.0.1\nmaster_link_status:down\n";
        let mut report = Report::new();
        read_info(&parse_info(replica), &mut report);
        assert_eq!(
            report.get("memory_utilization"),
            None,
            "no maxmemory, no ratio"
        );
        assert_eq!(report.get("is_master"), Some(0.0));
        assert_eq!(report.get("master_link_up"), Some(0.0));

        let mut report = Report::new();
        read_info(
            &parse_info("role:slave\nmaster_link_status:up\n"),
            &mut report,
        );
        assert_eq!(report.get("master_link_up"), Some(1.0));
    }

    /// `INFO` of a replica with a memory limit: every field the probe reads.
    const REPLICA_INFO: &str = "# Server\r\nredis_version:7.2.4\r\n# Clients\r\n\
        connected_clients:3\r\n# Memory\r\nused_memory:1000\r\nmaxmemory:4000\r\n\
        # Replication\r\nrole:slave\r\nmaster_link_status:up\r\n";

    /// A stand-in Redis server on loopback speaking just enough RESP2 for
    /// the probe: `PING`, `INFO`, `SET`, `GET`, `DEL`, and `OK` to anything
    /// else the client sends while connecting.
    async fn fake_redis() -> std::net::SocketAddr {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (read, mut write) = conn.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let mut stored: Option<String> = None;
                    // Every command is an array of bulk strings.
                    while let Ok(Some(head)) = lines.next_line().await {
                        let n: usize = head.trim_start_matches('*').parse().unwrap_or(0);
                        let mut args = Vec::new();
                        for _ in 0..n {
                            let _len = lines.next_line().await;
                            args.push(lines.next_line().await.ok().flatten().unwrap_or_default());
                        }
                        let bulk = |s: &str| format!("${}\r\n{s}\r\n", s.len());
                        let reply = match args.first().map(|a| a.to_ascii_uppercase()).as_deref() {
                            Some("PING") => "+PONG\r\n".to_string(),
                            Some("INFO") => bulk(REPLICA_INFO),
                            Some("SET") => {
                                stored = args.get(2).cloned();
                                "+OK\r\n".into()
                            }
                            Some("GET") => match &stored {
                                Some(v) => bulk(v),
                                None => "$-1\r\n".into(),
                            },
                            Some("DEL") => ":1\r\n".into(),
                            _ => "+OK\r\n".into(),
                        };
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn every_signal_a_check_reports_is_declared() {
        let addr = fake_redis().await;
        for (mode, count) in [(Mode::Ping, 7), (Mode::WriteRead, 9)] {
            let mut cfg = config(&format!("redis://{addr}"));
            cfg.mode = mode;
            let report = RedisProbe::new(&cfg, ctx()).unwrap().check().await.unwrap();
            assert_eq!(
                crate::testing::assert_declared(&report, &cfg.signals()),
                count,
                "{mode:?}: {report:?}"
            );
        }
        // A master's INFO says the rest.
        let mut report = Report::new();
        read_info(&parse_info("role:master\n"), &mut report);
        crate::testing::assert_declared(&report, &config("redis://h").signals());
    }

    #[test]
    fn blames_the_agent_for_its_credentials_and_rights_only() {
        use fred::error::{Error, ErrorKind};
        let cases = [
            (
                ErrorKind::Auth,
                "WRONGPASS invalid username-password pair",
                true,
            ),
            (
                ErrorKind::Unknown,
                "NOPERM this user has no permissions",
                true,
            ),
            (
                ErrorKind::Unknown,
                "ERR AUTH <password> called without any password configured for the default user",
                true,
            ),
            (ErrorKind::IO, "Connection refused (os error 111)", false),
            (ErrorKind::Timeout, "Request timed out.", false),
            (
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
                false,
            ),
            (
                ErrorKind::Unknown,
                "OOM command not allowed when used memory > 'maxmemory'",
                false,
            ),
            (
                ErrorKind::Canceled,
                "Connection closed unexpectedly.",
                false,
            ),
        ];
        for (kind, details, agent) in cases {
            assert_eq!(agent_fault(&Error::new(kind, details)), agent, "{details}");
        }
    }

    #[test]
    fn words_io_errors_as_their_message() {
        use fred::error::{Error, ErrorKind};
        let io = Error::new(
            ErrorKind::IO,
            r#"Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }"#,
        );
        assert_eq!(details(&io), "Connection refused");
        let server = Error::new(ErrorKind::Unknown, r#"ERR message: "x""#);
        assert_eq!(details(&server), r#"ERR message: "x""#);
    }

    #[test]
    fn keeps_keys_alive_only_briefly() {
        assert_eq!(ttl(Duration::from_millis(200)), Duration::from_secs(1));
        assert_eq!(ttl(Duration::from_secs(5)), Duration::from_secs(10));
    }
}
