//! `vqkit info`: what this build and this machine offer.

use vqkit::Choice;
use vqkit::backend::BackendKind;
use vqkit::backend::cpu::{CpuBackend, Isa};

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> vqkit::Result<()> {
    let cpu = CpuBackend::new(None)?;
    let isas: Vec<&str> = Isa::available().into_iter().map(Isa::as_str).collect();
    let compiled: Vec<&str> = BackendKind::ALL
        .iter()
        .filter(|k| k.compiled())
        .map(|k| k.as_str())
        .collect();
    let gpu = gpu_lines();
    if args.json {
        let v = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "backends_compiled": compiled,
            "cpu": { "isa_used": cpu.isa(), "isa_available": isas, "threads": cpu.threads() },
            "gpu": gpu.iter().map(|(k, s)| serde_json::json!({"backend": k, "status": s})).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    println!("vqkit {}", env!("CARGO_PKG_VERSION"));
    println!("backends compiled in: {}", compiled.join(", "));
    println!(
        "cpu: {} threads; kernel ISA {} (available: {})",
        cpu.threads(),
        cpu.isa().as_str(),
        isas.join(", ")
    );
    for (kind, status) in gpu {
        println!("{kind}: {status}");
    }
    Ok(())
}

/// One status line per GPU backend: not compiled in, or what its probe found.
fn gpu_lines() -> Vec<(&'static str, String)> {
    [BackendKind::Wgpu, BackendKind::Cuda]
        .into_iter()
        .map(|k| {
            let status = if k.compiled() {
                describe(k)
            } else {
                format!("not compiled in (rebuild with `--features {k}`)")
            };
            (k.as_str(), status)
        })
        .collect()
}

/// What a compiled-in GPU backend's probe reports (adapters or devices found).
fn describe(kind: BackendKind) -> String {
    match kind {
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            let text = vqkit::backend::wgpu::describe();
            text.strip_prefix("wgpu: ")
                .map(str::to_string)
                .unwrap_or(text)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => vqkit::backend::cuda::describe()
            .trim_end()
            .replace('\n', "\n  "),
        _ => format!("{kind} compiled in"),
    }
}
