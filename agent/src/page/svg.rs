//! The pictures of the agent's page, drawn as inline SVG by the agent: a
//! probe's series over its window with the baseline's band behind it, and
//! the deployment's watch on a timeline. Pure functions of numbers; no
//! `style` attributes (the page's Content-Security-Policy allows only its
//! one stylesheet), colours come from classes.

use std::fmt::Write;

/// The most points drawn per series, whatever the number of samples.
pub const MAX_POINTS: usize = 120;

/// The fewest: what an agent of many probes still draws per series.
pub const MIN_POINTS: usize = 24;

/// The points drawn per series when the page has `series` of them: at
/// most [`MAX_POINTS`], fewer on a page of many probes so that it stays
/// small (about `BUDGET` points in all), never fewer than [`MIN_POINTS`].
pub fn points_per_series(series: usize) -> usize {
    const BUDGET: usize = 6000;
    (BUDGET / series.max(1)).clamp(MIN_POINTS, MAX_POINTS)
}

/// Writes `s` with `& < > " '` escaped, fit for HTML text and attribute
/// values alike.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// `s`, HTML-escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

/// How bad a check went, for the strip under a chart: the worst of a
/// bucket is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    Ok,
    Degraded,
    Error,
    Failed,
}

impl Mark {
    fn class(self) -> &'static str {
        match self {
            Mark::Ok => "ok",
            Mark::Degraded => "dg",
            Mark::Error => "er",
            Mark::Failed => "fl",
        }
    }
}

/// One sample as the page draws it: seconds before now (0 is now), and
/// the values it had.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub ago: f64,
    pub value: Option<f64>,
    pub rate: Option<f64>,
    pub mark: Mark,
}

/// A window brought down to at most `buckets` (up to [`MAX_POINTS`]) of equal time
/// over `span` seconds: each bucket keeps the highest value and rate of
/// its samples (a spike stays visible) and its worst outcome. Buckets
/// without samples are left out; samples outside the span are dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub span: f64,
    pub buckets: usize,
    /// (bucket's middle in seconds ago, highest value)
    pub values: Vec<(f64, f64)>,
    pub rates: Vec<(f64, f64)>,
    pub marks: Vec<(f64, Mark)>,
}

impl Series {
    pub fn downsample(points: impl IntoIterator<Item = Point>, span: f64, buckets: usize) -> Self {
        let buckets = buckets.clamp(1, MAX_POINTS);
        let span = if span.is_finite() && span > 0.0 {
            span
        } else {
            1.0
        };
        let width = span / buckets as f64;
        let mut value = [f64::NAN; MAX_POINTS];
        let mut rate = [f64::NAN; MAX_POINTS];
        let mut mark: [Option<Mark>; MAX_POINTS] = [None; MAX_POINTS];
        for p in points {
            if !(0.0..=span).contains(&p.ago) {
                continue;
            }
            // Bucket 0 is the oldest.
            let i = (((span - p.ago) / width) as usize).min(buckets - 1);
            if let Some(v) = p.value.filter(|v| v.is_finite()) {
                value[i] = if value[i].is_nan() {
                    v
                } else {
                    value[i].max(v)
                };
            }
            if let Some(r) = p.rate.filter(|r| r.is_finite()) {
                rate[i] = if rate[i].is_nan() { r } else { rate[i].max(r) };
            }
            mark[i] = Some(mark[i].map_or(p.mark, |m| m.max(p.mark)));
        }
        let mid = |i: usize| span - (i as f64 + 0.5) * width;
        let keep = |a: &[f64; MAX_POINTS]| -> Vec<(f64, f64)> {
            (0..buckets)
                .filter(|&i| !a[i].is_nan())
                .map(|i| (mid(i), a[i]))
                .collect()
        };
        Series {
            span,
            buckets,
            values: keep(&value),
            rates: keep(&rate),
            marks: (0..buckets)
                .filter_map(|i| mark[i].map(|m| (mid(i), m)))
                .collect(),
        }
    }
}

