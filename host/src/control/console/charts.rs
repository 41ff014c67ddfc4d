//! The console's charts, drawn as inline SVG by `plotters` (its text is
//! laid out without font files).

use crate::runtime::traffic::{Point, RESOLUTION};
use plotters::prelude::*;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 220;

/// One line of a chart: its name and its (x, y) points.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart of `lines` over `x` with `x_label` naming each x tick;
/// `None` if plotters fails (the page then says so instead).
pub fn lines(
    title: &str,
    y_unit: &str,
    x: std::ops::Range<f64>,
    x_label: &dyn Fn(&f64) -> String,
    lines: &[Line],
) -> Option<String> {
    let mut svg = String::new();
    let drawn = draw(&mut svg, title, y_unit, x, x_label, lines);
    if let Err(e) = drawn {
        tracing::debug!("drawing the chart {title:?} failed: {e}");
        return None;
    }
    Some(svg)
}

fn draw(
    svg: &mut String,
    title: &str,
    y_unit: &str,
    x: std::ops::Range<f64>,
    x_label: &dyn Fn(&f64) -> String,
    lines: &[Line],
) -> Result<(), Box<dyn std::error::Error>> {
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    // Some room above the highest point; a flat zero still has an axis.
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(56)
        .build_cartesian_2d(x, 0.0..top)?;
    chart
        .configure_mesh()
        .x_labels(7)
        .y_labels(5)
        .x_label_formatter(x_label)
        .y_label_formatter(&|v| short(*v))
        .y_desc(y_unit)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, line) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(line.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}

/// A number with few digits: 1.5k, 12, 0.25.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.1e}")
    }
}

/// A service's traffic over the last hour: invocations and errors per
/// second, and execution time percentiles, by minutes before `now_ms`.
pub fn traffic(points: &[Point], now_ms: i64) -> [Option<String>; 2] {
    let minutes = |p: &Point| (p.at_ms - now_ms) as f64 / 60_000.0;
    let per_second = RESOLUTION.as_secs_f64();
    let x_label = |m: &f64| format!("{:.0} min", m);
    let rate = lines(
        "Invocations per second",
        "per second",
        -60.0..0.0,
        &x_label,
        &[
            Line {
                name: "invocations/s".into(),
                points: points
                    .iter()
                    .map(|p| (minutes(p), p.invocations as f64 / per_second))
                    .collect(),
            },
            Line {
                name: "errors/s".into(),
                points: points
                    .iter()
                    .map(|p| (minutes(p), p.errors as f64 / per_second))
                    .collect(),
            },
        ],
    );
    // Percentiles of periods without an invocation are no points.
    let ran = |f: fn(&Point) -> f32| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter(|p| p.invocations > 0 && f(p) > 0.0)
            .map(|p| (minutes(p), f(p) as f64 * 1000.0))
            .collect()
    };
    let latency = lines(
        "Execution time",
        "ms",
        -60.0..0.0,
        &x_label,
        &[
            Line {
                name: "p50".into(),
                points: ran(|p| p.p50),
            },
            Line {
                name: "p99".into(),
                points: ran(|p| p.p99),
            },
        ],
    );
    [rate, latency]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_legend() {
        let points: Vec<Point> = (0..30)
            .map(|i| Point {
                at_ms: 1_000_000 - (30 - i) * 10_000,
                invocations: i as u32 * 10,
                errors: (i % 3) as u32,
                p50: 0.002,
                p99: 0.02,
            })
            .collect();
        let [rate, latency] = traffic(&points, 1_000_000);
        let rate = rate.expect("a chart");
        assert!(rate.starts_with("<svg") && rate.contains("invocations/s"));
        assert!(rate.contains("<polyline"), "{rate}");
        assert!(latency.unwrap().contains("p99"));
        // Nothing to draw is still a chart.
        assert!(traffic(&[], 0)[0].as_deref().unwrap().contains("<svg"));
        assert_eq!(short(1500.0), "1500");
        assert_eq!(short(15_000.0), "15.0k");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(0.0005), "5.0e-4");
    }
}
