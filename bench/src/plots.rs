//! Plots: SVG charts of a suite run, written beside `results.json` (plotters, SVG backend
//! only: no font or image dependencies; text is left to the SVG viewer).
//!
//! - `latency.svg`: latency percentile curve of every row (HdrHistogram style: x is
//!   1 / (1 − percentile) on a log scale, so 90%, 99%, 99.9% are evenly spaced).
//! - `timeline.svg`: throughput and p99 over time of every cluster row.
//! - `sweep.svg`: latency (p50, p99, p99.9) against offered load from the open-loop sweep,
//!   with the p99 bound and the knee.
//!
//! A chart with nothing to show is not written (the report lists only what exists).

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use plotters::prelude::*;

use crate::cluster_scenarios::SweepPoint;
use crate::scenario::SuiteReport;

/// File names, in the order the report shows them.
pub const LATENCY_SVG: &str = "latency.svg";
pub const TIMELINE_SVG: &str = "timeline.svg";
pub const SWEEP_SVG: &str = "sweep.svg";

const SIZE: (u32, u32) = (960, 600);
/// Rightmost percentile shown: 99.999%.
const PERCENTILE_X_MAX: f64 = 1e5;

/// The plots `report` has data for.
pub fn plot_files(report: &SuiteReport) -> Vec<&'static str> {
    let mut files = Vec::new();
    if report.scenarios.iter().any(|r| !r.percentile_curve.is_empty()) {
        files.push(LATENCY_SVG);
    }
    if report.scenarios.iter().any(|r| !r.measure.timeline.is_empty()) {
        files.push(TIMELINE_SVG);
    }
    if report.sweep.as_ref().is_some_and(|s| !s.points.is_empty()) {
        files.push(SWEEP_SVG);
    }
    files
}

/// Writes every plot `report` has data for into `dir`; returns their paths.
pub fn write_plots(report: &SuiteReport, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for file in plot_files(report) {
        let path = dir.join(file);
        match file {
            LATENCY_SVG => latency(report, &path)?,
            TIMELINE_SVG => timeline(report, &path)?,
            _ => sweep(report, &path)?,
        }
        written.push(path);
    }
    Ok(written)
}

fn plot_error<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow!("drawing a plot: {error:?}")
}

