//! Fleet coordination through Redis (`[fleet] redis = "redis://…"`).
//!
//! Every key of a service lives under `backstop:{service}:`, the service
//! being a hash tag, so a cluster would keep them in one slot:
//!
//! - `…:reports`, a hash of replica → its JSON [`Heartbeat`], and `…:live`, a
//!   sorted set of replica → the millisecond its heartbeat expires, by the
//!   Redis server's clock (`TIME` inside the scripts), so the replicas'
//!   clocks never matter. Both keys expire when the last heartbeat does;
//!   `live` prunes the members that expired.
//! - `…:samples`, a hash of replica → `"<published ms>:<JSON samples>"` (the
//!   live baseline, beside the reports so reading the votes stays light),
//!   and `…:sampled`, a sorted set of replica → the millisecond they expire;
//!   kept and pruned as `…:reports` and `…:live` are.
//! - `…:fence`, the counter the fencing tokens come from (`INCR`): strictly
//!   increasing per service, never expiring. It starts at the server's
//!   clock in milliseconds, so a server that lost its data (restarted
//!   without persistence) still hands out tokens above the earlier ones.
//! - `…:lease:<deployment>`, `"<token>:<holder>"`, set only when absent and
//!   with a TTL; renewed, released and fenced against by comparing the exact
//!   value, each inside one script.
//! - `…:rollback:<deployment>`, the JSON [`RollbackRecord`], kept 30 days.
//!
//! Each method is one script run (`EVALSHA`, falling back to `EVAL` when
//! the server lost its script cache, as after a restart), so every check and
//! the write it guards are one atomic step.
//!
//! One connection, made by the first call and kept. Whenever the link
//! drops, or a call fails on it, the next call makes a new one: while the
//! server is down each call fails with what connecting ran into, and once it
//! is back the very next call works. Every call, connecting included, is
//! bounded by the timeout given to [`RedisFleet::connect`]; every error is
//! one line without the password.
//!
//! A Redis user restricted by ACL needs the keys `~backstop:*` and the
//! commands of [`ACL_COMMANDS`] (tested).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail};
use backstop_probes::redact::{scrub_password, url_password};
use backstop_probes::redact_url;
use fred::clients::WithOptions;
use fred::prelude::{Builder, Client, ClientLike, Config, Options};
use fred::types::{ClusterHash, ConnectHandle, CustomCommand, Value};

use super::protocol::{Heartbeat, Lease, PeerSamples};
use crate::store::RollbackRecord;
use backstop_judge::live::LiveSummary;

/// The commands a Redis user restricted by ACL needs (with the keys
/// `~backstop:*`): the ones sent, and the ones the scripts run.
pub const ACL_COMMANDS: &str = "ping select get evalsha eval script|load time hset hmget hdel \
     zadd zrange zrangebyscore zrem pexpire pexpireat exists incr set del";

/// How long a fleet rollback record is kept after it was last written.
const RECORD_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The store's clock in Unix milliseconds, as the first lines of a script.
const NOW: &str = "local t = redis.call('TIME')\n\
                   local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// A Lua script and its SHA1 once the server told it (the same on every
/// server, so it is learnt once per process).
struct Script {
    name: &'static str,
    body: &'static str,
    sha: OnceLock<String>,
}

impl Script {
    const fn new(name: &'static str, body: &'static str) -> Self {
        Self {
            name,
            body,
            sha: OnceLock::new(),
        }
    }

    fn source(&self) -> String {
        format!("{NOW}{}", self.body)
    }
}

/// KEYS reports, live; ARGV replica, report JSON, expiry ms.
static PUBLISH: Script = Script::new(
    "publish",
    r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
-- Both keys go when the last heartbeat expires.
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
redis.call('PEXPIREAT', KEYS[2], last[2])
return now
"#,
);

