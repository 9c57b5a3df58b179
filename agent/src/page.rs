//! `GET /`: the agent's own page, for the person paged at night who wants
//! to see rather than read JSON. Built from what `/status` shows (the
//! probes' state and the watch's view, with the same redaction), one HTML
//! document with its stylesheet inline and its pictures drawn here as SVG
//! (`svg.rs`): no script, no external asset, readable without JavaScript,
//! reloaded by the browser every [`REFRESH_S`] seconds through a
//! `<meta http-equiv="refresh">`. Everything that comes from the
//! configuration or a platform is HTML-escaped.

mod svg;

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::time::Instant;

use crate::app::{read, App};
use crate::store::{LedgerEntry, RollbackRecord, RollbackStatus, WatchState};
use crate::watch::{BaselineView, RuleView, WatchView};
use backstop_judge::observe::{Outcome, SignalId};
use backstop_judge::rules::Verdict;
use svg::{escape, escape_into, Band, Mark, Point, Row, Series, Stretch};

/// How often the browser reloads the page.
pub const REFRESH_S: u32 = 10;

/// How many of the newest deployments of the ledger the page lists, and
/// how long it waits for the store to read them: past that it is drawn
/// without them, saying why.
pub const LEDGER_ROWS: usize = 10;
pub const LEDGER_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The newest deployments of the ledger, or why they could not be read.
pub type Ledger = Result<Vec<LedgerEntry>, String>;

