//! `latency.png` and `rate.png`, drawn as Jepsen's perf checker draws them:
//! latency of every operation over time (log scale), and completions per
//! second, with each fault's window shaded.
//!
//! Plotters' bitmap backend, text through ab_glyph with the Hack font
//! embedded from `epaint_default_fonts`: pure Rust, no fontconfig or
//! freetype on the machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::checker::operations::{FaultWindow, Operation};
use crate::error::JepsenError;
use crate::history::OpType;

/// Plot size in pixels.
pub const PLOT_SIZE: (u32, u32) = (1280, 640);
/// Width of one bar of the rate plot, in seconds.
pub const RATE_BUCKET_SECS: f64 = 1.0;

/// The font family plots use, registered once from the embedded bytes.
const FONT: &str = "sans-serif";

fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font shipped in the crate; failing to
        // parse them is a build problem, not a run-time condition.
        if plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR).is_err() {
            panic!("the embedded Hack font does not parse");
        }
    });
}

/// A colour per operation name, stable across plots.
fn color_of(name: &str) -> RGBColor {
    match name {
        "acquire" | "allocate" => RGBColor(31, 119, 180),
        "release" => RGBColor(44, 160, 44),
        "read" => RGBColor(148, 103, 189),
        _ => RGBColor(127, 127, 127),
    }
}

/// A translucent colour per fault kind.
fn shade_of(fault: &str) -> RGBAColor {
    match fault {
        "kill" => RGBColor(214, 39, 40).mix(0.15),
        "pause" => RGBColor(255, 127, 14).mix(0.18),
        "partition" => RGBColor(23, 190, 207).mix(0.18),
        "optimize" => RGBColor(148, 103, 189).mix(0.18),
        _ => RGBColor(188, 189, 34).mix(0.18),
    }
}

fn plot_error(name: &'static str) -> impl Fn(String) -> JepsenError {
    move |reason| JepsenError::Plot { name, reason }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The run's length: the last moment any operation was heard of.
fn span_s(operations: &[Operation], windows: &[FaultWindow]) -> f64 {
    let ops = operations
        .iter()
        .map(|operation| operation.answered_ns().unwrap_or(operation.invoke_ns()))
        .max()
        .unwrap_or(0);
    let faults = windows.iter().map(|window| window.end_ns).max().unwrap_or(0);
    seconds(ops.max(faults)).max(1.0)
}

fn shade_faults<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, impl Ranged<ValueType = f64>>>,
    windows: &[FaultWindow],
    y: (f64, f64),
) -> Result<(), String> {
    let mut labelled: Vec<&str> = Vec::new();
    for window in windows {
        let shade = shade_of(window.fault);
        let series = chart
            .draw_series(std::iter::once(Rectangle::new(
                [(seconds(window.start_ns), y.0), (seconds(window.end_ns), y.1)],
                shade.filled(),
            )))
            .map_err(|error| error.to_string())?;
        if !labelled.contains(&window.fault) {
            labelled.push(window.fault);
            series
                .label(window.fault)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], shade.filled()));
        }
    }
    Ok(())
}

/// How a completion shows in the legends: anything neither ok nor fail is
/// `info`, as in the history (it may or may not have taken effect).
fn outcome_name(kind: OpType) -> &'static str {
    match kind {
        OpType::Ok => "ok",
        OpType::Fail => "fail",
        _ => "info",
    }
}

/// The last step of every plot: the legend in the upper right, then the file written.
fn draw_legend_and_present<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    area: &DrawingArea<BitMapBackend<'a>, Shift>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|error| error.to_string())?;
    area.present().map_err(|error| error.to_string())
}

fn root(path: &Path) -> DrawingArea<BitMapBackend<'_>, Shift> {
    register_font();
    let area = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    let _ = area.fill(&WHITE);
    area
}