/// KEYS reports, live. The JSON reports of the live replicas; prunes up to
/// 500 expired ones on the way.
static LIVE: Script = Script::new(
    "live",
    r#"
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 500)
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[1], unpack(dead))
end
local alive = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. string.format('%d', now), '+inf')
local out = {}
for i = 1, #alive, 500 do
  local part = redis.call('HMGET', KEYS[1], unpack(alive, i, math.min(i + 499, #alive)))
  for j = 1, #part do
    if part[j] then out[#out + 1] = part[j] end
  end
end
return out
"#,
);

/// KEYS reports, live, samples, sampled; ARGV replica.
static LEAVE: Script = Script::new(
    "leave",
    r#"
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return now
"#,
);

/// KEYS samples, sampled; ARGV replica, samples JSON, expiry ms. Kept as
/// `"<now>:<JSON>"`, so a reader knows their age by the server's clock.
static PUBLISH_SAMPLES: Script = Script::new(
    "publish_samples",
    r#"
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now) .. ':' .. ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
redis.call('PEXPIREAT', KEYS[2], last[2])
return now
"#,
);

/// KEYS samples, sampled; ARGV limit. The server's clock, then each of the
/// `limit` replicas whose samples expire last (the freshest) and its
/// `"<published>:<JSON>"`; prunes up to 500 expired ones on the way.
static LIVE_SAMPLES: Script = Script::new(
    "live_samples",
    r#"
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 500)
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[1], unpack(dead))
end
local all = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. string.format('%d', now), '+inf')
local alive = {}
for i = math.max(1, #all - tonumber(ARGV[1]) + 1), #all do alive[#alive + 1] = all[i] end
local out = {string.format('%d', now)}
for i = 1, #alive, 500 do
  local part = redis.call('HMGET', KEYS[1], unpack(alive, i, math.min(i + 499, #alive)))
  for j = 1, #part do
    if part[j] then
      out[#out + 1] = alive[i + j - 1]
      out[#out + 1] = part[j]
    end
  end
end
return out
"#,
);

/// KEYS lease, fence; ARGV holder, ttl ms. `{token, expires_at_ms}`, or nil
/// while the lease is held.
static ACQUIRE: Script = Script::new(
    "acquire",
    r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
-- A counter that is missing (a new service, or a server that lost its
-- data) starts at the clock in ms, above every token handed out before.
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], string.format('%d', now))
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], string.format('%d', token) .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2])
return {token, now + tonumber(ARGV[2])}
"#,
);

/// KEYS lease; ARGV value, ttl ms. The new expiry, or nil when lost.
static RENEW: Script = Script::new(
    "renew",
    r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return now + tonumber(ARGV[2])
"#,
);

/// KEYS lease; ARGV value. 1 when deleted, 0 when it was not this lease.
static RELEASE: Script = Script::new(
    "release",
    r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"#,
);

/// KEYS lease, record; ARGV lease value, record JSON, retention ms. 1 when
/// written, 0 when the lease is not held with this value any more.
static RECORD: Script = Script::new(
    "record",
    r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"#,
);

/// The connection in use, and which one it is (so a call that failed on an
/// older one does not throw away a newer one).
struct Link {
    client: Client,
    task: ConnectHandle,
    generation: u64,
}

#[derive(Default)]
struct Conn {
    link: Option<Link>,
    made: u64,
}

pub struct RedisFleet {
    /// Makes a fresh client for each connection. Boxed: it is large.
    builder: Box<Builder>,
    conn: tokio::sync::Mutex<Conn>,
    /// The URL with its password hidden, for messages.
    shown: String,
    /// Hidden from every message, whatever the client says.
    password: Option<String>,
    timeout: Duration,
}

impl RedisFleet {
    /// Checks the URL and connects, so a wrong address or password stops
    /// the agent at start with a clear message. `timeout` bounds connecting
    /// and every later call.
    pub async fn connect(
        url: &crate::secret::Secret,
        timeout: Duration,
    ) -> anyhow::Result<RedisFleet> {
        let fleet = Self::new(url, timeout)?;
        fleet
            .run("connect", async |client| client.ping::<String>(None).await)
            .await?;
        Ok(fleet)
    }

    /// The client without a connection yet: the first call connects. A URL
    /// it cannot use is still an error.
    pub fn unconnected(
        url: &crate::secret::Secret,
        timeout: Duration,
    ) -> anyhow::Result<RedisFleet> {
        Self::new(url, timeout)
    }

