//! What the agent keeps of each probe: its last observation, its count of
//! consecutive failures and a bounded window of recent samples that rules
//! are judged over. A probe's `error` outcome (its own fault) neither counts
//! as a failure nor resets the count.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use backstop_probes::{ProbeError, Report};
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
    /// Classifies a probe's result. `elapsed` is the wall time of the check;
    /// a `latency_ms` signal from the probe, when present, is preferred.
    pub fn from_result(
        result: Result<Report, ProbeError>,
        elapsed: Duration,
        max_latency: Option<Duration>,
    ) -> Self {
        let (outcome, report, error) = match result {
            Ok(report) => (Outcome::Ok, report, None),
            Err(ProbeError::Unhealthy { message, report }) => {
                (Outcome::Failed, report, Some(message))
            }
            Err(ProbeError::CannotRun(message)) => (Outcome::Error, Report::new(), Some(message)),
        };
        let mut signals = report.signals;
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

/// One entry of a probe's window.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at: Instant,
    pub outcome: Outcome,
    pub signals: Vec<(&'static str, f64)>,
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
}

impl ProbeState {
    pub fn new(span: Duration) -> Self {
        Self {
            last: None,
            consecutive_failures: 0,
            window: VecDeque::new(),
            span,
            recorded: 0,
        }
    }

    /// Sets how far back the window reaches, and forgets what is older at
    /// once; a window made shorter gives its spare room back.
    pub fn set_span(&mut self, span: Duration, now: Instant) {
        let shorter = span < self.span;
        self.span = span;
        while self
            .window
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > self.span)
        {
            self.window.pop_front();
        }
        if shorter {
            self.window.shrink_to_fit();
        }
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
        self.window.push_back(Sample {
            at: now,
            outcome: obs.outcome,
            signals: obs.signals.clone(),
        });
        while self.window.len() > MAX_SAMPLES
            || self
                .window
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.at) > self.span)
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

    #[test]
    fn a_full_window_keeps_its_allocation() {
        // Seen in the soak: each full window held twice the memory it needs.
        let mut s = ProbeState::new(Duration::from_secs(86_400));
        let start = Instant::now();
        for i in 0..MAX_SAMPLES + 1000 {
            let obs = Observation::from_result(
                Ok(Report::new().with("latency_ms", 1.0)),
                Duration::from_millis(1),
                None,
            );
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
        let o = Observation::from_result(
            Ok(Report::new().with("latency_ms", 150.0)),
            Duration::from_millis(151),
            Some(Duration::from_millis(100)),
        );
        assert_eq!(o.outcome, Outcome::Degraded);
        let o = Observation::from_result(
            Ok(Report::new()),
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

    #[tokio::test(start_paused = true)]
    async fn a_shorter_span_forgets_older_samples_and_gives_room_back() {
        let mut s = ProbeState::new(Duration::from_secs(3600));
        for _ in 0..600 {
            s.record(obs(Outcome::Ok), Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(s.window.len(), 600);
        let before = s.window.capacity();
        s.set_span(Duration::from_secs(60), Instant::now());
        // The samples of the last 60 s (the newest is 1 s old).
        assert_eq!(s.window.len(), 60);
        assert!(s.window.capacity() < before / 4, "{}", s.window.capacity());
        // A longer span again keeps what there is and lets it grow.
        s.set_span(Duration::from_secs(3600), Instant::now());
        assert_eq!(s.window.len(), 60);
        s.record(obs(Outcome::Ok), Instant::now());
        assert_eq!(s.window.len(), 61);
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
