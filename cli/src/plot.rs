//! SVG plots of runs: host free memory and each guest's target and actual over time, with the
//! scenario's events marked.

use std::collections::BTreeMap;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use squeeze::{DomId, Policy};

use crate::scenario::{Run, Scenario};

const GIB: f64 = 1024.0 * 1024.0;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn policy_name(p: Policy) -> &'static str {
    p.name()
}

/// Width of the whole plot, and of the column on its right that holds the legend, in pixels.
/// The legend lives outside the chart, so it never covers the event labels along the top.
const WIDTH: u32 = 1000;
const LEGEND_WIDTH: u32 = 170;
/// A generous width of one character of the 11 px event labels, in pixels.
const LABEL_PX_PER_CHAR: f64 = 6.5;

/// The time and memory ranges every panel shares, so the policies can be compared by eye: the
/// longest run's end (s) and the most memory any series reaches (GiB).
fn frame(runs: &[Run]) -> (f64, f64) {
    let mut end: f64 = 1.0;
    let mut top: i64 = 0;
    for run in runs {
        let trace = run.sim.trace();
        end = end.max(trace.last().map_or(0.0, |r| r.time));
        for o in &run.outcomes {
            end = end.max(o.done_s);
        }
        for r in trace {
            top = top.max(r.free_mem_kib);
            for g in &r.guests {
                top = top.max(g.1).max(g.2);
            }
        }
    }
    (end, top as f64 / GIB)
}

