//! The fleet's protocol, driven through several watchers on one in-memory
//! coordination store, with paused time: quorum, the lease, a holder lost
//! mid-call, a store that is down or silent, a manual rollback.

use crate::fleet::memory::{Fault, MemoryFleet};
use crate::fleet::{FleetConfig, LossPolicy};

use super::*;

const HEARTBEAT: Duration = Duration::from_secs(2);
const EXPIRY: Duration = Duration::from_secs(6);
const LEASE: Duration = Duration::from_secs(6);

/// One replica: its agent's own store, notifier and connection to the
/// coordination store.
struct Replica {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    told: Arc<Told>,
    conn: Arc<MemoryFleet>,
    w: Watcher,
}

impl Replica {
    fn told(&self, kind: EventKind) -> Vec<Event> {
        let told = self.told.0.lock().unwrap();
        told.iter().filter(|e| e.kind == kind).cloned().collect()
    }
}

/// Replicas of service `web` sharing one platform and one coordination
/// store.
struct Fleet {
    heartbeat: Duration,
    platform: Arc<Platform>,
    memory: MemoryFleet,
    replicas: Vec<Replica>,
}

impl Fleet {
    async fn new(names: &[&str], found: Option<bool>) -> Self {
        Self::timed(names, found, HEARTBEAT, EXPIRY, LEASE).await
    }

    /// With the heartbeat, the reports' expiry and the lease given.
    async fn timed(
        names: &[&str],
        found: Option<bool>,
        heartbeat: Duration,
        expiry: Duration,
        lease: Duration,
    ) -> Self {
        let platform = Arc::new(Platform {
            found,
            ..Platform::default()
        });
        let memory = MemoryFleet::default();
        let mut replicas = Vec::new();
        for name in names {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let told = Arc::new(Told::default());
            let conn = Arc::new(memory.connection());
            let cfg = FleetConfig {
                replica: name.to_string(),
                quorum: 0.5,
                redis: None,
                heartbeat,
                expiry,
                lease,
                on_coordination_loss: LossPolicy::Hold,
                live_baseline_min_peers: 2,
            };
            let w = Watcher::new(
                "web".into(),
                None,
                store.clone(),
                Some(platform.clone()),
                told.clone(),
                guard(),
                Duration::from_secs(30),
                Duration::from_secs(900),
                Clock::new(),
            )
            .await
            .unwrap()
            .with_fleet(conn.clone(), cfg);
            replicas.push(Replica {
                _dir: dir,
                store,
                told,
                conn,
                w,
            });
        }
        Self {
            heartbeat,
            platform,
            memory,
            replicas,
        }
    }

    /// v1 is stable on every replica, and v2 is watched past its warm-up.
    async fn on_v2(names: &[&str], found: Option<bool>) -> Self {
        Self::settled_on_v2(Self::new(names, found).await).await
    }

    async fn settled_on_v2(mut f: Self) -> Self {
        f.round("v1", &[]).await;
        tokio::time::sleep(Duration::from_secs(931)).await;
        f.round("v1", &[]).await;
        for r in &f.replicas {
            assert_eq!(r.w.state(), Some(WatchState::Stable));
        }
        f.round("v2", &[]).await;
        tokio::time::sleep(Duration::from_secs(31)).await;
        f.round("v2", &[]).await;
        f
    }

    fn calls(&self) -> u32 {
        self.platform.calls.load(Ordering::SeqCst)
    }

    fn answered(&self) -> u32 {
        self.platform.answered.load(Ordering::SeqCst)
    }

    fn asked(&self) -> u32 {
        self.platform.asked.load(Ordering::SeqCst)
    }

