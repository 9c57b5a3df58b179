//! What the watch told that opens an incident (at PagerDuty) is told over
//! for the same deployment and rule: when the rule clears, the deployment
//! is rolled back, replaced or becomes stable, also across a restart.

use super::*;

/// The events told after the first `from`, as (kind, deployment, rule).
fn told_since(rig: &Rig, from: usize) -> Vec<(EventKind, String, String)> {
    rig.told.0.lock().unwrap()[from..]
        .iter()
        .map(|e| {
            (
                e.kind,
                e.deployment.clone(),
                e.rule.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn told_count(rig: &Rig) -> usize {
    rig.told.0.lock().unwrap().len()
}

fn ev(kind: EventKind, dep: &str, rule: &str) -> (EventKind, String, String) {
    (kind, dep.to_string(), rule.to_string())
}

/// An alert rule named `name` with `verdict`.
fn alert_rule(name: &str, verdict: Verdict) -> RuleStatus {
    RuleStatus {
        name: name.into(),
        action: Action::Alert,
        ..rule(verdict)
    }
}

#[tokio::test(start_paused = true)]
async fn a_held_rollback_is_resolved_once_the_deployment_is_rolled_back() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v1").await;
    w.set_paused(true);
    step(&mut w, "v2", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    let from = told_count(&rig);
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(
        told_since(&rig, from),
        [ev(EventKind::RollbackHeld, "v2", "health failing")]
    );
    w.set_paused(false);
    step(&mut w, "v2", Verdict::Holds).await;
    assert_eq!(rig.calls(), 1);
    assert_eq!(
        told_since(&rig, from),
        [
            ev(EventKind::RollbackHeld, "v2", "health failing"),
            ev(EventKind::RollbackPerformed, "v2", "health failing"),
            ev(EventKind::Resolved, "v2", "health failing"),
        ]
    );
    let resolved = first(&rig, EventKind::Resolved);
    assert!(
        resolved.summary.contains("v2 was rolled back"),
        "{}",
        resolved.summary
    );
    // The platform returns to v1: nothing more about v2.
    let from = told_count(&rig);
    step(&mut w, "v1", Verdict::Clear).await;
    assert_eq!(told_since(&rig, from), []);
}

#[tokio::test(start_paused = true)]
async fn an_alert_on_a_deployment_that_is_rolled_back_is_resolved_with_it() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v1").await;
    let rules = |v: Verdict| [alert_rule("errors up", v.clone()), rule(v)];
    judged(&mut w, "v2", &rules(Verdict::Clear)).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    let from = told_count(&rig);
    judged(&mut w, "v2", &rules(Verdict::Holds)).await;
    assert_eq!(w.state(), Some(WatchState::RolledBack));
    assert_eq!(
        told_since(&rig, from),
        [
            ev(EventKind::Alert, "v2", "errors up"),
            ev(EventKind::RollbackPerformed, "v2", "health failing"),
            ev(EventKind::Resolved, "v2", "errors up"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_rollback_is_resolved_once_another_deployment_replaces_it() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    // No stable deployment to return to: held back.
    step(&mut w, "v1", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    step(&mut w, "v1", Verdict::Holds).await;
    assert_eq!(rig.told.kinds(), [EventKind::RollbackHeld]);
    step(&mut w, "v2", Verdict::Clear).await;
    assert_eq!(
        told_since(&rig, 0),
        [
            ev(EventKind::RollbackHeld, "v1", "health failing"),
            ev(EventKind::Resolved, "v1", "health failing"),
        ]
    );
    let resolved = first(&rig, EventKind::Resolved);
    assert!(
        resolved.summary.contains("v1 was replaced by v2"),
        "{}",
        resolved.summary
    );
    // v2's own watch starts with nothing open.
    tokio::time::advance(Duration::from_secs(31)).await;
    step(&mut w, "v2", Verdict::Clear).await;
    assert_eq!(told_since(&rig, 2), []);
}

#[tokio::test(start_paused = true)]
async fn a_rule_that_clears_is_resolved_once_and_not_again_when_its_deployment_ends() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v1").await;
    let a = |v: Verdict| [alert_rule("errors up", v)];
    judged(&mut w, "v2", &a(Verdict::Clear)).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    let from = told_count(&rig);
    judged(&mut w, "v2", &a(Verdict::Holds)).await;
    judged(&mut w, "v2", &a(Verdict::Clear)).await;
    step(&mut w, "v3", Verdict::Clear).await;
    assert_eq!(
        told_since(&rig, from),
        [
            ev(EventKind::Alert, "v2", "errors up"),
            ev(EventKind::Resolved, "v2", "errors up"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn at_stable_what_no_longer_holds_is_resolved_and_an_alert_that_still_holds_stays_open() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    make_stable(&mut w, "v1").await;
    judged(&mut w, "v2", &[alert_rule("errors up", Verdict::Clear)]).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    let from = told_count(&rig);
    // A manual rollback the platform refuses, and an alert that holds on.
    let failing = Rig::new(true);
    w.target = Some(failing.platform.clone());
    let (tx, _rx) = tokio::sync::oneshot::channel();
    w.manual_rollback("v2 looks wrong", tx).await;
    w.settle_all().await;
    hold_for(&mut w, "v2", Verdict::Clear, 0).await;
    judged(&mut w, "v2", &[alert_rule("errors up", Verdict::Holds)]).await;
    tokio::time::advance(Duration::from_secs(900)).await;
    judged(&mut w, "v2", &[alert_rule("errors up", Verdict::Holds)]).await;
    assert_eq!(w.state(), Some(WatchState::Stable));
    assert_eq!(
        told_since(&rig, from),
        [
            ev(EventKind::RollbackFailed, "v2", "manual"),
            ev(EventKind::Alert, "v2", "errors up"),
            ev(EventKind::Resolved, "v2", "manual"),
        ]
    );
    judged(&mut w, "v2", &[alert_rule("errors up", Verdict::Clear)]).await;
    assert_eq!(
        told_since(&rig, from)[3..],
        [ev(EventKind::Resolved, "v2", "errors up")]
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_what_may_have_been_opened_is_closed_when_its_rule_clears() {
    let rig = Rig::new(false);
    let a = |v: Verdict| [alert_rule("errors up", v.clone()), rule(v)];
    {
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v1").await;
        w.set_paused(true);
        judged(&mut w, "v2", &a(Verdict::Clear)).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        judged(&mut w, "v2", &a(Verdict::Holds)).await;
        w.stop(Duration::from_secs(5)).await;
    }
    let from = told_count(&rig);
    let mut w = rig.watcher(guard()).await;
    // Not known yet: nothing closed.
    let unsure = |v: Verdict| {
        [
            alert_rule("errors up", v),
            rule(Verdict::Inconclusive("no data".into())),
        ]
    };
    judged(
        &mut w,
        "v2",
        &unsure(Verdict::Inconclusive("no data".into())),
    )
    .await;
    assert_eq!(told_since(&rig, from), []);
    // The alert's rule clears while the agent was stopped: closed.
    judged(&mut w, "v2", &unsure(Verdict::Clear)).await;
    assert_eq!(
        told_since(&rig, from),
        [ev(EventKind::Closed, "v2", "errors up")]
    );
    // v2 is replaced: the rest of what v2 may have opened is closed.
    w.set_paused(false);
    judged(&mut w, "v3", &a(Verdict::Clear)).await;
    let mut told = told_since(&rig, from);
    told.sort_by(|a, b| (a.0.as_str(), &a.1, &a.2).cmp(&(b.0.as_str(), &b.1, &b.2)));
    assert_eq!(
        told,
        [
            ev(EventKind::Closed, "v2", "errors up"),
            ev(EventKind::Closed, "v2", "health failing"),
            ev(EventKind::Closed, "v2", "manual"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_deployment_replaced_while_the_agent_was_stopped_has_all_it_may_have_opened_closed() {
    let rig = Rig::new(false);
    {
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v1").await;
        w.set_paused(true);
        step(&mut w, "v2", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        step(&mut w, "v2", Verdict::Holds).await;
        assert!(rig.told.kinds().contains(&EventKind::RollbackHeld));
        w.stop(Duration::from_secs(5)).await;
    }
    let from = told_count(&rig);
    let mut w = rig.watcher(guard()).await;
    step(&mut w, "v3", Verdict::Clear).await;
    assert_eq!(
        told_since(&rig, from),
        [
            ev(EventKind::Closed, "v2", "health failing"),
            ev(EventKind::Closed, "v2", "manual"),
        ]
    );
    // Once only.
    step(&mut w, "v3", Verdict::Clear).await;
    assert_eq!(told_since(&rig, from).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_restart_closes_once_what_each_clear_rule_may_have_opened() {
    let rig = Rig::new(false);
    {
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v1").await;
        w.stop(Duration::from_secs(5)).await;
    }
    let from = told_count(&rig);
    let mut w = rig.watcher(guard()).await;
    step(&mut w, "v1", Verdict::Clear).await;
    step(&mut w, "v1", Verdict::Clear).await;
    // The rule is clear: what it may have opened is closed, once.
    assert_eq!(
        told_since(&rig, from),
        [ev(EventKind::Closed, "v1", "health failing")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_rollback_resolved_when_its_rule_cleared_is_told_again_when_it_holds_again() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    step(&mut w, "v1", Verdict::Clear).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    for v in [
        Verdict::Holds,
        Verdict::Holds,
        Verdict::Clear,
        Verdict::Holds,
    ] {
        step(&mut w, "v1", v).await;
    }
    assert_eq!(
        rig.told.kinds(),
        [
            EventKind::RollbackHeld,
            EventKind::Resolved,
            EventKind::RollbackHeld
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_stores_trouble_is_told_over_for_the_deployment_it_was_told_for() {
    let rig = Rig::new(false);
    let mut w = rig.watcher(guard()).await;
    step(&mut w, "v1", Verdict::Clear).await;
    w.tell_store(false, "disk full");
    step(&mut w, "v2", Verdict::Clear).await;
    w.tell_store(true, "");
    assert_eq!(
        told_since(&rig, 0),
        [
            ev(EventKind::Alert, "v1", "store"),
            ev(EventKind::Resolved, "v1", "store"),
        ],
        "one key, whatever runs when the store works again"
    );
}
