//! `--rounds N`: a comparison run N times, lanet and its baselines in turn each round, and
//! reported as one. This machine's speed drifts by 2x over seconds to minutes, so one run's
//! ratio to a baseline can be off by that much either way; the runs of one round are
//! seconds apart and tend to share a phase.
//!
//! Each figure is reported as its median over the rounds. Each ratio is the median of the
//! rounds' own ratios (each lanet figure over the baseline measured beside it, not one
//! median over another), with its range as `.min` and `.max`, and as `.rounds` how many
//! rounds it is over when a baseline failed in some.

use crate::report::Report;

/// A ratio to report: its key, and the keys of its numerator and denominator figures.
pub(crate) type Ratio = (&'static str, &'static str, &'static str);

/// Adds to `report` the figures of `rounds` (each a report of one round) and the `ratios`
/// between them, as the module says; with several rounds also `rounds`, the range of each
/// ratio, each round's `headline` figures as a note, and the rounds' notes. One round's
/// figures are added as they are.
pub(crate) fn combine(report: &mut Report, rounds: &[Report], ratios: &[Ratio], headline: &[&str]) {
    let mut keys: Vec<(&str, &'static str)> = Vec::new();
    for (key, _, unit) in rounds.iter().flat_map(Report::rows) {
        if !keys.iter().any(|(k, _)| *k == key) {
            keys.push((key, unit));
        }
    }
    for (key, unit) in keys {
        if let Some(m) = median(rounds.iter().filter_map(|r| r.get(key))) {
            report.add(key, m, unit);
        }
    }
    for &(key, numerator, denominator) in ratios {
        let each: Vec<f64> = rounds
            .iter()
            .filter_map(|r| ratio(r.get(numerator)?, r.get(denominator)?))
            .collect();
        let Some(m) = median(each.iter().copied()) else {
            continue;
        };
        report.add(key, m, "x");
        if rounds.len() > 1 {
            let (lo, hi) = each
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            report.add(format!("{key}.min"), lo, "x");
            report.add(format!("{key}.max"), hi, "x");
            // Over fewer rounds than ran, when a baseline failed in some: say how many.
            if each.len() < rounds.len() {
                report.add(format!("{key}.rounds"), each.len() as f64, "");
            }
        }
    }
    if rounds.len() > 1 {
        report.add("rounds", rounds.len() as f64, "");
        report.note(format!(
            "{} rounds: each figure their median; each ratio the median of the rounds' own, \
             with its range (.min, .max)",
            rounds.len()
        ));
        for (i, r) in rounds.iter().enumerate() {
            let figures: Vec<String> = headline
                .iter()
                .map(|&key| match r.get(key) {
                    Some(v) => format!("{key} {v:.2}"),
                    None => format!("{key} -"),
                })
                .collect();
            report.note(format!("round {}: {}", i + 1, figures.join(", ")));
        }
    }
    for note in rounds.iter().flat_map(Report::notes) {
        report.note(note.clone());
    }
}

fn ratio(n: f64, d: f64) -> Option<f64> {
    (d > 0.0).then(|| n / d)
}

/// The median (of an even count, the mean of the middle two); None for none.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(match v.len() % 2 {
        1 => v[mid],
        _ => (v[mid - 1] + v[mid]) / 2.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(lanet: f64, iperf3: Option<f64>, ucx: Option<f64>) -> Report {
        let mut r = Report::new("round", false);
        r.add("lanet.gbytes_per_s", lanet, "GB/s");
        if let Some(v) = iperf3 {
            r.add("iperf3.gbytes_per_s", v, "GB/s");
        } else {
            r.note("iperf3 failed: it did");
        }
        if let Some(v) = ucx {
            r.add("ucx.gbytes_per_s", v, "GB/s");
        }
        r
    }

    const RATIOS: [Ratio; 2] = [
        (
            "ratio.vs_iperf3",
            "lanet.gbytes_per_s",
            "iperf3.gbytes_per_s",
        ),
        ("ratio.vs_ucx", "lanet.gbytes_per_s", "ucx.gbytes_per_s"),
    ];

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn a_ratio_is_the_median_of_the_rounds_own_not_of_the_medians() {
        // Each round's lanet and UCX share the machine's phase: 4/2, 5/5, 3/6.
        let rounds = [
            round(4.0, Some(5.0), Some(2.0)),
            round(5.0, None, Some(5.0)),
            round(3.0, Some(6.0), Some(6.0)),
        ];
        let mut report = Report::new("t", false);
        combine(&mut report, &rounds, &RATIOS, &["lanet.gbytes_per_s"]);
        assert_eq!(report.get("lanet.gbytes_per_s"), Some(4.0));
        assert_eq!(report.get("ucx.gbytes_per_s"), Some(5.0));
        // The medians' ratio would be 0.8.
        assert_eq!(report.get("ratio.vs_ucx"), Some(1.0));
        assert_eq!(report.get("ratio.vs_ucx.min"), Some(0.5));
        assert_eq!(report.get("ratio.vs_ucx.max"), Some(2.0));
        // A round without iperf3 has no iperf3 ratio: 4/5 and 3/6.
        assert_eq!(report.get("iperf3.gbytes_per_s"), Some(5.5));
        assert_eq!(report.get("ratio.vs_iperf3"), Some(0.65));
        assert_eq!(report.get("rounds"), Some(3.0));
        // That ratio is over two rounds, and says so; UCX's, over all three, need not.
        assert_eq!(report.get("ratio.vs_iperf3.rounds"), Some(2.0));
        assert_eq!(report.get("ratio.vs_ucx.rounds"), None);
        // The round's note about its missing baseline is kept, once.
        let failed = report
            .notes()
            .filter(|n| n.starts_with("iperf3 failed"))
            .count();
        assert_eq!(failed, 1);
        assert!(report
            .notes()
            .any(|n| n == "round 2: lanet.gbytes_per_s 5.00"));
    }

    #[test]
    fn one_round_reports_its_own_figures_without_a_range() {
        let mut report = Report::new("t", false);
        combine(&mut report, &[round(4.0, None, Some(5.0))], &RATIOS, &[]);
        assert_eq!(report.get("ratio.vs_ucx"), Some(0.8));
        assert_eq!(report.get("ratio.vs_ucx.min"), None);
        assert_eq!(report.get("iperf3.gbytes_per_s"), None);
        assert_eq!(report.get("ratio.vs_iperf3"), None);
        assert_eq!(report.get("rounds"), None);
        assert!(!report.notes().any(|n| n.starts_with("round ")));
    }
}
