//! vqkit-plot: the figures of vqkit's tutorial and of `vqkit plot`, as PNG files.
//!
//! Why a crate of its own: the CLI (`vqkit plot` over training logs) and the numbered
//! examples (`cargo run --release --example 01_vq_2d`) draw the same kinds of figures, and
//! neither the core library nor the neural-network crate should carry a plotting
//! dependency. Why this shape:
//!
//! - plotters draws into a plain RGB buffer (its bitmap backend without the `image`
//!   crate) and [`vqkit::io::png::encode_rgb`] writes it, so no image codec is compiled;
//! - text goes through ab_glyph with DejaVu Sans bundled in the crate ([`fonts`]), so a
//!   figure looks the same everywhere and no system font library (fontconfig, freetype)
//!   is needed at build or run time;
//! - a figure is data ([`Figure`] of [`Panel`]s of [`Series`]) rendered by one function,
//!   so the log-axis transform, the skipping of non-finite points and the checks of
//!   empty input are written once. Log axes are drawn as linear axes over `log10` of the
//!   values, with tick labels mapped back (`1e-3`, `3.2e-3`, ...); values `<= 0` on a log
//!   axis are skipped like NaN.
//!
//! Bad input is a typed [`Error`], never a panic: a panel with no finite point, a zero
//! size, an unwritable output path.

pub mod fonts;
pub mod log;

use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Everything drawing a figure can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A panel (or a whole figure) with no finite point to draw.
    #[error("{what}: nothing to draw (no finite points{})", if *.log { ", or none > 0 on a log axis" } else { "" })]
    Empty { what: String, log: bool },
    /// A size, count or shape outside its valid range.
    #[error("invalid {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    /// A JSON-lines training log that cannot be read: the file and the 1-based line.
    #[error("{path}:{line}: {reason}")]
    Log {
        path: String,
        line: usize,
        reason: String,
    },
    /// plotters failed while drawing (a font or backend error).
    #[error("drawing failed: {0}")]
    Draw(String),
    /// PNG encoding or writing the file (the error names the path).
    #[error(transparent)]
    Vqkit(#[from] vqkit::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn invalid(name: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        name,
        reason: reason.into(),
    }
}

fn draw_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Draw(e.to_string())
}

/// Ten colours that stay distinct on white and for the common colour-vision deficiencies
/// as far as ten can; series take them in order.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 100, 180),
    RGBColor(230, 120, 20),
    RGBColor(40, 150, 60),
    RGBColor(200, 40, 40),
    RGBColor(130, 90, 180),
    RGBColor(130, 80, 70),
    RGBColor(220, 110, 190),
    RGBColor(110, 110, 110),
    RGBColor(170, 170, 30),
    RGBColor(20, 180, 200),
];

/// The palette colour of series `i` (cycling).
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A polyline through the points in order.
    Line,
    /// A dashed polyline (reference slopes, bounds).
    Dashed,
    /// Dots only (scatter plots).
    Points,
    /// A polyline with a dot at each point.
    LinePoints,
    /// Vertical bars from the bottom of the panel (histograms, usage counts).
    Bars,
}

/// One labelled set of points of a panel.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
    /// Palette index; `None` takes the series' position in its panel.
    pub colour: Option<usize>,
    /// Dot radius in pixels for `Points` and `LinePoints`.
    pub size: u32,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>, mark: Mark) -> Self {
        Series {
            label: label.into(),
            points,
            mark,
            colour: None,
            size: 3,
        }
    }

    /// `y[i]` against `x = i + 1` (stages, levels, iterations counted from 1).
    pub fn from_ys(label: impl Into<String>, ys: &[f64], mark: Mark) -> Self {
        let points = ys.iter().enumerate().map(|(i, &y)| ((i + 1) as f64, y));
        Series::new(label, points.collect(), mark)
    }

    pub fn colour(mut self, i: usize) -> Self {
        self.colour = Some(i);
        self
    }

    pub fn size(mut self, px: u32) -> Self {
        self.size = px;
        self
    }
}