    /// One heartbeat: every replica steps on `id` (the rule holds on the
    /// replicas named in `holding`), then a heartbeat passes, during which
    /// the links publish and read and the jobs run. Returns the longest
    /// time one step took.
    async fn round(&mut self, id: &str, holding: &[&str]) -> Duration {
        let mut longest = Duration::ZERO;
        for r in &mut self.replicas {
            let name = r.w.fleet_replica();
            let verdict = if holding.contains(&name.as_str()) {
                Verdict::Holds
            } else {
                Verdict::Clear
            };
            longest = longest.max(fstep(&mut r.w, id, verdict.clone()).await);
            // Let what the step started run (the reads of the store, a
            // try for the lease), then act on what it brought.
            tokio::time::sleep(Duration::from_millis(1)).await;
            longest = longest.max(fstep(&mut r.w, id, verdict).await);
        }
        tokio::time::sleep(self.heartbeat).await;
        longest
    }

    fn replica(&self, name: &str) -> &Replica {
        self.replicas
            .iter()
            .find(|r| r.w.fleet_replica() == name)
            .expect("a replica of that name")
    }

    /// Cuts every replica off the coordination store (or lets them back).
    fn store_fault(&self, fault: Option<Fault>) {
        for r in &self.replicas {
            r.conn.set_fault(fault);
        }
    }
}

/// One step of the watch loop, without waiting for the jobs it starts (a
/// call may never answer): how long the step itself took.
async fn fstep(w: &mut Watcher, id: &str, verdict: Verdict) -> Duration {
    let started = Instant::now();
    w.observe_deployment(id).await;
    w.advance();
    w.act(&[rule(verdict)]).await;
    started.elapsed()
}

impl Watcher {
    fn fleet_replica(&self) -> String {
        self.replica.clone().unwrap_or_default()
    }
}

const ABC: &[&str] = &["a", "b", "c"];

#[tokio::test(start_paused = true)]
async fn at_quorum_exactly_one_of_three_replicas_calls() {
    let mut f = Fleet::on_v2(ABC, None).await;
    for _ in 0..6 {
        f.round("v2", ABC).await;
    }
    assert_eq!(f.calls(), 1);
    let rec = f.memory.outcome("web", "v2").await.unwrap().unwrap();
    assert_eq!(rec.status, RollbackStatus::Succeeded);
    assert_eq!(rec.returned_to.as_deref(), Some("v1"));
    let by = rec.by.clone().expect("the holder's name");
    for r in &f.replicas {
        assert_eq!(r.w.state(), Some(WatchState::RolledBack), "{by}");
    }
    // Only the holder tells of the rollback, and keeps the record in its
    // own store (the coordination store is not the agent's store).
    let holder = f.replica(&by);
    assert_eq!(holder.told(EventKind::RollbackPerformed).len(), 1);
    assert_eq!(
        holder.store.rollback("v2").await.unwrap().unwrap().status,
        RollbackStatus::Succeeded
    );
    let told: usize = f
        .replicas
        .iter()
        .map(|r| r.told(EventKind::RollbackPerformed).len())
        .sum();
    assert_eq!(told, 1);
}

/// With the defaults (a heartbeat every 5 s, reports valid for three, a
/// 30 s lease), the fleet decides on the heartbeat's read of the live
/// replicas: the rollbacks the guard rails read are kept fresh meanwhile,
/// so that read is never spent waiting for them.
#[tokio::test(start_paused = true)]
async fn at_quorum_with_the_default_heartbeat_one_replica_calls() {
    let f = Fleet::timed(
        ABC,
        None,
        Duration::from_secs(5),
        Duration::from_secs(15),
        Duration::from_secs(30),
    )
    .await;
    let mut f = Fleet::settled_on_v2(f).await;
    for _ in 0..6 {
        f.round("v2", ABC).await;
    }
    assert_eq!(f.calls(), 1);
    for r in &f.replicas {
        assert_eq!(r.w.state(), Some(WatchState::RolledBack));
    }
}