/// The page's one stylesheet. Its hash is in [`CSP`]; a test checks it.
pub const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1240px;padding:0 16px 32px;color:#1d232a;background:#f6f7f9}\
h1{font-size:22px;margin:16px 0 4px}h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #d5d9de}h3{font-size:15px;margin:0 0 4px}\
.banner{padding:10px 14px;border-radius:6px;margin:8px 0;font-size:16px;border:1px solid #c9ced4;background:#fff}\
.banner.bad{background:#fde8e8;border-color:#e0a0a0}.banner.good{background:#e7f6ea;border-color:#9fd0a9}.banner.warn{background:#fff5d6;border-color:#e3c877}\
.b{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;background:#e3e6ea}\
.b.holds,.b.failed,.b.rolled_back,.b.unhealthy,.b.dead{background:#c62828;color:#fff}.b.clear,.b.ok,.b.stable,.b.succeeded{background:#2e7d32;color:#fff}\
.b.inconclusive,.b.degraded,.b.warming,.b.watching,.b.intent,.b.dry_run{background:#f0c040}.b.held,.b.error{background:#6d5dbb;color:#fff}\
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e6ea;vertical-align:top}th{font-size:12px;color:#555}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#666}.probes{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:12px}\
.probe{background:#fff;border:1px solid #d5d9de;border-radius:6px;padding:8px 10px}.probe.down{border-color:#c62828}\
svg{display:block;width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#555}svg .end{text-anchor:end}\
svg.chart{background:#fafbfc}.band{fill:#bcd7f5;fill-opacity:.6}.mid{stroke:#3f73b5;stroke-dasharray:4 3}.limit{stroke:#c62828;stroke-dasharray:6 3}\
.line{fill:none;stroke:#1d232a;stroke-width:1.5}.dot{fill:#1d232a}.rate{stroke:#b35900}.ok{fill:#66bb6a}.dg{fill:#f0c040}.er{fill:#8e7cc3}.fl{fill:#c62828}\
.timeline rect.warming{fill:#f0c040}.timeline rect.watching{fill:#64a0e0}.timeline rect.stable{fill:#66bb6a}.timeline rect.rolled_back,.timeline rect.unhealthy{fill:#c62828}\
.timeline path{fill:#c62828}.timeline path.returned{fill:#2e7d32}.now{stroke:#1d232a;stroke-dasharray:2 2}.name{font-weight:600;fill:#1d232a}\
.none{fill:#888}dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0}dt{color:#555}dd{margin:0}\
.ev{margin:4px 0 0 0;padding-left:18px}code{font-size:12px;background:#eef0f3;padding:0 3px;border-radius:3px}footer{margin-top:24px;font-size:12px;color:#666}";

/// The Content-Security-Policy of the page: nothing but its own stylesheet
/// (by hash) and its inline SVG, which is markup, not a fetched image; no
/// script, no image, no frame, no form, no base.
pub const CSP: &str = "default-src 'none'; style-src 'sha256-hg4TwNqrv1pUTyKAfAlAz3cb4VLrahADgY4bmOLmJ10='; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The response headers of the page, besides its status.
pub const HEADERS: [(&str, &str); 5] = [
    ("content-type", "text/html; charset=utf-8"),
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// One probe as the page shows it, copied out of its state under the lock.
struct ProbeShown {
    name: String,
    kind: &'static str,
    level: u8,
    critical: bool,
    depends_on: Vec<String>,
    consecutive_failures: u32,
    outcome: Option<Outcome>,
    last_at: Option<SystemTime>,
    latency_ms: Option<f64>,
    error: Option<String>,
    samples: usize,
    series: Series,
}

/// The page for `app` now, with the newest deployments of its ledger.
pub fn render(app: &App, ledger: &Ledger) -> String {
    let view = app.view.as_ref().map(|v| read(v)).unwrap_or_default();
    let now = Instant::now();
    let buckets = svg::points_per_series(app.slots.len());
    let probes: Vec<ProbeShown> = app
        .slots
        .iter()
        .map(|slot| {
            let state = slot.state.lock().expect("probe state lock");
            let span = state.span.as_secs_f64();
            let points = state.window.iter().map(|s| {
                let rate = s.value(SignalId::ERROR_RATE).or_else(|| {
                    let requests = s.value(SignalId::REQUESTS)?;
                    let errors = s.value(SignalId::ERRORS)?;
                    (requests > 0.0).then(|| errors / requests)
                });
                Point {
                    ago: now.saturating_duration_since(s.at()).as_secs_f64(),
                    value: s.value(SignalId::LATENCY_MS),
                    rate,
                    mark: mark(s.outcome()),
                }
            });
            let series = Series::downsample(points, span, buckets);
            ProbeShown {
                name: slot.cfg.name.clone(),
                kind: slot.cfg.type_name(),
                level: slot.cfg.level,
                critical: slot.cfg.critical,
                depends_on: slot.cfg.depends_on.clone(),
                consecutive_failures: state.consecutive_failures,
                outcome: state.last.as_ref().map(|o| o.outcome),
                last_at: state.last.as_ref().map(|o| o.at),
                latency_ms: state.last.as_ref().map(|o| o.latency.as_secs_f64() * 1e3),
                error: state.last.as_ref().and_then(|o| o.error.clone()),
                samples: state.window.len(),
                series,
            }
        })
        .collect();
    let page = Page {
        service: &app.config.service,
        warmup_s: app.config.deployment.warmup.as_secs_f64(),
        watch_s: app.config.deployment.watch.as_secs_f64(),
        now: unix_now(),
        view: &view,
        probes: &probes,
        ledger,
    };
    page.write()
}

fn mark(o: Outcome) -> Mark {
    match o {
        Outcome::Ok => Mark::Ok,
        Outcome::Degraded => Mark::Degraded,
        Outcome::Error => Mark::Error,
        Outcome::Failed => Mark::Failed,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Unix seconds as `2026-12-06 12:47:28 UTC`.
pub fn utc(t: f64) -> String {
    crate::utc::text((t.max(0.0) * 1e3) as u64)
}

/// The time of day of Unix seconds `t`: `12:47:28`.
fn clock(t: f64) -> String {
    utc(t)[11..19].to_string()
}

/// How long ago `t` was, from `now`: `12 s ago`, `4 min ago`.
fn ago(t: f64, now: f64) -> String {
    let d = (now - t).max(0.0);
    if d < 120.0 {
        format!("{d:.0} s ago")
    } else if d < 7200.0 {
        format!("{:.0} min ago", d / 60.0)
    } else if d < 172_800.0 {
        format!("{:.1} h ago", d / 3600.0)
    } else {
        format!("{:.0} days ago", d / 86_400.0)
    }
}

/// A number as a person reads it: few digits, no exponent for ordinary
/// magnitudes.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(0.001..1e9).contains(&a) {
        format!("{v:.3e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = if a >= 1.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.4}")
        };
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

struct Page<'a> {
    service: &'a str,
    warmup_s: f64,
    watch_s: f64,
    now: f64,
    view: &'a WatchView,
    probes: &'a [ProbeShown],
    ledger: &'a Ledger,
}

impl Page<'_> {
    fn write(&self) -> String {
        let mut out = String::with_capacity(8192 + self.probes.len() * 2048);
        let (headline, tone) = self.headline();
        let _ = write!(
            out,
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta http-equiv=\"refresh\" content=\"{REFRESH_S}\"><title>"
        );
        escape_into(&mut out, self.service);
        out.push_str(" — backstop</title><style>");
        out.push_str(CSS);
        out.push_str("</style></head><body><header><h1>");
        escape_into(&mut out, self.service);
        let _ = write!(
            out,
            "</h1><div class=\"banner {tone}\" id=\"state\">{headline}</div></header>"
        );
        self.deployment(&mut out);
        self.rollback(&mut out);
        self.history(&mut out);
        self.rules(&mut out);
        self.probes(&mut out);
        self.fleet(&mut out);
        let _ = write!(
            out,
            "<footer>backstop {} · drawn at {} · reloads every {REFRESH_S} s · the same data as <a href=\"/status\">/status</a> · <a href=\"/metrics\">/metrics</a></footer></body></html>",
            env!("CARGO_PKG_VERSION"),
            utc(self.now)
        );
        out.push('\n');
        out
    }

    /// One sentence on where things stand, already escaped, and its tone.
    fn headline(&self) -> (String, &'static str) {
        let v = self.view;
        let mut tone = "";
        let mut s = match &v.deployment {
            None => "No deployment seen yet.".to_string(),
            Some(d) => {
                tone = match d.state {
                    WatchState::Stable => "good",
                    WatchState::RolledBack | WatchState::Unhealthy => "bad",
                    WatchState::Warming | WatchState::Watching => "warn",
                };
                format!(
                    "Deployment <b>{}</b> is <span class=\"b {}\">{}</span>",
                    escape(&d.id),
                    d.state.as_str(),
                    state_words(d.state)
                )
            }
        };
        if let Some(r) = &v.last_rollback {
            let to = r
                .returned_to
                .as_deref()
                .or(r.return_to.as_deref())
                .unwrap_or("?");
            let _ = write!(
                s,
                " · last rollback: <b>{}</b> → <b>{}</b> {} ({}), rule <b>{}</b>",
                escape(&r.deployment),
                escape(to),
                ago(r.intent_at_ms as f64 / 1e3, self.now),
                r.status.as_str().replace('_', " "),
                escape(&r.rule)
            );
            if v.deployment.as_ref().is_some_and(|d| d.id == r.deployment) {
                tone = "bad";
            }
        }
        if v.paused {
            s.push_str(" · <b>paused</b>: no automatic rollback");
            if tone.is_empty() || tone == "good" {
                tone = "warn";
            }
        }
        if let Some(h) = &v.held {
            s.push_str(" · held: ");
            escape_into(&mut s, h);
        }
        (s, tone)
    }

    fn deployment(&self, out: &mut String) {
        let v = self.view;
        out.push_str("<section id=\"deployment\"><h2>Deployment</h2>");
        let Some(d) = &v.deployment else {
            out.push_str(
                "<p class=\"muted\">No deployment seen yet: its id has not been read.</p>",
            );
            self.last_stable(out);
            out.push_str("</section>");
            return;
        };
        let seen = d.first_seen_ms as f64 / 1e3;
        let warm_end = seen + self.warmup_s;
        let watch_end = warm_end + self.watch_s;
        let mut rows = Vec::new();
        // The deployment rolled back, on the same axis when it is recent.
        let rolled = v
            .last_rollback
            .as_ref()
            .filter(|r| r.deployment != d.id)
            .filter(|r| (seen - r.intent_at_ms as f64 / 1e3).abs() < 3600.0);
        if let Some(r) = rolled {
            let mut row = rollback_row(r);
            // Its own warm-up and watch, from the ledger, up to the
            // deployment that replaced it.
            let kept = self.ledger.as_ref().ok().and_then(|l| {
                l.iter()
                    .find(|e| e.id == r.deployment)
                    .map(|e| state_stretches(e, seen))
            });
            if let Some(stretches) = kept.filter(|s| !s.is_empty()) {
                row.stretches = stretches;
            }
            rows.push(row);
        }
        let mut stretches = vec![Stretch {
            from: seen,
            to: warm_end.min(self.now),
            class: "warming",
            label: format!("warming up from {}", utc(seen)),
        }];
        let end_of_watch = d
            .stable_at_ms
            .map(|ms| ms as f64 / 1e3)
            .unwrap_or(watch_end);
        if self.now > warm_end {
            let class = match d.state {
                WatchState::RolledBack => "rolled_back",
                WatchState::Unhealthy => "unhealthy",
                _ => "watching",
            };
            stretches.push(Stretch {
                from: warm_end,
                to: end_of_watch.min(self.now),
                class,
                label: format!("watched from {}", utc(warm_end)),
            });
        }
        if let (WatchState::Stable, Some(ms)) = (d.state, d.stable_at_ms) {
            let at = ms as f64 / 1e3;
            stretches.push(Stretch {
                from: at,
                to: self.now.max(at),
                class: "stable",
                label: format!("stable since {}", utc(at)),
            });
        }
        let mut marks = Vec::new();
        if let Some(r) = v.last_rollback.as_ref().filter(|r| r.deployment == d.id) {
            marks.push((
                r.intent_at_ms as f64 / 1e3,
                "rolled_back",
                format!("rollback asked at {}", utc(r.intent_at_ms as f64 / 1e3)),
            ));
        }
        rows.push(Row {
            name: d.id.clone(),
            stretches,
            marks,
        });
        let from = rows
            .iter()
            .flat_map(|r| {
                r.stretches
                    .iter()
                    .map(|s| s.from)
                    .chain(r.marks.iter().map(|m| m.0))
            })
            .fold(seen, f64::min);
        let to = self.now.max(watch_end.min(self.now + self.watch_s));
        let pad = ((to - from) * 0.02).max(1.0);
        out.push_str(&svg::timeline(
            &rows,
            from - pad,
            to + pad,
            self.now,
            &clock,
        ));
        out.push_str("<dl><dt>deployment</dt><dd>");
        escape_into(out, &d.id);
        let _ = write!(
            out,
            " <span class=\"b {}\">{}</span></dd><dt>first seen</dt><dd>{} ({})</dd><dt>warm-up</dt><dd>{} s, until {}</dd><dt>watch</dt><dd>{} s, until {}</dd>",
            d.state.as_str(),
            state_words(d.state),
            utc(seen),
            ago(seen, self.now),
            num(self.warmup_s),
            utc(warm_end),
            num(self.watch_s),
            utc(watch_end)
        );
        if let Some(ms) = d.stable_at_ms {
            let _ = write!(out, "<dt>stable at</dt><dd>{}</dd>", utc(ms as f64 / 1e3));
        }
        out.push_str("</dl>");
        self.last_stable(out);
        out.push_str("</section>");
    }

    /// The newest deployments of the ledger: who deployed what, each
    /// state with its time, and each rollback with its rule, reason, the
    /// target's answer and whether it took effect.
    fn history(&self, out: &mut String) {
        out.push_str("<section id=\"history\"><h2>Recent deployments</h2>");
        let entries = match self.ledger {
            Ok(e) if e.is_empty() => {
                out.push_str(
                    "<p class=\"muted\">The ledger holds no deployment yet.</p></section>",
                );
                return;
            }
            Ok(e) => e,
            Err(why) => {
                out.push_str("<p class=\"muted\">The ledger could not be read: ");
                escape_into(out, why);
                out.push_str(" (the rest of the page is the agent's own view).</p></section>");
                return;
            }
        };
        out.push_str("<table><tr><th>deployment</th><th>state</th><th>first seen</th><th>states</th><th>rollback</th></tr>");
        for e in entries {
            out.push_str("<tr><td><b>");
            escape_into(out, &e.id);
            out.push_str("</b>");
            let who: Vec<(&str, &str)> = [
                ("commit", e.commit.as_deref()),
                ("by", e.triggered_by.as_deref()),
                ("in", e.environment.as_deref()),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            for (k, v) in who {
                let _ = write!(out, "<br><span class=\"muted\">{k}</span> ");
                escape_into(out, v);
            }
            out.push_str("</td><td>");
            match e.state {
                Some(st) => {
                    let _ = write!(
                        out,
                        "<span class=\"b {}\">{}</span>",
                        st.as_str(),
                        state_words(st)
                    );
                }
                None => out.push_str("<span class=\"b\">registered</span>"),
            }
            out.push_str("</td><td>");
            match e.first_seen_ms {
                Some(ms) => out.push_str(&utc(ms as f64 / 1e3)),
                None => out.push_str("not seen yet"),
            }
            out.push_str("</td><td>");
            escape_into(out, &states_text(e));
            out.push_str("</td><td>");
            match &e.rollback {
                None => out.push('—'),
                Some(r) => {
                    let _ = write!(
                        out,
                        "<span class=\"b {}\">{}</span> {} · rule <b>",
                        r.status.as_str(),
                        r.status.as_str().replace('_', " "),
                        utc(r.intent_at_ms as f64 / 1e3)
                    );
                    escape_into(out, &r.rule);
                    out.push_str("</b><br>");
                    escape_into(out, &r.reason);
                    if !r.detail.is_empty() {
                        out.push_str("<br><span class=\"muted\">target's answer</span> ");
                        escape_into(out, &r.detail);
                    }
                    out.push_str("<br><span class=\"muted\">took effect</span> ");
                    match (&r.returned_to, r.not_effective) {
                        _ if r.status == RollbackStatus::Failed => {
                            out.push_str("no: the call failed")
                        }
                        (_, true) => out.push_str("no: the deployment had not changed"),
                        (Some(to), false) => {
                            out.push_str("returned to ");
                            escape_into(out, to);
                        }
                        (None, false) => out.push_str("not known"),
                    }
                    if let Some(by) = &r.by {
                        out.push_str("<br><span class=\"muted\">by replica</span> ");
                        escape_into(out, by);
                    }
                }
            }
            out.push_str("</td></tr>");
        }
        out.push_str("</table></section>");
    }

    fn last_stable(&self, out: &mut String) {
        out.push_str("<p>Deployment to return to (last stable): ");
        match &self.view.last_stable {
            Some(s) => {
                out.push_str("<b>");
                escape_into(out, s);
                out.push_str("</b>");
            }
            None => out.push_str("<b>none yet</b> — no rollback can be made"),
        }
        if let Some(b) = &self.view.baseline {
            out.push_str("; the rules compare with the baseline of <b>");
            escape_into(out, &b.deployment);
            out.push_str("</b>");
        }
        out.push_str(".</p>");
    }

    fn rollback(&self, out: &mut String) {
        out.push_str("<section id=\"rollback\"><h2>Last rollback</h2>");
        let Some(r) = &self.view.last_rollback else {
            out.push_str("<p class=\"muted\">No rollback recorded.</p></section>");
            return;
        };
        let intent = r.intent_at_ms as f64 / 1e3;
        out.push_str("<dl><dt>deployment</dt><dd>");
        escape_into(out, &r.deployment);
        let _ = write!(
            out,
            " <span class=\"b {}\">{}</span></dd><dt>asked</dt><dd>{} ({})</dd>",
            r.status.as_str(),
            r.status.as_str().replace('_', " "),
            utc(intent),
            ago(intent, self.now)
        );
        if let Some(ms) = r.finished_at_ms {
            let _ = write!(out, "<dt>finished</dt><dd>{}</dd>", utc(ms as f64 / 1e3));
        }
        let rows: [(&str, Option<&str>); 6] = [
            ("rule", Some(&r.rule)),
            ("reason", Some(&r.reason)),
            ("target", Some(&r.target)),
            ("target's answer", Some(&r.detail)),
            ("to return to", r.return_to.as_deref()),
            ("by replica", r.by.as_deref()),
        ];
        for (k, v) in rows {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                let _ = write!(out, "<dt>{k}</dt><dd>");
                escape_into(out, v);
                out.push_str("</dd>");
            }
        }
        out.push_str("<dt>took effect</dt><dd>");
        match (&r.returned_to, r.not_effective) {
            (_, true) => out.push_str(
                "<span class=\"b failed\">no</span> the deployment had not changed after the call (not effective)",
            ),
            (Some(to), false) => {
                out.push_str("<span class=\"b ok\">yes</span> returned to <b>");
                escape_into(out, to);
                out.push_str("</b>");
            }
            (None, false) => out.push_str("not known yet"),
        }
        out.push_str("</dd></dl>");
        if !r.evidence.is_empty() {
            out.push_str("<h3>Evidence</h3><ul class=\"ev\">");
            for e in &r.evidence {
                out.push_str("<li>");
                escape_into(out, &e.summary);
                let mut nums = Vec::new();
                for (k, v) in [
                    ("observed", e.observed),
                    ("threshold", e.threshold),
                    ("baseline", e.baseline),
                    ("ratio", e.ratio),
                    ("p-value", e.p_value),
                ] {
                    if let Some(v) = v {
                        nums.push(format!("{k} {}", num(v)));
                    }
                }
                if let Some(w) = &e.window {
                    nums.push(format!("window {}", escape(w)));
                }
                let _ = write!(out, " <span class=\"muted\">(<code>");
                escape_into(out, &e.expression);
                let _ = write!(out, "</code> on {}", escape(&e.probe));
                if !nums.is_empty() {
                    let _ = write!(out, "; {}", nums.join(", "));
                }
                out.push_str(")</span></li>");
            }
            out.push_str("</ul>");
        }
        out.push_str("</section>");
    }

    fn rules(&self, out: &mut String) {
        out.push_str("<section id=\"rules\"><h2>Rules</h2>");
        if self.view.rules.is_empty() {
            out.push_str("<p class=\"muted\">No rule judged yet.</p></section>");
            return;
        }
        out.push_str("<table><thead><tr><th>rule</th><th>verdict</th><th>condition</th><th>observed</th><th>threshold</th><th>baseline</th><th>ratio</th><th>p-value</th><th>samples now / baseline</th></tr></thead><tbody>");
        for r in &self.view.rules {
            rule_rows(out, r);
        }
        out.push_str("</tbody></table></section>");
    }

    fn probes(&self, out: &mut String) {
        out.push_str("<section id=\"probes\"><h2>Probes</h2>");
        if self.probes.is_empty() {
            out.push_str("<p class=\"muted\">No probe configured.</p>");
        }
        out.push_str("<p class=\"muted\">Each picture: the probe's latency over its window (the highest of each stretch of time), the baseline's band from its minimum to its 95th percentile with its median dashed, a rule's threshold in red, and under it the worst outcome of each stretch (green ok, yellow degraded, purple the probe's own error, red failed).</p><div class=\"probes\">");
        for p in self.probes {
            probe_card(out, p, self.view, self.now);
        }
        out.push_str("</div></section>");
    }

    fn fleet(&self, out: &mut String) {
        let Some(f) = &self.view.fleet else {
            return;
        };
        out.push_str("<section id=\"fleet\"><h2>Fleet</h2><dl>");
        let text = |v: &Value| match v {
            Value::String(s) => escape(s),
            Value::Null => "—".to_string(),
            v => escape(&v.to_string()),
        };
        for (k, label) in [
            ("replica", "this replica"),
            ("coordinator", "coordination store"),
            ("up", "store answers"),
            ("quorum", "quorum"),
            ("deployment", "deployment"),
            ("lease_holder", "lease holder"),
        ] {
            let _ = write!(out, "<dt>{label}</dt><dd>{}</dd>", text(&f[k]));
        }
        out.push_str("</dl>");
        if let Some(live) = f["live"].as_array() {
            out.push_str("<h3>Live replicas</h3><table><thead><tr><th>replica</th><th>deployment</th><th>reported</th><th>votes</th></tr></thead><tbody>");
            for r in live {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>",
                    text(&r["replica"]),
                    text(&r["deployment"]),
                    r["at_ms"]
                        .as_u64()
                        .map(|ms| utc(ms as f64 / 1e3))
                        .unwrap_or_default()
                );
                for v in r["votes"].as_array().into_iter().flatten() {
                    let verdict = v["verdict"].as_str().unwrap_or("");
                    let _ = write!(
                        out,
                        "{} <span class=\"b {}\">{}</span> ",
                        text(&v["rule"]),
                        css_word(verdict),
                        escape(verdict)
                    );
                }
                out.push_str("</td></tr>");
            }
            out.push_str("</tbody></table>");
        }
        if let Some(tally) = f["tally"].as_array().filter(|t| !t.is_empty()) {
            out.push_str("<h3>Tally</h3><table><thead><tr><th>rule</th><th>agree</th><th>live</th><th>quorum reached</th></tr></thead><tbody>");
            for t in tally {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                    text(&t["rule"]),
                    text(&t["agree"]),
                    text(&t["live"]),
                    if t["reaches_quorum"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    }
                );
            }
            out.push_str("</tbody></table>");
        }
        out.push_str("</section>");
    }
}

/// A verdict or state as a class name: only known words, nothing else.
fn css_word(s: &str) -> &'static str {
    match s {
        "holds" => "holds",
        "clear" => "clear",
        "inconclusive" => "inconclusive",
        "held" => "held",
        _ => "",
    }
}

fn state_words(s: WatchState) -> &'static str {
    match s {
        WatchState::Warming => "warming up",
        WatchState::Watching => "being watched",
        WatchState::Stable => "stable",
        WatchState::RolledBack => "rolled back",
        WatchState::Unhealthy => "unhealthy",
    }
}

/// A deployment's states from the ledger as stretches of the timeline,
/// each up to the next, the last up to `end` (Unix seconds).
fn state_stretches(e: &LedgerEntry, end: f64) -> Vec<Stretch> {
    let mut out = Vec::with_capacity(e.states.len());
    for (i, st) in e.states.iter().enumerate() {
        let from = st.at_ms as f64 / 1e3;
        let to = e
            .states
            .get(i + 1)
            .map(|n| n.at_ms as f64 / 1e3)
            .unwrap_or(end)
            .max(from);
        out.push(Stretch {
            from,
            to,
            class: st.state.as_str(),
            label: format!("{} from {}", state_words(st.state), utc(from)),
        });
    }
    out
}

/// A ledger entry's states as a person reads them: `warming 12:01:02 →
/// watching 12:01:32 → rolled back 12:03:10`.
fn states_text(e: &LedgerEntry) -> String {
    e.states
        .iter()
        .map(|st| {
            format!(
                "{} {}",
                st.state.as_str().replace('_', " "),
                clock(st.at_ms as f64 / 1e3)
            )
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

/// The timeline row of a rolled-back deployment: when its rollback was
/// asked and when it ended.
fn rollback_row(r: &RollbackRecord) -> Row {
    let intent = r.intent_at_ms as f64 / 1e3;
    let mut marks = vec![(
        intent,
        "rolled_back",
        format!("rollback asked at {} (rule {})", utc(intent), r.rule),
    )];
    let mut stretches = Vec::new();
    if let Some(ms) = r.finished_at_ms {
        let end = ms as f64 / 1e3;
        stretches.push(Stretch {
            from: intent,
            to: end,
            class: "rolled_back",
            label: format!(
                "rollback from {} to {}: {}",
                utc(intent),
                utc(end),
                r.status.as_str()
            ),
        });
        if let Some(to) = &r.returned_to {
            marks.push((end, "returned", format!("returned to {to} at {}", utc(end))));
        }
    }
    Row {
        name: r.deployment.clone(),
        stretches,
        marks,
    }
}

fn verdict_word(v: &Verdict) -> &'static str {
    match v {
        Verdict::Holds => "holds",
        Verdict::Clear => "clear",
        Verdict::Inconclusive(_) => "inconclusive",
    }
}

fn rule_rows(out: &mut String, r: &RuleView) {
    let verdict_text = match r.verdict {
        "held" => "held by a dependency",
        v => v,
    };
    let one = r.detail.findings.len() == 1;
    // A rule of one comparison is one row; one of several has a row of its
    // own and one per comparison.
    if one {
        out.push_str("<tr><td><b>");
    } else {
        let _ = write!(
            out,
            "<tr><td rowspan=\"{}\"><b>",
            r.detail.findings.len() + 1
        );
    }
    escape_into(out, &r.name);
    out.push_str("</b><br><span class=\"muted\">on ");
    escape_into(out, &r.probe);
    let _ = write!(
        out,
        " · {}{}</span></td><td><span class=\"b {}\">{}</span></td>",
        r.action,
        if r.armed { "" } else { " · not armed" },
        css_word(r.verdict),
        verdict_text
    );
    let note = |out: &mut String| {
        for s in [&r.summary, &r.reason].into_iter().flatten() {
            out.push_str("<br><span class=\"muted\">");
            escape_into(out, s);
            out.push_str("</span>");
        }
    };
    match (one, r.detail.findings.first()) {
        (true, Some(f)) => {
            out.push_str("<td><code>");
            escape_into(out, &f.condition);
            out.push_str("</code>");
            note(out);
            numbers(out, f);
        }
        _ => {
            out.push_str("<td colspan=\"7\"><code>");
            escape_into(out, &r.detail.when);
            out.push_str("</code>");
            note(out);
            if r.detail.findings.is_empty() {
                out.push_str("<br><span class=\"muted\">no numbers yet</span>");
            }
            out.push_str("</td></tr>");
            for f in &r.detail.findings {
                let verdict = verdict_word(&f.verdict);
                let _ = write!(
                    out,
                    "<tr><td><span class=\"b {verdict}\">{verdict}</span></td><td><code>"
                );
                escape_into(out, &f.condition);
                out.push_str("</code>");
                if let Verdict::Inconclusive(why) = &f.verdict {
                    out.push_str("<br><span class=\"muted\">");
                    escape_into(out, why);
                    out.push_str("</span>");
                }
                numbers(out, f);
            }
        }
    }
}

/// The number cells of one comparison, and the end of its row.
fn numbers(out: &mut String, f: &backstop_judge::rules::Finding) {
    let cell = |v: Option<f64>| v.map(num).unwrap_or_else(|| "—".into());
    let samples = match f.baseline_samples {
        Some(b) => format!("{} / {b}", f.samples),
        None => f.samples.to_string(),
    };
    let p = match (f.p_value, f.test) {
        (Some(p), Some(t)) => format!(
            "{} <span class=\"muted\">{}</span>",
            num(p),
            t.replace('_', "-")
        ),
        (Some(p), None) => num(p),
        _ => "—".into(),
    };
    let ratio = f
        .ratio
        .map(|r| format!("{}×", num(r)))
        .unwrap_or_else(|| "—".into());
    // Which baseline judged: the live replicas of the deployment to
    // return to, over the same minutes, or the stored one.
    let mut judged = String::new();
    if let Some(source) = f.baseline_source {
        judged.push_str("<br><span class=\"muted\">");
        judged.push_str(&escape(source));
        if let Some(n) = f.baseline_replicas {
            let _ = write!(judged, ", {n} replica{}", if n == 1 { "" } else { "s" });
        }
        if let Some(d) = &f.baseline_deployment {
            judged.push_str(" on ");
            escape_into(&mut judged, d);
        }
        judged.push_str("</span>");
    }
    let _ = write!(
        out,
        "</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}{judged}</td><td class=\"n\">{ratio}</td><td class=\"n\">{p}</td><td class=\"n\">{samples}</td></tr>",
        cell(f.observed),
        cell(f.threshold),
        cell(f.baseline),
    );
}

/// A rule's threshold on `signal` of probe `probe`, for the chart.
fn threshold(view: &WatchView, probe: &str, signal: &str) -> Option<f64> {
    view.rules
        .iter()
        .filter(|r| r.probe == probe)
        .flat_map(|r| &r.detail.findings)
        .find(|f| f.signal == signal)
        .and_then(|f| f.threshold)
}

fn bands<'a>(b: Option<&'a BaselineView>, probe: &str) -> Option<&'a crate::watch::ProbeBands> {
    b?.probes.get(probe)
}

fn probe_card(out: &mut String, p: &ProbeShown, view: &WatchView, now: f64) {
    let down = matches!(p.outcome, Some(Outcome::Failed));
    let _ = write!(
        out,
        "<div class=\"probe{}\"><h3>",
        if down { " down" } else { "" }
    );
    escape_into(out, &p.name);
    let outcome = p.outcome.map(Outcome::as_str).unwrap_or("not checked yet");
    let _ = write!(
        out,
        " <span class=\"b {}\">{outcome}</span></h3><div class=\"muted\">{} · level {}{}",
        p.outcome.map(Outcome::as_str).unwrap_or(""),
        p.kind,
        p.level,
        if p.critical { " · critical" } else { "" }
    );
    if !p.depends_on.is_empty() {
        out.push_str(" · depends on ");
        escape_into(out, &p.depends_on.join(", "));
    }
    let _ = write!(
        out,
        " · consecutive failures <b>{}</b> · {} samples in the window",
        p.consecutive_failures, p.samples
    );
    if let (Some(at), Some(ms)) = (p.last_at, p.latency_ms) {
        let at = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let _ = write!(out, " · last check {} took {} ms", ago(at, now), num(ms));
    }
    out.push_str("</div>");
    if let Some(e) = &p.error {
        out.push_str("<div>last error: ");
        escape_into(out, e);
        out.push_str("</div>");
    }
    let b = bands(view.baseline.as_deref(), &p.name);
    let latency = b.and_then(|b| b.signals.get("latency_ms"));
    let band = Band {
        low: latency.map(|s| s.min),
        high: latency.map(|s| s.p95),
        mid: latency.map(|s| s.p50),
        threshold: threshold(view, &p.name, "latency_ms"),
    };
    out.push_str(&svg::chart(
        &format!(
            "latency of {} over the last {}",
            p.name,
            svg::span_label(p.series.span)
        ),
        "ms",
        p.series.span,
        p.series.buckets,
        &p.series.values,
        &p.series.marks,
        band,
    ));
    if let Some(s) = latency {
        let _ = write!(
            out,
            "<div class=\"muted\">baseline {}–{} ms (min–p95), median {} ms</div>",
            num(s.min),
            num(s.p95),
            num(s.p50)
        );
    }
    let rate_base = b.and_then(|b| b.error_rate);
    if !p.series.rates.is_empty() {
        let band = Band {
            mid: rate_base,
            threshold: threshold(view, &p.name, "error_rate"),
            ..Band::default()
        };
        out.push_str(&svg::chart(
            &format!("error rate of {}", p.name),
            "",
            p.series.span,
            p.series.buckets,
            &p.series.rates,
            &[],
            band,
        ));
        if let Some(r) = rate_base {
            let _ = write!(
                out,
                "<div class=\"muted\">error rate; baseline {}</div>",
                num(r)
            );
        }
    }
    out.push_str("</div>");
}

#[cfg(test)]
mod tests;