/// A background of coloured cells under a panel's series: cell `(i, j)` of an `nx x ny`
/// grid over the panel's data range gets the pale palette colour of `class[j * nx + i]`
/// (Voronoi regions of a codebook, decision regions).
#[derive(Clone, Debug)]
pub struct Raster {
    pub x: (f64, f64),
    pub y: (f64, f64),
    pub nx: usize,
    pub ny: usize,
    pub class: Vec<usize>,
}

/// One chart: axes, series, optional background raster.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
    pub raster: Option<Raster>,
    /// Fixed axis ranges (data units); by default the range of the drawn points.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    /// Draw the legend (on by default when any series has a label).
    pub no_legend: bool,
    /// Where the legend goes.
    pub legend: Corner,
}

/// A corner of a panel (for its legend).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Corner {
    #[default]
    UpperRight,
    UpperLeft,
    LowerRight,
    LowerLeft,
}

impl Panel {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Panel {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            ..Panel::default()
        }
    }

    pub fn log_x(mut self) -> Self {
        self.log_x = true;
        self
    }

    pub fn log_y(mut self) -> Self {
        self.log_y = true;
        self
    }

    pub fn legend(mut self, at: Corner) -> Self {
        self.legend = at;
        self
    }

    pub fn with(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }
}

/// A grid of panels, `cols` wide, rendered to a `width x height` PNG.
#[derive(Clone, Debug)]
pub struct Figure {
    pub width: u32,
    pub height: u32,
    pub cols: usize,
    pub title: Option<String>,
    pub panels: Vec<Panel>,
}

/// The largest side of a figure, in pixels (a bound on the buffer, 3 bytes a pixel).
pub const MAX_SIDE: u32 = 8192;

fn check_size(width: u32, height: u32) -> Result<()> {
    if width < 16 || height < 16 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(invalid(
            "figure size",
            format!("{width} x {height} pixels (each side must be in 16..={MAX_SIDE})"),
        ));
    }
    Ok(())
}

impl Figure {
    /// `panels` laid out `cols` to a row, each panel `panel_w x panel_h` pixels.
    pub fn grid(panels: Vec<Panel>, cols: usize, panel_w: u32, panel_h: u32) -> Self {
        let cols = cols.clamp(1, panels.len().max(1));
        let rows = panels.len().div_ceil(cols).max(1);
        Figure {
            width: panel_w.saturating_mul(cols as u32),
            height: panel_h.saturating_mul(rows as u32),
            cols,
            title: None,
            panels,
        }
    }

    pub fn title(mut self, t: impl Into<String>) -> Self {
        self.title = Some(t.into());
        self
    }

    /// The PNG bytes of the figure.
    pub fn render(&self) -> Result<Vec<u8>> {
        check_size(self.width, self.height)?;
        if self.panels.is_empty() {
            return Err(Error::Empty {
                what: "figure (no panels)".into(),
                log: false,
            });
        }
        // Ranges are checked before any drawing, so a bad panel costs nothing.
        let ranges = self
            .panels
            .iter()
            .map(panel_ranges)
            .collect::<Result<Vec<_>>>()?;
        fonts::register()?;
        let (w, h) = (self.width as usize, self.height as usize);
        let mut buf = vec![255u8; w * h * 3];
        {
            let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(
                &mut buf,
                (self.width, self.height),
            )
            .map_err(draw_err)?;
            let mut root = backend.into_drawing_area();
            root.fill(&WHITE).map_err(draw_err)?;
            if let Some(t) = &self.title {
                root = root
                    .titled(t, (fonts::FAMILY, 22).into_font().color(&BLACK))
                    .map_err(draw_err)?;
            }
            let cols = self.cols.clamp(1, self.panels.len());
            let rows = self.panels.len().div_ceil(cols);
            let areas = root.split_evenly((rows, cols));
            for ((panel, area), range) in self.panels.iter().zip(&areas).zip(ranges) {
                draw_panel(area, panel, range)?;
            }
            root.present().map_err(draw_err)?;
        }
        Ok(vqkit::io::png::encode_rgb(w, h, &buf)?)
    }

    /// Renders the figure and writes it to `path` (atomically: a failed write leaves any
    /// old file whole).
    pub fn save(&self, path: &Path) -> Result<()> {
        let png = self.render()?;
        vqkit::io::write_atomic(path, &png)?;
        Ok(())
    }
}

