//! What the agent keeps of each probe: its last observation, its count of
//! consecutive failures and a bounded window of recent samples that rules
//! are judged over. A probe's `error` outcome (its own fault) neither counts
//! as a failure nor resets the count.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

/// The result class of one check, as SPEC defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Degraded,
    Failed,
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Self::Ok, Self::Degraded, Self::Failed, Self::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
            Self::Error => "error",
        }
    }

    /// Whether the target answered well enough to count as up.
    pub fn is_up(self) -> bool {
        matches!(self, Self::Ok | Self::Degraded)
    }
}

/// One check's result, judged against the probe's `max_latency`.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub at: SystemTime,
    pub outcome: Outcome,
    pub latency: Duration,
    pub signals: Vec<(&'static str, f64)>,
    pub error: Option<String>,
}

impl Observation {
    /// Classifies what one check reported. `outcome` is the check's own
    /// class: [`Outcome::Ok`] when it succeeded, [`Outcome::Failed`] when
    /// the target answered badly or not at all, [`Outcome::Error`] when the
    /// probe could not run; `reported` are the named numbers it produced and
    /// `error` its message. `elapsed` is the wall time of the check; a
    /// `latency_ms` signal from the probe, when present, is preferred. An
    /// `Ok` check slower than `max_latency` is [`Outcome::Degraded`].
    pub fn from_check(
        outcome: Outcome,
        reported: Vec<(Cow<'static, str>, f64)>,
        error: Option<String>,
        elapsed: Duration,
        max_latency: Option<Duration>,
    ) -> Self {
        // A probe's own names are literals already; a name the
        // configuration gave (a body signal) is made one by the name table.
        let mut signals = Vec::with_capacity(reported.len() + 1);
        for (name, value) in reported {
            let name = match name {
                Cow::Borrowed(name) => Some(name),
                Cow::Owned(name) => SignalId::intern_str(&name).map(SignalId::name),
            };
            if let Some(name) = name {
                signals.push((name, value));
            }
        }
        let latency = match signals.iter().find(|(n, _)| *n == "latency_ms") {
            Some((_, ms)) => Duration::from_secs_f64((ms / 1e3).max(0.0)),
            None => {
                if outcome != Outcome::Error {
                    signals.push(("latency_ms", elapsed.as_secs_f64() * 1e3));
                }
                elapsed
            }
        };
        let outcome = match (outcome, max_latency) {
            (Outcome::Ok, Some(max)) if latency > max => Outcome::Degraded,
            (o, _) => o,
        };
        Self {
            at: SystemTime::now(),
            outcome,
            latency,
            signals,
            error,
        }
    }

    pub fn timed_out(timeout: Duration) -> Self {
        Self {
            at: SystemTime::now(),
            outcome: Outcome::Failed,
            latency: timeout,
            signals: vec![("latency_ms", timeout.as_secs_f64() * 1e3)],
            error: Some(format!(
                "timed out after {}",
                crate::duration::format(timeout)
            )),
        }
    }

    pub fn signal(&self, name: &str) -> Option<f64> {
        self.signals
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// A signal's name as a small number. Names are interned once for the
/// whole process in an append-only table, so a sample keeps two bytes a
/// signal where a `&'static str` takes sixteen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SignalId(u16);

/// The interned names: `names[id]` is the name of `id`.
struct Names {
    names: Vec<&'static str>,
    ids: HashMap<&'static str, SignalId>,
}

/// The names every sample counting requests is read for, at fixed ids.
const WELL_KNOWN: [&str; 4] = [
    "latency_ms",
    crate::baseline::REQUESTS,
    crate::baseline::ERRORS,
    crate::baseline::ERROR_RATE,
];

fn names() -> &'static RwLock<Names> {
    static NAMES: OnceLock<RwLock<Names>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut t = Names {
            names: Vec::new(),
            ids: HashMap::new(),
        };
        for name in WELL_KNOWN {
            t.ids.insert(name, SignalId(t.names.len() as u16));
            t.names.push(name);
        }
        RwLock::new(t)
    })
}

