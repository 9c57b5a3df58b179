//! The statistics behind `Nx baseline`: is the current deployment's signal
//! worse than the baseline's by more than a factor, beyond what noise
//! explains? Two tests, both one-sided because only worse counts:
//!
//! - [`mann_whitney`]: the Mann-Whitney U test (normal approximation with
//!   tie and continuity correction) on raw samples, for latency-like signals
//!   whose distribution has a long tail no mean or t-test copes with.
//! - [`fisher`]: Fisher's exact test on two proportions (errors out of
//!   requests), exact at any count, so a baseline with no error at all and a
//!   handful of errors now are judged correctly.
//!
//! [`shift`] and [`rate_shift`] add the effect size: the regression must be
//! larger than the factor on the median (or the pooled rate) *and*
//! significant at `alpha`; [`quantile_shift`] does the same on another
//! quantile (`p95_ms > 2x baseline`), with the quantile test beside the U
//! test. A significance test alone would flag a 2%
//! slowdown with enough samples; an effect size alone would flag noise.

use serde::Serialize;

/// Significance level of a regression: 0.01, i.e. 99% confidence, stricter
/// than Kayenta's default 98%.
pub const DEFAULT_ALPHA: f64 = 0.01;

/// Fewest samples per side for the U test.
pub const DEFAULT_MIN_SAMPLES: usize = 20;

/// Which way is worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worse {
    /// Larger is worse (`>`, `>=`).
    Larger,
    /// Smaller is worse (`<`, `<=`).
    Smaller,
}

/// The result of a one-sided U test that `current` is larger than `baseline`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UTest {
    /// U of the current samples: pairs where current > baseline, ties half.
    pub u: f64,
    pub z: f64,
    pub p_value: f64,
}

