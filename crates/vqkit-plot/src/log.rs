//! Reading the JSON-lines training logs that `vqkit ... --log FILE` writes, and turning
//! one or more of them into panels (what `vqkit plot` draws).
//!
//! The format, one JSON object a line:
//! - `{"kind":"header","command":"kmeans","version":"0.1.0","args":{...}}` first;
//! - then `{"kind":"log","command":..,"step":<int, non-decreasing>,"epoch":<int,
//!   optional>,"elapsed_s":<float>, <metrics>}`, each metric a number, `null` (no value
//!   at this step) or an array of those, one per level (`"perplexity":[..]`, read as
//!   `perplexity[0]`, `perplexity[1]`, ...);
//! - optionally a last `{"kind":"summary",...}`.
//!
//! Why strict: a log that does not parse is reported with its file and 1-based line, so a
//! truncated or hand-edited file is found at once instead of drawing a wrong curve. The
//! one exception is a last line without its newline, which a run still writing its log
//! leaves: it is passed over, so a running training can be plotted. Keys
//! that are not numbers (a backend name, a flag) are not metrics and are passed over.

use crate::{Error, Mark, Panel, Result, Series};
use serde_json::{Map, Value};
use std::path::Path;

/// What the x axis of the curves is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XAxis {
    Step,
    Epoch,
    ElapsedS,
}

impl XAxis {
    /// The record key, which is also the axis label.
    pub fn key(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Epoch => "epoch",
            XAxis::ElapsedS => "elapsed_s",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "step" => Ok(XAxis::Step),
            "epoch" => Ok(XAxis::Epoch),
            "elapsed_s" => Ok(XAxis::ElapsedS),
            _ => Err(Error::Invalid {
                name: "x",
                reason: format!("{s:?}: expected step, epoch or elapsed_s"),
            }),
        }
    }
}

/// Keys of a log record that are not metrics.
const RESERVED: [&str; 5] = ["kind", "command", "step", "epoch", "elapsed_s"];

/// Numbers that say where a record is (k-means' restart and iteration, RQ's stage and
/// refinement round) rather than how training goes: drawn only when asked for by name.
pub const POSITION_KEYS: [&str; 5] = ["restart", "iter", "stage", "refine_round", "batch"];

/// One `"kind":"log"` line.
#[derive(Clone, Debug)]
pub struct Record {
    /// 1-based line in the file.
    pub line: usize,
    pub step: u64,
    pub epoch: Option<f64>,
    pub elapsed_s: Option<f64>,
    /// `(name, value)` with arrays expanded to `name[i]`; `None` for `null`.
    pub metrics: Vec<(String, Option<f64>)>,
}

impl Record {
    pub fn x(&self, x: XAxis) -> Option<f64> {
        match x {
            XAxis::Step => Some(self.step as f64),
            XAxis::Epoch => self.epoch,
            XAxis::ElapsedS => self.elapsed_s,
        }
    }
}

/// One log file.
#[derive(Clone, Debug)]
pub struct Run {
    /// The path as given (for messages and default labels).
    pub path: String,
    /// The command of the header, if any.
    pub command: Option<String>,
    pub records: Vec<Record>,
}

/// The metric a level belongs to: `perplexity[2]` -> `perplexity`.
pub fn base_name(name: &str) -> &str {
    name.split_once('[').map_or(name, |(b, _)| b)
}

fn number(v: &Value) -> Option<Option<f64>> {
    match v {
        Value::Null => Some(None),
        Value::Number(n) => n.as_f64().map(Some),
        _ => None,
    }
}

fn optional_number(
    obj: &Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<f64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(v) => Err(format!("\"{key}\" must be a number, got {v}")),
    }
}

