//! `vqkit complexity`: bits per vector and operations per encoded vector.

use vqkit::quant::complexity::{Method, complexity};

#[derive(clap::Args)]
pub struct Args {
    /// vq, rvq, pvq or avq.
    #[arg(long, value_parser = super::choice::<Method>())]
    method: Method,
    /// Vector dimension.
    #[arg(long)]
    d: usize,
    /// Stages (RVQ), sub-vectors (PVQ) or codebooks (AVQ); 1 for VQ.
    #[arg(long, default_value_t = 1)]
    stages: usize,
    /// Bits per stage (codebooks of 2^bits codewords).
    #[arg(long)]
    bits: u32,
    /// Beam width (AVQ).
    #[arg(long, default_value_t = 1)]
    beam: usize,
    /// Weights for double precision (2 per addition, multiplication, move).
    #[arg(long)]
    double: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> vqkit::Result<()> {
    let c = complexity(a.method, a.d, a.stages, a.bits, a.beam, a.double)?;
    if a.json {
        println!("{}", serde_json::to_string(&c).unwrap_or_default());
        return Ok(());
    }
    println!(
        "{:?} d = {}, stages = {}, {} bits per stage, beam = {}",
        a.method, a.d, a.stages, a.bits, a.beam
    );
    println!("{:<22}{:>16}", "quantity", "per vector");
    for (name, v) in [
        ("bits", c.bits_per_vector),
        ("additions", c.additions),
        ("multiplications", c.multiplications),
        ("moves", c.moves),
        ("branches", c.branches),
        ("weighted ops", c.weighted),
    ] {
        println!("{name:<22}{v:>16.0}");
    }
    println!(
        "weights: 1 per addition, multiplication, move (2 in double), 4 per branch (ITU-T WMOPS)"
    );
    println!("(all S stages counted; the published calculator counts S - 1 for RVQ and PVQ)");
    Ok(())
}