/// What is drawn behind a series: the baseline's usual range and its
/// median, and a rule's threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Band {
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub mid: Option<f64>,
    pub threshold: Option<f64>,
}

const W: f64 = 600.0;
const H: f64 = 110.0;
/// Left margin for the value labels, and the plot's height.
const LEFT: f64 = 52.0;
const PLOT: f64 = 84.0;

/// A number for an axis label: short, never in exponent form.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// A line chart of `points` (seconds ago, value) over `span` seconds, the
/// band behind it, and the outcome strip under it. `unit` follows the
/// axis labels; `label` names the picture for screen readers.
pub fn chart(
    label: &str,
    unit: &str,
    span: f64,
    buckets: usize,
    points: &[(f64, f64)],
    marks: &[(f64, Mark)],
    band: Band,
) -> String {
    let mut out = String::with_capacity(600 + points.len() * 14 + marks.len() * 48);
    let top = points
        .iter()
        .map(|p| p.1)
        .chain([band.high, band.mid, band.threshold].into_iter().flatten())
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let span = if span.is_finite() && span > 0.0 {
        span
    } else {
        1.0
    };
    let x = |ago: f64| LEFT + (W - LEFT - 4.0) * (1.0 - (ago / span).clamp(0.0, 1.0));
    let y = |v: f64| 4.0 + PLOT * (1.0 - (v / top).clamp(0.0, 1.0));
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img"><title>"#
    );
    escape_into(&mut out, label);
    out.push_str("</title>");
    if let (Some(lo), Some(hi)) = (band.low, band.high) {
        if lo.is_finite() && hi.is_finite() && hi >= lo {
            let _ = write!(
                out,
                r#"<rect class="band" x="{LEFT}" y="{:.0}" width="{:.0}" height="{:.0}"/>"#,
                y(hi),
                W - LEFT - 4.0,
                (y(lo) - y(hi)).max(1.0),
            );
        }
    }
    for (class, v) in [("mid", band.mid), ("limit", band.threshold)] {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            let _ = write!(
                out,
                r#"<line class="{class}" x1="{LEFT}" x2="{:.0}" y1="{:.0}" y2="{:.0}"/>"#,
                W - 4.0,
                y(v),
                y(v)
            );
        }
    }
    if !points.is_empty() {
        // One path, its steps relative: shorter than absolute points.
        out.push_str(r#"<path class="line" d=""#);
        let mut at = (0.0, 0.0);
        for (i, (ago, v)) in points.iter().enumerate() {
            let p = (x(*ago).round(), y(*v).round());
            if i == 0 {
                let _ = write!(out, "M{} {}", p.0, p.1);
            } else {
                // `+ 0.0` turns a -0 into 0.
                let (dx, dy) = (p.0 - at.0 + 0.0, p.1 - at.1 + 0.0);
                if i == 1 {
                    out.push('l');
                } else if dx >= 0.0 {
                    out.push(' ');
                }
                let _ = write!(out, "{dx}");
                if dy >= 0.0 {
                    out.push(' ');
                }
                let _ = write!(out, "{dy}");
            }
            at = p;
        }
        out.push_str(r#""/>"#);
        if points.len() == 1 {
            let (ago, v) = points[0];
            let _ = write!(
                out,
                r#"<circle class="dot" cx="{:.0}" cy="{:.0}" r="2"/>"#,
                x(ago),
                y(v)
            );
        }
    } else {
        let _ = write!(
            out,
            r#"<text class="none" x="{:.0}" y="{:.0}">no samples in the window</text>"#,
            LEFT + 12.0,
            4.0 + PLOT / 2.0
        );
    }
    // The outcome strip: the worst outcome of each bucket, one cell per
    // run of buckets of the same outcome (buckets without a check between
    // two of one outcome are part of its run: a probe checked less often
    // than a bucket's width still draws one cell).
    let cell = span / buckets.max(1) as f64;
    let mut i = 0;
    while i < marks.len() {
        let (start, m) = marks[i];
        let mut end = start;
        while i + 1 < marks.len() && marks[i + 1].1 == m {
            i += 1;
            end = marks[i].0;
        }
        let (a, b) = (x(start + cell / 2.0), x(end - cell / 2.0));
        let _ = write!(
            out,
            r#"<rect class="{}" x="{a:.0}" y="{:.0}" width="{:.0}" height="6"/>"#,
            m.class(),
            PLOT + 8.0,
            (b - a).max(1.0)
        );
        i += 1;
    }
    let _ = write!(
        out,
        r#"<text x="{:.0}" y="12" class="end">{} {}</text><text x="{:.0}" y="{:.0}" class="end">0</text><text x="{LEFT}" y="{:.0}">−{}</text><text x="{:.0}" y="{:.0}" class="end">now</text></svg>"#,
        LEFT - 4.0,
        short(top),
        escape(unit),
        LEFT - 4.0,
        4.0 + PLOT,
        H - 1.0,
        span_label(span),
        W - 4.0,
        H - 1.0
    );
    out
}

/// `span` seconds as a short duration: `45s`, `5m`, `2h`.
pub fn span_label(span: f64) -> String {
    if span < 120.0 {
        format!("{span:.0}s")
    } else if span < 7200.0 {
        format!("{:.0}m", span / 60.0)
    } else {
        format!("{:.0}h", span / 3600.0)
    }
}

/// One stretch of a timeline row.
#[derive(Debug, Clone, PartialEq)]
pub struct Stretch {
    /// Unix seconds.
    pub from: f64,
    pub to: f64,
    /// `warming`, `watching`, `stable`, `rolled_back` or `unhealthy`.
    pub class: &'static str,
    pub label: String,
}

/// One row of the timeline: a deployment, its stretches and its marks.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub stretches: Vec<Stretch>,
    /// (Unix seconds, class, label)
    pub marks: Vec<(f64, &'static str, String)>,
}

/// The deployments' rows on one time axis from `from` to `to` (Unix
/// seconds), with `now` marked; the axis is labelled with `clock`, which
/// turns Unix seconds into a time of day.
pub fn timeline(
    rows: &[Row],
    from: f64,
    to: f64,
    now: f64,
    clock: &dyn Fn(f64) -> String,
) -> String {
    const TW: f64 = 900.0;
    const NAME: f64 = 150.0;
    const ROW: f64 = 30.0;
    let h = 24.0 + ROW * rows.len() as f64;
    let len = if to > from { to - from } else { 1.0 };
    let x = |t: f64| NAME + (TW - NAME - 10.0) * ((t - from) / len).clamp(0.0, 1.0);
    let mut out = String::with_capacity(512 + rows.len() * 400);
    let _ = write!(
        out,
        r#"<svg class="timeline" viewBox="0 0 {TW} {h:.0}" role="img" aria-label="the deployments on a timeline"><title>the deployments on a timeline</title>"#
    );
    for (i, row) in rows.iter().enumerate() {
        let top = 4.0 + ROW * i as f64;
        out.push_str(r#"<text class="name" x="0" y=""#);
        let _ = write!(out, r#"{:.0}">"#, top + 15.0);
        // Long ids are cut to fit the column; the full id is in the text.
        let name: String = row.name.chars().take(20).collect();
        escape_into(&mut out, &name);
        if name.len() < row.name.len() {
            out.push('…');
        }
        out.push_str("</text>");
        for s in &row.stretches {
            let (a, b) = (x(s.from), x(s.to.max(s.from)));
            let _ = write!(
                out,
                r#"<rect class="{}" x="{a:.1}" y="{:.0}" width="{:.1}" height="18"><title>"#,
                s.class,
                top + 2.0,
                (b - a).max(2.0)
            );
            escape_into(&mut out, &s.label);
            out.push_str("</title></rect>");
        }
        for (t, class, label) in &row.marks {
            let _ = write!(
                out,
                r#"<path class="{class}" d="M{:.1} {:.0}l-6 -8h12z"><title>"#,
                x(*t),
                top + 22.0
            );
            escape_into(&mut out, label);
            out.push_str("</title></path>");
        }
    }
    let base = 4.0 + ROW * rows.len() as f64;
    let _ = write!(
        out,
        r#"<line class="now" x1="{0:.1}" x2="{0:.1}" y1="0" y2="{1:.0}"/><text x="{NAME}" y="{2:.0}">{3}</text><text class="end" x="{4:.0}" y="{2:.0}">{5}</text><text class="end" x="{6:.1}" y="10">now</text></svg>"#,
        x(now),
        base,
        base + 14.0,
        escape(&clock(from)),
        TW - 10.0,
        escape(&clock(to)),
        x(now) - 3.0,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ago: f64, v: f64, mark: Mark) -> Point {
        Point {
            ago,
            value: Some(v),
            rate: None,
            mark,
        }
    }

    #[test]
    fn a_page_of_many_probes_draws_fewer_points_per_series() {
        assert_eq!(points_per_series(0), MAX_POINTS);
        assert_eq!(points_per_series(10), MAX_POINTS);
        assert_eq!(points_per_series(200), 30);
        assert_eq!(points_per_series(100_000), MIN_POINTS);
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
    }

    fn s_points() -> Vec<Point> {
        (0..1000)
            .map(|i| p(i as f64 * 0.3, 1.0, Mark::Ok))
            .collect()
    }

    #[test]
    fn a_full_window_comes_down_to_at_most_the_cap_and_keeps_its_spike_and_worst_outcome() {
        let n = 8192;
        let span = 300.0;
        let points = (0..n).map(|i| {
            let ago = span * i as f64 / n as f64;
            let (v, m) = if i == 4000 {
                (900.0, Mark::Failed)
            } else {
                (10.0, Mark::Ok)
            };
            p(ago, v, m)
        });
        let s = Series::downsample(points, span, MAX_POINTS);
        assert_eq!(s.values.len(), MAX_POINTS);
        assert_eq!(s.marks.len(), MAX_POINTS);
        assert!(s.rates.is_empty());
        assert_eq!(s.values.iter().filter(|v| v.1 == 900.0).count(), 1);
        assert_eq!(
            s.marks.iter().filter(|m| m.1 == Mark::Failed).count(),
            1,
            "the failed check is kept in its bucket"
        );
        assert_eq!(Series::downsample(s_points(), span, 30).values.len(), 30);
        // Oldest first, every point within the span.
        assert!(s.values.windows(2).all(|w| w[0].0 > w[1].0));
        assert!(s.values.iter().all(|v| (0.0..=span).contains(&v.0)));
    }

    #[test]
    fn samples_outside_the_span_and_non_numbers_are_dropped() {
        let s = Series::downsample(
            [
                p(-1.0, 5.0, Mark::Ok),
                p(301.0, 5.0, Mark::Ok),
                p(10.0, f64::NAN, Mark::Error),
                Point {
                    ago: 20.0,
                    value: None,
                    rate: Some(0.25),
                    mark: Mark::Degraded,
                },
            ],
            300.0,
            MAX_POINTS,
        );
        assert!(s.values.is_empty());
        assert_eq!(s.rates.len(), 1);
        assert_eq!(s.marks.len(), 2);
        // A span that is no span does not divide by zero.
        let s = Series::downsample([p(0.0, 1.0, Mark::Ok)], 0.0, 0);
        assert_eq!(s.values.len(), 1);
        assert!(s.values[0].1 == 1.0);
    }

    /// The absolute points of the relative path `d` ("M x y l dx dy …").
    fn path_points(d: &str) -> Vec<(f64, f64)> {
        let d = d.strip_prefix('M').unwrap();
        let (first, rest) = d.split_once('l').unwrap_or((d, ""));
        let nums = |s: &str| -> Vec<f64> {
            s.replace('-', " -")
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect()
        };
        let f = nums(first);
        let mut at = (f[0], f[1]);
        let mut out = vec![at];
        for step in nums(rest).chunks(2) {
            at = (at.0 + step[0], at.1 + step[1]);
            out.push(at);
        }
        out
    }

    /// The numbers of every coordinate in `svg`.
    fn coordinates(svg: &str) -> Vec<f64> {
        let mut out = Vec::new();
        for part in svg.split("class=\"line\" d=\"").skip(1) {
            for (x, y) in path_points(part.split('"').next().unwrap()) {
                out.extend([x, y]);
            }
        }
        for attr in [
            "x=\"",
            "y=\"",
            "cx=\"",
            "cy=\"",
            "y1=\"",
            "y2=\"",
            "points=\"",
        ] {
            for part in svg.split(attr).skip(1) {
                let value = part.split('"').next().unwrap();
                for n in value.split([' ', ',']) {
                    out.push(n.parse::<f64>().unwrap_or_else(|_| panic!("{n} in {attr}")));
                }
            }
        }
        out
    }

    #[test]
    fn a_chart_stays_within_its_box_whatever_the_values() {
        let points: Vec<_> = (0..MAX_POINTS)
            .map(|i| (i as f64, if i % 7 == 0 { 1e9 } else { i as f64 }))
            .collect();
        let marks: Vec<_> = (0..MAX_POINTS).map(|i| (i as f64, Mark::Failed)).collect();
        let band = Band {
            low: Some(2.0),
            high: Some(40.0),
            mid: Some(10.0),
            threshold: Some(80.0),
        };
        let svg = chart(
            "latency of <api>",
            "ms",
            120.0,
            MAX_POINTS,
            &points,
            &marks,
            band,
        );
        let line = svg
            .split("class=\"line\" d=\"")
            .nth(1)
            .map(|d| path_points(d.split('"').next().unwrap()))
            .unwrap();
        assert_eq!(line.len(), MAX_POINTS, "every point drawn");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("latency of &lt;api&gt;"));
        assert!(!svg.contains("style="), "no inline style under the CSP");
        for c in coordinates(&svg) {
            assert!((0.0..=W).contains(&c), "{c} outside the box");
        }
        assert!(svg.contains(r#"class="band""#));
        assert!(svg.contains(r#"class="limit""#));
        assert_eq!(
            svg.matches(r#"class="fl""#).count(),
            1,
            "one run of failures, one cell"
        );
    }

    #[test]
    fn a_strip_of_sparse_checks_of_one_outcome_is_one_cell() {
        let marks: Vec<_> = (0..30)
            .map(|i| {
                (
                    60.0 - 2.0 * i as f64,
                    if i < 20 { Mark::Ok } else { Mark::Failed },
                )
            })
            .collect();
        let svg = chart(
            "x",
            "ms",
            60.0,
            MAX_POINTS,
            &[(1.0, 1.0)],
            &marks,
            Band::default(),
        );
        assert_eq!(svg.matches(r#"class="ok""#).count(), 1);
        assert_eq!(svg.matches(r#"class="fl""#).count(), 1);
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = chart("latency", "ms", 60.0, 60, &[], &[], Band::default());
        assert!(svg.contains("no samples in the window"));
        assert!(!svg.contains("class=\"line\""));
        assert!(!svg.contains("band"));
        for c in coordinates(&svg) {
            assert!((0.0..=W).contains(&c));
        }
    }

    #[test]
    fn a_timeline_escapes_its_names_and_stays_on_its_axis() {
        let rows = vec![Row {
            name: "<v2>".into(),
            stretches: vec![Stretch {
                from: 50.0,
                to: 500.0,
                class: "watching",
                label: "watching \"v2\"".into(),
            }],
            marks: vec![(2000.0, "rolled_back", "rolled back".into())],
        }];
        let svg = timeline(&rows, 100.0, 1000.0, 900.0, &|t| format!("t{t}"));
        assert!(svg.contains("&lt;v2&gt;"));
        assert!(svg.contains("watching &quot;v2&quot;"));
        assert!(!svg.contains("<v2>"));
        assert!(svg.contains("t100") && svg.contains("t1000"));
        for c in coordinates(&svg) {
            assert!((0.0..=900.0).contains(&c), "{c}");
        }
        // No rows at all is still a picture.
        let svg = timeline(&[], 0.0, 0.0, 0.0, &|_| String::new());
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
