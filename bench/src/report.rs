//! Results: a table for people, or one flat JSON object (`--json`) for scripts.

use hdrhistogram::Histogram;

/// Named figures in the order they were measured.
pub(crate) struct Report {
    pub(crate) title: String,
    pub(crate) json: bool,
    rows: Vec<(String, f64, &'static str)>,
    notes: Vec<String>,
}

impl Report {
    pub(crate) fn new(title: impl Into<String>, json: bool) -> Report {
        Report {
            title: title.into(),
            json,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, key: impl Into<String>, value: f64, unit: &'static str) {
        self.rows.push((key.into(), value, unit));
    }

    /// Adds a note, unless it is there already (a baseline failing in every round).
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// A baseline tool's outcome (`None`: the tool is not installed): its value, or a note
    /// saying why there is none, naming the `tool` run and the `baseline` it stands for.
    pub(crate) fn baseline<T>(
        &mut self,
        tool: &str,
        baseline: &str,
        outcome: Option<Result<T, String>>,
    ) -> Option<T> {
        match outcome {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                self.note(format!("{tool} failed: {e}"));
                None
            }
            None => {
                self.note(format!("{tool} is not installed; no {baseline} baseline"));
                None
            }
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(k, ..)| k == key)
            .map(|(_, v, _)| *v)
    }

    /// Every figure, in the order added: key, value, unit.
    pub(crate) fn rows(&self) -> impl Iterator<Item = (&str, f64, &'static str)> {
        self.rows.iter().map(|(k, v, u)| (k.as_str(), *v, *u))
    }

    pub(crate) fn notes(&self) -> impl Iterator<Item = &String> {
        self.notes.iter()
    }

    /// Percentiles of a histogram of nanoseconds, as microseconds.
    pub(crate) fn add_latency(&mut self, prefix: &str, h: &Histogram<u64>) {
        for (name, q) in [("p50", 0.50), ("p99", 0.99), ("p999", 0.999)] {
            let us = h.value_at_quantile(q) as f64 / 1000.0;
            self.add(format!("{prefix}.{name}_us"), us, "us");
        }
        // For baselines that report only a mean (fi_pingpong).
        self.add(format!("{prefix}.mean_us"), h.mean() / 1000.0, "us");
    }

    /// `numerator / denominator` when both were measured.
    pub(crate) fn add_ratio(&mut self, key: &str, numerator: &str, denominator: &str) {
        if let (Some(n), Some(d)) = (self.get(numerator), self.get(denominator)) {
            if d > 0.0 {
                self.add(key, n / d, "x");
            }
        }
    }

    pub(crate) fn print(&self, json: bool) {
        let backend = crate::peer::backend().map(|b| format!("{b:?}").to_lowercase());
        if json {
            let mut obj = serde_json::Map::new();
            if let Some(b) = &backend {
                obj.insert("tcp_backend".into(), serde_json::json!(b));
            }
            for (k, v, _) in &self.rows {
                obj.insert(k.clone(), serde_json::json!(significant(*v)));
            }
            println!("{}", serde_json::Value::Object(obj));
            return;
        }
        println!("{}", self.title);
        if let Some(b) = &backend {
            println!("  TCP backend: {b}");
        }
        for (k, v, unit) in &self.rows {
            println!("  {k:<44} {:>12} {unit}", shown(*v));
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
    }
}

/// `v` to six significant figures (a fixed number of decimals would turn 0.0004 GB/s, an
/// 8-byte stream's, into 0).
fn significant(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(5 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// `v` as a table shows it: three decimals, or six significant figures below 1.
fn shown(v: f64) -> String {
    if v.abs() >= 1.0 || v == 0.0 {
        format!("{v:.3}")
    } else {
        format!("{}", significant(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_figures_keep_their_significant_figures() {
        assert!((significant(0.000_412_345_678) - 0.000_412_346).abs() < 1e-15);
        assert_eq!(significant(7226.001), 7226.0);
        assert_eq!(significant(0.0), 0.0);
        assert_eq!(shown(0.000_4), "0.0004");
        assert_eq!(shown(12.3456), "12.346");
    }
}