    fn new(url: &crate::secret::Secret, timeout: Duration) -> anyhow::Result<RedisFleet> {
        let raw = url.expose();
        let shown = redact_url(raw);
        let password = url_password(raw).filter(|p| !p.is_empty());
        let scheme = url::Url::parse(raw).ok().map(|u| u.scheme().to_string());
        let config = match scheme.as_deref() {
            Some("redis" | "valkey") => Config::from_url_centralized(raw).map_err(|e| {
                anyhow!(scrub_password(
                    &format!("[fleet] redis: invalid URL {shown:?}: {}", e.details()),
                    password.as_deref()
                ))
            })?,
            Some(other) => bail!(
                "[fleet] redis: scheme {other:?} is not supported: use redis://[:password@]host[:port][/db] \
                 (TLS, cluster, sentinel and unix-socket URLs are not)"
            ),
            None => bail!(
                "[fleet] redis: invalid URL {shown:?}: expected redis://[:password@]host[:port][/db]"
            ),
        };
        let timeout = timeout.max(Duration::from_millis(10));
        // A write that may or may not have happened is reported, not
        // quietly repeated; the next call reconnects (see `client`).
        let builder = backstop_probes::redis::one_shot_builder(config, timeout);
        builder.build().map_err(|e| {
            anyhow!(scrub_password(
                &format!("[fleet] redis {shown}: cannot build client: {e}"),
                password.as_deref()
            ))
        })?;
        Ok(Self {
            builder: Box::new(builder),
            conn: tokio::sync::Mutex::new(Conn::default()),
            shown,
            password,
            timeout,
        })
    }

    pub fn describe(&self) -> String {
        self.shown.clone()
    }

    pub async fn publish(
        &self,
        service: &str,
        report: &Heartbeat,
        expiry: Duration,
    ) -> anyhow::Result<()> {
        let json = serde_json::to_string(report)?;
        let keys = vec![key(service, "reports"), key(service, "live")];
        let args = vec![
            Value::from(report.replica.clone()),
            Value::from(json),
            Value::from(millis(expiry)),
        ];
        self.eval(&PUBLISH, keys, args).await.map(|_| ())
    }

    pub async fn live(&self, service: &str, deployment: &str) -> anyhow::Result<Vec<Heartbeat>> {
        let keys = vec![key(service, "reports"), key(service, "live")];
        let out = self.eval(&LIVE, keys, Vec::new()).await?;
        let mut reports = Vec::new();
        for item in expect_array(&self.shown, "live", out)? {
            let text = item
                .as_str()
                .ok_or_else(|| anyhow!("{}: live: a report is not text", self.shown))?;
            let report: Heartbeat = serde_json::from_str(&text).map_err(|e| {
                anyhow!(
                    "{}: live: a report of service {service:?} is not readable: {e}",
                    self.shown
                )
            })?;
            if report.deployment == deployment {
                reports.push(report);
            }
        }
        reports.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(reports)
    }

    pub async fn publish_samples(
        &self,
        service: &str,
        replica: &str,
        summary: &LiveSummary,
        expiry: Duration,
    ) -> anyhow::Result<()> {
        let json = serde_json::to_string(summary)?;
        let keys = vec![key(service, "samples"), key(service, "sampled")];
        let args = vec![
            Value::from(replica.to_string()),
            Value::from(json),
            Value::from(millis(expiry)),
        ];
        self.eval(&PUBLISH_SAMPLES, keys, args).await.map(|_| ())
    }

