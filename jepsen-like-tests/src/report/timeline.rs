//! The page a failed linearizability check leaves behind, in the manner of
//! Porcupine's visualisation: the offending unit's operations on a time
//! line, one row per process, those of the longest linearizable prefix
//! numbered in their linearization order with the state after each, the
//! operation that fits nowhere in red.

use std::fmt::Write;

use crate::checker::linearizability::{UnitFailure, UnitHistory};

/// Width of the time line, in pixels.
pub const TIMELINE_WIDTH_PX: f64 = 1400.0;
/// Height of one process's row.
pub const ROW_HEIGHT_PX: f64 = 30.0;
/// Time shown on each side of the blocking operation, at least.
pub const CONTEXT_NS_MIN: u64 = 300_000_000;
/// Calls drawn at most (the tables below list them all).
pub const CALLS_DRAWN_MAX: usize = 400;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn seconds(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

/// The page for one failing unit.
pub fn render(failure: &UnitFailure, seed: u64, reproduce: &str) -> String {
    let history = &failure.history;
    let calls = &history.calls;
    let blocking = &calls[failure.blocking];
    let order: std::collections::BTreeMap<usize, usize> = failure
        .longest
        .iter()
        .enumerate()
        .map(|(position, (call, _))| (*call, position + 1))
        .collect();

    // The window drawn: around the blocking call.
    let blocking_end = blocking.complete_ns.unwrap_or(blocking.invoke_ns);
    let context = CONTEXT_NS_MIN.max((blocking_end - blocking.invoke_ns) * 2);
    let from = blocking.invoke_ns.saturating_sub(context);
    let to = blocking_end.saturating_add(context);
    let visible: Vec<usize> = (0..calls.len())
        .filter(|position| {
            let call = &calls[*position];
            call.invoke_ns <= to && call.complete_ns.unwrap_or(u64::MAX) >= from
        })
        .take(CALLS_DRAWN_MAX)
        .collect();
    let mut processes: Vec<&str> = visible.iter().map(|position| history.origins[*position].process.as_str()).collect();
    processes.sort_by_key(|process| (process.len(), *process));
    processes.dedup();
    let x = |ns: u64| (ns.clamp(from, to) - from) as f64 / (to - from).max(1) as f64 * TIMELINE_WIDTH_PX;
    let row = |process: &str| processes.iter().position(|p| *p == process).unwrap_or(0) as f64 * ROW_HEIGHT_PX;

    let mut svg = String::new();
    let height = processes.len() as f64 * ROW_HEIGHT_PX + 40.0;
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{height:.0}" font-family="monospace" font-size="11">"#,
        TIMELINE_WIDTH_PX + 120.0
    );
    for (index, process) in processes.iter().enumerate() {
        let y = index as f64 * ROW_HEIGHT_PX;
        let _ = write!(
            svg,
            r##"<text x="0" y="{:.0}">process {}</text><line x1="110" x2="{:.0}" y1="{:.0}" y2="{:.0}" stroke="#eee"/>"##,
            y + 18.0,
            escape(process),
            TIMELINE_WIDTH_PX + 110.0,
            y + ROW_HEIGHT_PX,
            y + ROW_HEIGHT_PX
        );
    }
    // One box per history operation (an acquire's effect and answer share one).
    let mut drawn: Vec<(&Vec<u64>, Vec<usize>)> = Vec::new();
    for position in &visible {
        let ops = &history.origins[*position].ops;
        match drawn.iter_mut().find(|(drawn_ops, _)| *drawn_ops == ops) {
            Some((_, positions)) => positions.push(*position),
            None => drawn.push((ops, vec![*position])),
        }
    }
    let mut rows = String::new();
    for (_, positions) in &drawn {
        let call = &calls[positions[0]];
        let origin = &history.origins[*positions.last().expect("a group has a call")];
        let (left, right) = (110.0 + x(call.invoke_ns), 110.0 + x(call.complete_ns.unwrap_or(to)));
        let y = row(&origin.process) + 4.0;
        let numbers: Vec<String> = positions
            .iter()
            .filter_map(|position| order.get(position))
            .map(|number| format!("#{number}"))
            .collect();
        let blocking = positions.contains(&failure.blocking);
        let after = positions
            .iter()
            .filter_map(|position| order.get(position))
            .max()
            .map(|number| UnitHistory::describe(&failure.longest[number - 1].1));
        let (fill, note) = match (blocking, &after) {
            (true, _) => ("#d62728", "fits nowhere".to_owned()),
            (false, Some(after)) if numbers.len() == positions.len() => ("#2ca02c", format!("{}, then {after}", numbers.join(" "))),
            (false, _) if call.complete_ns.is_none() => ("#bbbbbb", "outcome unknown; not linearized in the prefix".to_owned()),
            (false, _) => ("#ff7f0e", "not linearized in the prefix".to_owned()),
        };
        let tooltip = format!(
            "{} | process {} | {} .. {} | history ops {:?} | {note}",
            origin.label,
            origin.process,
            seconds(call.invoke_ns),
            call.complete_ns.map_or("?".to_owned(), seconds),
            origin.ops
        );
        let dashed = if call.complete_ns.is_none() {
            r#" stroke-dasharray="4 2""#
        } else {
            ""
        };
        let mark = match blocking {
            true => "X".to_owned(),
            false => numbers.join(" "),
        };
        let _ = write!(
            svg,
            r##"<g><title>{}</title><rect x="{left:.1}" y="{y:.1}" width="{:.1}" height="{:.0}" fill="{fill}" fill-opacity="0.35" stroke="{fill}"{dashed}/><text x="{:.1}" y="{:.1}">{}</text></g>"##,
            escape(&tooltip),
            (right - left).max(2.0),
            ROW_HEIGHT_PX - 8.0,
            left + 2.0,
            y + 15.0,
            escape(&mark)
        );
        let _ = write!(
            rows,
            r#"<tr style="background:{fill}22"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td></tr>"#,
            seconds(call.invoke_ns),
            call.complete_ns.map_or("?".to_owned(), seconds),
            escape(&origin.process),
            escape(&origin.label),
            escape(&note),
            origin.ops
        );
    }
    let axis_y = processes.len() as f64 * ROW_HEIGHT_PX + 20.0;
    let _ = write!(
        svg,
        r#"<text x="110" y="{axis_y:.0}">{}</text><text x="{:.0}" y="{axis_y:.0}" text-anchor="end">{}</text></svg>"#,
        seconds(from),
        TIMELINE_WIDTH_PX + 110.0,
        seconds(to)
    );

    let mut prefix = String::new();
    for (call, state) in &failure.longest {
        let _ = write!(
            prefix,
            "<li>{} <span class=\"who\">(process {}, ops {:?})</span> &rarr; {}</li>",
            escape(&history.origins[*call].label),
            escape(&history.origins[*call].process),
            history.origins[*call].ops,
            escape(&UnitHistory::describe(state))
        );
    }
    let mut names = String::new();
    for (number, request_id) in history.request_ids.iter().enumerate() {
        let _ = write!(
            names,
            "<li>{} = {}</li>",
            UnitHistory::request_name(number as u32),
            escape(request_id)
        );
    }
    let blocking_origin = &history.origins[failure.blocking];
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{unit}: not linearizable</title>
<style>body{{font-family:sans-serif;margin:24px}} .who{{color:#777}} code{{background:#f4f4f4;padding:2px 4px}} li{{margin:2px 0}}</style></head>
<body>
<h1>{unit} is not linearizable</h1>
<p>Seed <b>{seed}</b>. Reproduce: <code>{reproduce}</code></p>
<p>The longest linearizable prefix holds <b>{prefix_len}</b> of {calls} calls and leaves the unit <b>{state}</b>.
After it, <b style="color:#d62728">{blocking}</b> (process {process}, history ops {ops:?}) fits nowhere: no order of the calls that respects real time explains it.</p>
<p>Green: the prefix, numbered in linearization order (hover for the state after each). Red, X: the operation that fits nowhere.
Orange: completed calls left out of the prefix. Grey, dashed: outcome unknown (may take effect at any time, or never).
Shown: {from} to {to}.</p>
{svg}
<h2>The operations shown, in invocation order</h2>
<table border="0" cellpadding="3"><tr><th>invoked</th><th>completed</th><th>process</th><th>operation</th><th>in the search</th><th>history ops</th></tr>{rows}</table>
<h2>Longest linearizable prefix</h2><ol>{prefix}</ol>
<h2>Requests</h2><ul>{names}</ul>
</body></html>
"#,
        unit = escape(&history.unit),
        reproduce = escape(reproduce),
        prefix_len = failure.longest.len(),
        calls = calls.len(),
        state = escape(
            &failure
                .longest
                .last()
                .map_or("free".to_owned(), |(_, state)| UnitHistory::describe(state))
        ),
        blocking = escape(&blocking_origin.label),
        process = escape(&blocking_origin.process),
        ops = blocking_origin.ops,
        from = seconds(from),
        to = seconds(to),
    )
}