/// One-sided Mann-Whitney U test of "current tends to be larger than
/// baseline", with the normal approximation, average ranks for ties, the
/// tie-corrected variance and a continuity correction of 0.5. Meant for 20
/// samples a side or more, where the approximation is good. `None` when a
/// side is empty or a value is not a number.
pub fn mann_whitney(current: &[f64], baseline: &[f64]) -> Option<UTest> {
    let (n1, n2) = (current.len(), baseline.len());
    if n1 == 0 || n2 == 0 || current.iter().chain(baseline).any(|x| x.is_nan()) {
        return None;
    }
    let mut all: Vec<(f64, bool)> = current
        .iter()
        .map(|&x| (x, true))
        .chain(baseline.iter().map(|&x| (x, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len();
    let mut rank_sum = 0.0;
    let mut ties = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && all[j].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i) as f64;
        ties += t * t * t - t;
        // Ranks i+1 ..= j, averaged.
        let rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += rank * all[i..j].iter().filter(|e| e.1).count() as f64;
        i = j;
    }
    let (n1f, n2f, nf) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum - n1f * (n1f + 1.0) / 2.0;
    let mean = n1f * n2f / 2.0;
    let var = n1f * n2f / 12.0 * ((nf + 1.0) - ties / (nf * (nf - 1.0)));
    if var <= 0.0 {
        // Every value equal: no evidence either way.
        return Some(UTest {
            u,
            z: 0.0,
            p_value: 1.0,
        });
    }
    let z = (u - mean - 0.5) / var.sqrt();
    Some(UTest {
        u,
        z,
        p_value: normal_sf(z),
    })
}

/// The most requests, both sides together, [`fisher`] counts exactly.
pub const FISHER_MAX_REQUESTS: f64 = 1e9;

/// One-sided Fisher exact test of "the current error proportion is larger
/// than the baseline's": P(X >= current_errors) where X is hypergeometric
/// (all requests, all errors, current requests drawn). Counts are rounded.
/// Counts that are not finite give no evidence (1); more than
/// [`FISHER_MAX_REQUESTS`] requests in all are scaled down to that many,
/// keeping both proportions, so the sums cannot overflow and the tail sums
/// stay short.
pub fn fisher(
    current_errors: f64,
    current_requests: f64,
    base_errors: f64,
    base_requests: f64,
) -> f64 {
    let counts = [current_errors, current_requests, base_errors, base_requests];
    if counts.iter().any(|c| !c.is_finite()) {
        return 1.0;
    }
    let all = current_requests.max(0.0) + base_requests.max(0.0);
    let scale = if all > FISHER_MAX_REQUESTS {
        FISHER_MAX_REQUESTS / all
    } else {
        1.0
    };
    let r = |x: f64| (x.max(0.0) * scale).round() as u64;
    let (x, n1) = (r(current_errors), r(current_requests));
    let (e0, n0) = (r(base_errors), r(base_requests));
    let (x, e0) = (x.min(n1), e0.min(n0));
    let total = n0 + n1;
    let errors = x + e0;
    if total == 0 || n1 == 0 || errors == 0 {
        return 1.0;
    }
    let lo = n1.saturating_sub(total - errors);
    let hi = errors.min(n1);
    let log_pmf =
        |k: u64| ln_choose(errors, k) + ln_choose(total - errors, n1 - k) - ln_choose(total, n1);
    // pmf(k+1) / pmf(k). For lo <= k, total - errors + k >= n1: written in
    // this order the subtraction never goes below zero, even when errors
    // and current requests together outnumber all requests.
    let up = |k: u64| {
        ((errors - k) as f64 * (n1 - k) as f64)
            / ((k + 1) as f64 * (total - errors + k + 1 - n1) as f64)
    };
    let mode = ((n1 + 1) as f64 * (errors + 1) as f64 / (total + 2) as f64).floor() as u64;
    if x <= lo {
        return 1.0;
    }
    if x > mode {
        // Upper tail from x: terms only shrink.
        let mut term = 1.0;
        let mut sum = 1.0;
        let mut k = x;
        while k < hi {
            term *= up(k);
            sum += term;
            k += 1;
            if term < sum * 1e-17 {
                break;
            }
        }
        (log_pmf(x) + sum.ln()).exp().min(1.0)
    } else {
        // 1 - lower tail up to x - 1, summed downward: terms only shrink.
        let mut term = 1.0;
        let mut sum = 1.0;
        let mut k = x - 1;
        while k > lo {
            term /= up(k - 1);
            sum += term;
            k -= 1;
            if term < sum * 1e-17 {
                break;
            }
        }
        (1.0 - (log_pmf(x - 1) + sum.ln()).exp()).clamp(0.0, 1.0)
    }
}

/// What [`shift`] and [`rate_shift`] found: the numbers a person needs, and
/// whether the current side is worse beyond both the threshold and noise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Shift {
    /// The current median (or pooled rate).
    pub current: f64,
    /// The baseline median (or pooled rate).
    pub baseline: f64,
    /// `factor × baseline`, what `current` must exceed.
    pub threshold: f64,
    /// `current / baseline`; `None` when the baseline is 0.
    pub ratio: Option<f64>,
    /// One-sided, in the worse direction.
    pub p_value: f64,
    /// Samples (or requests) on each side.
    pub n_current: f64,
    pub n_baseline: f64,
    /// Beyond the threshold in the worse direction.
    pub exceeds: bool,
    /// `p_value < alpha`.
    pub significant: bool,
}

impl Shift {
    /// A regression: both beyond the threshold and significant.
    pub fn regressed(&self) -> bool {
        self.exceeds && self.significant
    }
}

/// At least `min_samples` (and one) on each side, else why not.
fn enough(current: &[f64], baseline: &[f64], min_samples: usize) -> Result<(), String> {
    let min = min_samples.max(1);
    if current.len() < min || baseline.len() < min {
        return Err(format!(
            "too few samples: {} current and {} baseline, need {min} each",
            current.len(),
            baseline.len()
        ));
    }
    Ok(())
}

/// The one-sided U test that `current` is worse than `baseline`.
fn u_test(current: &[f64], baseline: &[f64], worse: Worse) -> Option<UTest> {
    match worse {
        Worse::Larger => mann_whitney(current, baseline),
        Worse::Smaller => mann_whitney(baseline, current),
    }
}

/// Compares raw samples. `inclusive` makes the threshold `>=` (or `<=`).
/// Too few samples on either side is an `Err` with the reason.
pub fn shift(
    current: &[f64],
    baseline: &[f64],
    factor: f64,
    worse: Worse,
    inclusive: bool,
    alpha: f64,
    min_samples: usize,
) -> Result<Shift, String> {
    enough(current, baseline, min_samples)?;
    let cur = median(current).expect("not empty");
    let base = median(baseline).expect("not empty");
    let test =
        u_test(current, baseline, worse).ok_or_else(|| "a sample is not a number".to_string())?;
    Ok(finish(
        cur,
        base,
        factor,
        worse,
        inclusive,
        test.p_value,
        alpha,
        (current.len() as f64, baseline.len() as f64),
    ))
}