/// Draws `runs` of `scenario` one above the other into an SVG document, on one time axis.
pub fn svg(scenario: &Scenario, runs: &[Run]) -> Result<String, String> {
    let names = scenario.names();
    let frame = frame(runs);
    let mut out = String::new();
    {
        let height = 420 * runs.len() as u32;
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((runs.len(), 1));
        for (area, run) in panels.iter().zip(runs) {
            panel(area, scenario, run, &names, frame).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// One series' legend entry: its name and how its line looks.
struct Entry {
    name: String,
    style: ShapeStyle,
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    scenario: &Scenario,
    run: &Run,
    names: &BTreeMap<DomId, String>,
    (end, top): (f64, f64),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let trace = run.sim.trace();
    let (plot_area, legend_area) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(
            format!("{} ({})", scenario.name, policy_name(run.policy)),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..end, 0.0..(top * 1.1).max(0.1))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("memory (GiB)")
        .draw()?;

    let mut legend = vec![Entry {
        name: "host free".into(),
        style: BLACK.stroke_width(2),
    }];
    chart.draw_series(LineSeries::new(
        trace.iter().map(|r| (r.time, r.free_mem_kib as f64 / GIB)),
        legend[0].style,
    ))?;

    for (i, (domid, name)) in names.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points = |pick: fn(&(DomId, i64, i64)) -> i64| {
            trace
                .iter()
                .filter_map(move |r| {
                    r.guests
                        .iter()
                        .find(|g| g.0 == *domid)
                        .map(|g| (r.time, pick(g) as f64 / GIB))
                })
                .collect::<Vec<_>>()
        };
        for (what, pick, style) in [
            (
                "actual",
                (|g| g.2) as fn(&(DomId, i64, i64)) -> i64,
                colour.stroke_width(2),
            ),
            ("target", |g| g.1, colour.mix(0.45).into()),
        ] {
            chart.draw_series(LineSeries::new(points(pick), style))?;
            legend.push(Entry {
                name: format!("{name} {what}"),
                style,
            });
        }
    }

    // Event labels along the top: a label starts at the line where the runner began on its
    // event, or ends there when it would run past the chart's right edge; a bar under it runs
    // on to when the event was over (a reservation being freed, a create waiting for it).
    // Labels that would overlap go one row lower.
    let seconds_per_px = end / f64::from(WIDTH - LEGEND_WIDTH - 75);
    let mut rows: Vec<f64> = Vec::new(); // where each row's last label or bar ends, in seconds
    for o in &run.outcomes {
        let colour = if o.ok { RGBColor(90, 90, 90) } else { RED };
        let at = o.start_s;
        let label = o.text.split(':').next().unwrap_or("").to_string();
        let width_s = LABEL_PX_PER_CHAR * label.chars().count() as f64 * seconds_per_px;
        let right_anchored = at + width_s > end;
        let (from, to) = if right_anchored {
            (at - width_s, at)
        } else {
            (at, at + width_s)
        };
        let to = to.max(o.done_s);
        let row = match rows.iter().position(|&row_end| row_end < from) {
            Some(r) => r,
            None => {
                rows.push(f64::NEG_INFINITY);
                rows.len() - 1
            }
        };
        rows[row] = to + 4.0 * seconds_per_px;
        let y = top * (1.07 - 0.045 * row as f64);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(at, 0.0), (at, y - top * 0.02)],
            colour.mix(0.6),
        )))?;
        if o.done_s > at {
            let bar = y - top * 0.02;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(at, bar), (o.done_s, bar)],
                colour.mix(0.6).stroke_width(3),
            )))?;
        }
        let anchor = if right_anchored {
            Pos::new(HPos::Right, VPos::Top)
        } else {
            Pos::new(HPos::Left, VPos::Top)
        };
        chart.draw_series(std::iter::once(Text::new(
            label,
            (at, y),
            ("sans-serif", 11).into_font().color(&colour).pos(anchor),
        )))?;
    }

    // The legend, in its own column to the right of the chart.
    for (i, e) in legend.iter().enumerate() {
        let y = 45 + 18 * i as i32;
        legend_area.draw(&PathElement::new(vec![(4, y), (24, y)], e.style))?;
        legend_area.draw(&Text::new(
            e.name.clone(),
            (30, y - 6),
            ("sans-serif", 12).into_font(),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::run;

    #[test]
    fn the_plot_has_every_series_and_marks_the_events() {
        let s = Scenario::parse(
            r#"
name = "two guests"
[host]
free_mib = 256
end_s = 60
[[guest]]
domid = 1
name = "alpha"
min_mib = 512
max_mib = 2048
actual_mib = 2048
behaviour = { kind = "ideal", rate_mib_s = 100 }
[[guest]]
domid = 2
name = "beta"
min_mib = 512
max_mib = 2048
actual_mib = 1024
behaviour = { kind = "stuck" }
[[event]]
at_s = 10
do = "reserve"
name = "vm"
min_mib = 512
max_mib = 1024
"#,
        )
        .unwrap();
        let runs = vec![
            run(&s, Policy::Classic).unwrap(),
            run(&s, Policy::Adaptive).unwrap(),
        ];
        let svg = svg(&s, &runs).unwrap();
        for needle in [
            "host free",
            "alpha actual",
            "alpha target",
            "beta actual",
            "beta target",
            "two guests (classic)",
            "two guests (adaptive)",
            "reserve vm",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
        // One polyline per series per panel at least: 5 series × 2 panels.
        assert!(svg.matches("<polyline").count() >= 10);
    }

    /// Every text of an SVG document: x, y, whether it ends at x (rather than starts), text.
    fn texts(svg: &str) -> Vec<(f64, f64, bool, String)> {
        let mut out = Vec::new();
        for chunk in svg.split("<text ").skip(1) {
            let attr = |name: &str| -> f64 {
                let from = chunk.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                let len = chunk[from..].find('"').unwrap();
                chunk[from..from + len].parse().unwrap()
            };
            let head_end = chunk.find('>').unwrap();
            let body_end = chunk.find("</text>").unwrap();
            out.push((
                attr("x"),
                attr("y"),
                chunk[..head_end].contains("text-anchor=\"end\""),
                chunk[head_end + 1..body_end].trim().to_string(),
            ));
        }
        out
    }

    fn migration_runs() -> (Scenario, Vec<Run>) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scenarios/migration-reserve-half.toml"
        );
        let s = Scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        let runs = vec![
            run(&s, Policy::Classic).unwrap(),
            run(&s, Policy::Adaptive).unwrap(),
        ];
        (s, runs)
    }

    #[test]
    fn both_policies_are_drawn_on_one_time_axis() {
        let (s, runs) = migration_runs();
        let texts = texts(&svg(&s, &runs).unwrap());
        // The x axis of each 420 px panel: the numeric labels lowest in it.
        let axis = |panel: f64| {
            let numbers: Vec<_> = texts
                .iter()
                .filter(|t| t.1 >= 420.0 * panel && t.1 < 420.0 * (panel + 1.0))
                .filter(|t| t.3.parse::<f64>().is_ok())
                .collect();
            let bottom = numbers.iter().map(|t| t.1).fold(0.0, f64::max);
            numbers
                .iter()
                .filter(|t| t.1 == bottom)
                .map(|t| (t.0, t.3.clone()))
                .collect::<Vec<_>>()
        };
        let (classic, adaptive) = (axis(0.0), axis(1.0));
        assert!(classic.len() >= 5, "{classic:?}");
        assert_eq!(classic, adaptive);
        // Both runs' events fall on it.
        let last_tick: f64 = classic.last().unwrap().1.parse().unwrap();
        let latest = runs.iter().flat_map(|r| &r.outcomes).map(|o| o.done_s);
        assert!(latest.fold(0.0, f64::max) <= last_tick * 1.2);
    }

    #[test]
    fn the_legend_sits_beside_the_chart_clear_of_the_event_labels() {
        let (s, runs) = migration_runs();
        let texts = texts(&svg(&s, &runs).unwrap());
        let chart_right = f64::from(WIDTH - LEGEND_WIDTH);
        let legend: Vec<_> = texts
            .iter()
            .filter(|t| t.3 == "host free" || t.3.ends_with(" actual") || t.3.ends_with(" target"))
            .collect();
        // Host free and two lines per guest, in each panel.
        assert_eq!(legend.len(), 2 * (1 + 2 * s.names().len()));
        for t in &legend {
            assert!(t.0 >= chart_right, "legend entry {t:?} is inside the chart");
        }
        let labels: Vec<(f64, f64, f64)> = texts
            .iter()
            .filter(|t| t.3.starts_with("reserve ") || t.3.starts_with("create "))
            .map(|t| {
                let w = LABEL_PX_PER_CHAR * t.3.chars().count() as f64;
                if t.2 {
                    (t.0 - w, t.0, t.1)
                } else {
                    (t.0, t.0 + w, t.1)
                }
            })
            .collect();
        assert_eq!(labels.len(), 4, "two events in each panel");
        for (i, a) in labels.iter().enumerate() {
            assert!(
                a.0 >= 60.0 && a.1 <= chart_right,
                "label {a:?} leaves the chart"
            );
            for b in &labels[i + 1..] {
                let same_row = (a.2 - b.2).abs() < 12.0;
                assert!(
                    !(same_row && a.0 < b.1 && b.0 < a.1),
                    "labels {a:?} and {b:?} overlap"
                );
            }
        }
    }
}
