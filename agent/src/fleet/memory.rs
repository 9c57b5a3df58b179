//! A coordination store in memory, for tests: the same records and the
//! same meaning as PostgreSQL and Redis (leases with fencing tokens that
//! never go back, expiry by tokio's clock, records fenced by the lease),
//! and a switch ([`Fault`]) that makes every call fail, as a store that is
//! down, or hang, as one that is silent. Each agent of a test has a
//! connection of its own ([`MemoryFleet::connection`]) to the same records,
//! with a switch of its own, so a replica can be cut off alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use tokio::sync::watch;
use tokio::time::Instant;

use super::protocol::{Heartbeat, Lease, PeerSamples};
use crate::store::RollbackRecord;
use backstop_judge::live::LiveSummary;

/// What the store does to every call while it is switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Refuses at once, as a store that is down.
    Fail,
    /// Does not answer: the call waits until the fault is switched off
    /// (then it is carried out) or until the client's timeout (then it
    /// fails), as a store that fell silent.
    Hang,
}

#[derive(Default)]
struct State {
    /// (service, replica) → its heartbeat and when it expires.
    reports: BTreeMap<(String, String), (Heartbeat, Instant)>,
    /// (service, replica) → its samples, when published, and when they expire.
    samples: BTreeMap<(String, String), (LiveSummary, Instant, Instant)>,
    /// service → the newest fencing token handed out.
    fences: HashMap<String, i64>,
    /// (service, deployment) → the lease.
    leases: HashMap<(String, String), Held>,
    /// (service, deployment) → the record and the token it was written with.
    records: HashMap<(String, String), (RollbackRecord, i64)>,
}

struct Held {
    holder: String,
    token: i64,
    expires: Instant,
}

/// What the connections to one store share.
struct Data {
    state: Mutex<State>,
    /// Unix milliseconds at `anchor`, for `Lease::expires_at_ms`.
    anchor: Instant,
    anchor_ms: u64,
}

/// One connection to an in-memory store.
pub struct MemoryFleet {
    data: Arc<Data>,
    /// This connection's fault.
    fault: watch::Sender<Option<Fault>>,
    /// How long a call waits on a silent store before it fails.
    timeout: Duration,
}

