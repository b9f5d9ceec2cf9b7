//! `vqkit plot`: curves from the JSON-lines logs that `--log FILE` writes, one panel per
//! metric, several runs on one figure so that they compare at a glance.
//!
//! The parsing and the panel layout live in `vqkit_plot::log` (tested there, shared with
//! anyone who wants the same figure from Rust); this module parses arguments and prints.

use std::path::PathBuf;
use vqkit_plot::Figure;
use vqkit_plot::log::{self, XAxis};

#[derive(clap::Args)]
pub struct Args {
    /// JSON-lines logs (written by `--log FILE` of train-vqvae, kmeans, rq-kmeans, nsvq).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Metrics to draw, comma-separated: a name draws all its levels (`perplexity`), a
    /// level draws one (`perplexity[0]`). Default: every metric present except the
    /// position counters (restart, iter, stage, refine_round, batch).
    #[arg(long, value_delimiter = ',')]
    metric: Vec<String>,
    /// The x axis: step, epoch or elapsed_s.
    #[arg(long, default_value = "step")]
    x: String,
    /// Legend labels, comma-separated, one per file (default: the file names).
    #[arg(long, value_delimiter = ',')]
    label: Vec<String>,
    /// Logarithmic y axes.
    #[arg(long)]
    log_y: bool,
    /// Panels per row (default: 1 for one panel, else 2).
    #[arg(long)]
    cols: Option<usize>,
    /// Figure width in pixels.
    #[arg(long, default_value_t = 1200)]
    width: u32,
    /// Figure height in pixels (default: 380 per row of panels).
    #[arg(long)]
    height: Option<u32>,
    /// A title above the panels.
    #[arg(long)]
    title: Option<String>,
}

/// vqkit-plot's errors as the CLI's: a log's `file:line` stays in front of the message.
fn cli_error(e: vqkit_plot::Error) -> vqkit::Error {
    match e {
        vqkit_plot::Error::Vqkit(e) => e,
        vqkit_plot::Error::Log { path, line, reason } => {
            vqkit::Error::format(format!("{path}:{line}"), reason)
        }
        vqkit_plot::Error::Invalid { name, reason } => vqkit::Error::invalid(name, reason),
        other => vqkit::Error::invalid("plot", other.to_string()),
    }
}

pub fn run(a: Args) -> vqkit::Result<()> {
    let x = XAxis::parse(&a.x).map_err(cli_error)?;
    if !a.label.is_empty() && a.label.len() != a.files.len() {
        return Err(vqkit::Error::invalid(
            "label",
            format!("{} labels for {} files", a.label.len(), a.files.len()),
        ));
    }
    let mut runs = Vec::with_capacity(a.files.len());
    for (i, f) in a.files.iter().enumerate() {
        let run = log::read(f).map_err(cli_error)?;
        let label = match a.label.get(i) {
            Some(l) => l.clone(),
            None => f.file_name().map_or_else(
                || f.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
        };
        runs.push((label, run));
    }
    let metrics = (!a.metric.is_empty()).then_some(a.metric.as_slice());
    let panels = log::panels(&runs, metrics, x, a.log_y).map_err(cli_error)?;
    let names: Vec<String> = panels.iter().map(|p| p.title.clone()).collect();
    let cols = a
        .cols
        .unwrap_or(if panels.len() > 1 { 2 } else { 1 })
        .max(1);
    let rows = panels.len().div_ceil(cols) as u32;
    let height = a.height.unwrap_or(380u32.saturating_mul(rows));
    let mut fig = Figure::grid(panels, cols, 1, 1);
    fig.width = a.width;
    fig.height = height;
    fig.title = a.title;
    fig.save(&a.output).map_err(cli_error)?;
    println!(
        "wrote {} ({} x {}): {} from {} log{}",
        a.output.display(),
        fig.width,
        fig.height,
        names.join(", "),
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );
    Ok(())
}
