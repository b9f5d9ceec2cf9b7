//! `--log FILE`: a training log of JSON lines, one object per logging interval, which
//! `vqkit plot` and any JSON-lines reader can follow.
//!
//! ```text
//! {"kind":"header","command":"kmeans","version":"0.1.0","args":{...}}
//! {"kind":"log","command":"kmeans","step":0,"elapsed_s":0.01,"objective":1.93,...}
//! ...
//! {"kind":"summary","command":"kmeans","elapsed_s":0.2,"mse":1.41,...}
//! ```
//!
//! `step` is monotone within a file; `epoch` is present where a command has epochs. A
//! metric is a number or an array of numbers (one per level, stage or codebook); a number
//! that is not finite is written as `null`, so that every line stays valid JSON.
//!
//! Each line goes to the file in one write as soon as it is formed (no buffer held back),
//! so `tail -f` shows a run as it goes. The file is created before training starts, so an
//! unwritable path ends the command before any work; a write that fails later (a full
//! disk) is kept, stops the training at its next interruption check, and is the error the
//! command returns.

use serde_json::{Map, Value};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use vqkit::{Error, Result};

/// The flat metrics of one line, in the order they were added.
pub type Metrics = Map<String, Value>;

/// A number as JSON: `null` when it is not finite (JSON has no NaN or infinity).
pub fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// An f32 option as JSON, by its shortest decimal form (0.001, not 0.0010000000474974513).
pub fn num32(v: f32) -> Value {
    v.to_string().parse::<f64>().map_or(Value::Null, num)
}

/// A list of numbers as a JSON array, non-finite entries as `null`.
pub fn nums<T: Copy + Into<f64>>(v: &[T]) -> Value {
    Value::Array(v.iter().map(|&x| num(x.into())).collect())
}

struct Sink {
    file: File,
    path: PathBuf,
    /// The first write error; later lines are dropped.
    failed: Option<std::io::Error>,
}

/// A training log, or nothing when `--log` was not given (every call is then a no-op).
///
/// Clones share the file, so that a progress callback (on whichever thread runs the
/// training) and the command's own code can both write to it.
#[derive(Clone)]
pub struct TrainLog {
    sink: Option<Arc<Mutex<Sink>>>,
    command: &'static str,
    start: Instant,
}

impl TrainLog {
    /// Creates (or truncates) `path` and writes the header line; `None` logs nothing.
    pub fn open(path: Option<&Path>, command: &'static str, args: Value) -> Result<Self> {
        let mut log = TrainLog {
            sink: None,
            command,
            start: Instant::now(),
        };
        let Some(path) = path else {
            return Ok(log);
        };
        let file = File::create(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        log.sink = Some(Arc::new(Mutex::new(Sink {
            file,
            path: path.to_path_buf(),
            failed: None,
        })));
        let mut head = Map::new();
        head.insert("kind".into(), "header".into());
        head.insert("command".into(), command.into());
        head.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        head.insert("args".into(), args);
        log.write(head);
        log.check()?;
        Ok(log)
    }

    /// Seconds since the log was opened.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// One `"kind":"log"` line at `step` (and `epoch`, where the command has epochs).
    pub fn record(&self, step: usize, epoch: Option<usize>, metrics: Metrics) {
        if self.sink.is_none() {
            return;
        }
        let mut line = Map::new();
        line.insert("kind".into(), "log".into());
        line.insert("command".into(), self.command.into());
        line.insert("step".into(), step.into());
        if let Some(e) = epoch {
            line.insert("epoch".into(), e.into());
        }
        line.insert("elapsed_s".into(), num(self.elapsed()));
        line.extend(metrics);
        self.write(line);
    }

    /// The closing `"kind":"summary"` line with the final figures; returns the first write
    /// error of the whole log, if any.
    pub fn summary(&self, metrics: Metrics) -> Result<()> {
        if self.sink.is_none() {
            return Ok(());
        }
        let mut line = Map::new();
        line.insert("kind".into(), "summary".into());
        line.insert("command".into(), self.command.into());
        line.insert("elapsed_s".into(), num(self.elapsed()));
        line.extend(metrics);
        self.write(line);
        self.check()
    }

    /// The first write error as a typed error (`Ok` when every line was written).
    pub fn check(&self) -> Result<()> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let mut s = lock(sink);
        match s.failed.take() {
            None => Ok(()),
            Some(source) => {
                // Keep the failure for later calls, as an error of the same kind.
                s.failed = Some(std::io::Error::new(source.kind(), source.to_string()));
                Err(Error::Io {
                    path: s.path.clone(),
                    source,
                })
            }
        }
    }

    /// Prefers the log's own write error over `r`'s: when a failed write stopped the work,
    /// `r` holds only [`Error::Interrupted`].
    pub fn outcome<T>(&self, r: Result<T>) -> Result<T> {
        self.check()?;
        r
    }