    pub async fn live_samples(
        &self,
        service: &str,
        deployment: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<PeerSamples>> {
        let keys = vec![key(service, "samples"), key(service, "sampled")];
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let out = self
            .eval(&LIVE_SAMPLES, keys, vec![Value::from(limit)])
            .await?;
        let bad = |what: &str| anyhow!("{}: live_samples: {what}", self.shown);
        let mut items = expect_array(&self.shown, "live_samples", out)?.into_iter();
        let now: i64 = items
            .next()
            .and_then(|v| v.as_str()?.parse().ok())
            .ok_or_else(|| bad("no clock in the answer"))?;
        let mut peers = Vec::new();
        while let (Some(name), Some(item)) = (items.next(), items.next()) {
            let replica = name.as_str().ok_or_else(|| bad("a replica is not text"))?;
            let text = item.as_str().ok_or_else(|| bad("an entry is not text"))?;
            let (at, json) = text
                .split_once(':')
                .ok_or_else(|| bad("an entry has no time"))?;
            let at: i64 = at
                .parse()
                .map_err(|_| bad("an entry's time is not a number"))?;
            let summary: LiveSummary = serde_json::from_str(json).map_err(|e| {
                bad(&format!(
                    "the samples of replica {replica:?} are not readable: {e}"
                ))
            })?;
            if summary.deployment == deployment {
                peers.push(PeerSamples {
                    replica: replica.to_string(),
                    age: Duration::from_millis(now.saturating_sub(at).max(0) as u64),
                    summary,
                });
            }
        }
        peers.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(peers)
    }

    pub async fn leave(&self, service: &str, replica: &str) -> anyhow::Result<()> {
        let keys = vec![
            key(service, "reports"),
            key(service, "live"),
            key(service, "samples"),
            key(service, "sampled"),
        ];
        self.eval(&LEAVE, keys, vec![Value::from(replica.to_string())])
            .await
            .map(|_| ())
    }

    pub async fn acquire(
        &self,
        service: &str,
        deployment: &str,
        holder: &str,
        ttl: Duration,
    ) -> anyhow::Result<Option<Lease>> {
        let keys = vec![lease_key(service, deployment), key(service, "fence")];
        let args = vec![Value::from(holder.to_string()), Value::from(millis(ttl))];
        let out = self.eval(&ACQUIRE, keys, args).await?;
        if out.is_null() {
            return Ok(None);
        }
        let parts = expect_array(&self.shown, "acquire", out)?;
        let (Some(token), Some(expires)) = (
            parts.first().and_then(Value::as_i64),
            parts.get(1).and_then(Value::as_i64),
        ) else {
            bail!("{}: acquire: unexpected answer {parts:?}", self.shown);
        };
        Ok(Some(Lease {
            deployment: deployment.to_string(),
            holder: holder.to_string(),
            token,
            expires_at_ms: expires.max(0) as u64,
        }))
    }

    pub async fn renew(
        &self,
        service: &str,
        lease: &mut Lease,
        ttl: Duration,
    ) -> anyhow::Result<bool> {
        let keys = vec![lease_key(service, &lease.deployment)];
        let args = vec![Value::from(lease_value(lease)), Value::from(millis(ttl))];
        let out = self.eval(&RENEW, keys, args).await?;
        if out.is_null() {
            return Ok(false);
        }
        let expires = out
            .as_i64()
            .ok_or_else(|| anyhow!("{}: renew: unexpected answer {out:?}", self.shown))?;
        lease.expires_at_ms = expires.max(0) as u64;
        Ok(true)
    }

    pub async fn release(&self, service: &str, lease: &Lease) -> anyhow::Result<()> {
        let keys = vec![lease_key(service, &lease.deployment)];
        self.eval(&RELEASE, keys, vec![Value::from(lease_value(lease))])
            .await
            .map(|_| ())
    }

    pub async fn record(
        &self,
        service: &str,
        lease: &Lease,
        rec: &RollbackRecord,
    ) -> anyhow::Result<bool> {
        if rec.deployment != lease.deployment {
            bail!(
                "{}: record: the record of deployment {:?} cannot be written under the lease of {:?}",
                self.shown,
                rec.deployment,
                lease.deployment
            );
        }
        let json = serde_json::to_string(rec)?;
        let keys = vec![
            lease_key(service, &lease.deployment),
            record_key(service, &rec.deployment),
        ];
        let args = vec![
            Value::from(lease_value(lease)),
            Value::from(json),
            Value::from(millis(RECORD_RETENTION)),
        ];
        let out = self.eval(&RECORD, keys, args).await?;
        match out.as_i64() {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => bail!("{}: record: unexpected answer {out:?}", self.shown),
        }
    }

    pub async fn outcome(
        &self,
        service: &str,
        deployment: &str,
    ) -> anyhow::Result<Option<RollbackRecord>> {
        let k = record_key(service, deployment);
        let out = self
            .run("outcome", async |client| {
                client
                    .custom::<Value, Value>(command("GET"), vec![Value::from(k)])
                    .await
            })
            .await?;
        if out.is_null() {
            return Ok(None);
        }
        let text = out
            .as_str()
            .ok_or_else(|| anyhow!("{}: outcome: the record is not text", self.shown))?;
        serde_json::from_str(&text).map(Some).map_err(|e| {
            anyhow!(
                "{}: outcome: the rollback record of deployment {deployment:?} is not readable: {e}",
                self.shown
            )
        })
    }

    /// Runs a script, loading it first when its SHA is not known yet and
    /// again when the server forgot it.
    async fn eval(
        &self,
        script: &'static Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> anyhow::Result<Value> {
        self.run(script.name, async |client| {
            let sha = match script.sha.get() {
                Some(sha) => sha.clone(),
                None => {
                    let sha: String = client
                        .custom(
                            command("SCRIPT"),
                            vec![Value::from("LOAD"), Value::from(script.source())],
                        )
                        .await?;
                    let _ = script.sha.set(sha.clone());
                    sha
                }
            };
            let mut call = Vec::with_capacity(2 + keys.len() + args.len());
            call.push(Value::from(sha));
            call.push(Value::from(keys.len() as i64));
            call.extend(keys.iter().cloned().map(Value::from));
            call.extend(args.iter().cloned());
            match client
                .custom::<Value, Value>(command("EVALSHA"), call.clone())
                .await
            {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    call[0] = Value::from(script.source());
                    client.custom(command("EVAL"), call).await
                }
                other => other,
            }
        })
        .await
    }

