//! Charts as inline SVG, drawn on the server: they need no script, print, and show in any
//! browser the console supports.

use maud::{Markup, html};

const COLORS: [&str; 4] = ["#1f5fa8", "#d9822b", "#2e8b57", "#a83232"];

/// Horizontal bars, one per (label, value); `fmt` writes the value at the bar's end.
pub fn bars(title: &str, rows: &[(String, f64)], fmt: impl Fn(f64) -> String) -> Markup {
    let max = rows.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max).max(f64::EPSILON);
    let (label_w, bar_w, row_h) = (110.0, 300.0, 28.0);
    let height = row_h * rows.len() as f64 + 10.0;
    html! {
        figure.chart {
            figcaption { (title) }
            svg xmlns="http://www.w3.org/2000/svg" width=(label_w + bar_w + 90.0) height=(height) role="img" aria-label=(title) {
                @for (i, (label, value)) in rows.iter().enumerate() {
                    @let y = i as f64 * row_h + 5.0;
                    @let w = (value / max * bar_w).max(if *value > 0.0 { 2.0 } else { 0.0 });
                    text x=(label_w - 8.0) y=(y + 17.0) text-anchor="end" font-size="13" { (label) }
                    rect x=(label_w) y=(y) width=(w) height=(row_h - 8.0) fill=(COLORS[i % COLORS.len()]) {}
                    text x=(label_w + w + 6.0) y=(y + 17.0) font-size="13" { (fmt(*value)) }
                }
            }
        }
    }
}

/// Columns per period with two series (e.g. received and closed), with a legend.
pub fn trend(title: &str, periods: &[(String, f64, f64)], legend: (&str, &str)) -> Markup {
    let max = periods.iter().map(|(_, a, b)| a.max(*b)).fold(0.0_f64, f64::max).max(1.0);
    let (left, top, plot_h, group_w) = (40.0, 24.0, 160.0, 54.0);
    let width = left + group_w * periods.len().max(1) as f64 + 20.0;
    let scale = |v: f64| v / max * plot_h;
    html! {
        figure.chart {
            figcaption { (title) }
            svg xmlns="http://www.w3.org/2000/svg" width=(width) height=(top + plot_h + 40.0) role="img" aria-label=(title) {
                rect x=(left) y="4" width="12" height="12" fill=(COLORS[0]) {}
                text x=(left + 16.0) y="15" font-size="12" { (legend.0) }
                rect x=(left + 90.0) y="4" width="12" height="12" fill=(COLORS[2]) {}
                text x=(left + 106.0) y="15" font-size="12" { (legend.1) }
                line x1=(left) y1=(top + plot_h) x2=(width - 10.0) y2=(top + plot_h) stroke="#888" {}
                text x=(left - 6.0) y=(top + 10.0) text-anchor="end" font-size="11" { (max) }
                text x=(left - 6.0) y=(top + plot_h) text-anchor="end" font-size="11" { "0" }
                @for (i, (label, a, b)) in periods.iter().enumerate() {
                    @let x = left + i as f64 * group_w + 6.0;
                    rect x=(x) y=(top + plot_h - scale(*a)) width="18" height=(scale(*a)) fill=(COLORS[0]) { title { (legend.0) "：" (a) } }
                    rect x=(x + 20.0) y=(top + plot_h - scale(*b)) width="18" height=(scale(*b)) fill=(COLORS[2]) { title { (legend.1) "：" (b) } }
                    text x=(x + 19.0) y=(top + plot_h + 16.0) text-anchor="middle" font-size="11" { (label) }
                }
            }
        }
    }
}