impl SignalId {
    pub const LATENCY_MS: Self = Self(0);
    pub const REQUESTS: Self = Self(1);
    pub const ERRORS: Self = Self(2);
    pub const ERROR_RATE: Self = Self(3);
    /// An empty slot of a sample; never the id of a name.
    const NONE: Self = Self(u16::MAX);

    /// The id of `name`, given it one the first time it is seen. `None`
    /// only when 65,535 different names were seen already (signal names
    /// are the probes' literals, a few dozen, and the body signals the
    /// configuration declares).
    pub fn intern(name: &'static str) -> Option<Self> {
        Self::intern_with(name, || name)
    }

    /// Like [`SignalId::intern`], for a name that is not a literal (a body
    /// signal the configuration declares): the first time it is seen, a
    /// copy of it joins the table, where it stays for the life of the
    /// process like every name there. Seen again, it costs a lookup.
    pub fn intern_str(name: &str) -> Option<Self> {
        Self::intern_with(name, || Box::leak(Box::from(name)))
    }

    fn intern_with(name: &str, keep: impl FnOnce() -> &'static str) -> Option<Self> {
        if let Some(id) = Self::find(name) {
            return Some(id);
        }
        let mut t = names().write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = t.ids.get(name) {
            return Some(*id);
        }
        let id = Self(
            u16::try_from(t.names.len())
                .ok()
                .filter(|n| *n != u16::MAX)?,
        );
        let name = keep();
        t.ids.insert(name, id);
        t.names.push(name);
        Some(id)
    }

    /// The id of `name` if it was interned; a name that never was is in no
    /// sample.
    pub fn find(name: &str) -> Option<Self> {
        let t = names().read().unwrap_or_else(|e| e.into_inner());
        t.ids.get(name).copied()
    }

    pub fn name(self) -> &'static str {
        let t = names().read().unwrap_or_else(|e| e.into_inner());
        t.names.get(usize::from(self.0)).copied().unwrap_or("")
    }
}

/// The signals a sample keeps in itself; more go to one boxed slice.
const INLINE: usize = 2;

/// One entry of a probe's window: when, the outcome, and the signals the
/// probe reported. Up to two signals (an `http` probe's `status` and
/// `latency_ms`) are kept inline and need no allocation of their own; a
/// sample with more keeps them all in one boxed slice. 32 bytes.
#[derive(Clone, PartialEq)]
pub struct Sample {
    /// Nanoseconds from [`origin`], signed.
    at: i64,
    packed: Packed,
}

#[derive(Clone, PartialEq)]
enum Packed {
    /// Unused slots hold [`SignalId::NONE`] and 0.0.
    Inline {
        outcome: Outcome,
        ids: [SignalId; INLINE],
        values: [f64; INLINE],
    },
    Spilled {
        outcome: Outcome,
        signals: Box<[(SignalId, f64)]>,
    },
}

/// The instant sample times are counted from: the first time asked for,
/// on tokio's clock. Instants before it are negative offsets.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// `at` as signed nanoseconds from [`origin`] (exact within ±292 years).
fn offset_of(at: Instant) -> i64 {
    let o = origin();
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    if at >= o {
        nanos(at - o)
    } else {
        -nanos(o - at)
    }
}

