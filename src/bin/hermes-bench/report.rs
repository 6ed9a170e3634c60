//! Rows, the printed table, the JSON file and the SVG pictures.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

/// Which way a row's target goes, and whether it applies to the value or to
/// the ratio value / bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// No target.
    None,
    /// ratio >= target
    RatioAtLeast,
    /// ratio <= target
    RatioAtMost,
    /// value >= target
    AtLeast,
    /// value <= target
    AtMost,
}

/// One row of the report; the JSON file holds exactly these seven fields.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub value: Option<f64>,
    pub unit: String,
    pub bound: Option<f64>,
    pub ratio: Option<f64>,
    pub target: Option<f64>,
    pub pass: Option<bool>,
    #[serde(skip)]
    pub goal: Goal,
    /// Printed under the table (why skipped, what the value covers).
    #[serde(skip)]
    pub note: Option<String>,
}

impl Row {
    pub fn new(name: &str, value: Option<f64>, unit: &str) -> Row {
        Row {
            name: name.to_string(),
            value,
            unit: unit.to_string(),
            bound: None,
            ratio: None,
            target: None,
            pass: None,
            goal: Goal::None,
            note: None,
        }
    }

    /// Sets the bound, and the ratio value / bound.
    pub fn bound(mut self, bound: f64) -> Row {
        self.bound = Some(bound);
        self.ratio = self.value.filter(|_| bound > 0.0).map(|v| v / bound);
        self.update();
        self
    }

    pub fn target(mut self, goal: Goal, target: f64) -> Row {
        self.goal = goal;
        self.target = Some(target);
        self.update();
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    /// A row that also needs `extra` to hold to pass (e.g. flood: 0 lost).
    pub fn and_also(mut self, extra: bool) -> Row {
        self.pass = self.pass.map(|p| p && extra);
        self
    }

    fn update(&mut self) {
        let t = match self.target {
            Some(t) => t,
            None => return,
        };
        self.pass = match self.goal {
            Goal::None => None,
            Goal::RatioAtLeast => Some(self.ratio.is_some_and(|r| r >= t)),
            Goal::RatioAtMost => Some(self.ratio.is_some_and(|r| r <= t)),
            Goal::AtLeast => Some(self.value.is_some_and(|v| v >= t)),
            Goal::AtMost => Some(self.value.is_some_and(|v| v <= t)),
        };
        if self.value.is_none() {
            self.pass = None;
        }
    }
}

pub fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(v) if v.abs() >= 10_000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

pub fn print_table(rows: &[Row]) {
    println!(
        "{:<24} {:>12} {:<7} {:>12} {:>8} {:>10} {:>5}",
        "row", "value", "unit", "bound", "ratio", "target", "pass"
    );
    println!("{}", "-".repeat(85));
    for r in rows {
        let target = match (r.goal, r.target) {
            (Goal::None, _) | (_, None) => "-".to_string(),
            (Goal::RatioAtLeast, Some(t)) => format!(">={}x", num(Some(t))),
            (Goal::RatioAtMost, Some(t)) => format!("<={}x", num(Some(t))),
            (Goal::AtLeast, Some(t)) => format!(">={}", num(Some(t))),
            (Goal::AtMost, Some(t)) => format!("<={}", num(Some(t))),
        };
        let pass = match r.pass {
            None => "-",
            Some(true) => "yes",
            Some(false) => "NO",
        };
        println!(
            "{:<24} {:>12} {:<7} {:>12} {:>8} {:>10} {:>5}",
            r.name,
            num(r.value),
            r.unit,
            num(r.bound),
            r.ratio.map(|x| format!("{x:.3}")).unwrap_or("-".into()),
            target,
            pass
        );
    }
    let notes: Vec<&Row> = rows.iter().filter(|r| r.note.is_some()).collect();
    if !notes.is_empty() {
        println!();
        for r in notes {
            println!("  {}: {}", r.name, r.note.as_deref().unwrap_or(""));
        }
    }
}

pub fn write_json(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(rows)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text + "\n")?;
    Ok(())
}