/// Parses the text of a log; `path` names it in errors.
pub fn parse(path: &str, text: &str) -> Result<Run> {
    let err = |line: usize, reason: String| Error::Log {
        path: path.to_string(),
        line,
        reason,
    };
    let mut run = Run {
        path: path.to_string(),
        command: None,
        records: Vec::new(),
    };
    let mut summary_seen = false;
    let n_lines = text.lines().count();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            // A run still writing its log: the last line, not yet ended by its newline,
            // may be incomplete. It is left out; anything else is an error.
            Err(_) if line == n_lines && !text.ends_with('\n') => break,
            Err(e) => return Err(err(line, format!("not JSON: {e}"))),
        };
        let Value::Object(obj) = v else {
            return Err(err(line, "not a JSON object".into()));
        };
        let kind = match obj.get("kind") {
            Some(Value::String(k)) => k.as_str(),
            Some(_) => return Err(err(line, "\"kind\" must be a string".into())),
            None => return Err(err(line, "no \"kind\" (header, log or summary)".into())),
        };
        if summary_seen {
            return Err(err(line, format!("a {kind:?} line after the summary")));
        }
        match kind {
            "header" => {
                if !run.records.is_empty() {
                    return Err(err(line, "a header after log records".into()));
                }
                run.command = obj
                    .get("command")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            "summary" => summary_seen = true,
            "log" => {
                let step = match obj.get("step") {
                    Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                        err(
                            line,
                            format!("\"step\" must be a non-negative integer, got {n}"),
                        )
                    })?,
                    Some(v) => {
                        return Err(err(line, format!("\"step\" must be an integer, got {v}")));
                    }
                    None => return Err(err(line, "a log record without \"step\"".into())),
                };
                if let Some(prev) = run.records.last()
                    && step < prev.step
                {
                    return Err(err(
                        line,
                        format!(
                            "step {step} after step {} (steps must not decrease)",
                            prev.step
                        ),
                    ));
                }
                let epoch = optional_number(&obj, "epoch").map_err(|r| err(line, r))?;
                let elapsed_s = optional_number(&obj, "elapsed_s").map_err(|r| err(line, r))?;
                let mut metrics = Vec::new();
                for (k, v) in &obj {
                    if RESERVED.contains(&k.as_str()) {
                        continue;
                    }
                    if let Some(x) = number(v) {
                        metrics.push((k.clone(), x));
                    } else if let Value::Array(a) = v {
                        for (j, e) in a.iter().enumerate() {
                            let x = number(e).ok_or_else(|| {
                                err(
                                    line,
                                    format!("\"{k}\"[{j}] must be a number or null, got {e}"),
                                )
                            })?;
                            metrics.push((format!("{k}[{j}]"), x));
                        }
                    }
                }
                run.records.push(Record {
                    line,
                    step,
                    epoch,
                    elapsed_s,
                    metrics,
                });
            }
            other => {
                return Err(err(
                    line,
                    format!("unknown kind {other:?} (expected header, log or summary)"),
                ));
            }
        }
    }
    if run.records.is_empty() {
        return Err(err(
            text.lines().count().max(1),
            "no \"kind\":\"log\" record in the file".into(),
        ));
    }
    Ok(run)
}

/// Reads and parses a log file.
pub fn read(path: &Path) -> Result<Run> {
    let bytes = std::fs::read(path).map_err(|source| vqkit::Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|e| {
        // The line of the first invalid byte.
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::Log {
            path: name.clone(),
            line,
            reason: "not UTF-8 text".into(),
        }
    })?;
    parse(&name, &text)
}

