//! `vqkit encode` and `vqkit decode`: codes from any model file, and back.

use super::Common;
use std::path::PathBuf;
use std::time::Instant;
use vqkit::backend::{Backend, WithBackend, dispatch};
use vqkit::io::{self, npy};
use vqkit::quant::model::Model;
use vqkit::quant::{mse, relative_error};

#[derive(clap::Args)]
pub struct EncodeArgs {
    /// Model file (safetensors) written by any training command.
    #[arg(short, long)]
    model: PathBuf,
    /// Points: .npy or .fvecs, shape (n, d).
    #[arg(short, long)]
    input: PathBuf,
    /// Output codes: .npy, u32, shape (n, codes per vector).
    #[arg(short, long)]
    output: PathBuf,
    /// Beam width for models that search (RVQ, AVQ); default: the one they were trained with.
    #[arg(long)]
    beam: Option<usize>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    /// Model file (safetensors).
    #[arg(short, long)]
    model: PathBuf,
    /// Codes: integer .npy, shape (n, codes per vector) (or (n,) for one code per vector).
    #[arg(short, long)]
    input: PathBuf,
    /// Output reconstructions: .npy, f32, shape (n, d).
    #[arg(short, long)]
    output: PathBuf,
    /// Print the figures as one JSON object on the last stdout line.
    #[arg(long)]
    json: bool,
}

struct Job<'a> {
    model: &'a Model,
    x: &'a [f32],
    beam: Option<usize>,
}

impl WithBackend for Job<'_> {
    type Output = (Vec<u32>, String);
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Self::Output> {
        Ok((self.model.encode(b, self.x, self.beam)?, b.name()))
    }
}

pub fn encode(args: EncodeArgs) -> vqkit::Result<()> {
    let model = Model::load(&args.model)?;
    let x = io::read_points(&args.input)?;
    model.check_dim(x.cols)?;
    let t = Instant::now();
    let (codes, backend) = dispatch(
        args.common.backend,
        &args.common.options(),
        Job {
            model: &model,
            x: &x.data,
            beam: args.beam,
        },
    )?;
    let seconds = t.elapsed().as_secs_f64();
    let (width, _) = model.code_shape();
    npy::write_u32(&args.output, &[x.rows, width], &codes)?;
    let recon = model.decode(&codes)?;
    let e = mse(&x.data, &recon, x.cols);
    let rel = relative_error(e, &x.data, x.cols);
    if args.common.json {
        let v = serde_json::json!({
            "command": "encode", "kind": model.kind(), "backend": backend, "n": x.rows,
            "codes_per_vector": width, "mse": e, "relative_error": rel, "seconds": seconds,
            "output": args.output,
        });
        println!("{v}");
    } else {
        println!(
            "encoded {} vectors with a {} model ({width} codes each) on {backend} in {seconds:.3} s",
            x.rows,
            model.kind()
        );
        println!("mse {e:.6}  relative error {rel:.6}");
        println!("codes written to {}", args.output.display());
    }
    Ok(())
}

pub fn decode(args: DecodeArgs) -> vqkit::Result<()> {
    let model = Model::load(&args.model)?;
    let (shape, codes) = npy::read_codes(&args.input)?;
    let (width, _) = model.code_shape();
    let ok = match shape[..] {
        [_, w] => w == width,
        [_] => width == 1,
        _ => false,
    };
    if !ok {
        return Err(vqkit::Error::format(
            &args.input,
            format!(
                "codes of shape {shape:?} do not fit a {} model with {width} codes per vector",
                model.kind()
            ),
        ));
    }
    let x = model.decode(&codes)?;
    let n = codes.len() / width;
    npy::write_f32(&args.output, &[n, model.d()], &x)?;
    if args.json {
        let v = serde_json::json!({
            "command": "decode", "kind": model.kind(), "n": n, "d": model.d(),
            "output": args.output,
        });
        println!("{v}");
    } else {
        println!(
            "decoded {n} vectors of d = {} to {}",
            model.d(),
            args.output.display()
        );
    }
    Ok(())
}