/// `out.json` -> `out-NAME.svg` in the same folder.
pub fn svg_path(json: &Path, name: &str) -> PathBuf {
    let stem = json
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "hermes-bench".into());
    json.with_file_name(format!("{stem}-{name}.svg"))
}

fn err(e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("drawing: {e:?}")
}

const COLOURS: [RGBColor; 4] = [BLUE, RED, RGBColor(0, 140, 0), RGBColor(200, 120, 0)];

/// Cumulative distributions of latencies (ms): one line per series.
pub fn latency_cdf(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> anyhow::Result<()> {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.05;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms")
        .y_desc("fraction of messages")
        .draw()
        .map_err(err)?;
    for (i, (label, values)) in series.iter().enumerate() {
        let mut v = values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len().max(1) as f64;
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(k, &x)| (x, (k + 1) as f64 / n)),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Rates over time: each series is (label, points (seconds, per second)).
/// `marks` are vertical lines (seconds, label), e.g. kills.
pub fn rate_over_time(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    marks: &[(f64, String)],
) -> anyhow::Result<()> {
    let xmax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .chain(marks.iter().map(|m| m.0))
        .fold(1.0f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start of the phase")
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (k, (x, label)) in marks.iter().enumerate() {
        // Kills red, the rest green; labels staggered so that they stay readable.
        let colour = if label.starts_with("kill") {
            RED
        } else {
            RGBColor(0, 140, 0)
        };
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(*x, 0.0), (*x, ymax)],
                colour.mix(0.4),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                label.clone(),
                (*x, ymax * (0.98 - 0.045 * (k % 8) as f64)),
                ("sans-serif", 11).into_font().color(&colour),
            )))
            .map_err(err)?;
    }
    for (i, (label, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Counts of event times (seconds) per `step` seconds, as a rate per second.
pub fn rate_series(times_s: &[f64], step: f64, until: f64) -> Vec<(f64, f64)> {
    let buckets = ((until / step).ceil() as usize).max(1);
    let mut counts = vec![0usize; buckets];
    for &t in times_s {
        if t >= 0.0 {
            let i = ((t / step) as usize).min(buckets - 1);
            counts[i] += 1;
        }
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| ((i as f64 + 0.5) * step, c as f64 / step))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_apply_to_the_ratio_or_the_value() {
        let r = Row::new("flood", Some(300.0), "msg/s")
            .bound(1000.0)
            .target(Goal::RatioAtLeast, 0.75);
        assert_eq!(r.ratio, Some(0.3));
        assert_eq!(r.pass, Some(false));
        let r = Row::new("cpu", Some(900.0), "µs")
            .bound(1000.0)
            .target(Goal::RatioAtMost, 1.5);
        assert_eq!(r.pass, Some(true));
        let r = Row::new("lat", Some(0.9), "ms").target(Goal::AtMost, 1.0);
        assert_eq!(r.pass, Some(true));
        assert_eq!(r.ratio, None);
        let r = Row::new("flood", Some(900.0), "msg/s")
            .bound(1000.0)
            .target(Goal::RatioAtLeast, 0.75)
            .and_also(false);
        assert_eq!(r.pass, Some(false), "a lost message fails the row");
        let r = Row::new("wan", None, "s").target(Goal::AtMost, 1.0);
        assert_eq!(r.pass, None, "no value, no verdict");
    }

    #[test]
    fn json_rows_have_exactly_the_seven_fields() {
        let r = Row::new("x", Some(1.0), "ms").note("not in the JSON");
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["bound", "name", "pass", "ratio", "target", "unit", "value"]
        );
    }

    #[test]
    fn rate_series_counts_per_step() {
        let s = rate_series(&[0.1, 0.2, 0.6, 1.4], 0.5, 1.5);
        assert_eq!(s, vec![(0.25, 4.0), (0.75, 2.0), (1.25, 2.0)]);
        assert_eq!(pct(&[1, 2, 3, 4, 5], 50.0), 3);
        assert_eq!(pct(&[], 99.0), 0);
    }
}