/// A value on an axis in drawing coordinates: `log10(v)` on a log axis, `None` where it
/// cannot be drawn (non-finite, or `<= 0` on a log axis).
fn axis_value(v: f64, log: bool) -> Option<f64> {
    if !v.is_finite() {
        return None;
    }
    if log {
        (v > 0.0).then(|| v.log10())
    } else {
        Some(v)
    }
}

/// The drawable points of a series, in drawing coordinates.
fn transformed(s: &Series, log_x: bool, log_y: bool) -> Vec<(f64, f64)> {
    s.points
        .iter()
        .filter_map(|&(x, y)| Some((axis_value(x, log_x)?, axis_value(y, log_y)?)))
        .collect()
}

/// `(lo, hi)` widened so that a single value still spans a range, with a margin.
fn padded(lo: f64, hi: f64, log: bool) -> (f64, f64) {
    let span = hi - lo;
    if span <= f64::EPSILON * lo.abs().max(1.0) {
        let d = if log { 0.5 } else { lo.abs().max(1.0) * 0.05 };
        (lo - d, hi + d)
    } else {
        (lo - 0.04 * span, hi + 0.04 * span)
    }
}

type Ranges = ((f64, f64), (f64, f64));

fn fixed(r: Option<(f64, f64)>, log: bool, what: &str) -> Result<Option<(f64, f64)>> {
    match r {
        None => Ok(None),
        Some((a, b)) => match (axis_value(a, log), axis_value(b, log)) {
            (Some(a), Some(b)) if a < b => Ok(Some((a, b))),
            _ => Err(invalid(
                "axis range",
                format!(
                    "{what}: ({a}, {b}) must be finite, increasing{}",
                    if log { " and > 0" } else { "" }
                ),
            )),
        },
    }
}

/// The x and y ranges of a panel in drawing coordinates, or [`Error::Empty`].
fn panel_ranges(p: &Panel) -> Result<Ranges> {
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    let mut bars = false;
    for s in &p.series {
        bars |= s.mark == Mark::Bars;
        for (x, y) in transformed(s, p.log_x, p.log_y) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if let Some(r) = &p.raster
        && let (Some(a), Some(b), Some(c), Some(d)) = (
            axis_value(r.x.0, p.log_x),
            axis_value(r.x.1, p.log_x),
            axis_value(r.y.0, p.log_y),
            axis_value(r.y.1, p.log_y),
        )
    {
        x0 = x0.min(a);
        x1 = x1.max(b);
        y0 = y0.min(c);
        y1 = y1.max(d);
    }
    let what = if p.title.is_empty() {
        "panel"
    } else {
        &p.title
    };
    if !(x0 <= x1 && y0 <= y1) {
        return Err(Error::Empty {
            what: what.to_string(),
            log: p.log_x || p.log_y,
        });
    }
    // Bars stand on zero on a linear axis.
    if bars && !p.log_y {
        y0 = y0.min(0.0);
    }
    let mut xr = padded(x0, x1, p.log_x);
    let mut yr = padded(y0, y1, p.log_y);
    if bars && !p.log_y && y0 >= 0.0 {
        yr.0 = 0.0;
    }
    if p.raster.is_some() && p.x_range.is_none() && p.y_range.is_none() {
        // A raster fills its panel edge to edge.
        xr = (x0, x1);
        yr = (y0, y1);
    }
    let xr = fixed(p.x_range, p.log_x, what)?.unwrap_or(xr);
    let yr = fixed(p.y_range, p.log_y, what)?.unwrap_or(yr);
    Ok((xr, yr))
}

/// A tick label: plain for moderate magnitudes, `1e-3` / `3.2e-3` otherwise.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if (1e-2..1e5).contains(&a) {
        let s = if a >= 100.0 {
            format!("{v:.0}")
        } else if a >= 1.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.3}")
        };
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let s = format!("{v:.1e}");
        s.replace(".0e", "e")
    }
}

fn axis_label(v: f64, log: bool) -> String {
    if log {
        tick_label(10f64.powf(v))
    } else {
        tick_label(v)
    }
}