impl Sample {
    /// A sample of `outcome` at `at` with `signals`, in their order.
    pub fn new(
        outcome: Outcome,
        at: Instant,
        signals: impl IntoIterator<Item = (&'static str, f64)>,
    ) -> Self {
        let mut signals = signals
            .into_iter()
            .filter_map(|(name, value)| Some((SignalId::intern(name)?, value)));
        let mut ids = [SignalId::NONE; INLINE];
        let mut values = [0.0; INLINE];
        for (i, (id, v)) in signals.by_ref().take(INLINE).enumerate() {
            (ids[i], values[i]) = (id, v);
        }
        let packed = match signals.next() {
            None => Packed::Inline {
                outcome,
                ids,
                values,
            },
            Some(more) => {
                let mut all: Vec<_> = ids.into_iter().zip(values).collect();
                all.push(more);
                all.extend(signals);
                Packed::Spilled {
                    outcome,
                    signals: all.into_boxed_slice(),
                }
            }
        };
        Self {
            at: offset_of(at),
            packed,
        }
    }

    pub fn at(&self) -> Instant {
        let o = origin();
        let d = Duration::from_nanos(self.at.unsigned_abs());
        if self.at >= 0 {
            o + d
        } else {
            o - d
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self.packed {
            Packed::Inline { outcome, .. } | Packed::Spilled { outcome, .. } => outcome,
        }
    }

    /// The signals by id, in the order the probe reported them.
    pub fn values(&self) -> impl Iterator<Item = (SignalId, f64)> + '_ {
        let (ids, values, spilled): (&[SignalId], &[f64], &[(SignalId, f64)]) = match &self.packed {
            Packed::Inline { ids, values, .. } => (ids, values, &[]),
            Packed::Spilled { signals, .. } => (&[], &[], signals),
        };
        ids.iter()
            .copied()
            .zip(values.iter().copied())
            .take_while(|(id, _)| *id != SignalId::NONE)
            .chain(spilled.iter().copied())
    }

    /// The signals by name, in the order the probe reported them.
    pub fn signals(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.values().map(|(id, v)| (id.name(), v))
    }

    /// The first value of signal `id`.
    pub fn value(&self, id: SignalId) -> Option<f64> {
        self.values().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// The first value of the signal called `name`.
    pub fn signal(&self, name: &str) -> Option<f64> {
        self.value(SignalId::find(name)?)
    }
}

impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("at", &self.at())
            .field("outcome", &self.outcome())
            .field("signals", &self.signals().collect::<Vec<_>>())
            .finish()
    }
}

/// The most samples one probe keeps, whatever its window span.
pub const MAX_SAMPLES: usize = 8192;

/// The per-probe state the scheduler writes and the rules read.
#[derive(Debug, Clone)]
pub struct ProbeState {
    pub last: Option<Observation>,
    pub consecutive_failures: u32,
    pub window: VecDeque<Sample>,
    /// How far back the window reaches.
    pub span: Duration,
    /// Observations recorded so far: a reader that saw this number has
    /// seen every observation up to it.
    pub recorded: u64,
    /// While a deployment is warming up or watched, this probe's part of
    /// its baseline, fed every sample as it is recorded: nothing waits in
    /// the window to be read, whatever its span.
    pub feed: Option<Box<crate::baseline::Feed>>,
}

impl ProbeState {
    pub fn new(span: Duration) -> Self {
        Self {
            last: None,
            consecutive_failures: 0,
            window: VecDeque::new(),
            span,
            recorded: 0,
            feed: None,
        }
    }

    /// Starts feeding `feed` with every sample recorded from now on, and
    /// at once with those already in the window; replaces any earlier one.
    pub fn start_feed(&mut self, mut feed: crate::baseline::Feed) {
        feed.add_all(&self.window);
        self.feed = Some(Box::new(feed));
    }

