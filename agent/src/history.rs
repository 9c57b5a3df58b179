//! `backstop history` and `backstop verdict`: the deployment ledger read
//! from the command line. `history` reads the store itself, or asks the
//! running agent (`GET /v1/deployments`) when the agent holds the embedded
//! store's lock or the store cannot be reached; `verdict` asks the running
//! agent about one deployment, and with `--wait` until it has a verdict —
//! a gate for a CI pipeline.

use std::time::Duration;

use anyhow::{anyhow, bail};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use tokio::time::Instant;

use crate::config::Config;
use crate::ledger::{self, Verdict};
use crate::store::{LedgerEntry, Store};

/// What a path segment keeps as it is.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How long one request to the agent may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often `verdict --wait` asks.
const POLL: Duration = Duration::from_secs(1);

/// The running agent's base URL, from `[agent] listen`: over loopback when
/// it listens on every address.
pub fn agent_url(config: &Config) -> String {
    crate::supervise::healthz_url(config.agent.listen)
        .trim_end_matches("/healthz")
        .to_string()
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// GETs `url`: its status and JSON body (`null` when it has none).
async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<(u16, Value)> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::Error::new(e.without_url()).context(url.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn refused(url: &str, status: u16, body: &Value) -> anyhow::Error {
    match body["error"].as_str() {
        Some(e) => anyhow!("{url}: {status}: {e}"),
        None => anyhow!("{url}: {status}"),
    }
}

/// The ledger as the running agent serves it.
async fn ask_ledger(base: &str, limit: usize) -> anyhow::Result<Vec<LedgerEntry>> {
    let url = format!("{base}/v1/deployments?limit={limit}");
    let (status, body) = get(&client()?, &url).await?;
    if status != 200 {
        return Err(refused(&url, status, &body));
    }
    serde_json::from_value(body["deployments"].clone())
        .map_err(|e| anyhow!("{url}: not a ledger: {e}"))
}

/// The ledger from the store the configuration names.
async fn read_store(config: &Config, limit: usize) -> anyhow::Result<Vec<LedgerEntry>> {
    match &config.store {
        Some(s) => {
            Store::connect(s, &config.service)
                .await?
                .ledger(limit)
                .await
        }
        None => {
            let path = config.agent.state_dir.join("backstop.redb");
            if !path.exists() {
                bail!("there is no store at {}", path.display());
            }
            Store::open(&config.agent.state_dir)?.ledger(limit).await
        }
    }
}

/// The ledger for `backstop history`: from the store, else (the running
/// agent holds it, or it cannot be reached) from the running agent.
pub async fn read_ledger(config: &Config, limit: usize) -> anyhow::Result<Vec<LedgerEntry>> {
    let store_err = match read_store(config, limit).await {
        Ok(entries) => return Ok(entries),
        Err(e) => e,
    };
    let base = agent_url(config);
    match ask_ledger(&base, limit).await {
        Ok(entries) => Ok(entries),
        Err(agent_err) => bail!(
            "cannot read the deployment ledger: the store: {store_err:#}; \
             and no running agent answered at {base}: {agent_err:#}"
        ),
    }
}

/// `backstop history`: prints the ledger; 0, or 2 when it cannot be read.
pub async fn history(config: &Config, limit: usize, as_json: bool) -> u8 {
    match read_ledger(config, limit).await {
        Ok(entries) => {
            if as_json {
                let doc = ledger::document(&config.service, &entries);
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                print!("{}", ledger::table(&entries));
            }
            0
        }
        Err(e) => {
            eprintln!("backstop: {e:#}");
            2
        }
    }
}

/// Asks the agent for the verdict on deployment `id` (the current one
/// when `None`, pinned once known).
async fn ask_verdict(
    client: &reqwest::Client,
    base: &str,
    id: &mut Option<String>,
) -> anyhow::Result<Verdict> {
    if id.is_none() {
        let url = format!("{base}/status");
        let (status, body) = get(client, &url).await?;
        if status != 200 {
            return Err(refused(&url, status, &body));
        }
        match body["deployment"]["id"].as_str() {
            Some(current) => *id = Some(current.to_string()),
            None => {
                return Ok(Verdict::Pending(
                    "the agent has not seen a deployment yet".into(),
                ))
            }
        }
    }
    let id = id.as_deref().unwrap_or_default();
    let url = format!("{base}/v1/deployments/{}", utf8_percent_encode(id, SEGMENT));
    let (status, body) = get(client, &url).await?;
    match status {
        200 => {
            let entry: LedgerEntry = serde_json::from_value(body)
                .map_err(|e| anyhow!("{url}: not a ledger entry: {e}"))?;
            Ok(ledger::verdict(&entry))
        }
        404 => Ok(Verdict::Pending(format!(
            "{id}: not in the agent's ledger yet"
        ))),
        _ => Err(refused(&url, status, &body)),
    }
}

/// `backstop verdict`: 0 when the deployment became stable, 1 when it was
/// rolled back or is unhealthy, 2 when there is no verdict (still
/// watching without `--wait`, a time-out, or an error). With `wait`, asks
/// every second until a verdict or `timeout`; an agent that does not
/// answer (restarting with the deployment) is asked again meanwhile.
pub async fn verdict(
    config: &Config,
    deployment: Option<String>,
    wait: bool,
    timeout: Duration,
) -> u8 {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("backstop: {e:#}");
            return 2;
        }
    };
    let base = agent_url(config);
    let deadline = Instant::now() + timeout;
    let mut id = deployment;
    let mut told: Option<String> = None;
    loop {
        let asked = tokio::time::timeout_at(deadline, ask_verdict(&client, &base, &mut id)).await;
        let note = match asked {
            Ok(Ok(v @ (Verdict::Stable(_) | Verdict::Bad(_)))) => {
                println!("{}", v.message());
                return v.exit_code();
            }
            Ok(Ok(Verdict::Pending(m))) if !wait => {
                println!("{m} (no verdict yet; --wait waits for one)");
                return 2;
            }
            Ok(Err(e)) if !wait => {
                eprintln!("backstop: cannot ask the agent: {e:#}");
                return 2;
            }
            Ok(Ok(Verdict::Pending(m))) => m,
            Ok(Err(e)) => format!("cannot ask the agent: {e:#}"),
            Err(_) => told.clone().unwrap_or_else(|| "no answer".into()),
        };
        if told.as_deref() != Some(note.as_str()) {
            eprintln!("backstop: {note}");
            told = Some(note);
        }
        let now = Instant::now();
        if now >= deadline {
            eprintln!(
                "backstop: no verdict within {}: {}",
                crate::duration::format(timeout),
                told.as_deref().unwrap_or("no answer")
            );
            return 2;
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}