/// Latency of every answered operation over time, by operation and outcome.
pub fn latency(path: &Path, title: &str, operations: &[Operation], windows: &[FaultWindow]) -> Result<(), JepsenError> {
    let draw = || -> Result<(), String> {
        let area = root(path);
        let points: Vec<(f64, f64, &'static str, OpType)> = operations
            .iter()
            .filter_map(|operation| {
                let answered = operation.answered_ns()?;
                let latency_ms = ((answered - operation.invoke_ns()) as f64 / 1e6).max(0.01);
                Some((
                    seconds(operation.invoke_ns()),
                    latency_ms,
                    operation.invoke.payload.name(),
                    operation.kind(),
                ))
            })
            .collect();
        let top = points.iter().map(|point| point.1).fold(10.0f64, f64::max) * 2.0;
        let bottom = points.iter().map(|point| point.1).fold(top, f64::min).max(0.01) / 2.0;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..span_s(operations, windows), (bottom..top).log_scale())
            .map_err(|error| error.to_string())?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("latency (ms)")
            .label_style((FONT, 14))
            .draw()
            .map_err(|error| error.to_string())?;
        shade_faults(&mut chart, windows, (bottom, top))?;
        let mut groups: BTreeMap<(&str, &str), Vec<(f64, f64)>> = BTreeMap::new();
        for (at, latency_ms, name, kind) in &points {
            let outcome = outcome_name(*kind);
            groups.entry((name, outcome)).or_default().push((*at, *latency_ms));
        }
        for ((name, outcome), points) in groups {
            let color = color_of(name);
            let series = match outcome {
                "ok" => chart.draw_series(points.into_iter().map(|point| Circle::new(point, 2, color.filled()))),
                "fail" => chart.draw_series(points.into_iter().map(|point| Cross::new(point, 4, color.stroke_width(1)))),
                _ => chart.draw_series(points.into_iter().map(|point| TriangleMarker::new(point, 5, color.filled()))),
            }
            .map_err(|error| error.to_string())?;
            series
                .label(format!("{name} {outcome}"))
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
        }
        draw_legend_and_present(&mut chart, &area)
    };
    draw().map_err(plot_error("latency.png"))
}

/// Completions per second, by operation and outcome.
pub fn rate(path: &Path, title: &str, operations: &[Operation], windows: &[FaultWindow]) -> Result<(), JepsenError> {
    let draw = || -> Result<(), String> {
        let area = root(path);
        let span = span_s(operations, windows);
        let buckets = (span / RATE_BUCKET_SECS).ceil() as usize + 1;
        let mut series: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
        for operation in operations {
            let Some(answered) = operation.answered_ns() else { continue };
            let outcome = outcome_name(operation.kind());
            let counts = series
                .entry((operation.invoke.payload.name(), outcome))
                .or_insert_with(|| vec![0.0; buckets]);
            let bucket = ((seconds(answered) / RATE_BUCKET_SECS) as usize).min(buckets - 1);
            counts[bucket] += 1.0 / RATE_BUCKET_SECS;
        }
        let top = series.values().flatten().copied().fold(1.0f64, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..span, 0f64..top)
            .map_err(|error| error.to_string())?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("completions per second")
            .label_style((FONT, 14))
            .draw()
            .map_err(|error| error.to_string())?;
        shade_faults(&mut chart, windows, (0.0, top))?;
        for ((name, outcome), counts) in series {
            let color = color_of(name);
            let style = match outcome {
                "ok" => color.stroke_width(2),
                "fail" => color.mix(0.5).stroke_width(1),
                _ => RGBColor(0, 0, 0).mix(0.6).stroke_width(1),
            };
            let points = counts
                .into_iter()
                .enumerate()
                .map(|(bucket, count)| ((bucket as f64 + 0.5) * RATE_BUCKET_SECS, count));
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(|error| error.to_string())?
                .label(format!("{name} {outcome}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
        draw_legend_and_present(&mut chart, &area)
    };
    draw().map_err(plot_error("rate.png"))
}