    /// Records an observation; returns whether the probe's up/down state
    /// flipped, which is when it is worth a log line.
    pub fn record(&mut self, obs: Observation, now: Instant) -> bool {
        let was_up = self.last.as_ref().map(|o| o.outcome.is_up());
        self.recorded += 1;
        match obs.outcome {
            Outcome::Ok | Outcome::Degraded => self.consecutive_failures = 0,
            Outcome::Failed => self.consecutive_failures += 1,
            Outcome::Error => {}
        }
        // Make room first: pushing onto a full window would double its
        // allocation for the one sample that is dropped right after.
        if self.window.len() >= MAX_SAMPLES {
            self.window.pop_front();
        }
        let sample = Sample::new(obs.outcome, now, obs.signals.iter().copied());
        if let Some(feed) = &mut self.feed {
            feed.add(&sample);
        }
        self.window.push_back(sample);
        while self.window.len() > MAX_SAMPLES
            || self
                .window
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.at()) > self.span)
        {
            self.window.pop_front();
        }
        let flipped = match (was_up, obs.outcome) {
            (_, Outcome::Error) => false,
            (None, o) => !o.is_up(),
            (Some(up), o) => up != o.is_up(),
        };
        self.last = Some(obs);
        flipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::Baseline;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// The lib's test binary counts the allocations of each thread, so a
    /// test can tell what one piece of code allocated.
    struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            System.realloc(ptr, layout, new_size)
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }

    /// A check that succeeded with `signals`.
    fn ok(
        signals: &[(&'static str, f64)],
        elapsed: Duration,
        max: Option<Duration>,
    ) -> Observation {
        let signals = signals
            .iter()
            .map(|&(n, v)| (Cow::Borrowed(n), v))
            .collect();
        Observation::from_check(Outcome::Ok, signals, None, elapsed, max)
    }

    #[test]
    fn a_sample_is_small() {
        assert!(size_of::<Sample>() <= 32, "{}", size_of::<Sample>());
    }

    #[test]
    fn recording_two_signals_allocates_nothing_per_sample() {
        let mut s = ProbeState::new(Duration::from_secs(86_400));
        s.window.reserve(MAX_SAMPLES);
        let start = Instant::now();
        let reports: Vec<_> = (0..1000)
            .map(|i| {
                ok(
                    &[("status", 200.0), ("latency_ms", f64::from(i))],
                    Duration::from_millis(1),
                    None,
                )
            })
            .collect();
        // The first record interns the names.
        let mut reports = reports.into_iter();
        s.record(reports.next().unwrap(), start);
        let before = allocations();
        for (i, obs) in reports.enumerate() {
            s.record(obs, start + Duration::from_millis(i as u64 + 1));
        }
        assert_eq!(allocations() - before, 0);
        assert_eq!(s.window.len(), 1000);
        let last = s.window.back().unwrap();
        assert_eq!(last.signal("status"), Some(200.0));
        assert_eq!(last.signal("latency_ms"), Some(999.0));
        assert_eq!(last.at(), start + Duration::from_millis(999));
    }

    #[test]
    fn a_name_the_configuration_gave_is_interned_once_and_then_allocates_nothing() {
        let report = || {
            Observation::from_check(
                Outcome::Ok,
                vec![
                    (Cow::Borrowed("latency_ms"), 2.0),
                    (
                        Cow::Owned(String::from("a_body_signal_only_this_test_uses")),
                        7.5,
                    ),
                ],
                None,
                Duration::from_millis(1),
                None,
            )
        };
        let first = report();
        assert_eq!(first.signal("a_body_signal_only_this_test_uses"), Some(7.5));
        let id = SignalId::find("a_body_signal_only_this_test_uses").unwrap();
        assert_eq!(id.name(), "a_body_signal_only_this_test_uses");
        let mut s = ProbeState::new(Duration::from_secs(60));
        s.window.reserve(16);
        let now = Instant::now();
        s.record(first, now);
        let again: Vec<_> = (0..10).map(|_| report()).collect();
        let before = allocations();
        for obs in again {
            s.record(obs, now);
        }
        assert_eq!(allocations() - before, 0);
        assert_eq!(
            s.window.back().unwrap().value(id),
            Some(7.5),
            "the same id every time"
        );
        assert_eq!(
            SignalId::intern_str("a_body_signal_only_this_test_uses"),
            Some(id)
        );
    }

    #[test]
    fn a_sample_keeps_its_signals_in_order_and_its_instant_exactly() {
        let now = Instant::now();
        for at in [
            now,
            now + Duration::from_nanos(1),
            now - Duration::from_secs(3600) - Duration::from_nanos(7),
            now + Duration::from_secs(86_400 * 365),
        ] {
            for n in 0..6 {
                let names = ["latency_ms", "status", "p95_ms", "requests", "errors", "x"];
                let signals: Vec<_> = (0..n).map(|i| (names[i], i as f64 + 0.5)).collect();
                let sample = Sample::new(Outcome::Degraded, at, signals.clone());
                assert_eq!(sample.at(), at);
                assert_eq!(sample.outcome(), Outcome::Degraded);
                assert_eq!(sample.signals().collect::<Vec<_>>(), signals);
                for (name, v) in &signals {
                    assert_eq!(sample.signal(name), Some(*v));
                }
                assert_eq!(sample.signal("never_reported_by_anything"), None);
                assert_eq!(sample.signal("p99_ms"), None);
            }
        }
        // More than fit inline go to one allocation.
        let before = allocations();
        let s = Sample::new(
            Outcome::Ok,
            now,
            [("a1", 1.0), ("a2", 2.0), ("a3", f64::NAN)],
        );
        assert!(allocations() - before >= 1);
        assert!(s.signal("a3").unwrap().is_nan());
        assert_eq!(s.signals().count(), 3);
    }

    /// An observation of the `i`-th check: latency, status, and on some
    /// checks the counts of a scrape; some checks are the probe's own
    /// errors, some failed.
    fn check(i: u64) -> Observation {
        let mut signals: Vec<(Cow<'static, str>, f64)> = vec![
            ("latency_ms".into(), ((i * 37) % 101) as f64 + 0.25),
            ("status".into(), 200.0),
        ];
        if i % 3 == 0 {
            signals.push(("requests".into(), (i % 17) as f64));
            signals.push(("errors".into(), (i % 5) as f64));
        }
        let (outcome, signals, error) = match i % 11 {
            0 => (Outcome::Error, Vec::new(), Some("no credentials".into())),
            7 => (Outcome::Failed, signals, Some("503".into())),
            _ => (Outcome::Ok, signals, None),
        };
        Observation::from_check(outcome, signals, error, Duration::from_millis(3), None)
    }

    /// The same checks recorded by a window long enough for the whole watch
    /// (built into a baseline at its end, as before) and by a short one
    /// feeding the baseline as it goes; samples before `since` are left out.
    fn watch_both_ways(checks: u64, since: Duration) -> (Baseline, Baseline, ProbeState) {
        let start = Instant::now();
        let since = start + since;
        let mut long = ProbeState::new(Duration::from_secs(86_400));
        let mut short = ProbeState::new(Duration::from_secs(60));
        // The first checks land before the feed starts (before the
        // deployment id is read): it takes them from the window.
        for i in 0..5 {
            let at = start + Duration::from_secs(2 * i);
            long.record(check(i), at);
            short.record(check(i), at);
        }
        short.start_feed(crate::baseline::Feed::new("v1", "api", Some(since)));
        for i in 5..checks {
            let at = start + Duration::from_secs(2 * i);
            long.record(check(i), at);
            short.record(check(i), at);
        }
        let mut whole = crate::baseline::BaselineBuilder::new("v1");
        for sample in long.window.iter().filter(|s| s.at() >= since) {
            whole.add("api", sample);
        }
        let fed = short.feed.take().unwrap().finish();
        (whole.finish(), fed, short)
    }

    #[test]
    fn a_baseline_fed_sample_by_sample_equals_one_built_from_the_whole_window() {
        // 30 minutes, one check every 2 s: fewer values than a reservoir
        // holds, so even the reservoirs are the same.
        let (whole, fed, short) = watch_both_ways(900, Duration::from_secs(4));
        assert_eq!(fed, whole);
        let latency = fed.signal("api", "latency_ms").unwrap();
        assert!(latency.summary.count > 700, "{:?}", latency.summary);
        assert!(fed.probe("api").unwrap().traffic.unwrap().requests > 0.0);
        // The short window held a minute of it all along.
        assert_eq!(short.window.len(), 31);
    }

    #[test]
    fn past_the_reservoir_a_fed_baseline_keeps_the_exact_summary() {
        // Four hours: more values than a reservoir keeps.
        let (whole, fed, _) = watch_both_ways(7200, Duration::from_secs(60));
        assert_eq!(fed.probes.keys().collect::<Vec<_>>(), ["api"]);
        for (name, w) in &whole.probe("api").unwrap().signals {
            let f = fed.signal("api", name).unwrap();
            assert_eq!(f.summary.count, w.summary.count, "{name}");
            assert_eq!(f.summary.mean, w.summary.mean, "{name}");
            assert_eq!(f.summary.min, w.summary.min, "{name}");
            assert_eq!(f.summary.max, w.summary.max, "{name}");
            assert_eq!(f.samples.len(), w.samples.len(), "{name}");
        }
        assert_eq!(
            fed.probe("api").unwrap().traffic,
            whole.probe("api").unwrap().traffic
        );
        assert!(fed.signal("api", "latency_ms").unwrap().summary.count > 1000);
    }

    #[test]
    fn well_known_names_have_their_fixed_ids() {
        assert_eq!(SignalId::intern("latency_ms"), Some(SignalId::LATENCY_MS));
        assert_eq!(
            SignalId::find(crate::baseline::REQUESTS),
            Some(SignalId::REQUESTS)
        );
        assert_eq!(SignalId::ERRORS.name(), crate::baseline::ERRORS);
        assert_eq!(SignalId::ERROR_RATE.name(), crate::baseline::ERROR_RATE);
        let id = SignalId::intern("a_name_only_this_test_uses").unwrap();
        assert_eq!(SignalId::intern("a_name_only_this_test_uses"), Some(id));
        assert_eq!(id.name(), "a_name_only_this_test_uses");
    }

    #[test]
    fn a_full_window_keeps_its_allocation() {
        // Seen in the soak: each full window held twice the memory it needs.
        let mut s = ProbeState::new(Duration::from_secs(86_400));
        let start = Instant::now();
        for i in 0..MAX_SAMPLES + 1000 {
            let obs = ok(&[("latency_ms", 1.0)], Duration::from_millis(1), None);
            s.record(obs, start + Duration::from_millis(i as u64));
        }
        assert_eq!(s.window.len(), MAX_SAMPLES);
        assert!(
            s.window.capacity() < 2 * MAX_SAMPLES,
            "{}",
            s.window.capacity()
        );
    }

    fn obs(outcome: Outcome) -> Observation {
        Observation {
            at: SystemTime::now(),
            outcome,
            latency: Duration::from_millis(5),
            signals: vec![("latency_ms", 5.0)],
            error: None,
        }
    }

    #[test]
    fn slower_than_max_latency_is_degraded() {
        let o = ok(
            &[("latency_ms", 150.0)],
            Duration::from_millis(151),
            Some(Duration::from_millis(100)),
        );
        assert_eq!(o.outcome, Outcome::Degraded);
        let o = ok(
            &[],
            Duration::from_millis(20),
            Some(Duration::from_millis(100)),
        );
        assert_eq!(o.outcome, Outcome::Ok);
        assert_eq!(o.signal("latency_ms"), Some(20.0));
    }

    #[test]
    fn the_probes_own_error_neither_counts_nor_resets_failures() {
        let mut s = ProbeState::new(Duration::from_secs(60));
        let now = Instant::now();
        s.record(obs(Outcome::Failed), now);
        s.record(obs(Outcome::Error), now);
        s.record(obs(Outcome::Failed), now);
        assert_eq!(s.consecutive_failures, 2);
        s.record(obs(Outcome::Degraded), now);
        assert_eq!(s.consecutive_failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_forgets_samples_older_than_its_span() {
        let mut s = ProbeState::new(Duration::from_secs(10));
        for _ in 0..30 {
            s.record(obs(Outcome::Ok), Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(s.window.len(), 11);
    }

    #[test]
    fn flips_are_reported_once() {
        let mut s = ProbeState::new(Duration::from_secs(60));
        let now = Instant::now();
        assert!(!s.record(obs(Outcome::Ok), now));
        assert!(s.record(obs(Outcome::Failed), now));
        assert!(!s.record(obs(Outcome::Failed), now));
        assert!(s.record(obs(Outcome::Ok), now));
    }
}
