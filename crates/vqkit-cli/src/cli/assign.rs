//! `vqkit assign`: nearest codewords for a file of points.

use super::Common;
use std::path::PathBuf;
use std::time::Instant;
use vqkit::backend::{Backend, WithBackend, dispatch};
use vqkit::io::{self, Matrix, npy};
use vqkit::{Error, ops};

#[derive(clap::Args)]
pub struct Args {
    /// Points: .npy (f32, f64, f16 or u8, shape (n, d)) or .fvecs.
    #[arg(short, long)]
    input: PathBuf,
    /// Codebook: .npy or .fvecs, shape (k, d).
    #[arg(short, long)]
    codebook: PathBuf,
    /// Output: the codes as .npy (u32, shape (n,)).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    common: Common,
}

struct Job<'a> {
    x: &'a Matrix,
    c: &'a Matrix,
}

impl WithBackend for Job<'_> {
    type Output = (ops::Assignment, f64, String);
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Self::Output> {
        let t = Instant::now();
        let a = ops::assign(b, &self.x.data, &self.c.data, self.x.cols)?;
        Ok((a, t.elapsed().as_secs_f64(), b.name()))
    }
}

pub fn run(args: Args) -> vqkit::Result<()> {
    let x = io::read_points(&args.input)?;
    let c = io::read_points(&args.codebook)?;
    if x.cols != c.cols {
        return Err(Error::invalid(
            "codebook",
            format!(
                "the points have d = {} but the codebook has d = {}",
                x.cols, c.cols
            ),
        ));
    }
    let (a, seconds, backend) = dispatch(
        args.common.backend,
        &args.common.options(),
        Job { x: &x, c: &c },
    )?;
    npy::write_u32(&args.output, &[x.rows], &a.indices)?;
    let mse = a.mse();
    if args.common.json {
        let v = serde_json::json!({
            "command": "assign", "backend": backend, "n": x.rows, "k": c.rows, "d": x.cols,
            "mse": mse, "seconds": seconds, "output": args.output,
        });
        println!("{v}");
    } else {
        println!(
            "assigned {} points to {} codewords (d = {}) on {backend} in {:.3} s",
            x.rows, c.rows, x.cols, seconds
        );
        println!("mean squared distance: {mse:.6}");
        println!("codes written to {}", args.output.display());
    }
    Ok(())
}
