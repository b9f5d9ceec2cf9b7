//! `vqkit complexity`: bits per vector and operations per encoded vector.

use vqkit::quant::complexity::{Method, complexity, published};

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
    let p = published(a.method, a.d, a.stages, a.bits, a.beam, a.double)?;
    if a.json {
        let mut v = serde_json::to_value(&c).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "published".into(),
                serde_json::to_value(&p).unwrap_or_default(),
            );
        }
        println!("{v}");
        return Ok(());
    }
    println!(
        "{:?} d = {}, stages = {}, {} bits per stage, beam = {}",
        a.method, a.d, a.stages, a.bits, a.beam
    );
    println!("{:<22}{:>16}{:>16}", "quantity", "per vector", "published");
    let rows = |c: &vqkit::quant::complexity::Complexity| {
        [
            c.bits_per_vector,
            c.additions,
            c.multiplications,
            c.moves,
            c.branches,
            c.weighted,
        ]
    };
    let theirs = p.as_ref().map(rows);
    let names = [
        "bits",
        "additions",
        "multiplications",
        "moves",
        "branches",
        "weighted ops",
    ];
    for (i, (name, v)) in names.iter().zip(rows(&c)).enumerate() {
        let t = theirs.map_or("-".to_string(), |t| format!("{:.0}", t[i]));
        println!("{name:<22}{v:>16.0}{t:>16}");
    }
    if let Some(p) = &p {
        println!(
            "{:<22}{:>16}{:>16.6}",
            "WMOPS (ops / 1e6)",
            format!("{:.6}", c.weighted / 1e6),
            p.weighted / 1e6
        );
    }
    println!(
        "weights: 1 per addition, multiplication, move (2 in double), 4 per branch (ITU-T WMOPS)"
    );
    println!(
        "per vector: all S stages counted; published: the NSVQ authors' calculator, which counts \
         S - 1 stages for RVQ and PVQ (RVQ with one stage: 0) and has no VQ"
    );
    Ok(())
}