    /// Runs `call` on a connected client within the timeout; drops the
    /// connection when the call failed on it or ran out of time.
    async fn run<T, F>(&self, op: &str, call: F) -> anyhow::Result<T>
    where
        F: AsyncFnOnce(&WithOptions<Client>) -> Result<T, fred::error::Error>,
    {
        // Which connection the call went out on, once it has one (0: none;
        // connections count from 1).
        let used = AtomicU64::new(0);
        let attempt = async {
            let (client, generation) = self.client().await?;
            used.store(generation, Ordering::Relaxed);
            let client = client.with_options(&Options {
                fail_fast: true,
                max_attempts: Some(1),
                timeout: Some(self.timeout),
                ..Default::default()
            });
            call(&client).await.map_err(|e| {
                if !connection_lost(&e) {
                    // The server answered: the connection is fine.
                    used.store(0, Ordering::Relaxed);
                }
                details(&e)
            })
        };
        let message = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(message)) => message,
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        match used.load(Ordering::Relaxed) {
            0 => {}
            generation => self.drop_link(generation).await,
        }
        Err(anyhow!(scrub_password(
            &format!("{}: {op}: {message}", self.shown),
            self.password.as_deref()
        )))
    }

    /// A connected client and which connection it is, connecting if needed.
    async fn client(&self) -> Result<(Client, u64), String> {
        let mut conn = self.conn.lock().await;
        if let Some(link) = &conn.link {
            if !link.task.is_finished() && link.client.is_connected() {
                return Ok((link.client.clone(), link.generation));
            }
        }
        if let Some(old) = conn.link.take() {
            old.task.abort();
        }
        let client = self
            .builder
            .build()
            .map_err(|e| format!("cannot build client: {e}"))?;
        // Aborted unless the connection is made: a call cancelled by its
        // timeout leaves nothing running behind it.
        let mut task = AbortOnDrop(Some(client.connect()));
        let ended = {
            let handle = task.0.as_mut().expect("set above");
            tokio::select! {
                ended = handle => Some(ended),
                () = connected(&client) => None,
            }
        };
        if let Some(ended) = ended {
            return Err(match ended {
                Ok(Err(e)) => format!("cannot connect: {}", details(&e)),
                Ok(Ok(())) => "cannot connect: the connection closed".to_string(),
                Err(e) => format!("cannot connect: the connection task failed: {e}"),
            });
        }
        conn.made += 1;
        let generation = conn.made;
        conn.link = Some(Link {
            client: client.clone(),
            task: task.0.take().expect("set above"),
            generation,
        });
        Ok((client, generation))
    }

    /// Throws connection `generation` away, if it is still the current
    /// one, so the next call makes a new one.
    async fn drop_link(&self, generation: u64) {
        let mut conn = self.conn.lock().await;
        if conn
            .link
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            if let Some(link) = conn.link.take() {
                link.task.abort();
            }
        }
    }
}