#[tokio::test(start_paused = true)]
async fn below_quorum_a_rule_is_held_and_told_once_without_a_call() {
    let mut f = Fleet::on_v2(ABC, None).await;
    for _ in 0..15 {
        f.round("v2", &["a"]).await;
    }
    assert_eq!(f.calls(), 0);
    let a = f.replica("a");
    let held = a.told(EventKind::RollbackHeld);
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0].summary.contains("1 of 3 live replicas agree"),
        "{}",
        held[0].summary
    );
    let view = a.w.view.lock().unwrap().clone();
    assert!(view.held.is_some_and(|h| h.contains("this replica only")));
    let fleet = view.fleet.expect("the fleet in /status");
    assert_eq!(fleet["tally"][0]["agree"], 1);
    assert_eq!(fleet["tally"][0]["live"], 3);
    for r in ["b", "c"] {
        assert!(f.replica(r).told(EventKind::RollbackHeld).is_empty());
    }
    assert!(f.memory.outcome("web", "v2").await.unwrap().is_none());
}

/// The holder stops in the middle of its call (its call never answers,
/// its connection to the store is gone): once its lease expires, another
/// replica that agrees takes it, finds the intent and asks the platform.
#[tokio::test(start_paused = true)]
async fn a_holder_lost_mid_call_is_taken_over_after_its_intent_with_one_effective_call() {
    for done in [false, true] {
        let mut f = Fleet::on_v2(ABC, Some(done)).await;
        f.platform.hang_next.store(true, Ordering::SeqCst);
        let mut rounds = 0;
        while f.calls() == 0 {
            f.round("v2", ABC).await;
            rounds += 1;
            assert!(rounds < 10, "no replica called");
        }
        let first = f.memory.outcome("web", "v2").await.unwrap().unwrap();
        assert_eq!(first.status, RollbackStatus::Intent);
        let lost = first.by.clone().unwrap();
        let (_, first_token) = f.memory.lease_of("web", "v2").unwrap();
        // The holder is gone: no step, no heartbeat, no renewal.
        let i = f
            .replicas
            .iter()
            .position(|r| r.w.fleet_replica() == lost)
            .unwrap();
        let gone = f.replicas.remove(i);
        gone.conn.set_fault(Some(Fault::Fail));
        for _ in 0..10 {
            f.round("v2", ABC).await;
        }
        assert_eq!(f.asked(), 1, "done = {done}: the next holder asked once");
        let rec = f.memory.outcome("web", "v2").await.unwrap().unwrap();
        assert_eq!(rec.status, RollbackStatus::Succeeded, "done = {done}");
        let (holder, token) = f.memory.lease_of("web", "v2").unwrap_or_default();
        assert!(holder.is_empty(), "released by {holder} ({token})");
        if done {
            // Recorded as done (the lost holder's call), nothing called again.
            assert_eq!((f.calls(), f.answered()), (1, 0));
            assert_eq!(rec.by.as_deref(), Some(lost.as_str()));
            assert!(
                rec.detail.contains(&format!(
                    "the call made by {lost} before it stopped took effect"
                )),
                "{}",
                rec.detail
            );
        } else {
            // The call completed by the next holder: one effective call.
            assert_eq!((f.calls(), f.answered()), (2, 1));
            assert_ne!(rec.by.as_deref(), Some(lost.as_str()));
        }
        assert!(first_token > 0);
        for r in &f.replicas {
            assert_eq!(r.w.state(), Some(WatchState::RolledBack), "done = {done}");
        }
    }
}

