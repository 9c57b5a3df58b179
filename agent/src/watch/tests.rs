//! The watch of a lone agent, driven step by step with paused time.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::evidence::{Event, Reconciled, RollbackDone, RollbackRequest};
use backstop_judge::evidence::Evidence;

mod fleet;
mod incidents;

#[derive(Default)]
struct Platform {
    calls: AtomicU32,
    fail: bool,
    /// What `reconcile` finds: done, not done, or (`None`) cannot tell.
    found: Option<bool>,
    asked: AtomicU32,
    /// The next call never answers (its caller stopped mid-call).
    hang_next: std::sync::atomic::AtomicBool,
    /// Calls that answered.
    answered: AtomicU32,
}

impl Rollbacker for Platform {
    fn name(&self) -> &'static str {
        "webhook"
    }
    fn rollback<'a>(&'a self, req: &'a RollbackRequest) -> Call<'a, Result<RollbackDone, String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fail = self.fail;
        let hang = self.hang_next.swap(false, Ordering::SeqCst);
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            self.answered.fetch_add(1, Ordering::SeqCst);
            if fail {
                Err("webhook answered 503 Service Unavailable".into())
            } else {
                Ok(RollbackDone {
                    returned_to: req.return_to.clone(),
                    detail: "accepted".into(),
                })
            }
        })
    }
    fn reconcile<'a>(&'a self, _req: &'a RollbackRequest) -> Call<'a, Reconciled> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let found = match self.found {
            Some(true) => Reconciled::Done(RollbackDone {
                returned_to: Some("v1".into()),
                detail: "the platform lists a newer deployment".into(),
            }),
            Some(false) => Reconciled::NotDone("v2 is still the newest".into()),
            None => Reconciled::Unknown("a webhook cannot be asked".into()),
        };
        Box::pin(async move { found })
    }
}

#[derive(Default)]
struct Told(Mutex<Vec<Event>>);

