//! `vqkit assign`: nearest codewords for a file of points, a chunk of rows at a time.

use super::Common;
use std::path::PathBuf;
use std::time::Instant;
use vqkit::backend::{Backend, WithBackend};
use vqkit::io::rows::RowReader;
use vqkit::io::{self, Matrix, npy};
use vqkit::{Error, ops};

#[derive(clap::Args)]
pub struct Args {
    /// Points: .npy (f32, f64, f16 or u8, shape (n, d); C or Fortran order), .fvecs, .bvecs
    /// or .ivecs. Read a chunk of rows at a time, never whole.
    #[arg(short, long)]
    input: PathBuf,
    /// Codebook: .npy or .fvecs (any format of --input), shape (k, d).
    #[arg(short, long)]
    codebook: PathBuf,
    /// Output: the codes as .npy (u32, shape (n,)), written as the chunks are assigned and
    /// renamed into place at the end.
    #[arg(short, long)]
    output: PathBuf,
    /// Rows per chunk (default: about 16 MiB of f32). The codes do not depend on it.
    #[arg(long, value_name = "ROWS")]
    chunk_rows: Option<usize>,
    #[command(flatten)]
    common: Common,
}

struct Job<'a> {
    x: &'a mut RowReader,
    c: &'a Matrix,
    out: &'a mut npy::Writer,
    chunk: usize,
}

/// What streaming assignment reports: the sum of squared distances (f64, in row order, as
/// [`ops::Assignment::mse`] sums them), the seconds spent assigning, the backend.
type Streamed = (f64, f64, String);

impl WithBackend for Job<'_> {
    type Output = Streamed;
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Streamed> {
        let d = self.x.d();
        let (mut sse, mut seconds) = (0.0f64, 0.0);
        // The next chunk is read while this one is assigned.
        self.x.for_each_chunk(self.chunk, |first, x| {
            let t = Instant::now();
            let a = ops::assign(b, x, &self.c.data, d).map_err(|e| e.after_rows(first, d))?;
            seconds += t.elapsed().as_secs_f64();
            sse = a.distances.iter().fold(sse, |s, &v| s + v as f64);
            self.out.push_u32(&a.indices)
        })?;
        Ok((sse, seconds, b.name()))
    }
}

pub fn run(args: Args) -> vqkit::Result<()> {
    let mut x = RowReader::open(&args.input)?;
    x.expect_points()?;
    let c = io::read_points(&args.codebook)?;
    let (n, d) = (x.rows(), x.d());
    if d != c.cols {
        return Err(Error::invalid(
            "codebook",
            format!(
                "the points have d = {} but the codebook has d = {}",
                d, c.cols
            ),
        ));
    }
    let chunk = super::chunk_rows(args.chunk_rows, &x)?;
    let mut out = npy::Writer::u32(&args.output, &[n])?;
    let (sse, seconds, backend) = args.common.dispatch(Job {
        x: &mut x,
        c: &c,
        out: &mut out,
        chunk,
    })?;
    out.finish()?;
    let mse = if n == 0 { 0.0 } else { sse / n as f64 };
    if args.common.json {
        let v = serde_json::json!({
            "command": "assign", "backend": backend, "n": n, "k": c.rows, "d": d,
            "mse": mse, "seconds": seconds, "output": args.output,
        });
        println!("{v}");
    } else {
        println!(
            "assigned {} points to {} codewords (d = {}) on {backend} in {:.3} s",
            n, c.rows, d, seconds
        );
        println!("mean squared distance: {mse:.6}");
        println!("codes written to {}", args.output.display());
    }
    Ok(())
}