/// A coordination store that is down (refuses) or silent (never answers
/// until the client's timeout): no call and no slower step while it is;
/// one call once it is back and the rule still holds.
#[tokio::test(start_paused = true)]
async fn a_store_down_or_silent_holds_without_slowing_the_step_and_one_call_follows_once_it_heals()
{
    for fault in [Fault::Fail, Fault::Hang] {
        let mut f = Fleet::on_v2(ABC, None).await;
        f.store_fault(Some(fault));
        for _ in 0..15 {
            let took = f.round("v2", ABC).await;
            assert_eq!(took, Duration::ZERO, "{fault:?}: a step waited");
        }
        assert_eq!(f.calls(), 0, "{fault:?}");
        for r in &f.replicas {
            let alerts: Vec<_> = r
                .told(EventKind::Alert)
                .into_iter()
                .filter(|e| e.rule.as_deref() == Some("fleet"))
                .collect();
            assert_eq!(alerts.len(), 1, "{fault:?}: told once: {alerts:?}");
            let held = r.w.view.lock().unwrap().held.clone();
            assert!(
                held.as_deref()
                    .is_some_and(|h| h.contains("coordination store is failing")),
                "{fault:?}: {held:?}"
            );
        }
        f.store_fault(None);
        for _ in 0..8 {
            f.round("v2", ABC).await;
        }
        assert_eq!(f.calls(), 1, "{fault:?}");
        for r in &f.replicas {
            assert_eq!(r.w.state(), Some(WatchState::RolledBack), "{fault:?}");
            assert!(
                r.told(EventKind::Resolved)
                    .iter()
                    .any(|e| e.rule.as_deref() == Some("fleet")),
                "{fault:?}"
            );
        }
    }
}

/// Asks `w` for a rollback by hand; the answer comes on the receiver.
async fn ask(w: &mut Watcher) -> tokio::sync::oneshot::Receiver<anyhow::Result<ManualOutcome>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    w.manual_rollback("v2 is broken", tx).await;
    rx
}

#[tokio::test(start_paused = true)]
async fn a_manual_rollback_in_a_fleet_is_made_once() {
    let mut f = Fleet::on_v2(ABC, None).await;
    let rx = ask(&mut f.replicas[0].w).await;
    assert_eq!(rx.await.unwrap().unwrap(), ManualOutcome::Started);
    // Asked of another replica at once, before it read the record.
    let rx = ask(&mut f.replicas[2].w).await;
    let _ = rx.await.unwrap().unwrap();
    // Long enough for every replica to read the fleet's record, which it
    // does every `FLEET_READ_EVERY` heartbeats while no rule holds.
    for _ in 0..FLEET_READ_EVERY + 1 {
        f.round("v2", &[]).await;
    }
    assert_eq!(f.calls(), 1);
    let rec = f.memory.outcome("web", "v2").await.unwrap().unwrap();
    assert_eq!(
        (rec.rule.as_str(), rec.status, rec.by.as_deref()),
        ("manual", RollbackStatus::Succeeded, Some("a"))
    );
    // Asked again of a replica that has read the record: already recorded.
    let rx = ask(&mut f.replicas[1].w).await;
    let again = rx.await.unwrap().unwrap();
    assert!(
        matches!(again, ManualOutcome::AlreadyRecorded(_)),
        "{again:?}"
    );
    for _ in 0..3 {
        f.round("v2", &[]).await;
    }
    assert_eq!(f.calls(), 1);
    for r in &f.replicas {
        assert_eq!(r.w.state(), Some(WatchState::RolledBack));
    }
}

/// A replica that told of a held rollback resolves it once the fleet rolls
/// the deployment back, whichever replica called: with the same deployment
/// and rule, so the same PagerDuty incident, which any replica may resolve.
#[tokio::test(start_paused = true)]
async fn a_rollback_held_below_quorum_is_resolved_once_the_fleet_rolls_back() {
    let mut f = Fleet::on_v2(ABC, None).await;
    for _ in 0..15 {
        f.round("v2", &["a"]).await;
    }
    assert_eq!(f.replica("a").told(EventKind::RollbackHeld).len(), 1);
    for _ in 0..8 {
        f.round("v2", ABC).await;
    }
    assert_eq!(f.calls(), 1);
    let resolved = f.replica("a").told(EventKind::Resolved);
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0].deployment, "v2");
    assert_eq!(resolved[0].rule.as_deref(), Some("health failing"));
    assert!(resolved[0].summary.contains("v2 was rolled back"));
    for r in ["b", "c"] {
        assert!(
            f.replica(r).told(EventKind::Resolved).is_empty(),
            "{r} told of nothing that stays open"
        );
    }
}