impl Notifier for Told {
    fn notify(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Told {
    fn kinds(&self) -> Vec<EventKind> {
        self.0.lock().unwrap().iter().map(|e| e.kind).collect()
    }
}

fn guard() -> Guard {
    Guard {
        dry_run: false,
        cooldown: Duration::from_secs(600),
        max_per_hour: 3,
        verify: Some(Duration::from_secs(300)),
    }
}

fn rule(verdict: Verdict) -> RuleStatus {
    RuleStatus {
        held_by: None,
        name: "health failing".into(),
        probe: "health".into(),
        action: Action::Rollback,
        after_stable: false,
        evidence: (verdict == Verdict::Holds)
            .then(|| Evidence {
                rule: "health failing".into(),
                probe: "health".into(),
                expression: "consecutive_failures >= 3".into(),
                signal: Some("consecutive_failures".into()),
                observed: Some(3.0),
                threshold: Some(3.0),
                window: None,
                baseline: None,
                ratio: None,
                p_value: None,
                judged_by: None,
                summary: "consecutive_failures 3 >= 3 on probe health".into(),
            })
            .into_iter()
            .collect(),
        verdict,
        detail: Default::default(),
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    platform: Arc<Platform>,
    told: Arc<Told>,
}

impl Rig {
    fn new(fail: bool) -> Self {
        Self::finding(fail, None)
    }

    fn finding(fail: bool, found: Option<bool>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        Self {
            _dir: dir,
            store,
            platform: Arc::new(Platform {
                fail,
                found,
                ..Platform::default()
            }),
            told: Arc::new(Told::default()),
        }
    }

    async fn watcher(&self, guard: Guard) -> Watcher {
        Watcher::new(
            "web".into(),
            None,
            self.store.clone(),
            Some(self.platform.clone()),
            self.told.clone(),
            guard,
            Duration::from_secs(30),
            Duration::from_secs(900),
            Clock::new(),
        )
        .await
        .unwrap()
    }

    fn calls(&self) -> u32 {
        self.platform.calls.load(Ordering::SeqCst)
    }
}

async fn step(w: &mut Watcher, id: &str, verdict: Verdict) {
    judged(w, id, &[rule(verdict)]).await;
}

/// One step of the watch loop, with every job it starts (reads of the
/// store, a rollback's claim and call) ended and applied.
async fn judged(w: &mut Watcher, id: &str, rules: &[RuleStatus]) {
    w.observe_deployment(id).await;
    w.settle_all().await;
    w.advance();
    w.act(rules).await;
    w.settle_all().await;
    // What the jobs brought (the rollbacks read for the guard rails)
    // is acted on at the next step, at once.
    w.act(rules).await;
    w.settle_all().await;
}

async fn make_stable(w: &mut Watcher, id: &str) {
    step(w, id, Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(931)).await;
    step(w, id, Verdict::Clear).await;
    assert_eq!(w.state(), Some(WatchState::Stable));
}

#[tokio::test(start_paused = true)]
async fn a_deployment_warms_up_then_is_watched_then_becomes_stable() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    step(&mut w, "v1", Verdict::Clear).await;
    assert_eq!(w.state(), Some(WatchState::Warming));
    tokio::time::advance(Duration::from_secs(31)).await;
    step(&mut w, "v1", Verdict::Clear).await;
    assert_eq!(w.state(), Some(WatchState::Watching));
    tokio::time::advance(Duration::from_secs(900)).await;
    step(&mut w, "v1", Verdict::Clear).await;
    assert_eq!(w.state(), Some(WatchState::Stable));
    assert_eq!(
        rig.store.last_stable().await.unwrap().as_deref(),
        Some("v1")
    );
}

#[tokio::test(start_paused = true)]
async fn rolls_back_a_bad_deployment_exactly_once() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v1").await;
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.calls(), 0, "rules are not armed while warming");
    tokio::time::advance(Duration::from_secs(31)).await;
    for _ in 0..5 {
        step(&mut w, "v2", Verdict::Holds).await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(rig.calls(), 1);
    assert_eq!(w.state(), Some(WatchState::RolledBack));
    let rec = rig.store.rollback("v2").await.unwrap().unwrap();
    assert_eq!(rec.status, RollbackStatus::Succeeded);
    assert_eq!(rec.returned_to.as_deref(), Some("v1"));
    assert!(rig.told.kinds().contains(&EventKind::RollbackPerformed));
}

#[tokio::test(start_paused = true)]
async fn a_rule_held_by_a_failing_dependency_is_told_once_and_acts_once_it_recovers() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v2").await;
    step(&mut w, "v3", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    let held = RuleStatus {
        held_by: Some(Held::failing("db".into())),
        ..rule(Verdict::Holds)
    };
    for _ in 0..5 {
        judged(&mut w, "v3", std::slice::from_ref(&held)).await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(rig.calls(), 0, "a dependency's outage never rolls back");
    let told = rig.told.0.lock().unwrap().clone();
    let held_events: Vec<_> = told
        .iter()
        .filter(|e| e.kind == EventKind::RollbackHeld)
        .collect();
    assert_eq!(held_events.len(), 1, "{told:?}");
    assert!(
        held_events[0]
            .summary
            .contains("db (depends_on) is failing"),
        "{}",
        held_events[0].summary
    );
    {
        let view = w.view.lock().unwrap();
        assert_eq!(view.rules[0].verdict, "held");
        assert!(view.held.as_deref().unwrap().contains("db"));
    }
    // The dependency recovers and the rule still holds: now it is the
    // deployment's fault.
    step(&mut w, "v3", Verdict::Holds).await;
    assert_eq!(rig.calls(), 1);
    assert_eq!(w.state(), Some(WatchState::RolledBack));
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_never_calls_again_for_the_same_deployment() {
    let rig = Rig::new(false);
    {
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v1").await;
        step(&mut w, "v2", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        step(&mut w, "v2", Verdict::Holds).await;
    }
    assert_eq!(rig.calls(), 1);
    let mut w = rig.watcher(guard()).await;
    for _ in 0..3 {
        step(&mut w, "v2", Verdict::Holds).await;
    }
    assert_eq!(rig.calls(), 1);
    assert_eq!(w.state(), Some(WatchState::RolledBack));
}

#[tokio::test(start_paused = true)]
async fn an_intent_left_by_a_crash_is_reported_and_never_called() {
    let rig = Rig::new(false);
    leave_intent(&rig).await;
    let mut w = rig.watcher(guard()).await;
    tokio::time::advance(Duration::from_secs(100)).await;
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.platform.asked.load(Ordering::SeqCst), 1);
    assert_eq!(rig.calls(), 0);
    assert_eq!(rig.told.kinds(), vec![EventKind::RollbackFailed]);
    let rec = rig.store.rollback("v2").await.unwrap().unwrap();
    assert_eq!(rec.status, RollbackStatus::Failed);
    assert!(
        rec.detail.contains("a webhook cannot be asked"),
        "{}",
        rec.detail
    );
}

#[tokio::test(start_paused = true)]
async fn an_intent_the_platform_shows_untouched_is_called_once_after_the_restart() {
    let rig = Rig::finding(false, Some(false));
    leave_intent(&rig).await;
    let mut w = rig.watcher(guard()).await;
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.calls(), 1);
    let rec = rig.store.rollback("v2").await.unwrap().unwrap();
    assert_eq!(rec.status, RollbackStatus::Succeeded);
    assert_eq!(w.state(), Some(WatchState::RolledBack));
    assert_eq!(rig.told.kinds(), vec![EventKind::RollbackPerformed]);
    // Another restart finds the outcome and neither asks nor calls.
    let mut again = rig.watcher(guard()).await;
    step(&mut again, "v2", Verdict::Holds).await;
    assert_eq!(
        (rig.calls(), rig.platform.asked.load(Ordering::SeqCst)),
        (1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn an_intent_the_platform_shows_done_is_recorded_as_done_without_a_call() {
    let rig = Rig::finding(false, Some(true));
    leave_intent(&rig).await;
    let mut w = rig.watcher(guard()).await;
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.calls(), 0);
    let rec = rig.store.rollback("v2").await.unwrap().unwrap();
    assert_eq!(rec.status, RollbackStatus::Succeeded);
    assert!(rec.detail.contains("took effect"), "{}", rec.detail);
    assert_eq!(rec.returned_to.as_deref(), Some("v1"));
    assert_eq!(w.state(), Some(WatchState::RolledBack));
    assert_eq!(rig.told.kinds(), vec![EventKind::RollbackPerformed]);
}

#[tokio::test(start_paused = true)]
async fn in_dry_run_an_intent_is_reported_and_never_called() {
    let rig = Rig::finding(false, Some(false));
    leave_intent(&rig).await;
    let mut w = rig
        .watcher(Guard {
            dry_run: true,
            ..guard()
        })
        .await;
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.calls(), 0);
    assert_eq!(
        rig.store.rollback("v2").await.unwrap().unwrap().status,
        RollbackStatus::Failed
    );
}

/// An intent for v2, as an agent killed during the call leaves it.
async fn leave_intent(rig: &Rig) {
    rig.store
        .claim_rollback(&RollbackRecord {
            deployment: "v2".into(),
            return_to: Some("v1".into()),
            rule: "health failing".into(),
            reason: "x".into(),
            evidence: vec![],
            target: "webhook".into(),
            status: RollbackStatus::Intent,
            intent_at_ms: crate::store::now_ms(),
            finished_at_ms: None,
            detail: String::new(),
            returned_to: None,
            not_effective: false,
            by: None,
        })
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn holds_back_without_an_earlier_stable_deployment_and_says_so_once() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    step(&mut w, "v1", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    for _ in 0..3 {
        step(&mut w, "v1", Verdict::Holds).await;
    }
    assert_eq!(rig.calls(), 0);
    assert_eq!(
        rig.told.kinds(),
        vec![EventKind::RollbackHeld],
        "told once, not on every evaluation"
    );
    let view = w.view.clone();
    let held = || view.lock().unwrap().held.clone();
    assert!(held().is_some_and(|h| h.contains("stable")), "{:?}", held());
    step(&mut w, "v1", Verdict::Clear).await;
    assert_eq!(held(), None, "nothing is held back once the rule clears");
}

#[tokio::test(start_paused = true)]
async fn paused_holds_back_and_resume_rolls_back_if_the_rule_still_holds() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v1").await;
    w.set_paused(true);
    step(&mut w, "v2", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.calls(), 0);
    w.set_paused(false);
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.calls(), 1);
}

/// Steps `id` with `verdict` every 10 s for `secs` seconds.
async fn hold_for(w: &mut Watcher, id: &str, verdict: Verdict, secs: u64) {
    for _ in 0..secs / 10 {
        step(w, id, verdict.clone()).await;
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    step(w, id, verdict).await;
}

/// The first event of `kind` told.
fn first(rig: &Rig, kind: EventKind) -> Event {
    rig.told
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.kind == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind:?} event"))
}

fn count(rig: &Rig, kind: EventKind) -> usize {
    rig.told
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == kind)
        .count()
}

/// What keeps a rollback back through a whole watch, and how it lifts.
#[derive(Clone, Copy, Debug)]
enum Rail {
    /// v2 was rolled back less than `cooldown` (2 h) ago.
    Cooldown,
    /// One rollback an hour, and v2's was it.
    Cap,
    Paused,
}

#[tokio::test(start_paused = true)]
async fn a_deployment_whose_rollback_a_guard_rail_held_back_ends_unhealthy_and_is_rolled_back_once_it_lifts(
) {
    for rail in [Rail::Cooldown, Rail::Cap, Rail::Paused] {
        let rig = Rig::new(false);
        let guard = match rail {
            Rail::Cooldown => Guard {
                cooldown: Duration::from_secs(7200),
                ..guard()
            },
            Rail::Cap => Guard {
                cooldown: Duration::ZERO,
                max_per_hour: 1,
                ..guard()
            },
            Rail::Paused => guard(),
        };
        let mut w = rig.watcher(guard).await;
        make_stable(&mut w, "v1").await;
        if matches!(rail, Rail::Paused) {
            w.set_paused(true);
        } else {
            // v2 is bad and rolled back; the platform returns to v1.
            step(&mut w, "v2", Verdict::Clear).await;
            tokio::time::advance(Duration::from_secs(31)).await;
            step(&mut w, "v2", Verdict::Holds).await;
            assert_eq!(rig.calls(), 1, "{rail:?}");
            step(&mut w, "v1", Verdict::Clear).await;
        }
        let before = rig.calls();
        // v3 is bad too, through its whole warm-up and watch.
        hold_for(&mut w, "v3", Verdict::Holds, 940).await;
        assert_eq!(rig.calls(), before, "{rail:?}: held back");
        assert_eq!(w.state(), Some(WatchState::Unhealthy), "{rail:?}");
        assert_eq!(
            w.last_stable(),
            Some("v1"),
            "{rail:?}: v1 stays the baseline"
        );
        assert_eq!(
            rig.store.last_stable().await.unwrap().as_deref(),
            Some("v1"),
            "{rail:?}"
        );
        assert_eq!(count(&rig, EventKind::Unhealthy), 1, "{rail:?}: told once");
        let unhealthy = first(&rig, EventKind::Unhealthy);
        assert!(
            unhealthy.summary.contains("v3 is unhealthy")
                && unhealthy.summary.contains("held back")
                && unhealthy.summary.contains("v1 stays the baseline"),
            "{rail:?}: {}",
            unhealthy.summary
        );
        // What held it back lifts, and the rule still holds: one call.
        match rail {
            Rail::Cooldown | Rail::Cap => {
                tokio::time::advance(Duration::from_secs(7200)).await;
            }
            Rail::Paused => w.set_paused(false),
        }
        hold_for(&mut w, "v3", Verdict::Holds, 30).await;
        assert_eq!(rig.calls(), before + 1, "{rail:?}: rolled back once");
        assert_eq!(w.state(), Some(WatchState::RolledBack), "{rail:?}");
        assert_eq!(count(&rig, EventKind::Unhealthy), 1, "{rail:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn in_dry_run_a_bad_deployment_ends_unhealthy_with_its_dry_run_recorded_and_no_call() {
    let rig = Rig::new(false);
    let mut w = rig
        .watcher(Guard {
            dry_run: true,
            ..guard()
        })
        .await;
    make_stable(&mut w, "v1").await;
    hold_for(&mut w, "v2", Verdict::Holds, 940).await;
    assert_eq!(w.state(), Some(WatchState::Unhealthy));
    assert_eq!(rig.calls(), 0);
    assert_eq!(w.last_stable(), Some("v1"));
    let unhealthy = first(&rig, EventKind::Unhealthy);
    assert!(
        unhealthy.summary.contains("recorded as dry_run"),
        "{}",
        unhealthy.summary
    );
    hold_for(&mut w, "v2", Verdict::Holds, 600).await;
    assert_eq!(rig.calls(), 0, "a dry run never calls");
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_deployment_resumes_unhealthy_after_a_restart_and_recovers_after_a_clear_watch(
) {
    let rig = Rig::new(false);
    {
        let mut w = rig.watcher(guard()).await;
        w.set_paused(true);
        make_stable(&mut w, "v1").await;
        hold_for(&mut w, "v2", Verdict::Holds, 940).await;
        assert_eq!(w.state(), Some(WatchState::Unhealthy));
    }
    // Restarted: neither watched from the start nor stable.
    let mut w = rig.watcher(guard()).await;
    step(&mut w, "v2", Verdict::Clear).await;
    assert_eq!(w.state(), Some(WatchState::Unhealthy));
    assert_eq!(w.last_stable(), Some("v1"));
    // Clear for less than a watch, then holding again: still unhealthy.
    hold_for(&mut w, "v2", Verdict::Clear, 600).await;
    step(&mut w, "v2", Verdict::Holds).await;
    hold_for(&mut w, "v2", Verdict::Clear, 600).await;
    assert_eq!(w.state(), Some(WatchState::Unhealthy));
    // Clear for a whole watch: it recovered, and becomes stable.
    hold_for(&mut w, "v2", Verdict::Clear, 400).await;
    assert_eq!(w.state(), Some(WatchState::Stable));
    assert_eq!(w.last_stable(), Some("v2"));
    assert_eq!(rig.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn dry_run_records_and_reports_without_calling() {
    let rig = Rig::new(false);
    let mut w = rig
        .watcher(Guard {
            dry_run: true,
            ..guard()
        })
        .await;
    make_stable(&mut w, "v1").await;
    step(&mut w, "v2", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    step(&mut w, "v2", Verdict::Holds).await;
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.calls(), 0);
    assert_eq!(
        rig.store.rollback("v2").await.unwrap().unwrap().status,
        RollbackStatus::DryRun
    );
    let performed = rig
        .told
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::RollbackPerformed)
        .count();
    assert_eq!(performed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_is_reported_and_not_repeated() {
    let rig = Rig::new(true);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v1").await;
    step(&mut w, "v2", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    step(&mut w, "v2", Verdict::Holds).await;
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.calls(), 1);
    assert!(rig.told.kinds().contains(&EventKind::RollbackFailed));
}

#[tokio::test(start_paused = true)]
async fn the_cooldown_holds_back_a_second_rollback() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v1").await;
    step(&mut w, "v2", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.calls(), 1);
    // The platform went back to v1; a v3 goes bad two minutes later.
    step(&mut w, "v1", Verdict::Clear).await;
    step(&mut w, "v3", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    step(&mut w, "v3", Verdict::Holds).await;
    assert_eq!(rig.calls(), 1);
    assert!(rig.told.kinds().contains(&EventKind::RollbackHeld));
    tokio::time::advance(Duration::from_secs(600)).await;
    step(&mut w, "v3", Verdict::Holds).await;
    assert_eq!(rig.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_manual_rollback_of_an_unhealthy_deployment_is_made_once() {
    let rig = Rig::new(false);
    let mut w = rig
        .watcher(Guard {
            cooldown: Duration::from_secs(7200),
            ..guard()
        })
        .await;
    make_stable(&mut w, "v1").await;
    // v2 is rolled back; v3 goes bad within the cooldown and ends its
    // watch unhealthy.
    step(&mut w, "v2", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    step(&mut w, "v2", Verdict::Holds).await;
    step(&mut w, "v1", Verdict::Clear).await;
    hold_for(&mut w, "v3", Verdict::Holds, 940).await;
    assert_eq!(w.state(), Some(WatchState::Unhealthy));
    assert_eq!(rig.calls(), 1);
    // A person rolls it back by hand: the cooldown does not hold that.
    let (tx, rx) = tokio::sync::oneshot::channel();
    w.manual_rollback("v3 is broken", tx).await;
    assert_eq!(rx.await.unwrap().unwrap(), ManualOutcome::Started);
    w.settle_all().await;
    assert_eq!(rig.calls(), 2);
    assert_eq!(w.state(), Some(WatchState::RolledBack));
    let rec = rig.store.rollback("v3").await.unwrap().unwrap();
    assert_eq!(
        (rec.rule.as_str(), rec.status),
        ("manual", RollbackStatus::Succeeded)
    );
    // Asked again: already recorded, no second call.
    let (tx, rx) = tokio::sync::oneshot::channel();
    w.manual_rollback("again", tx).await;
    assert!(matches!(
        rx.await.unwrap().unwrap(),
        ManualOutcome::AlreadyRecorded(_)
    ));
    w.settle_all().await;
    assert_eq!(rig.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_accepted_rollback_that_changes_nothing_is_reported_once() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v1").await;
    step(&mut w, "v2", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    step(&mut w, "v2", Verdict::Holds).await;
    tokio::time::advance(Duration::from_secs(301)).await;
    step(&mut w, "v2", Verdict::Holds).await;
    step(&mut w, "v2", Verdict::Holds).await;
    let kinds = rig.told.kinds();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::RollbackNotEffective)
            .count(),
        1
    );
    assert_eq!(rig.calls(), 1);
    assert!(
        rig.store
            .rollback("v2")
            .await
            .unwrap()
            .unwrap()
            .not_effective
    );
}

#[tokio::test(start_paused = true)]
async fn after_stable_a_rollback_rule_alerts_instead() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v1").await;
    step(&mut w, "v1", Verdict::Holds).await;
    assert_eq!(rig.calls(), 0);
    assert_eq!(rig.told.kinds(), vec![EventKind::Alert]);
    step(&mut w, "v1", Verdict::Clear).await;
    assert_eq!(
        rig.told.kinds(),
        vec![EventKind::Alert, EventKind::Resolved]
    );
}
