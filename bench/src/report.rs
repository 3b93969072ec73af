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
                obj.insert(k.clone(), serde_json::json!((v * 1000.0).round() / 1000.0));
            }
            println!("{}", serde_json::Value::Object(obj));
            return;
        }
        println!("{}", self.title);
        if let Some(b) = &backend {
            println!("  TCP backend: {b}");
        }
        for (k, v, unit) in &self.rows {
            println!("  {k:<44} {v:>12.3} {unit}");
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
    }
}
