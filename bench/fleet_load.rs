//! Fleet: store load. Simulates N replicas of one service, each doing per
//! heartbeat interval what one agent does: one `publish`, and one `live`
//! read every `--live-every` heartbeats (6 in normal operation, 1 while a
//! rule holds). Each replica has a coordinator (a connection) of its own,
//! and the replicas' heartbeats are spread over the interval.
//!
//! Measured on the server over a window after a warm-up: commands per agent
//! per interval (`INFO commandstats`), bytes in and out (`INFO stats`),
//! the server's CPU seconds (`INFO cpu`), and on the client the latency of
//! each `publish` and `live` call.
//!
//! ```sh
//! bash bench/fleet_load.sh      # starts a throwaway Redis, runs this
//! cargo run --release -p backstop --example fleet_load -- \
//!     --redis redis://:pw@127.0.0.1:6379/0 --replicas 10,100,500 --live-every 6,1
//! ```
//!
//! The back end is a parameter; only `--redis` is implemented here (the
//! PostgreSQL back end measures through the same `Coordinator` calls once it
//! can be built from a URL).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use backstop::fleet::redis::RedisFleet;
use backstop::fleet::{Coordination, Coordinator, Heartbeat, Vote};
use backstop::secret::Secret;
use fred::prelude::{Builder, ClientLike, Config};
use fred::types::{ClusterHash, CustomCommand};

struct Args {
    redis: String,
    replicas: Vec<usize>,
    live_every: Vec<u64>,
    interval: Duration,
    warmup: u32,
    intervals: u32,
    expiry_intervals: u32,
}

fn usage() -> &'static str {
    "usage: fleet_load --redis URL [--replicas 10,100,500] [--live-every 6,1] \
     [--interval-ms 1000] [--warmup 3] [--intervals 20]\n\
     (--postgres is not available yet: the PostgreSQL back end is measured \
     with the same calls once it can be built from a URL)"
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        redis: String::new(),
        replicas: vec![10, 100, 500],
        live_every: vec![6, 1],
        interval: Duration::from_secs(1),
        warmup: 3,
        intervals: 20,
        expiry_intervals: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        let list = |v: String| -> anyhow::Result<Vec<u64>> {
            v.split(',')
                .map(|x| x.trim().parse::<u64>().map_err(Into::into))
                .collect()
        };
        match flag.as_str() {
            "--redis" => args.redis = value()?,
            "--postgres" => bail!("--postgres is not available yet\n{}", usage()),
            "--replicas" => {
                args.replicas = list(value()?)?.into_iter().map(|n| n as usize).collect()
            }
            "--live-every" => args.live_every = list(value()?)?,
            "--interval-ms" => args.interval = Duration::from_millis(value()?.parse()?),
            "--warmup" => args.warmup = value()?.parse()?,
            "--intervals" => args.intervals = value()?.parse()?,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    if args.redis.is_empty() {
        bail!("{}", usage());
    }
    if args.live_every.contains(&0) {
        bail!("--live-every must be at least 1");
    }
    Ok(args)
}

/// What one agent publishes: two rollback rules, clear.
fn report(replica: &str, deployment: &str) -> Heartbeat {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Heartbeat {
        replica: replica.into(),
        deployment: deployment.into(),
        at_ms: now,
        votes: vec![
            Vote {
                rule: "errors".into(),
                verdict: "clear".into(),
                summary: String::new(),
            },
            Vote {
                rule: "latency".into(),
                verdict: "clear".into(),
                summary: String::new(),
            },
        ],
    }
}

#[derive(Default)]
struct Samples {
    publish_ms: Vec<f64>,
    live_ms: Vec<f64>,
    publishes: u64,
    lives: u64,
    errors: u64,
    live_reports: u64,
}

/// The server's counters at one moment.
struct Snapshot {
    calls: HashMap<String, u64>,
    net_in: u64,
    net_out: u64,
    cpu: f64,
    at: Instant,
    /// Bytes of the INFO replies themselves, sent after their counters were
    /// read, so the next snapshot's delta does not count them as load.
    own_out: u64,
}