impl Run {
    /// Metric names (levels expanded) in order of first appearance; the keys of one record
    /// come in alphabetical order (serde_json's map, without `preserve_order`).
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for r in &self.records {
            for (k, _) in &r.metrics {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
        names
    }

    /// `(x, value)` of one (expanded) metric; records without the x key or with a `null`
    /// value are left out.
    pub fn curve(&self, name: &str, x: XAxis) -> Vec<(f64, f64)> {
        self.records
            .iter()
            .filter_map(|r| {
                let v = r.metrics.iter().find(|(k, _)| k == name)?.1?;
                Some((r.x(x)?, v))
            })
            .collect()
    }
}

/// The panels `vqkit plot` draws: one per selected base metric (`loss`, `perplexity`),
/// with a series per run and level, labelled `label` or `label [level]`. `metrics`
/// selects base names or single levels (`perplexity[0]`); `None` takes every metric
/// present but the [`POSITION_KEYS`], in order of appearance. Several runs share a panel, so runs compare directly.
/// With `log_y`, a metric with no value above 0 keeps a linear axis (its title says so).
pub fn panels(
    runs: &[(String, Run)],
    metrics: Option<&[String]>,
    x: XAxis,
    log_y: bool,
) -> Result<Vec<Panel>> {
    if runs.is_empty() {
        return Err(Error::Invalid {
            name: "logs",
            reason: "no log file given".into(),
        });
    }
    for (_, run) in runs {
        if x != XAxis::Step && run.records.iter().all(|r| r.x(x).is_none()) {
            return Err(Error::Invalid {
                name: "x",
                reason: format!("{}: no record has \"{}\"", run.path, x.key()),
            });
        }
    }
    // Every expanded name, in order of first appearance over the runs.
    let mut all: Vec<String> = Vec::new();
    for (_, run) in runs {
        for n in run.metric_names() {
            if !all.contains(&n) {
                all.push(n);
            }
        }
    }
    if all.is_empty() {
        return Err(Error::Invalid {
            name: "metric",
            reason: "the logs hold no numeric metric".into(),
        });
    }
    // The expanded names of each panel, keyed by what the user asked for.
    let mut wanted: Vec<(String, Vec<String>)> = Vec::new();
    match metrics {
        None => {
            for n in &all {
                let b = base_name(n);
                if POSITION_KEYS.contains(&b) {
                    continue;
                }
                match wanted.iter_mut().find(|(w, _)| w == b) {
                    Some((_, v)) => v.push(n.clone()),
                    None => wanted.push((b.to_string(), vec![n.clone()])),
                }
            }
        }
        Some(ms) => {
            for m in ms {
                let m = m.trim();
                let names: Vec<String> = all
                    .iter()
                    .filter(|n| n.as_str() == m || base_name(n) == m)
                    .cloned()
                    .collect();
                if names.is_empty() {
                    let mut bases: Vec<&str> = all.iter().map(|n| base_name(n)).collect();
                    bases.dedup();
                    return Err(Error::Invalid {
                        name: "metric",
                        reason: format!("no log has {m:?}; metrics present: {}", bases.join(", ")),
                    });
                }
                wanted.push((m.to_string(), names));
            }
        }
    }
    if wanted.is_empty() {
        return Err(Error::Invalid {
            name: "metric",
            reason: format!(
                "the logs hold only position counters ({}); name one with --metric",
                all.join(", ")
            ),
        });
    }
    let mut out = Vec::new();
    for (title, names) in wanted {
        let mut p = Panel::new(title.clone(), x.key(), title.clone());
        p.log_y = log_y;
        for (ri, (label, run)) in runs.iter().enumerate() {
            for (li, n) in names.iter().enumerate() {
                let pts = run.curve(n, x);
                if pts.is_empty() {
                    continue;
                }
                let l = match n.find('[') {
                    Some(at) if runs.len() > 1 => format!("{label} {}", &n[at..]),
                    Some(at) => n[at..].to_string(),
                    None => label.clone(),
                };
                let mark = if pts.len() < 30 {
                    Mark::LinePoints
                } else {
                    Mark::Line
                };
                let colour = ri * names.len().max(1) + li;
                p.series
                    .push(Series::new(l, pts, mark).colour(colour).size(2));
            }
        }
        if p.series.is_empty() {
            return Err(Error::Empty {
                what: format!("metric {title:?}"),
                log: log_y,
            });
        }
        // A log axis needs values > 0; a metric that has none (a count that stayed 0)
        // keeps a linear axis rather than failing the whole figure.
        if p.log_y
            && !p.series.iter().any(|s| {
                s.points
                    .iter()
                    .any(|&(x, y)| x.is_finite() && y.is_finite() && y > 0.0)
            })
        {
            p.log_y = false;
            p.title = format!("{title} (linear: no value > 0)");
        }
        // One run with one series needs no legend.
        p.no_legend = runs.len() == 1 && names.len() == 1;
        out.push(p);
    }
    Ok(out)
}