impl Default for MemoryFleet {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl MemoryFleet {
    /// An empty store whose calls, while it hangs, fail after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            data: Arc::new(Data {
                state: Mutex::default(),
                anchor: Instant::now(),
                anchor_ms: crate::store::now_ms(),
            }),
            fault: watch::Sender::new(None),
            timeout,
        }
    }

    /// Another connection to the same records, with a fault switch of its
    /// own (off).
    pub fn connection(&self) -> Self {
        Self {
            data: self.data.clone(),
            fault: watch::Sender::new(None),
            timeout: self.timeout,
        }
    }

    /// Switches a fault of this connection on (`Some`) or off (`None`).
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.fault.send_replace(fault);
    }

    pub fn describe(&self) -> String {
        "memory".to_string()
    }

    /// What every call goes through first: the fault switched on, if any.
    async fn answer(&self, op: &str) -> anyhow::Result<()> {
        let mut fault = self.fault.subscribe();
        let now = *fault.borrow_and_update();
        match now {
            None => return Ok(()),
            Some(Fault::Fail) => bail!("memory: {op}: the coordination store is down"),
            Some(Fault::Hang) => {}
        }
        let hang = async {
            loop {
                if fault.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                let now = *fault.borrow_and_update();
                if now != Some(Fault::Hang) {
                    return now;
                }
            }
        };
        match tokio::time::timeout(self.timeout, hang).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => bail!("memory: {op}: the coordination store is down"),
            Err(_) => bail!(
                "memory: {op}: no answer within {}",
                crate::duration::format(self.timeout)
            ),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.data.state.lock().expect("memory fleet lock")
    }

    fn ms(&self, at: Instant) -> u64 {
        let d = &self.data;
        d.anchor_ms + at.saturating_duration_since(d.anchor).as_millis() as u64
    }

    pub async fn publish(
        &self,
        service: &str,
        report: &Heartbeat,
        expiry: Duration,
    ) -> anyhow::Result<()> {
        self.answer("publish").await?;
        let key = (service.to_string(), report.replica.clone());
        self.state()
            .reports
            .insert(key, (report.clone(), Instant::now() + expiry));
        Ok(())
    }

    pub async fn live(&self, service: &str, deployment: &str) -> anyhow::Result<Vec<Heartbeat>> {
        self.answer("live").await?;
        let now = Instant::now();
        let mut state = self.state();
        state.reports.retain(|_, (_, expires)| *expires > now);
        Ok(state
            .reports
            .iter()
            .filter(|((s, _), (r, _))| s == service && r.deployment == deployment)
            .map(|(_, (r, _))| r.clone())
            .collect())
    }

    pub async fn leave(&self, service: &str, replica: &str) -> anyhow::Result<()> {
        self.answer("leave").await?;
        let key = (service.to_string(), replica.to_string());
        let mut state = self.state();
        state.reports.remove(&key);
        state.samples.remove(&key);
        Ok(())
    }

    pub async fn publish_samples(
        &self,
        service: &str,
        replica: &str,
        summary: &LiveSummary,
        expiry: Duration,
    ) -> anyhow::Result<()> {
        self.answer("publish_samples").await?;
        let now = Instant::now();
        self.state().samples.insert(
            (service.to_string(), replica.to_string()),
            (summary.clone(), now, now + expiry),
        );
        Ok(())
    }

    pub async fn live_samples(
        &self,
        service: &str,
        deployment: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<PeerSamples>> {
        self.answer("live_samples").await?;
        let now = Instant::now();
        let mut state = self.state();
        state.samples.retain(|_, (_, _, expires)| *expires > now);
        let mut out: Vec<PeerSamples> = state
            .samples
            .iter()
            .filter(|((s, _), (sum, _, _))| s == service && sum.deployment == deployment)
            .map(|((_, replica), (sum, at, _))| PeerSamples {
                replica: replica.clone(),
                age: now.saturating_duration_since(*at),
                summary: sum.clone(),
            })
            .collect();
        // The freshest `limit`, in the order of their names.
        out.sort_by_key(|p| p.age);
        out.truncate(limit);
        out.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(out)
    }

    pub async fn acquire(
        &self,
        service: &str,
        deployment: &str,
        holder: &str,
        ttl: Duration,
    ) -> anyhow::Result<Option<Lease>> {
        self.answer("acquire").await?;
        let now = Instant::now();
        let mut state = self.state();
        let key = (service.to_string(), deployment.to_string());
        if state.leases.get(&key).is_some_and(|l| l.expires >= now) {
            return Ok(None);
        }
        let token = state.fences.entry(service.to_string()).or_insert(0);
        *token += 1;
        let token = *token;
        let expires = now + ttl;
        state.leases.insert(
            key,
            Held {
                holder: holder.to_string(),
                token,
                expires,
            },
        );
        Ok(Some(Lease {
            deployment: deployment.to_string(),
            holder: holder.to_string(),
            token,
            expires_at_ms: self.ms(expires),
        }))
    }

    /// As on PostgreSQL: a lease that expired but was not taken over is
    /// still its holder's.
    pub async fn renew(
        &self,
        service: &str,
        lease: &mut Lease,
        ttl: Duration,
    ) -> anyhow::Result<bool> {
        self.answer("renew").await?;
        let mut state = self.state();
        let key = (service.to_string(), lease.deployment.clone());
        match state
            .leases
            .get_mut(&key)
            .filter(|l| l.token == lease.token)
        {
            Some(l) => {
                l.expires = Instant::now() + ttl;
                lease.expires_at_ms = self.ms(l.expires);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub async fn release(&self, service: &str, lease: &Lease) -> anyhow::Result<()> {
        self.answer("release").await?;
        let mut state = self.state();
        let key = (service.to_string(), lease.deployment.clone());
        if state
            .leases
            .get(&key)
            .is_some_and(|l| l.token == lease.token)
        {
            state.leases.remove(&key);
        }
        Ok(())
    }

    pub async fn record(
        &self,
        service: &str,
        lease: &Lease,
        rec: &RollbackRecord,
    ) -> anyhow::Result<bool> {
        if rec.deployment != lease.deployment {
            bail!(
                "the lease is for {}, not for {}",
                lease.deployment,
                rec.deployment
            );
        }
        self.answer("record").await?;
        let mut state = self.state();
        let key = (service.to_string(), lease.deployment.clone());
        if state
            .leases
            .get(&key)
            .is_none_or(|l| l.token != lease.token)
        {
            return Ok(false);
        }
        if state
            .records
            .get(&key)
            .is_some_and(|(_, t)| *t > lease.token)
        {
            return Ok(false);
        }
        state.records.insert(key, (rec.clone(), lease.token));
        Ok(true)
    }

    pub async fn outcome(
        &self,
        service: &str,
        deployment: &str,
    ) -> anyhow::Result<Option<RollbackRecord>> {
        self.answer("outcome").await?;
        let key = (service.to_string(), deployment.to_string());
        Ok(self.state().records.get(&key).map(|(r, _)| r.clone()))
    }

    /// The holder of `deployment`'s lease and its token, expired or not.
    pub fn lease_of(&self, service: &str, deployment: &str) -> Option<(String, i64)> {
        let key = (service.to_string(), deployment.to_string());
        self.state()
            .leases
            .get(&key)
            .map(|l| (l.holder.clone(), l.token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RollbackStatus;

    fn rec(dep: &str, status: RollbackStatus) -> RollbackRecord {
        RollbackRecord {
            deployment: dep.into(),
            return_to: Some("v1".into()),
            rule: "errors".into(),
            reason: "x".into(),
            evidence: vec![],
            target: "webhook".into(),
            status,
            intent_at_ms: 0,
            finished_at_ms: None,
            detail: String::new(),
            returned_to: None,
            not_effective: false,
            by: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_goes_to_one_holder_and_its_tokens_never_go_back() {
        let m = MemoryFleet::default();
        let ttl = Duration::from_secs(30);
        let a = m.acquire("web", "v2", "a", ttl).await.unwrap().unwrap();
        assert!(m.acquire("web", "v2", "b", ttl).await.unwrap().is_none());
        tokio::time::advance(Duration::from_secs(31)).await;
        let b = m.acquire("web", "v2", "b", ttl).await.unwrap().unwrap();
        assert!(b.token > a.token);
        let mut lost = a.clone();
        assert!(!m.renew("web", &mut lost, ttl).await.unwrap());
        assert!(!m
            .record("web", &a, &rec("v2", RollbackStatus::Intent))
            .await
            .unwrap());
        assert!(m
            .record("web", &b, &rec("v2", RollbackStatus::Intent))
            .await
            .unwrap());
        m.release("web", &a).await.unwrap();
        assert_eq!(m.lease_of("web", "v2"), Some(("b".into(), b.token)));
        m.release("web", &b).await.unwrap();
        let c = m.acquire("web", "v2", "c", ttl).await.unwrap().unwrap();
        assert!(c.token > b.token);
        assert!(m
            .record("web", &c, &rec("v3", RollbackStatus::Intent))
            .await
            .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_expire_by_tokios_clock() {
        let m = MemoryFleet::default();
        let hb = |replica: &str| Heartbeat {
            replica: replica.into(),
            deployment: "v2".into(),
            at_ms: 0,
            votes: vec![],
        };
        m.publish("web", &hb("b"), Duration::from_secs(10))
            .await
            .unwrap();
        m.publish("web", &hb("a"), Duration::from_secs(20))
            .await
            .unwrap();
        let names = |l: Vec<Heartbeat>| l.into_iter().map(|r| r.replica).collect::<Vec<_>>();
        assert_eq!(names(m.live("web", "v2").await.unwrap()), ["a", "b"]);
        assert!(m.live("web", "v1").await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(names(m.live("web", "v2").await.unwrap()), ["a"]);
        m.leave("web", "a").await.unwrap();
        assert!(m.live("web", "v2").await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn samples_are_read_per_deployment_with_their_age_and_expire() {
        let m = MemoryFleet::default();
        let mut s = LiveSummary::new("v1");
        s.probes.insert(
            "app".into(),
            [("latency_ms".to_string(), vec![(0, 12.0), (1000, 13.0)])].into(),
        );
        m.publish_samples("web", "b", &s, Duration::from_secs(10))
            .await
            .unwrap();
        m.publish_samples("web", "a", &s, Duration::from_secs(20))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        let got = m.live_samples("web", "v1", 10).await.unwrap();
        assert_eq!(
            got.iter().map(|p| p.replica.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(got[0].age, Duration::from_secs(3));
        assert_eq!(got[0].summary, s);
        assert!(m.live_samples("web", "v2", 10).await.unwrap().is_empty());
        // At most `limit`, the freshest.
        let one = m.live_samples("web", "v1", 1).await.unwrap();
        assert_eq!(one.len(), 1);
        assert!(m.live_samples("api", "v1", 10).await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(m.live_samples("web", "v1", 10).await.unwrap().len(), 1);
        m.leave("web", "a").await.unwrap();
        assert!(m.live_samples("web", "v1", 10).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_switched_down_fails_and_a_silent_one_answers_late_or_times_out() {
        let m = std::sync::Arc::new(MemoryFleet::new(Duration::from_secs(5)));
        m.set_fault(Some(Fault::Fail));
        assert!(m.outcome("web", "v2").await.is_err());
        m.set_fault(Some(Fault::Hang));
        let started = Instant::now();
        assert!(m.outcome("web", "v2").await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let late = tokio::spawn({
            let m = m.clone();
            async move { m.outcome("web", "v2").await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        m.set_fault(None);
        assert!(late.await.unwrap().unwrap().is_none());
    }
}