async fn info(client: &fred::prelude::Client, section: &str) -> anyhow::Result<String> {
    Ok(client
        .custom(
            CustomCommand::new_static("INFO", ClusterHash::Random, false),
            vec![section.to_string()],
        )
        .await?)
}

fn fields(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .collect()
}

async fn snapshot(client: &fred::prelude::Client) -> anyhow::Result<Snapshot> {
    let at = Instant::now();
    let stats = info(client, "stats").await?;
    let commands = info(client, "commandstats").await?;
    let cpu = info(client, "cpu").await?;
    let s = fields(&stats);
    let num = |m: &HashMap<&str, &str>, k: &str| -> anyhow::Result<f64> {
        m.get(k)
            .with_context(|| format!("INFO has no {k}"))?
            .trim()
            .parse::<f64>()
            .with_context(|| format!("INFO {k}"))
    };
    let c = fields(&cpu);
    let mut calls = HashMap::new();
    for (k, v) in fields(&commands) {
        // cmdstat_evalsha:calls=5,usec=...
        if let (Some(name), Some(n)) = (
            k.strip_prefix("cmdstat_"),
            v.split(',')
                .find_map(|p| p.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok()),
        ) {
            calls.insert(name.to_string(), n);
        }
    }
    // Bulk-string framing: `$<len>\r\n…\r\n`.
    let framed = |t: &str| t.len() as u64 + 8 + t.len().to_string().len() as u64;
    Ok(Snapshot {
        calls,
        net_in: num(&s, "total_net_input_bytes")? as u64,
        net_out: num(&s, "total_net_output_bytes")? as u64,
        cpu: num(&c, "used_cpu_sys")? + num(&c, "used_cpu_user")?,
        at,
        own_out: framed(&stats) + framed(&commands) + framed(&cpu),
    })
}

/// This process' CPU seconds (user + system), from `/proc/self/stat`.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name in parentheses; utime and stime are
    // the 14th and 15th of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let tick = 100.0; // USER_HZ on Linux
    f.get(11)
        .zip(f.get(12))
        .map_or(0.0, |(u, s)| (u + s) / tick)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

