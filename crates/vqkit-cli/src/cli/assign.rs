//! `vqkit assign`: nearest codewords for a file of points, a chunk of rows at a time.

use super::{CodeDtype, Common, reuse};
use std::path::PathBuf;
use std::time::Instant;
use vqkit::backend::{Backend, Code, WithBackend, check_code_type, narrow_codes};
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
    /// Output: the codes as .npy, shape (n,), of the type `--code-dtype` names, written as
    /// the chunks are assigned and renamed into place at the end.
    #[arg(short, long)]
    output: PathBuf,
    /// The codes' type: `auto` is the narrowest that holds the codebook's indices (uint8 up
    /// to 256 codewords, uint16 up to 65,536, uint32 beyond, as `vqkit encode`); a type too
    /// narrow for the codebook is refused before the output is created.
    #[arg(long, value_enum, default_value_t = CodeDtype::Auto)]
    code_dtype: CodeDtype,
    /// Rows per chunk (default: about 16 MiB of f32). The codes do not depend on it.
    #[arg(long, value_name = "ROWS")]
    chunk_rows: Option<usize>,
    #[command(flatten)]
    common: Common,
}

/// Assignment into codes of type `C`, narrowed from each chunk's indices into one buffer
/// reused across chunks.
struct Job<'a, C> {
    x: &'a mut RowReader,
    c: &'a Matrix,
    out: &'a mut npy::Writer,
    chunk: usize,
    code: std::marker::PhantomData<C>,
}

/// What streaming assignment reports: the sum of squared distances (f64, in row order, as
/// [`ops::Assignment::mse`] sums them), the seconds spent assigning, the backend.
type Streamed = (f64, f64, String);

impl<C: Code> WithBackend for Job<'_, C> {
    type Output = Streamed;
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Streamed> {
        let d = self.x.d();
        let (mut sse, mut seconds) = (0.0f64, 0.0);
        let mut codes = Vec::<C>::new();
        // The next chunk is read while this one is assigned.
        self.x.for_each_chunk(self.chunk, |first, x| {
            let t = Instant::now();
            let a = ops::assign(b, x, &self.c.data, d).map_err(|e| e.after_rows(first, d))?;
            seconds += t.elapsed().as_secs_f64();
            sse = a.distances.iter().fold(sse, |s, &v| s + v as f64);
            let codes = reuse(&mut codes, a.indices.len(), "the codes")?;
            narrow_codes(&a.indices, codes)?;
            self.out.push_codes(codes)
        })?;
        Ok((sse, seconds, b.name()))
    }
}

/// The output in codes of type `C` (refused before the file is created where they do not
/// hold the codebook's indices), written as the chunks are assigned, then renamed into place.
fn assign_as<C: Code>(
    args: &Args,
    x: &mut RowReader,
    c: &Matrix,
    chunk: usize,
) -> vqkit::Result<Streamed> {
    check_code_type::<C>(c.rows)?;
    let mut out = npy::Writer::codes::<C>(&args.output, &[x.rows()])?;
    let done = args.common.dispatch(Job::<C> {
        x,
        c,
        out: &mut out,
        chunk,
        code: std::marker::PhantomData,
    })?;
    out.finish()?;
    Ok(done)
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
    let bytes = args.code_dtype.bytes(c.rows);
    let (sse, seconds, backend) = match bytes {
        1 => assign_as::<u8>(&args, &mut x, &c, chunk)?,
        2 => assign_as::<u16>(&args, &mut x, &c, chunk)?,
        _ => assign_as::<u32>(&args, &mut x, &c, chunk)?,
    };
    let mse = if n == 0 { 0.0 } else { sse / n as f64 };
    if args.common.json {
        let v = serde_json::json!({
            "command": "assign", "backend": backend, "n": n, "k": c.rows, "d": d,
            "code_dtype": format!("uint{}", 8 * bytes), "mse": mse, "seconds": seconds,
            "output": args.output,
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