/// The pale version of a palette colour (raster backgrounds).
fn pale(c: RGBColor) -> RGBColor {
    let m = |v: u8| (255.0 - (255.0 - v as f64) * 0.3) as u8;
    RGBColor(m(c.0), m(c.1), m(c.2))
}

/// A "nice" step (1, 2 or 5 times a power of ten) giving about `n` intervals over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    p * if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// Multiples of `step` in `[lo, hi]`.
fn multiples(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last.min(first + 200))
        .map(|i| i as f64 * step)
        .collect()
}

/// Tick positions in drawing coordinates: nice values on a linear axis; on a log axis
/// (drawing coordinates are `log10`) whole decades, or 1-2-5 within decades when the
/// range spans few of them, or nice linear values when it spans less than one.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if !log {
        return multiples(lo, hi, nice_step(hi - lo, 6.0));
    }
    let span = hi - lo;
    if span >= 3.0 {
        let every = (span / 6.0).ceil();
        return multiples(lo, hi, every);
    }
    if span >= 0.9 {
        let mut t = Vec::new();
        for d in (lo.floor() as i64)..=(hi.ceil() as i64) {
            for m in [1.0f64, 2.0, 5.0] {
                let v = d as f64 + m.log10();
                if (lo..=hi).contains(&v) {
                    t.push(v);
                }
            }
        }
        return t;
    }
    let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
    multiples(a, b, nice_step(b - a, 7.0))
        .into_iter()
        .filter(|v| *v > 0.0)
        .map(f64::log10)
        .collect()
}

/// A plotters axis over `[lo, hi]` in drawing coordinates whose bold ticks are
/// [`ticks`] and whose light grid lines are the minor ticks of a log axis (2..9 within
/// each decade) or fifths of a linear step. plotters' own `f64` axis puts its ticks at
/// nice values of the drawing coordinate, which on a log axis are not nice values.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn new(lo: f64, hi: f64, log: bool) -> Self {
        Axis { lo, hi, log }
    }

    fn minor(&self) -> Vec<f64> {
        let (lo, hi) = (self.lo, self.hi);
        if !self.log {
            return multiples(lo, hi, nice_step(hi - lo, 6.0) / 5.0);
        }
        if hi - lo >= 4.0 {
            return multiples(lo, hi, 1.0);
        }
        let mut t = Vec::new();
        for d in (lo.floor() as i64)..=(hi.ceil() as i64) {
            for m in 1..10 {
                let v = d as f64 + (m as f64).log10();
                if (lo..=hi).contains(&v) {
                    t.push(v);
                }
            }
        }
        t
    }
}