async fn run_case(
    args: &Args,
    admin: &fred::prelude::Client,
    replicas: usize,
    live_every: u64,
) -> anyhow::Result<()> {
    let service = format!("bench-{}-{replicas}-{live_every}", std::process::id());
    let deployment = "d2";
    let mut fleets = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        fleets.push(Arc::new(Coordinator::Redis(
            RedisFleet::connect(&Secret::new(&args.redis), Duration::from_secs(5)).await?,
        )));
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let expiry = args.interval * args.expiry_intervals;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for (i, fleet) in fleets.iter().enumerate() {
        let fleet = fleet.clone();
        let (measuring, stop, samples) = (measuring.clone(), stop.clone(), samples.clone());
        let service = service.clone();
        let interval = args.interval;
        // Spread over the interval, as independent agents are.
        let phase = interval.mul_f64(i as f64 / replicas as f64);
        tasks.push(tokio::spawn(async move {
            let name = format!("replica-{i:04}");
            let mut tick = tokio::time::interval_at(start + phase, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut beat: u64 = i as u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                let published = fleet
                    .publish(&service, &report(&name, deployment), expiry)
                    .await;
                let publish_ms = t.elapsed().as_secs_f64() * 1e3;
                let mut live = None;
                if beat % live_every == 0 {
                    let t = Instant::now();
                    let got = fleet.live(&service, deployment).await;
                    live = Some((got, t.elapsed().as_secs_f64() * 1e3));
                }
                beat += 1;
                if measuring.load(Ordering::Relaxed) {
                    let mut s = samples.lock().unwrap();
                    s.publishes += 1;
                    match published {
                        Ok(()) => s.publish_ms.push(publish_ms),
                        Err(_) => s.errors += 1,
                    }
                    if let Some((got, ms)) = live {
                        s.lives += 1;
                        match got {
                            Ok(r) => {
                                s.live_ms.push(ms);
                                s.live_reports += r.len() as u64;
                            }
                            Err(_) => s.errors += 1,
                        }
                    }
                }
            }
            fleet.leave(&service, &name).await.ok();
        }));
    }
    tokio::time::sleep(args.interval * args.warmup).await;
    let before = snapshot(admin).await?;
    let own_before = own_cpu();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(args.interval * args.intervals).await;
    measuring.store(false, Ordering::Relaxed);
    let after = snapshot(admin).await?;
    let own = own_cpu() - own_before;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }

    let secs = (after.at - before.at).as_secs_f64();
    let mut s = std::mem::take(&mut *samples.lock().unwrap());
    // One publish per agent per interval: the agent-intervals measured.
    let agent_intervals = s.publishes.max(1) as f64;
    let mut deltas: Vec<(String, u64)> = after
        .calls
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .map(|(k, v)| (k.clone(), v - before.calls.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    deltas.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: u64 = deltas.iter().map(|(_, d)| d).sum();
    let client_calls: u64 = deltas
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "evalsha" | "eval" | "script|load" | "ping"))
        .map(|(_, d)| d)
        .sum();
    let net_in = (after.net_in - before.net_in) as f64;
    let net_out = (after.net_out - before.net_out).saturating_sub(before.own_out) as f64;
    let cpu = after.cpu - before.cpu;
    let intervals = secs / args.interval.as_secs_f64();
    println!(
        "## {replicas} replicas, live every {live_every} heartbeat(s), interval {:?}, {secs:.1} s measured",
        args.interval
    );
    println!(
        "calls made: {} publish, {} live ({} errors); live returned {:.1} reports on average",
        s.publishes,
        s.lives,
        s.errors,
        s.live_reports as f64 / s.lives.max(1) as f64
    );
    println!(
        "server commands: {total} ({:.2} per agent per interval; {:.2} sent by the client), {:.0}/s",
        total as f64 / agent_intervals,
        client_calls as f64 / agent_intervals,
        total as f64 / secs
    );
    let listed: Vec<String> = deltas.iter().map(|(k, d)| format!("{k} {d}")).collect();
    println!("  by command: {}", listed.join(", "));
    println!(
        "bytes in: {:.0}/s ({:.0} per agent per interval); bytes out: {:.0}/s ({:.0} per agent per interval)",
        net_in / secs,
        net_in / agent_intervals,
        net_out / secs,
        net_out / agent_intervals
    );
    println!(
        "server CPU: {cpu:.3} s over {secs:.1} s = {:.1}% of one core; {:.4} s per interval",
        100.0 * cpu / secs,
        cpu / intervals
    );
    println!(
        "harness CPU (the simulated agents, same machine): {own:.2} s = {:.1}% of one core",
        100.0 * own / secs
    );
    println!(
        "latency publish p50 {:.2} ms p99 {:.2} ms ({} calls); live p50 {:.2} ms p99 {:.2} ms ({} calls)",
        quantile(&mut s.publish_ms, 0.5),
        quantile(&mut s.publish_ms, 0.99),
        s.publish_ms.len(),
        quantile(&mut s.live_ms, 0.5),
        quantile(&mut s.live_ms, 0.99),
        s.live_ms.len()
    );
    println!();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let config = Config::from_url(&args.redis).context("--redis")?;
    let admin = Builder::from_config(config).build()?;
    admin.init().await.context("connecting to --redis")?;
    println!(
        "backend: redis {}; {} logical CPUs on this machine",
        backstop_probes::redact_url(&args.redis),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for &live_every in &args.live_every {
        for &replicas in &args.replicas {
            run_case(&args, &admin, replicas, live_every).await?;
        }
    }
    admin.quit().await?;
    Ok(())
}
