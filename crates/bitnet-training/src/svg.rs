//! A hand-written SVG line chart for loss curves (no plotting dependency):
//! axes with a few ticks, one polyline per series, and a legend.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 420.0;
const PAD_L: f64 = 60.0;
const PAD_R: f64 = 20.0;
const PAD_T: f64 = 30.0;
const PAD_B: f64 = 45.0;

/// One line: `(name, colour, (x, y) points)`.
pub type Series<'a> = (&'a str, &'a str, &'a [(f64, f64)]);

/// An SVG document plotting each series.
pub fn loss_curve(series: &[Series<'_>]) -> String {
    let pts = series
        .iter()
        .flat_map(|s| s.2.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R);
    let sy = |y: f64| PAD_T + (y1 - y) / (y1 - y0) * (H - PAD_T - PAD_B);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let (bx, by) = (H - PAD_B, W - PAD_R);
    let _ = writeln!(
        s,
        r#"<path d="M{PAD_L} {PAD_T} V{bx} H{by}" fill="none" stroke="black"/>"#
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let (xv, yv) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{:.2}</text><line x1="{PAD_L}" x2="{by}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            sx(xv),
            bx + 18.0,
            xv,
            PAD_L - 6.0,
            sy(yv) + 4.0,
            yv,
            sy(yv),
            sy(yv)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">step</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">loss (nats/token)</text>"#,
        (PAD_L + W - PAD_R) / 2.0,
        H - 6.0,
        H / 2.0,
        H / 2.0
    );
    for (i, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
                path.join(" ")
            );
        }
        let ly = PAD_T + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            W - 150.0,
            W - 130.0,
            W - 125.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_every_series() {
        let a = [(0.0, 5.0), (10.0, 3.0)];
        let b = [(10.0, 3.5)];
        let s = super::loss_curve(&[("train", "#111", &a), ("val", "#222", &b)]);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(super::loss_curve(&[]).contains("</svg>"));
    }
}