impl plotters::coord::ranged1d::Ranged for Axis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = limit.1 - limit.0;
        let t = (v - self.lo) / (self.hi - self.lo);
        if !t.is_finite() || span == 0 {
            return limit.0;
        }
        limit.0 + (span as f64 * t + 1e-3).floor() as i32
    }

    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, hint: H) -> Vec<f64> {
        use plotters::coord::ranged1d::KeyPointWeight;
        let mut t = match hint.weight() {
            KeyPointWeight::Bold => ticks(self.lo, self.hi, self.log),
            KeyPointWeight::Any => self.minor(),
        };
        // Too many for the space: keep every other one until they fit.
        while t.len() > hint.max_num_points().max(2) {
            t = t.into_iter().step_by(2).collect();
        }
        t
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    r: Ranges,
) -> Result<()> {
    let ((x0, x1), (y0, y1)) = r;
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (fonts::FAMILY, 17))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(62)
        .build_cartesian_2d(Axis::new(x0, x1, p.log_x), Axis::new(y0, y1, p.log_y))
        .map_err(draw_err)?;
    let (lx, ly) = (p.log_x, p.log_y);
    let fx = move |v: &f64| axis_label(*v, lx);
    let fy = move |v: &f64| axis_label(*v, ly);
    chart
        .configure_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .x_labels(12)
        .y_labels(12)
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .label_style((fonts::FAMILY, 13))
        .axis_desc_style((fonts::FAMILY, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(draw_err)?;

    if let Some(r) = &p.raster {
        if r.nx == 0 || r.ny == 0 || r.class.len() != r.nx * r.ny {
            return Err(invalid(
                "raster",
                format!("{} classes for a {} x {} grid", r.class.len(), r.nx, r.ny),
            ));
        }
        let (ax0, ax1) = (axis_value(r.x.0, lx), axis_value(r.x.1, lx));
        let (ay0, ay1) = (axis_value(r.y.0, ly), axis_value(r.y.1, ly));
        if let (Some(ax0), Some(ax1), Some(ay0), Some(ay1)) = (ax0, ax1, ay0, ay1) {
            let (dx, dy) = ((ax1 - ax0) / r.nx as f64, (ay1 - ay0) / r.ny as f64);
            let cells = (0..r.ny).flat_map(|j| (0..r.nx).map(move |i| (i, j)));
            chart
                .draw_series(cells.map(|(i, j)| {
                    let c = pale(colour(r.class[j * r.nx + i]));
                    let (cx, cy) = (ax0 + i as f64 * dx, ay0 + j as f64 * dy);
                    Rectangle::new([(cx, cy), (cx + dx, cy + dy)], c.filled())
                }))
                .map_err(draw_err)?;
        }
    }

    let mut labelled = false;
    for (i, s) in p.series.iter().enumerate() {
        let pts = transformed(s, lx, ly);
        if pts.is_empty() {
            continue;
        }
        let c = colour(s.colour.unwrap_or(i));
        let style = ShapeStyle::from(&c).stroke_width(2);
        let size = s.size as i32;
        let anno = match s.mark {
            Mark::Line => chart
                .draw_series(LineSeries::new(pts, style))
                .map_err(draw_err)?,
            Mark::Dashed => chart
                .draw_series(DashedLineSeries::new(pts, 8, 5, style))
                .map_err(draw_err)?,
            Mark::Points => chart
                .draw_series(pts.into_iter().map(|q| Circle::new(q, size, c.filled())))
                .map_err(draw_err)?,
            Mark::LinePoints => {
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), style))
                    .map_err(draw_err)?;
                chart
                    .draw_series(pts.into_iter().map(|q| Circle::new(q, size, c.filled())))
                    .map_err(draw_err)?
            }
            Mark::Bars => {
                let mut xs: Vec<f64> = pts.iter().map(|q| q.0).collect();
                xs.sort_by(f64::total_cmp);
                let gap = xs
                    .windows(2)
                    .map(|w| w[1] - w[0])
                    .filter(|g| *g > 0.0)
                    .fold(f64::INFINITY, f64::min);
                // Many bars touch (a gap of a pixel or less would alias into stripes).
                let fill = if xs.len() > 100 { 0.5 } else { 0.4 };
                let half = if gap.is_finite() { fill * gap } else { 0.4 };
                // Bars stand on 0 on a linear axis (or on the panel's bottom when the
                // range starts above 0), on the panel's bottom on a log axis.
                let base = if ly { y0 } else { y0.max(0.0) };
                chart
                    .draw_series(pts.into_iter().map(|(x, y)| {
                        Rectangle::new(
                            [(x - half, base.min(y)), (x + half, y)],
                            c.mix(0.85).filled(),
                        )
                    }))
                    .map_err(draw_err)?
            }
        };
        if !s.label.is_empty() {
            labelled = true;
            let dashed = s.mark == Mark::Dashed;
            anno.label(s.label.as_str()).legend(move |(x, y)| {
                let end = if dashed { x + 8 } else { x + 18 };
                PathElement::new(vec![(x, y), (end, y)], ShapeStyle::from(&c).stroke_width(2))
            });
        }
    }
    if labelled && !p.no_legend {
        chart
            .configure_series_labels()
            .label_font((fonts::FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(match p.legend {
                Corner::UpperRight => SeriesLabelPosition::UpperRight,
                Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
                Corner::LowerRight => SeriesLabelPosition::LowerRight,
                Corner::LowerLeft => SeriesLabelPosition::LowerLeft,
            })
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

/// Bin centres and counts of `values` in `bins` equal bins over their finite range
/// (non-finite values are skipped).
pub fn histogram(values: &[f64], bins: usize) -> Result<Vec<(f64, f64)>> {
    if bins == 0 {
        return Err(invalid("bins", "must be at least 1"));
    }
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        return Err(Error::Empty {
            what: "histogram".into(),
            log: false,
        });
    }
    let width = if hi > lo {
        (hi - lo) / bins as f64
    } else {
        1.0
    };
    let mut counts = vec![0usize; bins];
    for x in v {
        let b = (((x - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    Ok(counts
        .into_iter()
        .enumerate()
        .map(|(i, c)| (lo + (i as f64 + 0.5) * width, c as f64))
        .collect())
}

/// One labelled row of equally sized grayscale images (values in [0, 1], clamped).
#[derive(Clone, Debug)]
pub struct ImageRow {
    pub label: String,
    pub images: Vec<Vec<f32>>,
}

/// The PNG bytes of a grid of `h x w` images, one [`ImageRow`] per row with its label on
/// the left, each pixel drawn `scale x scale`.
pub fn image_grid(
    rows: &[ImageRow],
    h: usize,
    w: usize,
    scale: usize,
    title: Option<&str>,
) -> Result<Vec<u8>> {
    if rows.is_empty() || rows.iter().all(|r| r.images.is_empty()) {
        return Err(Error::Empty {
            what: "image grid".into(),
            log: false,
        });
    }
    if h == 0 || w == 0 || scale == 0 {
        return Err(invalid(
            "image grid",
            format!("images of {h} x {w} at scale {scale}"),
        ));
    }
    for r in rows {
        if let Some(img) = r.images.iter().find(|i| i.len() != h * w) {
            return Err(invalid(
                "image grid",
                format!(
                    "row {:?}: an image of {} values, expected {h} x {w}",
                    r.label,
                    img.len()
                ),
            ));
        }
    }
    let cols = rows.iter().map(|r| r.images.len()).max().unwrap_or(0);
    let (pad, label_w, top) = (4usize, 150usize, if title.is_some() { 34 } else { 6 });
    let (cw, ch) = (w * scale + pad, h * scale + pad);
    let width = label_w + cols * cw + pad;
    let height = top + rows.len() * ch + pad;
    check_size(width as u32, height as u32)?;
    let mut buf = vec![255u8; width * height * 3];
    for (ri, r) in rows.iter().enumerate() {
        for (ci, img) in r.images.iter().enumerate() {
            let (oy, ox) = (top + ri * ch, label_w + ci * cw);
            for y in 0..h * scale {
                for x in 0..w * scale {
                    let v = img[(y / scale) * w + x / scale];
                    let g = if v.is_finite() {
                        (v.clamp(0.0, 1.0) * 255.0).round() as u8
                    } else {
                        0
                    };
                    let o = ((oy + y) * width + ox + x) * 3;
                    buf[o..o + 3].fill(g);
                }
            }
        }
    }
    fonts::register()?;
    {
        let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(
            &mut buf,
            (width as u32, height as u32),
        )
        .map_err(draw_err)?;
        let root = backend.into_drawing_area();
        let style = (fonts::FAMILY, 14).into_font().color(&BLACK);
        if let Some(t) = title {
            root.draw_text(t, &(fonts::FAMILY, 18).into_font().color(&BLACK), (8, 8))
                .map_err(draw_err)?;
        }
        for (ri, r) in rows.iter().enumerate() {
            let y = (top + ri * ch + ch / 2) as i32 - 7;
            root.draw_text(&r.label, &style, (6, y)).map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(vqkit::io::png::encode_rgb(width, height, &buf)?)
}

/// Writes [`image_grid`] to `path`.
pub fn save_image_grid(
    path: &Path,
    rows: &[ImageRow],
    h: usize,
    w: usize,
    scale: usize,
    title: Option<&str>,
) -> Result<()> {
    let png = image_grid(rows, h, w, scale, title)?;
    vqkit::io::write_atomic(path, &png)?;
    Ok(())
}

/// The `(width, height)` of PNG bytes, read from the signature and the IHDR chunk (for
/// tests and checks; no decoder needed).
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((w, h))
}
