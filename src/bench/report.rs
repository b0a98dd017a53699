//! The benchmark's report: throughput against cores and the added-latency distribution, as an
//! SVG drawn with plotters, or an HTML page holding that SVG and a table of the figures.

use std::path::Path;

use plotters::prelude::*;

use super::BenchResult;

/// Draw the two plots side by side into an SVG string.
pub fn svg(result: &BenchResult) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1100, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(550);
        throughput(&left, result)?;
        latency(&right, result)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    r: &BenchResult,
) -> Result<(), String> {
    let max_cores = r.runs.iter().map(|x| x.cores).max().unwrap_or(1) as f64;
    let max_rate = r
        .runs
        .iter()
        .map(|x| x.forwarded_per_s.max(x.ceiling_per_s * x.cores as f64))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption("Forwarded packets/s against shards", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.5..max_cores + 0.5, 0.0..max_rate * 1.15)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("shards (cores)")
        .y_desc("packets/s")
        .x_labels(max_cores as usize + 1)
        .draw()
        .map_err(|e| e.to_string())?;
    let measured: Vec<(f64, f64)> = r
        .runs
        .iter()
        .map(|x| (x.cores as f64, x.forwarded_per_s))
        .collect();
    let ideal: Vec<(f64, f64)> = r
        .runs
        .iter()
        .map(|x| (x.cores as f64, x.ceiling_per_s * x.cores as f64))
        .collect();
    chart
        .draw_series(LineSeries::new(ideal.clone(), BLUE.mix(0.5)))
        .map_err(|e| e.to_string())?
        .label("ceiling x shards (crate process())")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.mix(0.5)));
    chart
        .draw_series(
            ideal
                .iter()
                .map(|p| Circle::new(*p, 3, BLUE.mix(0.5).filled())),
        )
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(measured.clone(), RED.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("node, forwarded")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    chart
        .draw_series(measured.iter().map(|p| Circle::new(*p, 4, RED.filled())))
        .map_err(|e| e.to_string())?;
    draw_legend(&mut chart)
}

fn latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    r: &BenchResult,
) -> Result<(), String> {
    let max_us = r
        .runs
        .iter()
        .flat_map(|x| {
            x.latency
                .curve
                .iter()
                .chain(x.latency_in_node.curve.iter())
                .map(|(_, v)| *v)
        })
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Added latency by percentile (thick: end to end; thin: in the node)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..100.0, (1.0..max_us * 1.5).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("µs beyond the requested delay")
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, run) in r.runs.iter().enumerate() {
        let color = colors[i % colors.len()];
        let label = format!("{} shard(s), {}", run.cores, run.hop_processor);
        // End to end: thick, filled markers. The node's own measure: thin, hollow markers.
        draw_curve(&mut chart, &run.latency, color, 2, label.clone())?;
        draw_curve(
            &mut chart,
            &run.latency_in_node,
            color,
            1,
            format!("{label}, in node"),
        )?;
    }
    draw_legend(&mut chart)
}

/// One latency curve by percentile: a line of `width` and a marker at each point (filled for
/// width 2 and more).
fn draw_curve<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    latency: &super::Latency,
    color: RGBColor,
    width: u32,
    label: String,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let points: Vec<(f64, f64)> = latency
        .curve
        .iter()
        .map(|(q, v)| (*q, (*v).max(1) as f64))
        .collect();
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
        .map_err(|e| e.to_string())?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    let style = if width >= 2 {
        color.filled()
    } else {
        color.into()
    };
    chart
        .draw_series(points.iter().map(|p| Circle::new(*p, 3, style)))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The legend box both plots use.
fn draw_legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// An HTML page: the plots and a table of every figure.
pub fn html(result: &BenchResult) -> Result<String, String> {
    let plot = svg(result)?;
    let mut rows = String::new();
    for r in &result.runs {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            r.cores,
            r.hop_processor,
            r.forwarded_per_s,
            r.ceiling_per_s,
            r.efficiency,
            r.cpu.node,
            r.cpu.generator,
            r.cpu.receiver,
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.latency.max_us,
            r.latency_in_node.p99_us,
            r.bytes_per_held_packet.map_or("-".to_string(), |b| format!("{b:.0}")),
        ));
    }
    let scaling = result.scaling.map_or(String::new(), |s| {
        format!("<p>Scaling, largest over smallest shard count: {s:.2}x</p>")
    });
    let scaling = result
        .hop_processor_ratios
        .iter()
        .fold(scaling, |mut text, ratio| {
            text.push_str(&format!(
                "<p>Fast over crate hop processor, {} shard(s): forwarded/s {:.2}x, per node core {:.2}x, hop step {:.2}x</p>",
                ratio.cores, ratio.forwarded, ratio.forwarded_per_node_core, ratio.hop_step
            ));
            text
        });
    Ok(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>bench-mix report</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:4px 8px;text-align:right}}</style></head><body>\
         <h1>bench-mix</h1><p>Packet size {}, requested delay {} ms.</p>{}\
         <table><tr><th>shards</th><th>hop processor</th><th>forwarded/s</th><th>ceiling/s (1 thread)</th><th>efficiency</th><th>node CPU</th><th>generator CPU</th><th>sink CPU</th><th>p50 µs</th><th>p99 µs</th><th>p99.9 µs</th><th>max µs</th><th>in node p99 µs</th><th>bytes/held packet</th></tr>\n{}</table>\
         <div>{}</div></body></html>\n",
        result.size, result.delay_ms, scaling, rows, plot
    ))
}

/// Write the report to `path`: SVG when it ends in `.svg`, else HTML.
pub fn write(result: &BenchResult, path: &Path) -> Result<(), String> {
    let text = if path.extension().is_some_and(|e| e == "svg") {
        svg(result)?
    } else {
        html(result)?
    };
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
