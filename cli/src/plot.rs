//! SVG plots of runs: host free memory and each guest's target and actual over time, with the
//! scenario's events marked.

use std::collections::BTreeMap;

use plotters::prelude::*;
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

/// Draws `runs` of `scenario` one above the other into an SVG document.
pub fn svg(scenario: &Scenario, runs: &[Run]) -> Result<String, String> {
    let names = scenario.names();
    let mut out = String::new();
    {
        let height = 420 * runs.len() as u32;
        let root = SVGBackend::with_string(&mut out, (1000, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((runs.len(), 1));
        for (area, run) in panels.iter().zip(runs) {
            panel(area, scenario, run, &names).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    scenario: &Scenario,
    run: &Run,
    names: &BTreeMap<DomId, String>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let trace = run.sim.trace();
    let end = trace.last().map_or(1.0, |r| r.time).max(1.0);
    let top = trace
        .iter()
        .flat_map(|r| {
            std::iter::once(r.free_mem_kib).chain(r.guests.iter().flat_map(|g| [g.1, g.2]))
        })
        .max()
        .unwrap_or(0) as f64
        / GIB;
    let mut chart = ChartBuilder::on(area)
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

    chart
        .draw_series(LineSeries::new(
            trace.iter().map(|r| (r.time, r.free_mem_kib as f64 / GIB)),
            BLACK.stroke_width(2),
        ))?
        .label("host free")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2)));

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
        chart
            .draw_series(LineSeries::new(points(|g| g.2), colour.stroke_width(2)))?
            .label(format!("{name} actual"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(points(|g| g.1), colour.mix(0.45)))?
            .label(format!("{name} target"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.mix(0.45)));
    }

    for o in &run.outcomes {
        let colour = if o.ok { RGBColor(90, 90, 90) } else { RED };
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(o.at_s, 0.0), (o.at_s, top * 1.05)],
            colour.mix(0.6),
        )))?;
        let label = o.text.split(':').next().unwrap_or("").to_string();
        chart.draw_series(std::iter::once(Text::new(
            label,
            (o.at_s, top * 1.07),
            ("sans-serif", 11).into_font().color(&colour),
        )))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
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
}
