//! The exposition path of the `scrape` probe on any body: a reading or a
//! failed check, never a panic, and every signal it reports is a finite,
//! non-negative number (an error rate at most 1).
//!
//! The input's first byte picks the format (odd: OpenMetrics); the rest is
//! two bodies split at the first NUL, read one after the other so the second
//! yields rates against the first. The probe starts from a fixed body each
//! time, so every input is judged the same way.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use backstop_probes::scrape::{ScrapeConfig, ScrapeProbe};
use backstop_probes::Context;
use libfuzzer_sys::fuzz_target;

const START: &[u8] = b"# TYPE http_requests_total counter
http_requests_total{code=\"200\"} 1
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le=\"0.1\"} 1
http_request_duration_seconds_bucket{le=\"+Inf\"} 1
http_request_duration_seconds_sum 0.05
http_request_duration_seconds_count 1
";

fn probe() -> &'static ScrapeProbe {
    static PROBE: OnceLock<ScrapeProbe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let cfg: ScrapeConfig = serde_json::from_value(serde_json::json!({
            "url": "http://127.0.0.1:9/metrics",
            "requests": "http_requests_total",
            "latency": "http_request_duration_seconds",
        }))
        .unwrap();
        ScrapeProbe::new(
            &cfg,
            Context {
                timeout: Duration::from_secs(1),
            },
        )
        .unwrap()
    })
}

fuzz_target!(
    init: {
        // The probe catches a panic of the exposition parser and fails the
        // check instead, as in the agent; only a panic that escapes it is a
        // crash (libFuzzer still aborts on that one).
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
        let Some((&first, rest)) = data.split_first() else {
            return;
        };
        let openmetrics = first % 2 == 1;
        let (a, b) = match rest.iter().position(|&c| c == 0) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let p = probe();
        let start = if openmetrics {
            [START, b"# EOF\n"].concat()
        } else {
            START.to_vec()
        };
        let _ = p.read_exposition(&start, openmetrics);
        for body in std::iter::once(a).chain(b) {
            if let Ok(report) = p.read_exposition(body, openmetrics) {
                for (name, v) in &report.signals {
                    assert!(v.is_finite() && *v >= 0.0, "{name} = {v}");
                    if *name == "error_rate" {
                        assert!(*v <= 1.0, "{name} = {v}");
                    }
                }
            }
        }
    }
);