/// Compares one quantile (`q`, e.g. 0.95 for `p95_ms`) of raw samples:
/// the effect is on that quantile of each side, and the evidence is the
/// stronger of two one-sided tests, Bonferroni-corrected so that together
/// they stay at `alpha`: the quantile test (more current samples beyond the
/// baseline's `q` quantile than the baseline's own, by Fisher's exact test:
/// a tail that grew while the middle did not) and the U test (the whole
/// distribution moved, which moves every quantile). Too few samples on
/// either side is an `Err` with the reason.
#[allow(clippy::too_many_arguments)]
pub fn quantile_shift(
    current: &[f64],
    baseline: &[f64],
    q: f64,
    factor: f64,
    worse: Worse,
    inclusive: bool,
    alpha: f64,
    min_samples: usize,
) -> Result<Shift, String> {
    enough(current, baseline, min_samples)?;
    if current.iter().chain(baseline).any(|x| x.is_nan()) {
        return Err("a sample is not a number".into());
    }
    let cur = quantile(current, q).expect("not empty");
    let base = quantile(baseline, q).expect("not empty");
    let beyond = |xs: &[f64]| {
        xs.iter()
            .filter(|&&x| match worse {
                Worse::Larger => x > base,
                Worse::Smaller => x < base,
            })
            .count() as f64
    };
    let (n1, n0) = (current.len() as f64, baseline.len() as f64);
    let p_tail = fisher(beyond(current), n1, beyond(baseline), n0);
    let p_u = u_test(current, baseline, worse).map_or(1.0, |t| t.p_value);
    let p_value = (2.0 * p_tail.min(p_u)).min(1.0);
    Ok(finish(
        cur,
        base,
        factor,
        worse,
        inclusive,
        p_value,
        alpha,
        (n1, n0),
    ))
}

/// Errors out of requests, summed over a window or a whole watch.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct Counts {
    pub requests: f64,
    pub errors: f64,
}

impl Counts {
    pub fn rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.errors / self.requests)
    }
}

/// Compares error proportions. Fewer than `min_requests` on either side is
/// an `Err` with the reason.
pub fn rate_shift(
    current: Counts,
    baseline: Counts,
    factor: f64,
    worse: Worse,
    inclusive: bool,
    alpha: f64,
    min_requests: f64,
) -> Result<Shift, String> {
    let min = min_requests.max(1.0);
    if current.requests < min || baseline.requests < min {
        return Err(format!(
            "too few requests: {} current and {} baseline, need {min} each",
            current.requests, baseline.requests
        ));
    }
    let cur = current.rate().expect("requests > 0");
    let base = baseline.rate().expect("requests > 0");
    let p = match worse {
        Worse::Larger => fisher(
            current.errors,
            current.requests,
            baseline.errors,
            baseline.requests,
        ),
        Worse::Smaller => fisher(
            baseline.errors,
            baseline.requests,
            current.errors,
            current.requests,
        ),
    };
    Ok(finish(
        cur,
        base,
        factor,
        worse,
        inclusive,
        p,
        alpha,
        (current.requests, baseline.requests),
    ))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    cur: f64,
    base: f64,
    factor: f64,
    worse: Worse,
    inclusive: bool,
    p_value: f64,
    alpha: f64,
    (n_current, n_baseline): (f64, f64),
) -> Shift {
    let threshold = factor * base;
    let exceeds = match (worse, inclusive) {
        (Worse::Larger, false) => cur > threshold,
        (Worse::Larger, true) => cur >= threshold,
        (Worse::Smaller, false) => cur < threshold,
        (Worse::Smaller, true) => cur <= threshold,
    };
    Shift {
        current: cur,
        baseline: base,
        threshold,
        ratio: (base != 0.0).then(|| cur / base),
        p_value,
        n_current,
        n_baseline,
        exceeds,
        significant: p_value < alpha,
    }
}

/// The median (mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    quantile(xs, 0.5)
}

