//! The VQ-VAE layer, NSVQ and AVQ: gradients against finite differences, training effects,
//! dead-code replacement, beam search.

use vqkit::backend::cpu::CpuBackend;
use vqkit::quant::avq::{Avq, AvqConfig};
use vqkit::quant::nsvq::{
    self, NsvqConfig, NsvqMethod, Optimizer, substitute, substitute_backward,
};
use vqkit::quant::rvq::{Rvq, RvqConfig};
use vqkit::quant::vq::{CodebookUpdate, DeadCodes, Distance, VectorQuantizer, VqConfig};
use vqkit::rng::{Rng, clustered};

fn cpu() -> CpuBackend {
    CpuBackend::new(Some(2)).expect("cpu backend")
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn vq_gradients_match_finite_differences() {
    let b = cpu();
    let (n, d, k) = (6, 5, 4);
    for distance in [Distance::L2, Distance::Cosine] {
        let mut cfg = VqConfig::new(k, d);
        cfg.update = CodebookUpdate::Loss;
        cfg.kmeans_init = false;
        cfg.distance = distance;
        cfg.seed = 3;
        let q = VectorQuantizer::new(cfg).unwrap();
        // Inputs near distinct codewords, so that no small step changes an assignment.
        let noise = Rng::new(4).normal_vec(n * d);
        let z: Vec<f32> = (0..n * d)
            .map(|t| q.codebook[(t / d % k) * d + t % d] + 0.2 * noise[t])
            .collect();
        let out = q.clone().forward(&b, &z, false).unwrap();
        let zero = vec![0.0f32; n * d];
        let g = q.backward(&z, &out, &zero).unwrap();
        // dz of the commitment loss (indices are fixed under a small step).
        let h = 1e-3f32;
        for i in 0..n * d {
            let mut zp = z.clone();
            zp[i] += h;
            let mut zm = z.clone();
            zm[i] -= h;
            let lp = q.clone().forward(&b, &zp, false).unwrap();
            let lm = q.clone().forward(&b, &zm, false).unwrap();
            assert_eq!(lp.indices, out.indices, "step changed an assignment");
            let fd = (lp.commitment_loss as f64 - lm.commitment_loss as f64) / (2.0 * h as f64);
            assert!(
                close(g.dz[i] as f64, fd, 2e-2),
                "{distance:?} dz[{i}] {} vs {fd}",
                g.dz[i]
            );
        }
        // The codebook-loss gradient (L2 only: with cosine the codebook is renormalised).
        if distance == Distance::L2 {
            let dc = g.dcodebook.unwrap();
            for (t, &dct) in dc.iter().enumerate() {
                let mut qp = q.clone();
                qp.codebook[t] += h;
                let mut qm = q.clone();
                qm.codebook[t] -= h;
                let lp = qp.forward(&b, &z, false).unwrap().codebook_loss as f64;
                let lm = qm.forward(&b, &z, false).unwrap().codebook_loss as f64;
                let fd = (lp - lm) / (2.0 * h as f64);
                assert!(close(dct as f64, fd, 2e-2), "dcodebook[{t}] {dct} vs {fd}");
            }
        }
        // Straight-through: dL/dq passes to dz unchanged (plus the commitment term).
        let ones = vec![1.0f32; n * d];
        let g1 = q.backward(&z, &out, &ones).unwrap();
        if distance == Distance::L2 {
            for (a, b) in g1.dz.iter().zip(&g.dz) {
                assert!((a - b - 1.0).abs() < 1e-6);
            }
        }
    }
}

#[test]
fn vq_ema_training_learns_and_reports() {
    let b = cpu();
    let d = 8;
    let data = clustered(4096, d, 16, 0.1, 5);
    let mut cfg = VqConfig::new(16, d);
    cfg.kmeans_init = false;
    cfg.update = CodebookUpdate::Ema {
        decay: 0.9,
        eps: 1e-5,
    };
    cfg.dead_codes = DeadCodes::EmaThreshold { threshold: 0.5 };
    let mut q = VectorQuantizer::new(cfg).unwrap();
    let first = q.forward(&b, &data[..256 * d], true).unwrap();
    let mut last = first.clone();
    for batch in data.chunks(256 * d).cycle().take(60) {
        last = q.forward(&b, batch, true).unwrap();
    }
    assert!(
        last.commitment_loss < 0.2 * first.commitment_loss,
        "{first:?} {last:?}"
    );
    assert!(last.perplexity > 8.0 && last.usage > 0.5);
    assert_eq!(last.codebook_loss, 0.0);
    // k-means initialisation from the first batch starts close to the answer.
    let mut cfg2 = VqConfig::new(16, d);
    cfg2.kmeans_init = true;
    let mut q2 = VectorQuantizer::new(cfg2).unwrap();
    let o = q2.forward(&b, &data[..1024 * d], true).unwrap();
    assert!(o.commitment_loss < first.commitment_loss);
    assert!(q2.initialised);
}

#[test]
fn vq_dead_codes_are_replaced_in_both_styles() {
    let b = cpu();
    let d = 4;
    // Data in a small region; a codebook drawn N(0, 1) leaves most codes unused.
    let data: Vec<f32> = clustered(512, d, 2, 0.01, 6)
        .iter()
        .map(|v| 0.1 * v)
        .collect();
    let mut cfg = VqConfig::new(32, d);
    cfg.kmeans_init = false;
    cfg.dead_codes = DeadCodes::EmaThreshold { threshold: 1.0 };
    let mut q = VectorQuantizer::new(cfg.clone()).unwrap();
    let o = q.forward(&b, &data, true).unwrap();
    assert!(o.replaced > 0);
    cfg.dead_codes = DeadCodes::Nsvq {
        discard_threshold: 0.5,
        num_batches: 2,
        noise: 0.01,
    };
    let mut q = VectorQuantizer::new(cfg).unwrap();
    assert_eq!(q.forward(&b, &data, true).unwrap().replaced, 0);
    let o = q.forward(&b, &data, true).unwrap();
    assert!(o.replaced > 20, "{}", o.replaced);
    // Every code is now a used code or a small perturbation of one.
    let mut used: Vec<u32> = o.indices.clone();
    used.sort_unstable();
    used.dedup();
    for j in 0..32 {
        let c = &q.codebook[j * d..(j + 1) * d];
        let near = used.iter().any(|&u| {
            let cu = &q.codebook[u as usize * d..(u as usize + 1) * d];
            let dist: f32 = c.iter().zip(cu).map(|(a, b)| (a - b).powi(2)).sum();
            let norm: f32 = cu.iter().map(|a| a * a).sum();
            dist.sqrt() <= 0.1 * norm.sqrt() + 1e-3
        });
        assert!(near, "code {j} was not replaced near a used code");
    }
}

#[test]
fn vq_rejects_bad_input_and_round_trips() {
    let b = cpu();
    let mut q = VectorQuantizer::new(VqConfig::new(4, 3)).unwrap();
    assert!(matches!(
        q.forward(&b, &[1.0, 2.0], true),
        Err(vqkit::Error::RaggedRows { .. })
    ));
    assert!(matches!(
        q.forward(&b, &[1.0, f32::NAN, 0.0], true),
        Err(vqkit::Error::NonFinite { .. })
    ));
    // k-means initialisation needs k rows in the first batch.
    assert!(matches!(
        q.forward(&b, &[1.0, 2.0, 3.0], true),
        Err(vqkit::Error::KLargerThanN { k: 4, n: 1 })
    ));
    let f = q.to_file();
    let back = VectorQuantizer::from_file(&f).unwrap();
    assert_eq!(back, q);
}

#[test]
fn nsvq_gradient_path_matches_finite_differences() {
    let mut rng = Rng::new(7);
    let d = 6;
    let x = rng.normal_vec(d);
    let q = rng.normal_vec(d);
    let u = nsvq::unit(&mut rng, d);
    let w = rng.normal_vec(d);
    // L(x^) = sum w x^ + 0.5 |x^|^2, so g = w + x^.
    let loss = |x: &[f32], q: &[f32]| -> f64 {
        substitute(x, q, &u)
            .iter()
            .zip(&w)
            .map(|(&h, &wi)| wi as f64 * h as f64 + 0.5 * (h as f64).powi(2))
            .sum()
    };
    let xh = substitute(&x, &q, &u);
    let g: Vec<f32> = xh.iter().zip(&w).map(|(h, wi)| h + wi).collect();
    let (dx, dq) = substitute_backward(&x, &q, &u, &g);
    // |x - x^| = |x - q|: the substituted error keeps the norm.
    let e1: f32 = x.iter().zip(&q).map(|(a, b)| (a - b).powi(2)).sum();
    let e2: f32 = x.iter().zip(&xh).map(|(a, b)| (a - b).powi(2)).sum();
    assert!((e1 - e2).abs() < 1e-4 * e1);
    let h = 1e-2f32;
    for i in 0..d {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[i] += h;
        xm[i] -= h;
        let fd = (loss(&xp, &q) - loss(&xm, &q)) / (2.0 * h as f64);
        assert!(close(dx[i] as f64, fd, 1e-2), "dx[{i}] {} vs {fd}", dx[i]);
        let (mut qp, mut qm) = (q.clone(), q.clone());
        qp[i] += h;
        qm[i] -= h;
        let fd = (loss(&x, &qp) - loss(&x, &qm)) / (2.0 * h as f64);
        assert!(close(dq[i] as f64, fd, 1e-2), "dq[{i}] {} vs {fd}", dq[i]);
    }
}

#[test]
fn nsvq_training_lowers_the_error_for_every_method() {
    let b = cpu();
    let d = 8;
    let x = clustered(1024, d, 24, 0.4, 8);
    for method in [NsvqMethod::Rvq, NsvqMethod::Pvq, NsvqMethod::Avq] {
        for optimizer in [
            Optimizer::Sgd { momentum: 0.9 },
            Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        ] {
            let mut cfg = NsvqConfig::new(method, 2, 8);
            cfg.init_iters = 0;
            cfg.epochs = 4;
            cfg.batch = 64;
            cfg.optimizer = optimizer;
            cfg.lr = if matches!(optimizer, Optimizer::Sgd { .. }) {
                0.05
            } else {
                0.01
            };
            cfg.replace = Some((0.05, 8));
            cfg.beam = 2;
            let mut start = cfg.clone();
            start.epochs = 0;
            let m0 = nsvq::train(&b, &x, d, &start, &mut |_, _| {}).unwrap();
            let m1 = nsvq::train(&b, &x, d, &cfg, &mut |_, _| {}).unwrap();
            let (e0, _) = nsvq::evaluate(&b, &m0, &x, d, 2).unwrap();
            let (e1, _) = nsvq::evaluate(&b, &m1, &x, d, 2).unwrap();
            assert!(e1 < 0.8 * e0, "{method:?} {optimizer:?}: {e0} -> {e1}");
        }
    }
}

#[test]
fn avq_beam_is_at_least_as_good_as_greedy_and_least_squares_helps() {
    let b = cpu();
    let d = 12;
    let x = clustered(1500, d, 40, 0.5, 9);
    let mut cfg = AvqConfig::new(3, 16);
    cfg.iters = 8;
    cfg.beam = 6;
    cfg.ls_rounds = 2;
    let mut errs = Vec::new();
    let m = Avq::fit(&b, &x, d, &cfg, &mut |_, e| errs.push(e)).unwrap();
    assert!(errs.windows(2).all(|w| w[1] <= w[0]), "{errs:?}");
    let e = |codes: &[u32]| vqkit::quant::mse(&x, &m.decode(codes).unwrap(), d);
    let greedy = e(&m.encode(&x, 1).unwrap());
    let beam = e(&m.encode(&x, 6).unwrap());
    assert!(beam <= greedy * (1.0 + 1e-5), "beam {beam} greedy {greedy}");
    // Better than the RQ-K-means it started from.
    let mut rc = RvqConfig::new(3, 16);
    rc.iters = 8;
    let r = Rvq::fit(&b, &x, d, &rc, &mut |_| {}).unwrap();
    let er = vqkit::quant::mse(&x, &r.decode(&r.encode(&b, &x, 1).unwrap()).unwrap(), d);
    assert!(beam < er, "avq {beam} rvq {er}");
    // Every code column indexes its own codebook.
    let codes = m.encode(&x, 6).unwrap();
    assert!(codes.iter().all(|&c| c < 16));
}