    /// Runs `f` with an interruption hook that stops the work once a log write has failed
    /// (the training loops call [`vqkit::interrupt::check`] between iterations). The hook is
    /// the calling thread's: call this on the thread that runs the training loop.
    pub fn guard<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let r = match &self.sink {
            None => f(),
            Some(sink) => {
                let sink = Arc::clone(sink);
                vqkit::interrupt::with_hook(move || lock(&sink).failed.is_some(), f)
            }
        };
        self.outcome(r)
    }

    fn write(&self, line: Map<String, Value>) {
        let Some(sink) = &self.sink else { return };
        let mut s = lock(sink);
        if s.failed.is_some() {
            return;
        }
        let text = line_text(line);
        // The whole line in one write_all on an unbuffered file, so a reader following the
        // file sees it at once (only a write cut short by a full disk or a size limit can
        // leave part of a line, and that write's error ends the command).
        if let Err(e) = s.file.write_all(text.as_bytes()) {
            s.failed = Some(e);
        }
    }
}

/// One line of JSON: `kind`, `command`, `step` and `epoch` first (a reader glancing at the
/// file sees what each line is), the other keys after them in sorted order.
fn line_text(mut line: Map<String, Value>) -> String {
    let mut fields = Vec::with_capacity(line.len());
    for key in ["kind", "command", "step", "epoch"] {
        if let Some(v) = line.remove(key) {
            fields.push((key.to_string(), v));
        }
    }
    fields.extend(line);
    let body: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{}:{v}", Value::String(k)))
        .collect();
    format!("{{{}}}\n", body.join(","))
}

/// The sink, also when a thread panicked while holding it (a line is then at worst lost).
fn lock(s: &Mutex<Sink>) -> MutexGuard<'_, Sink> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A whole non-negative number as a JSON integer, anything else as [`num`] writes it.
fn count(x: f64) -> Value {
    if x >= 0.0 && x.fract() == 0.0 && x < u64::MAX as f64 {
        Value::from(x as u64)
    } else {
        num(x)
    }
}

/// Accumulates per-batch figures between two log lines: sums of scalars and of per-level
/// vectors, and the number of batches.
#[derive(Default)]
pub struct Interval {
    pub batches: usize,
    sums: Vec<(&'static str, f64)>,
    vecs: Vec<(&'static str, Vec<f64>, bool)>,
}

impl Interval {
    /// Adds a scalar whose mean over the interval is logged.
    pub fn add(&mut self, key: &'static str, v: f64) {
        match self.sums.iter_mut().find(|(k, _)| *k == key) {
            Some((_, s)) => *s += v,
            None => self.sums.push((key, v)),
        }
    }

    /// Adds a per-level vector; `mean` logs its mean over the interval, otherwise its sum.
    pub fn add_vec(&mut self, key: &'static str, v: &[f64], mean: bool) {
        match self.vecs.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, s, _)) => s.iter_mut().zip(v).for_each(|(a, b)| *a += b),
            None => self.vecs.push((key, v.to_vec(), mean)),
        }
    }

    /// The metrics of the interval, and a fresh start.
    pub fn take(&mut self) -> Metrics {
        let n = self.batches.max(1) as f64;
        let mut m = Metrics::new();
        for (k, s) in self.sums.drain(..) {
            m.insert(k.into(), num(s / n));
        }
        for (k, v, mean) in self.vecs.drain(..) {
            let v = if mean {
                nums(&v.iter().map(|x| x / n).collect::<Vec<f64>>())
            } else {
                // Sums of counts stay integers.
                Value::Array(v.iter().map(|&x| count(x)).collect())
            };
            m.insert(k.into(), v);
        }
        self.batches = 0;
        m
    }
}

/// A log on `path` whose writes have failed, as on a full disk (for tests).
#[cfg(test)]
pub(crate) fn failed_log(path: &Path) -> TrainLog {
    let log = TrainLog::open(Some(path), "test", Value::Null).expect("a writable path");
    if let Some(sink) = &log.sink {
        lock(sink).failed = Some(std::io::Error::other("no space left"));
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_numbers_are_null() {
        assert_eq!(num(f64::NAN), Value::Null);
        assert_eq!(num(f64::INFINITY), Value::Null);
        assert_eq!(num(1.5), serde_json::json!(1.5));
        assert_eq!(num32(1e-3).to_string(), "0.001");
        assert_eq!(nums(&[1.0f32, f32::NEG_INFINITY]).to_string(), "[1.0,null]");
    }

    #[test]
    fn lines_start_with_kind_and_parse() {
        let mut m = Metrics::new();
        m.insert("objective".into(), num(f64::NAN));
        m.insert("step".into(), 3.into());
        m.insert("kind".into(), "log".into());
        m.insert("a\"b".into(), nums(&[1.0f64]));
        let text = line_text(m.clone());
        assert!(text.starts_with(r#"{"kind":"log","step":3,"#), "{text}");
        assert!(text.ends_with('\n'));
        let back: Map<String, Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn interval_means_and_sums() {
        let mut iv = Interval::default();
        for b in 0..4 {
            iv.batches += 1;
            iv.add("loss", b as f64);
            iv.add_vec("perplexity", &[2.0 * b as f64, 1.0], true);
            iv.add_vec("dead_replaced", &[1.0, b as f64], false);
        }
        let m = iv.take();
        assert_eq!(m["loss"], serde_json::json!(1.5));
        assert_eq!(m["perplexity"], serde_json::json!([3.0, 1.0]));
        assert_eq!(m["dead_replaced"].to_string(), "[4,6]");
        assert_eq!(iv.batches, 0);
        assert!(iv.take().is_empty());
    }
}
