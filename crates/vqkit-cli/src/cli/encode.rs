//! `vqkit encode` and `vqkit decode`: codes from any model file, and back, a chunk of rows
//! at a time: the input is never held whole, and the output is written as the chunks are
//! done, into a temporary file renamed into place at the end.

use super::{CodeDtype, Common, reuse};
use std::path::PathBuf;
use std::time::Instant;
use vqkit::backend::{Backend, Code, WithBackend};
use vqkit::io::npy;
use vqkit::io::rows::RowReader;
use vqkit::quant::model::Model;
use vqkit::quant::sums::RowSums;

#[derive(clap::Args)]
pub struct EncodeArgs {
    /// Model file (safetensors) written by any training command.
    #[arg(short, long)]
    model: PathBuf,
    /// Points: .npy (C or Fortran order), .fvecs, .bvecs or .ivecs, shape (n, d).
    #[arg(short, long)]
    input: PathBuf,
    /// Output codes: .npy, shape (n, codes per vector), of the type `--code-dtype` names.
    #[arg(short, long)]
    output: PathBuf,
    /// The codes' type: `auto` is the narrowest that holds the codebooks' indices (uint8 up
    /// to 256 codewords, uint16 up to 65,536, uint32 beyond, as the Python quantizers'
    /// `compute_codes`); a type too narrow for the model is refused.
    #[arg(long, value_enum, default_value_t = CodeDtype::Auto)]
    code_dtype: CodeDtype,
    /// Beam width for models that search (RVQ, AVQ); default: the one they were trained with.
    #[arg(long)]
    beam: Option<usize>,
    /// Rows per chunk (default: about 16 MiB of f32). The codes do not depend on it.
    #[arg(long, value_name = "ROWS")]
    chunk_rows: Option<usize>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    /// Model file (safetensors).
    #[arg(short, long)]
    model: PathBuf,
    /// Codes: integer .npy, shape (n, codes per vector) (or (n,) for one code per vector),
    /// or .ivecs.
    #[arg(short, long)]
    input: PathBuf,
    /// Output reconstructions: .npy, f32, shape (n, d).
    #[arg(short, long)]
    output: PathBuf,
    /// Rows per chunk (default: about 16 MiB of f32 reconstructions).
    #[arg(long, value_name = "ROWS")]
    chunk_rows: Option<usize>,
    /// Threads that decode (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the figures as one JSON object on the last stdout line.
    #[arg(long)]
    json: bool,
}

/// Encoding into codes of type `C`, written by the encoder into one buffer reused across
/// chunks.
struct Job<'a, C> {
    model: &'a Model,
    x: &'a mut RowReader,
    out: &'a mut npy::Writer,
    chunk: usize,
    beam: Option<usize>,
    code: std::marker::PhantomData<C>,
}

/// What streaming encoding adds up: the squared error of the reconstructions and the
/// squared norm of the points, in [`vqkit::quant::sums`]'s order (that of
/// [`vqkit::quant::mse`] and [`vqkit::quant::mean_sq_norm`] over the whole input, so the
/// figures are those of encoding it at once, whatever the chunks), and the seconds spent
/// encoding.
struct Sums {
    sq_err: RowSums,
    sq_norm: RowSums,
    seconds: f64,
}

impl Sums {
    /// Sums whose blocks are added on the current pool: the job's, of `--threads` threads.
    fn new() -> Self {
        Sums {
            sq_err: RowSums::parallel(),
            sq_norm: RowSums::parallel(),
            seconds: 0.0,
        }
    }
}

impl<C: Code> WithBackend for Job<'_, C> {
    type Output = (Sums, String);
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Self::Output> {
        let d = self.x.d();
        let width = self.model.code_shape().0;
        let mut sums = Sums::new();
        let (mut recon, mut codes) = (Vec::new(), Vec::<C>::new());
        // The next chunk is read while this one is encoded.
        self.x.for_each_chunk(self.chunk, |first, x| {
            let t = Instant::now();
            let codes = reuse(&mut codes, x.len() / d.max(1) * width, "the codes")?;
            self.model
                .encode_into(b, x, self.beam, codes)
                .map_err(|e| e.after_rows(first, d))?;
            sums.seconds += t.elapsed().as_secs_f64();
            self.out.push_codes(codes)?;
            let recon = reuse(&mut recon, x.len(), "the reconstructions")?;
            self.model.decode_into(codes, recon)?;
            sums.sq_err.add_sq_diff(x, recon, d);
            sums.sq_norm.add_sq(x, d);
            Ok(())
        })?;
        Ok((sums, b.name()))
    }
}