/// x coordinate of a percentile: 1 / (1 − p), capped.
fn percentile_x(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(1.0 / PERCENTILE_X_MAX);
    (1.0 / rest).clamp(1.0, PERCENTILE_X_MAX)
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let text = format!("{p:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

fn latency(report: &SuiteReport, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<_> = report.scenarios.iter().filter(|r| !r.percentile_curve.is_empty()).collect();
    let (mut low, mut high) = (f64::MAX, 0.0f64);
    for row in &rows {
        for (_, us) in &row.percentile_curve {
            low = low.min(*us / 1e3);
            high = high.max(*us / 1e3);
        }
    }
    let low = (low * 0.8).max(1e-3);
    let high = (high * 1.25).max(low * 10.0);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency by percentile", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((1.0..PERCENTILE_X_MAX).log_scale(), (low..high).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(plot_error)?;
    for (i, row) in rows.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = row
            .percentile_curve
            .iter()
            .map(|(p, us)| (percentile_x(*p), (*us / 1e3).max(low)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(row.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

fn timeline(report: &SuiteReport, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<_> = report.scenarios.iter().filter(|r| !r.measure.timeline.is_empty()).collect();
    let t_max = rows
        .iter()
        .flat_map(|r| r.measure.timeline.iter().map(|p| p.at_secs))
        .fold(0.0f64, f64::max)
        + rows.first().and_then(|r| r.measure.timeline.get(1).map(|p| p.at_secs)).unwrap_or(1.0);
    let rate_max = rows
        .iter()
        .flat_map(|r| r.measure.timeline.iter().map(|p| p.records_per_sec))
        .fold(1.0f64, f64::max)
        * 1.1;
    let p99_max = rows
        .iter()
        .flat_map(|r| r.measure.timeline.iter().map(|p| p.p99_us / 1e3))
        .fold(0.01f64, f64::max)
        * 1.5;
    let root = SVGBackend::new(path, (SIZE.0, SIZE.1 + 200)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (upper, lower) = root.split_vertically((SIZE.1 + 200) / 2);
    let mut rates = ChartBuilder::on(&upper)
        .caption("throughput over time (records/s)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..t_max, 0.0..rate_max)
        .map_err(plot_error)?;
    rates.configure_mesh().x_desc("seconds into the measured window").draw().map_err(plot_error)?;
    let mut p99 = ChartBuilder::on(&lower)
        .caption("p99 latency over time (ms)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..t_max, (0.01..p99_max).log_scale())
        .map_err(plot_error)?;
    p99.configure_mesh().x_desc("seconds into the measured window").draw().map_err(plot_error)?;
    for (i, row) in rows.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let rate_points: Vec<(f64, f64)> =
            row.measure.timeline.iter().map(|p| (p.at_secs, p.records_per_sec)).collect();
        rates
            .draw_series(LineSeries::new(rate_points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(row.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        let p99_points: Vec<(f64, f64)> = row
            .measure
            .timeline
            .iter()
            .filter(|p| p.p99_us > 0.0)
            .map(|p| (p.at_secs, p.p99_us / 1e3))
            .collect();
        p99.draw_series(LineSeries::new(p99_points, color.stroke_width(2))).map_err(plot_error)?;
    }
    rates
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

fn sweep(report: &SuiteReport, path: &Path) -> anyhow::Result<()> {
    let Some(sweep) = &report.sweep else { return Ok(()) };
    let offered_max =
        sweep.points.iter().map(|p| p.offered_records_per_sec).fold(1.0f64, f64::max) * 1.05;
    let bound_ms = sweep.p99_bound_us / 1e3;
    let latency_max = sweep.points.iter().map(|p| p.p999_us / 1e3).fold(bound_ms, f64::max) * 1.5;
    let latency_min = sweep
        .points
        .iter()
        .map(|p| p.p50_us / 1e3)
        .filter(|v| *v > 0.0)
        .fold(latency_max, f64::min)
        * 0.7;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("latency vs offered load (open loop, acks={})", sweep.acks),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..offered_max, (latency_min.max(1e-3)..latency_max).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("offered records/s")
        .y_desc("latency (ms)")
        .draw()
        .map_err(plot_error)?;
    type Value = fn(&SweepPoint) -> f64;
    let series: [(&str, Value); 3] =
        [("p50", |p| p.p50_us), ("p99", |p| p.p99_us), ("p99.9", |p| p.p999_us)];
    for (i, (name, value)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = sweep
            .points
            .iter()
            .map(|p| (p.offered_records_per_sec, (value(p) / 1e3).max(latency_min.max(1e-3))))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(plot_error)?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, bound_ms), (offered_max, bound_ms)],
            BLACK.stroke_width(1),
        ))
        .map_err(plot_error)?
        .label(format!("p99 bound {bound_ms:.1} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    if let Some(knee) = sweep.knee_records_per_sec {
        chart
            .draw_series(LineSeries::new(
                vec![(knee, latency_min.max(1e-3)), (knee, latency_max)],
                RED.stroke_width(1),
            ))
            .map_err(plot_error)?
            .label(format!("knee {knee:.0} records/s"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_map_to_evenly_spaced_log_positions() {
        assert_eq!(percentile_x(0.0), 1.0);
        assert!((percentile_x(90.0) - 10.0).abs() < 1e-9);
        assert!((percentile_x(99.9) - 1000.0).abs() < 1e-6);
        assert!((percentile_x(100.0) - PERCENTILE_X_MAX).abs() < 1e-6);
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1000.0), "99.9%");
    }
}