impl Drop for RedisFleet {
    fn drop(&mut self) {
        // The connection task would otherwise outlive the coordinator.
        if let Some(link) = self.conn.get_mut().link.take() {
            link.task.abort();
        }
    }
}

struct AbortOnDrop(Option<ConnectHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Resolves once the client is connected. The client announces it only to
/// listeners that were there before, so it is polled instead.
async fn connected(client: &Client) {
    while !client.is_connected() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether the error leaves the connection in doubt (as opposed to an
/// answer of the server, after which it is still fine).
fn connection_lost(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Protocol
            | ErrorKind::Backpressure
            | ErrorKind::Routing
    )
}

/// What an error says, in one line, with an I/O error's debug form reduced
/// to its message.
fn details(e: &fred::error::Error) -> String {
    let text = e.details();
    if text.trim().is_empty() {
        return e.kind().to_str().to_string();
    }
    if *e.kind() == fred::error::ErrorKind::IO {
        if let Some(start) = text.find("message: \"") {
            let rest = &text[start + 10..];
            if let Some(end) = rest.find('"') {
                return rest[..end].to_string();
            }
        }
    }
    text.lines().next().unwrap_or_default().to_string()
}

fn command(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
}

fn expect_array(shown: &str, op: &str, v: Value) -> anyhow::Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        other => bail!("{shown}: {op}: unexpected answer {other:?}"),
    }
}

/// `backstop:{service}:<what>`: the service is the hash tag.
fn key(service: &str, what: &str) -> String {
    format!("backstop:{{{service}}}:{what}")
}

fn lease_key(service: &str, deployment: &str) -> String {
    key(service, &format!("lease:{deployment}"))
}

fn record_key(service: &str, deployment: &str) -> String {
    key(service, &format!("rollback:{deployment}"))
}

/// What the lease key holds while this lease is held.
fn lease_value(lease: &Lease) -> String {
    format!("{}:{}", lease.token, lease.holder)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_key_of_a_service_under_one_hash_tag() {
        assert_eq!(key("web", "reports"), "backstop:{web}:reports");
        assert_eq!(lease_key("web", "v2"), "backstop:{web}:lease:v2");
        assert_eq!(record_key("web", "v2"), "backstop:{web}:rollback:v2");
        let lease = Lease {
            deployment: "v2".into(),
            holder: "pod-a".into(),
            token: 1_732_000_000_001,
            expires_at_ms: 0,
        };
        assert_eq!(lease_value(&lease), "1732000000001:pod-a");
    }

    #[test]
    fn sends_durations_as_whole_milliseconds_of_at_least_one() {
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }

    #[test]
    fn words_errors_in_one_line() {
        use fred::error::{Error, ErrorKind};
        let io = Error::new(
            ErrorKind::IO,
            r#"Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }"#,
        );
        assert_eq!(details(&io), "Connection refused");
        let script = Error::new(ErrorKind::Unknown, "ERR user_script:3: oops\nmore");
        assert_eq!(details(&script), "ERR user_script:3: oops");
        assert_eq!(
            details(&Error::new(ErrorKind::Timeout, "")),
            "Timeout Error"
        );
    }

    #[test]
    fn refuses_urls_it_cannot_use_without_echoing_the_password() {
        for url in [
            "rediss://:hunter2-secret@cache:6380/0",
            "redis-cluster://:hunter2-secret@cache:6379",
            "redis://:hunter2-secret@cache:6379/notadb",
            "not a url",
        ] {
            let err =
                match RedisFleet::new(&crate::secret::Secret::new(url), Duration::from_secs(1)) {
                    Ok(_) => panic!("{url} accepted"),
                    Err(e) => e.to_string(),
                };
            assert!(err.starts_with("[fleet] redis"), "{url}: {err}");
            assert!(!err.contains("hunter2-secret"), "{url}: {err}");
        }
        // Building touches nothing: no runtime, no network.
        let ok = RedisFleet::new(
            &crate::secret::Secret::new("redis://:hunter2-secret@127.0.0.1:1/0"),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(ok.describe(), "redis://:***@127.0.0.1:1/0");
    }
}
