//! The fleet's heartbeat, off the watch's path: a task of its own publishes
//! this replica's latest report every heartbeat (and at once when it
//! changes) and reads the live replicas and the fleet's rollback record,
//! so that a coordination store that is slow, refused or silent never
//! holds up deployment discovery, the warm-up or the watch. The watch
//! hands it the report to publish and reads what it saw last.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::coordination::Coordination;
use super::protocol::Heartbeat;
use crate::store::RollbackRecord;

/// What the watch asks the link to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub report: Heartbeat,
    /// Read the live replicas after every publish (a rollback rule holds
    /// here), not only every `read_every` heartbeats.
    pub read_always: bool,
}

/// What the link saw last.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Whether the coordination store answered at the last try; `None`
    /// before the first.
    pub up: Option<bool>,
    /// Why it did not, one line without a secret.
    pub error: Option<String>,
    /// The live reports of `live_for`, as read last.
    pub live: Vec<Heartbeat>,
    pub live_for: Option<String>,
    /// The fleet's rollback record of `live_for`, as read last.
    pub record: Option<RollbackRecord>,
    /// How many reads of the live replicas have succeeded: a new one is a
    /// fresh read.
    pub reads: u64,
}

/// The handle the watch keeps.
pub struct Link {
    out: watch::Sender<Option<Outgoing>>,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Starts the link's task for `service`.
    pub fn start(
        coord: Arc<dyn Coordination>,
        service: String,
        heartbeat: Duration,
        expiry: Duration,
        read_every: u64,
    ) -> Self {
        let (out, rx) = watch::channel(None);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(beat(
            coord,
            service,
            heartbeat,
            expiry,
            read_every.max(1),
            rx,
            seen.clone(),
        ));
        Self { out, seen, task }
    }

    /// Publishes `out` at once and on every heartbeat from now on.
    pub fn publish(&self, out: Outgoing) {
        self.out.send_replace(Some(out));
    }

    /// Whether the store answered at the last try, why not, and how many
    /// reads have succeeded: what the watch needs on every step, without
    /// a copy of the live reports.
    pub fn status(&self) -> (Option<bool>, Option<String>, u64) {
        let s = self.seen.lock().expect("fleet link lock");
        (s.up, s.error.clone(), s.reads)
    }

    /// What the link saw last.
    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("fleet link lock").clone()
    }

    /// Stops publishing (before this replica leaves the fleet).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn beat(
    coord: Arc<dyn Coordination>,
    service: String,
    heartbeat: Duration,
    expiry: Duration,
    read_every: u64,
    mut rx: watch::Receiver<Option<Outgoing>>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut beats = 0u64;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(next) => {}
        }
        next = Instant::now() + heartbeat;
        let Some(out) = rx.borrow_and_update().clone() else {
            continue;
        };
        let failed = |e: anyhow::Error| {
            let mut s = seen.lock().expect("fleet link lock");
            s.up = Some(false);
            s.error = Some(format!("{e:#}"));
        };
        if let Err(e) = coord.publish(&service, &out.report, expiry).await {
            failed(e);
            continue;
        }
        beats += 1;
        let dep = &out.report.deployment;
        let stale = seen.lock().expect("fleet link lock").live_for.as_ref() != Some(dep);
        if !(out.read_always || stale || beats % read_every == 0) {
            let mut s = seen.lock().expect("fleet link lock");
            s.up = Some(true);
            s.error = None;
            continue;
        }
        let live = match coord.live(&service, dep).await {
            Ok(live) => live,
            Err(e) => {
                failed(e);
                continue;
            }
        };
        let record = match coord.outcome(&service, dep).await {
            Ok(record) => record,
            Err(e) => {
                failed(e);
                continue;
            }
        };
        let mut s = seen.lock().expect("fleet link lock");
        s.up = Some(true);
        s.error = None;
        s.live = live;
        s.live_for = Some(dep.clone());
        s.record = record;
        s.reads += 1;
    }
}
