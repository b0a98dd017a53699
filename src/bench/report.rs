//! The benchmark's report: throughput against cores and the added-latency distribution, as an
//! SVG drawn with plotters, or an HTML page holding that SVG and a table of the figures.

use std::path::Path;

use plotters::prelude::*;

use super::BenchResult;

/// Height of the plots.
const PLOT_HEIGHT: u32 = 440;
/// Height of one row of the table under the plots.
const ROW_HEIGHT: u32 = 20;

/// Draw the two plots side by side, and under them a table of the figures, into an SVG
/// string.
pub fn svg(result: &BenchResult) -> Result<String, String> {
    let mut out = String::new();
    {
        let rows = table_rows(result);
        let height = PLOT_HEIGHT + 24 + ROW_HEIGHT * rows.len() as u32;
        let root = SVGBackend::with_string(&mut out, (1100, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plots, table) = root.split_vertically(PLOT_HEIGHT);
        let (left, right) = plots.split_horizontally(550);
        throughput(&left, result)?;
        latency(&right, result)?;
        // Columns at fixed places (SVG text collapses runs of spaces).
        const COLUMNS: [i32; 9] = [24, 90, 150, 260, 350, 440, 540, 640, 740];
        for (i, row) in rows.iter().enumerate() {
            let y = 12 + (i as u32 * ROW_HEIGHT) as i32;
            let font = if i == 0 {
                ("sans-serif", 13).into_font().style(FontStyle::Bold)
            } else {
                ("sans-serif", 13).into_font()
            };
            let cells: Vec<(i32, &String)> = if row.len() == 1 {
                vec![(COLUMNS[0], &row[0])]
            } else {
                COLUMNS.iter().copied().zip(row.iter()).collect()
            };
            for (x, cell) in cells {
                table
                    .draw(&Text::new(cell.clone(), (x, y), font.clone()))
                    .map_err(|e| e.to_string())?;
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The table under the SVG's plots: a header, one row of cells per run, and a note.
fn table_rows(result: &BenchResult) -> Vec<Vec<String>> {
    let header = [
        "shards",
        "hop",
        "forwarded/s",
        "vs crate",
        "node CPU",
        "added p50",
        "added p99",
        "in node p50",
        "in node p99",
    ];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for r in &result.runs {
        let (p50, p99) = if r.rate_asked.is_some() {
            (ms(r.latency.p50_us), ms(r.latency.p99_us))
        } else {
            ("saturated".to_string(), "saturated".to_string())
        };
        rows.push(vec![
            r.cores.to_string(),
            r.hop_processor.to_string(),
            format!("{:.0}", r.forwarded_per_s),
            format!("{:.2}x", r.efficiency),
            format!("{:.2}", r.cpu.node),
            p50,
            p99,
            ms(r.latency_in_node.p50_us),
            ms(r.latency_in_node.p99_us),
        ]);
    }
    rows.push(vec![format!(
        "Packet size {}, requested delay {} ms. vs crate: forwarded/s over the Sphinx crate's process() x shards, measured in the same run. Added latency: only with --rate (a saturated run measures its queue).",
        result.size, result.delay_ms
    )]);
    rows
}

/// An end-to-end latency figure, or why there is none: a saturated run measures the queue in
/// front of the node.
fn saturated_or(run: &super::RunResult, us: u64) -> String {
    if run.rate_asked.is_some() {
        ms(us)
    } else {
        "saturated: use --rate".to_string()
    }
}

/// Microseconds as milliseconds, for the tables.
fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
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
        // Headroom above the highest point keeps the legend off the lines.
        .build_cartesian_2d(0.5..max_cores + 0.5, 0.0..max_rate * 1.45)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("shards (cores)")
        .y_desc("packets/s")
        .x_labels(max_cores as usize + 2)
        .x_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-9 && *v >= 1.0 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| format!("{v:.0}"))
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
    let max_ms = r
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
        .max(1) as f64
        / 1000.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Added latency by percentile (thick: end to end, with --rate; thin: in the node)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        // Two decades of headroom above the highest point keep the legend off the curves.
        .build_cartesian_2d(0.0..100.0, (0.001..max_ms * 100.0).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms beyond the requested delay")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        })
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, run) in r.runs.iter().enumerate() {
        let color = colors[i % colors.len()];
        let label = format!("{} shard(s), {}", run.cores, run.hop_processor);
        // End to end: thick, filled markers (only with an open-loop rate: a saturated run
        // measures the queue in front of the node). The node's own measure: thin, hollow
        // markers, in a lighter shade of the same colour.
        if run.rate_asked.is_some() {
            draw_curve(
                &mut chart,
                &run.latency,
                color,
                2,
                format!("{label}, end to end"),
            )?;
        }
        draw_curve(
            &mut chart,
            &run.latency_in_node,
            lighter(color),
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
        .map(|(q, v)| (*q, (*v).max(1) as f64 / 1000.0))
        .collect();
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
        .map_err(|e| e.to_string())?
        .label(label)
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(width))
        });
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

/// `color` mixed halfway to white.
fn lighter(color: RGBColor) -> RGBColor {
    let mix = |c: u8| c / 2 + 128;
    RGBColor(mix(color.0), mix(color.1), mix(color.2))
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
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.2}x</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            r.cores,
            r.hop_processor,
            r.forwarded_per_s,
            r.ceiling_per_s,
            r.efficiency,
            r.cpu.node,
            r.cpu.generator,
            r.cpu.receiver,
            saturated_or(r, r.latency.p50_us),
            saturated_or(r, r.latency.p99_us),
            saturated_or(r, r.latency.p999_us),
            saturated_or(r, r.latency.max_us),
            ms(r.latency_in_node.p99_us),
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
         <table><tr><th>shards</th><th>hop processor</th><th>forwarded/s</th><th>ceiling/s (crate process(), 1 thread)</th><th>vs crate (per shard)</th><th>node CPU</th><th>generator CPU</th><th>sink CPU</th><th>added p50</th><th>added p99</th><th>added p99.9</th><th>added max</th><th>in node p99</th><th>bytes/held packet</th></tr>\n{}</table>\
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