/// The `q` quantile with linear interpolation between closest ranks.
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// P(Z > z) for a standard normal Z.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function, with a relative error below 1.2e-7
/// everywhere (Numerical Recipes' Chebyshev fit), which keeps tiny p-values
/// accurate too.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut f = 1.0f64;
        for n in 1..30u32 {
            f *= n as f64;
            assert!(close(ln_gamma(n as f64 + 1.0), f.ln(), 1e-12), "{n}");
        }
        assert!(close(
            ln_gamma(0.5),
            std::f64::consts::PI.sqrt().ln(),
            1e-12
        ));
    }

    #[test]
    fn normal_tail_matches_tables() {
        let cases = [
            (0.0, 0.5),
            (1.0, 0.158_655_253_931_457_05),
            (1.959_963_984_540_054, 0.025),
            (2.326_347_874_040_841, 0.01),
            (-1.644_853_626_951_472_2, 0.95),
            (5.0, 2.866_515_718_791_939e-7),
            (8.0, 6.220_960_574_271_785e-16),
        ];
        for (z, p) in cases {
            assert!(
                close(normal_sf(z), p, 2e-7),
                "sf({z}) = {} not {p}",
                normal_sf(z)
            );
        }
    }

    #[test]
    fn u_statistic_matches_a_textbook_example() {
        // Two groups with no ties: U counts the pairs where the first wins.
        let a = [19.0, 22.0, 16.0, 29.0, 24.0];
        let b = [20.0, 11.0, 17.0, 12.0];
        let t = mann_whitney(&a, &b).unwrap();
        assert_eq!(t.u, 17.0);
        let t = mann_whitney(&b, &a).unwrap();
        assert_eq!(t.u, 3.0);
    }

    #[test]
    #[allow(clippy::approx_constant)] // 3.14 is a measurement, not π
    fn u_test_matches_the_reference_implementation() {
        // Reference values from scipy.stats.mannwhitneyu(x, y,
        // alternative="greater", method="asymptotic", use_continuity=True),
        // which applies the same tie correction.
        let x = [
            1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30, 1.30, 2.01, 1.55, 3.06, 0.90,
            1.88, 2.48, 1.55, 2.20, 1.30, 1.62,
        ];
        let y = [
            0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29, 0.647, 1.30, 1.06, 0.598,
            0.90, 1.06, 1.30, 0.878, 1.55, 0.50, 1.29, 0.647,
        ];
        let t = mann_whitney(&x, &y).unwrap();
        assert_eq!(t.u, REF_U);
        assert!(
            close(t.p_value, REF_P, 1e-6),
            "p = {} not {REF_P}",
            t.p_value
        );
        let back = mann_whitney(&y, &x).unwrap();
        assert_eq!(back.u, (x.len() * y.len()) as f64 - REF_U);
        assert!(back.p_value > 0.99);
    }
    const REF_U: f64 = 348.5;
    const REF_P: f64 = 0.000_154_205_536_449_985_57;

    #[test]
    fn fisher_matches_the_reference_implementation() {
        // scipy.stats.fisher_exact([[e1, n1 - e1], [e0, n0 - e0]], alternative="greater")
        let cases = [
            (3.0, 4.0, 1.0, 4.0, 0.242_857_142_857_142_83),
            (10.0, 500.0, 0.0, 450_000.0, 2.590_950_097_055_182_5e-30),
            (12.0, 300.0, 40.0, 3000.0, 0.001_884_646_883_194_241_5),
            (25.0, 1000.0, 180.0, 9000.0, 0.172_229_111_432_315_7),
            (7.0, 250.0, 2.0, 250.0, 0.087_865_141_320_135_76),
            (30.0, 2000.0, 900.0, 60000.0, 0.526_017_579_526_609_1),
            (5.0, 200.0, 1.0, 1000.0, 0.000_639_236_239_575_018_3),
        ];
        for (e1, n1, e0, n0, p) in cases {
            let got = fisher(e1, n1, e0, n0);
            assert!(
                close(got, p, 1e-7),
                "fisher({e1}, {n1}, {e0}, {n0}) = {got}, not {p}"
            );
        }
    }

    #[test]
    fn fisher_stays_a_probability_and_quick_on_huge_or_broken_counts() {
        // Found by a property test: infinite or huge counts (a scraped
        // counter can read 1e20) overflowed the sums.
        assert_eq!(fisher(0.0, f64::INFINITY, 0.0, 2140.7), 1.0);
        assert_eq!(fisher(f64::NAN, 10.0, 1.0, 10.0), 1.0);
        let start = std::time::Instant::now();
        let p = fisher(3e19, 1e20, 1e17, 1e20);
        assert!(p < 1e-6, "a 30% against a 0.1% error rate: {p}");
        let q = fisher(1e17, 1e20, 1e17, 1e20);
        assert!((0.3..=1.0).contains(&q), "the same rate on both sides: {q}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        // Errors and current requests outnumbering all requests used to
        // subtract below zero.
        let p = fisher(2948.5, 3432.8, 1355.5, 1648.9);
        assert!((0.0..=1.0).contains(&p), "{p}");
    }

    #[test]
    fn fisher_is_exact_on_a_tea_tasting_table() {
        // Fisher's lady tasting tea: 3 of 4 right, P = 17/70.
        assert!(close(fisher(3.0, 4.0, 1.0, 4.0), 17.0 / 70.0, 1e-12));
        assert!(close(fisher(4.0, 4.0, 0.0, 4.0), 1.0 / 70.0, 1e-12));
        assert_eq!(fisher(0.0, 4.0, 4.0, 4.0), 1.0);
    }

    #[test]
    fn no_difference_is_never_significant() {
        let xs: Vec<f64> = (0..50).map(|i| (i % 7) as f64).collect();
        let s = shift(&xs, &xs, 1.0, Worse::Larger, true, DEFAULT_ALPHA, 20).unwrap();
        assert!(s.exceeds);
        assert!(!s.significant);
        assert!(!s.regressed());
        let same = vec![5.0; 40];
        let t = mann_whitney(&same, &same).unwrap();
        assert_eq!(t.p_value, 1.0);
    }

    #[test]
    fn a_large_shift_regresses_and_a_small_one_does_not() {
        let base: Vec<f64> = (0..60).map(|i| 100.0 + i as f64).collect();
        let slow: Vec<f64> = base.iter().map(|x| x * 3.0).collect();
        let s = shift(&slow, &base, 2.0, Worse::Larger, false, DEFAULT_ALPHA, 20).unwrap();
        assert!(s.regressed(), "{s:?}");
        assert!(close(s.ratio.unwrap(), 3.0, 1e-12));
        // 1.2x is significant but not beyond 2x.
        let bit: Vec<f64> = base.iter().map(|x| x * 1.2).collect();
        let s = shift(&bit, &base, 2.0, Worse::Larger, false, DEFAULT_ALPHA, 20).unwrap();
        assert!(s.significant && !s.exceeds && !s.regressed(), "{s:?}");
        // Faster is never a regression of a "larger is worse" signal.
        let fast: Vec<f64> = base.iter().map(|x| x / 3.0).collect();
        let s = shift(&fast, &base, 0.5, Worse::Larger, false, DEFAULT_ALPHA, 20).unwrap();
        assert!(!s.regressed(), "{s:?}");
        // But it is for one where smaller is worse.
        let s = shift(&fast, &base, 0.5, Worse::Smaller, false, DEFAULT_ALPHA, 20).unwrap();
        assert!(s.regressed(), "{s:?}");
    }

    #[test]
    fn too_few_samples_is_a_reason() {
        let e = shift(&[1.0; 5], &[1.0; 50], 2.0, Worse::Larger, false, 0.01, 20).unwrap_err();
        assert_eq!(
            e,
            "too few samples: 5 current and 50 baseline, need 20 each"
        );
        let e = rate_shift(
            Counts {
                requests: 150.0,
                errors: 30.0,
            },
            Counts {
                requests: 1e5,
                errors: 10.0,
            },
            2.0,
            Worse::Larger,
            false,
            0.01,
            200.0,
        )
        .unwrap_err();
        assert!(e.starts_with("too few requests: 150 current"), "{e}");
    }

    #[test]
    fn error_counts_over_a_clean_baseline_regress() {
        let base = Counts {
            requests: 450_000.0,
            errors: 0.0,
        };
        let now = Counts {
            requests: 500.0,
            errors: 10.0,
        };
        let s = rate_shift(now, base, 2.0, Worse::Larger, false, DEFAULT_ALPHA, 200.0).unwrap();
        assert!(s.regressed(), "{s:?}");
        assert_eq!(s.ratio, None);
        // The same rate now as before is not.
        let base = Counts {
            requests: 450_000.0,
            errors: 9_000.0,
        };
        let s = rate_shift(now, base, 1.0, Worse::Larger, true, DEFAULT_ALPHA, 200.0).unwrap();
        assert!(!s.significant, "{s:?}");
    }
}