/// The output in codes of type `C` (refused before the file is created where they do not
/// hold the model's indices), written as the chunks are encoded, then renamed into place.
fn encode_as<C: Code>(
    args: &EncodeArgs,
    model: &Model,
    x: &mut RowReader,
    chunk: usize,
) -> vqkit::Result<(Sums, String)> {
    let (width, k) = model.code_shape();
    vqkit::backend::check_code_type::<C>(k)?;
    let mut out = npy::Writer::codes::<C>(&args.output, &[x.rows(), width])?;
    let job = Job::<C> {
        model,
        x,
        out: &mut out,
        chunk,
        beam: args.beam,
        code: std::marker::PhantomData,
    };
    let done = args.common.dispatch(job)?;
    out.finish()?;
    Ok(done)
}

pub fn encode(args: EncodeArgs) -> vqkit::Result<()> {
    let model = Model::load(&args.model)?;
    let mut x = RowReader::open(&args.input)?;
    x.expect_points()?;
    let n = x.rows();
    model.check_dim(x.d())?;
    let chunk = super::chunk_rows(args.chunk_rows, &x)?;
    let (width, _) = model.code_shape();
    let bytes = args.code_dtype.bytes(model.code_shape().1);
    let (sums, backend) = match bytes {
        1 => encode_as::<u8>(&args, &model, &mut x, chunk)?,
        2 => encode_as::<u16>(&args, &model, &mut x, chunk)?,
        _ => encode_as::<u32>(&args, &model, &mut x, chunk)?,
    };
    let seconds = sums.seconds;
    // As vqkit::quant::mse and relative_error compute them over the whole input.
    let (e, norm) = match n {
        0 => (0.0, 0.0),
        n => (
            sums.sq_err.total() / n as f64,
            sums.sq_norm.total() / n as f64,
        ),
    };
    let rel = if norm > 0.0 { e / norm } else { e };
    if args.common.json {
        let v = serde_json::json!({
            "command": "encode", "kind": model.kind(), "backend": backend, "n": n,
            "codes_per_vector": width, "code_dtype": format!("uint{}", 8 * bytes),
            "mse": e, "relative_error": rel, "seconds": seconds,
            "output": args.output,
        });
        println!("{v}");
    } else {
        println!(
            "encoded {} vectors with a {} model ({width} codes each) on {backend} in {seconds:.3} s",
            n,
            model.kind()
        );
        println!("mse {e:.6}  relative error {rel:.6}");
        println!("codes written to {}", args.output.display());
    }
    Ok(())
}

pub fn decode(args: DecodeArgs) -> vqkit::Result<()> {
    let model = Model::load(&args.model)?;
    let mut codes = RowReader::open(&args.input)?;
    codes.expect_codes()?;
    let (width, _) = model.code_shape();
    if codes.d() != width {
        return Err(vqkit::Error::format(
            &args.input,
            format!(
                "codes of shape ({}, {}) do not fit a {} model with {width} codes per vector",
                codes.rows(),
                codes.d(),
                model.kind()
            ),
        ));
    }
    let n = codes.rows();
    // Rows of reconstructions, not of codes, make the chunk.
    let chunk = match args.chunk_rows {
        Some(0) => return Err(vqkit::Error::invalid("chunk-rows", "must be at least 1")),
        Some(r) => r,
        None => (vqkit::io::rows::CHUNK_BYTES / (4 * model.d()).max(1)).max(1),
    };
    // The decoders run on rayon's current pool: this one, of `--threads` threads (checked
    // before the output is created).
    let threads = super::with_threads(args.threads, || -> vqkit::Result<usize> {
        let mut out = npy::Writer::f32(&args.output, &[n, model.d()])?;
        let (mut c, mut x) = (Vec::new(), Vec::new());
        loop {
            let first = codes.position();
            let rows = codes.next_codes(chunk, &mut c)?;
            if rows == 0 {
                break;
            }
            let x = reuse(&mut x, rows * model.d(), "the reconstructions")?;
            model
                .decode_into(&c, x)
                .map_err(|e| e.after_rows(first, width))?;
            out.push_f32(x)?;
        }
        out.finish()?;
        Ok(rayon::current_num_threads())
    })??;
    if args.json {
        let v = serde_json::json!({
            "command": "decode", "kind": model.kind(), "n": n, "d": model.d(), "threads": threads,
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
