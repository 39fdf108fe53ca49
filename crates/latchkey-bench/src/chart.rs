//! One SVG bar chart per figure of a run (plotters): a bar per engine,
//! latchkey's engines in one colour and the peers in another, the value
//! written above each bar.

use std::path::Path;

use plotters::prelude::*;

use crate::workloads::{figure, row_names, Results};

const LATCHKEY: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const PEER: RGBColor = RGBColor(0xa0, 0xa0, 0xa0);

/// Draws `<dir>/<figure>.svg` for every figure of `all` (spaces in a
/// figure's name become `-`).
pub fn draw_all(dir: &Path, n: u64, all: &Results) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, unit) in row_names(all) {
        let bars: Vec<(String, f64)> =
            all.iter().filter_map(|(engine, ms)| figure(ms, &name).map(|v| (engine.clone(), v))).collect();
        if bars.is_empty() {
            continue;
        }
        let file = dir.join(format!("{}.svg", name.replace(' ', "-")));
        draw(&file, &name, &unit, n, &bars).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}

fn draw(file: &Path, name: &str, unit: &str, n: u64, bars: &[(String, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    let lower = crate::workloads::Row { name: String::new(), value: 0.0, unit: unit.to_string() }.lower_is_better();
    let max = bars.iter().map(|(_, v)| *v).filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-9);
    let root = SVGBackend::new(file, (720, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!("{name}, {n} keys ({unit}, {} is better)", if lower { "lower" } else { "higher" });
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d((0..bars.len()).into_segmented(), 0.0..max * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|(e, _)| e.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc(unit)
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (engine, v))| {
        let colour = if engine.starts_with("latchkey") { LATCHKEY } else { PEER };
        let mut bar =
            Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *v)], colour.filled());
        bar.set_margin(0, 0, 12, 12);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        Text::new(format!("{v:.3}"), (SegmentValue::CenterOf(i), *v + max * 0.02), ("sans-serif", 14).into_font())
    }))?;
    root.present()?;
    Ok(())
}
