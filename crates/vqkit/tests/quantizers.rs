//! The quantization algorithms on small seeded data where the answer is known.

use vqkit::Error;
use vqkit::backend::cpu::CpuBackend;
use vqkit::quant::kmeans::{Init, KMeans, KMeansConfig};
use vqkit::quant::model::Model;
use vqkit::quant::model_io::TensorFile;
use vqkit::quant::pvq::{Pvq, PvqConfig, sub_columns};
use vqkit::quant::rvq::{Rvq, RvqConfig};
use vqkit::rng::Rng;

fn cpu() -> CpuBackend {
    CpuBackend::new(Some(2)).expect("cpu backend")
}

/// `per` points around each of `centres` (c, d), spread `sigma`.
fn blobs(centres: &[f32], d: usize, per: usize, sigma: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x = Vec::new();
    for _ in 0..per {
        for c in centres.chunks_exact(d) {
            x.extend(c.iter().map(|&v| v + sigma * rng.normal() as f32));
        }
    }
    x
}

fn separated_centres(c: usize, d: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed)
        .normal_vec(c * d)
        .iter()
        .map(|v| 20.0 * v)
        .collect()
}

fn nearest(c: &[f32], centroids: &[f32], d: usize) -> f64 {
    centroids
        .chunks_exact(d)
        .map(|r| vqkit::reference::sq_dist(c, r))
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn kmeans_recovers_well_separated_clusters() {
    let (c, d) = (8, 5);
    let centres = separated_centres(c, d, 1);
    let x = blobs(&centres, d, 50, 0.1, 2);
    let (m, rep) = KMeans::fit(&cpu(), &x, d, &KMeansConfig::new(c)).unwrap();
    for t in centres.chunks_exact(d) {
        assert!(nearest(t, &m.centroids, d) < 0.01);
    }
    // Within-cluster variance: d sigma^2.
    assert!((rep.mse - d as f64 * 0.01).abs() < 0.01, "{}", rep.mse);
    // Random starts can leave two centroids in one blob (a local minimum k-means++ avoids):
    // they are never better, and restarts only help.
    let mut cfg = KMeansConfig::new(c);
    cfg.init = Init::Random;
    let (_, r1) = KMeans::fit(&cpu(), &x, d, &cfg).unwrap();
    cfg.restarts = 8;
    let (_, r8) = KMeans::fit(&cpu(), &x, d, &cfg).unwrap();
    assert!(r8.mse <= r1.mse && r8.mse >= rep.mse * (1.0 - 1e-6));
}

#[test]
fn kmeans_is_reproducible_and_restarts_keep_the_best() {
    let d = 4;
    let x = vqkit::rng::clustered(600, d, 12, 0.5, 3);
    let mut cfg = KMeansConfig::new(10);
    cfg.seed = 7;
    let (a, ra) = KMeans::fit(&cpu(), &x, d, &cfg).unwrap();
    let (b, _) = KMeans::fit(&cpu(), &x, d, &cfg).unwrap();
    assert_eq!(a, b);
    cfg.restarts = 4;
    let (_, r4) = KMeans::fit(&cpu(), &x, d, &cfg).unwrap();
    assert_eq!(r4.history.len(), 4);
    assert!(r4.mse <= ra.mse + 1e-9);
    // The inertia never increases along Lloyd iterations.
    for h in &r4.history {
        for w in h.windows(2) {
            assert!(w[1] <= w[0] * (1.0 + 1e-6), "{h:?}");
        }
    }
}

#[test]
fn kmeans_tolerance_stops_early_and_subsampling_caps_points() {
    let d = 3;
    let x = blobs(&separated_centres(4, d, 5), d, 100, 0.1, 6);
    let mut cfg = KMeansConfig::new(4);
    cfg.iters = 50;
    cfg.tol = 1e-4;
    cfg.max_points_per_centroid = 20;
    let (_, rep) = KMeans::fit(&cpu(), &x, d, &cfg).unwrap();
    assert!(rep.history[0].len() < 50);
    assert_eq!(rep.n_train, 80);
}

#[test]
fn empty_clusters_are_split() {
    let d = 2;
    let centres = [0.0f32, 0.0, 10.0, 0.0, 0.0, 10.0];
    let x = blobs(&centres, d, 30, 0.2, 8);
    // Two centroids start in one blob and one far from every point: it gets no points.
    let init = [0.0f32, 0.0, 0.1, 0.1, 1e3, 1e3];
    let cfg = KMeansConfig::new(3);
    let (m, rep) = KMeans::refine(&cpu(), &x, d, &init, &cfg, &mut |_| {}).unwrap();
    assert!(rep.repaired >= 1);
    for t in centres.chunks_exact(d) {
        assert!(nearest(t, &m.centroids, d) < 0.1, "{:?}", m.centroids);
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let b = cpu();
    let x = vec![1.0f32; 10];
    assert!(matches!(
        KMeans::fit(&b, &x, 2, &KMeansConfig::new(6)),
        Err(Error::KLargerThanN { k: 6, n: 5 })
    ));
    let mut y = x.clone();
    y[3] = f32::NAN;
    assert!(matches!(
        KMeans::fit(&b, &y, 2, &KMeansConfig::new(2)),
        Err(Error::NonFinite { index: 3, .. })
    ));
    assert!(matches!(
        Rvq::fit(&b, &y, 2, &RvqConfig::new(2, 2), &mut |_| {}),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        Pvq::fit(&b, &x, 2, &PvqConfig::new(3, 2), &mut |_| {}),
        Err(Error::InvalidParameter { name: "m", .. })
    ));
}

#[test]
fn rvq_error_does_not_increase_with_stages_and_beam_helps() {
    let b = cpu();
    let d = 16;
    let x = vqkit::rng::clustered(2000, d, 40, 0.6, 9);
    let mut cfg = RvqConfig::new(4, 16);
    cfg.iters = 10;
    let greedy = Rvq::fit(&b, &x, d, &cfg, &mut |_| {}).unwrap();
    let codes = greedy.encode(&b, &x, 1).unwrap();
    let stats = greedy.analyse(&x, &codes).unwrap();
    assert_eq!(stats.len(), 4);
    for w in stats.windows(2) {
        assert!(w[1].mse <= w[0].mse, "{stats:?}");
    }
    assert!(stats.iter().all(|s| s.usage > 0.5 && s.perplexity > 1.0));
    // Beam encoding with the same codebooks is at least as good as greedy.
    let beam_codes = greedy.encode(&b, &x, 8).unwrap();
    let eg = vqkit::quant::mse(&x, &greedy.decode(&codes).unwrap(), d);
    let eb = vqkit::quant::mse(&x, &greedy.decode(&beam_codes).unwrap(), d);
    assert!(eb <= eg * (1.0 + 1e-5), "beam {eb} greedy {eg}");
    // Beam search with B = 1 is greedy.
    assert_eq!(greedy.encode(&b, &x, 1).unwrap(), codes);
    // Trained with a beam, too.
    cfg.beam = 4;
    let bm = Rvq::fit(&b, &x, d, &cfg, &mut |_| {}).unwrap();
    let eb2 = vqkit::quant::mse(&x, &bm.decode(&bm.encode(&b, &x, 4).unwrap()).unwrap(), d);
    assert!(eb2 <= eg * 1.02, "beam-trained {eb2} greedy {eg}");
}

#[test]
fn rvq_shared_codebook_works_and_is_stored_per_stage() {
    let b = cpu();
    let d = 8;
    let x = vqkit::rng::clustered(1000, d, 20, 0.5, 10);
    let mut cfg = RvqConfig::new(3, 16);
    cfg.shared = true;
    cfg.iters = 5;
    let m = Rvq::fit(&b, &x, d, &cfg, &mut |_| {}).unwrap();
    assert_eq!(m.codebook(0), m.codebook(2));
    let stats = m.analyse(&x, &m.encode(&b, &x, 1).unwrap()).unwrap();
    assert!(stats[2].mse < stats[0].mse);
}

#[test]
fn pvq_equals_independent_kmeans_per_subspace() {
    let b = cpu();
    let d = 12;
    let x = vqkit::rng::clustered(800, d, 30, 0.5, 11);
    let cfg = PvqConfig::new(3, 8);
    let m = Pvq::fit(&b, &x, d, &cfg, &mut |_| {}).unwrap();
    let codes = m.encode(&b, &x).unwrap();
    let mut total = 0.0;
    for sub in 0..3 {
        let xs = sub_columns(&x, d, sub, 4);
        let (km, _) = KMeans::fit(&b, &xs, 4, &cfg.kmeans(sub)).unwrap();
        assert_eq!(m.codebook(sub), &km.centroids[..]);
        let a = km.assign(&b, &xs).unwrap();
        let col: Vec<u32> = (0..800).map(|i| codes[i * 3 + sub]).collect();
        assert_eq!(col, a.indices);
        total += a.mse();
    }
    let e = vqkit::quant::mse(&x, &m.decode(&codes).unwrap(), d);
    assert!((e - total).abs() < 1e-3 * total);
}

#[test]
fn models_round_trip_and_reject_corrupt_files() {
    let b = cpu();
    let d = 6;
    let x = vqkit::rng::clustered(300, d, 10, 0.5, 12);
    let (km, _) = KMeans::fit(&b, &x, d, &KMeansConfig::new(5)).unwrap();
    let rvq = Rvq::fit(&b, &x, d, &RvqConfig::new(2, 4), &mut |_| {}).unwrap();
    let pvq = Pvq::fit(&b, &x, d, &PvqConfig::new(2, 4), &mut |_| {}).unwrap();
    let dir = std::env::temp_dir().join(format!("vqkit-quant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for model in [Model::KMeans(km), Model::Rvq(rvq), Model::Pvq(pvq)] {
        let path = dir.join(format!("{}.safetensors", model.kind()));
        model.to_file().write(&path).unwrap();
        let back = Model::load(&path).unwrap();
        assert_eq!(back, model);
        let codes = back.encode(&b, &x, None).unwrap();
        assert_eq!(codes.len(), 300 * back.code_shape().0);
        assert_eq!(back.decode(&codes).unwrap().len(), x.len());
        assert!(matches!(
            back.check_dim(d + 1),
            Err(Error::WrongDimension {
                expected: 6,
                got: 7
            })
        ));
        // Truncated and garbled files are format errors, never panics.
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 7, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(
                matches!(Model::load(&path), Err(Error::Format { .. })),
                "{cut}"
            );
        }
        let mut garbled = bytes.clone();
        for v in garbled.iter_mut().skip(8).take(40) {
            *v = b'#';
        }
        std::fs::write(&path, &garbled).unwrap();
        assert!(matches!(Model::load(&path), Err(Error::Format { .. })));
        // A valid safetensors file that is not a vqkit model.
        let mut other = TensorFile::default();
        other.put("w", vec![2], vec![1.0, 2.0]);
        std::fs::write(&path, other.to_bytes().unwrap()).unwrap();
        assert!(matches!(Model::load(&path), Err(Error::Format { .. })));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn minibatch_streams_a_file_and_matches_full_kmeans() {
    use vqkit::quant::minibatch::{MiniBatchConfig, RowStream, fit_stream};
    let b = cpu();
    let d = 6;
    let centres = separated_centres(5, d, 13);
    let x = blobs(&centres, d, 400, 0.2, 14);
    let dir = std::env::temp_dir().join(format!("vqkit-mb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let npy = dir.join("x.npy");
    vqkit::io::npy::write_f32(&npy, &[2000, d], &x).unwrap();
    let fv = dir.join("x.fvecs");
    std::fs::write(&fv, vqkit::io::fvecs::to_bytes(&x, d)).unwrap();
    let (_, full) = KMeans::fit(&b, &x, d, &KMeansConfig::new(5)).unwrap();
    for path in [&npy, &fv] {
        let mut s = RowStream::open(path).unwrap();
        assert_eq!((s.rows(), s.d()), (2000, d));
        let mut cfg = MiniBatchConfig::new(5);
        cfg.batch = 128;
        cfg.init_rows = 200;
        cfg.epochs = 3;
        let mut batches = 0;
        let (m, rep) = fit_stream(&b, &mut s, &cfg, &mut |_, _, _| batches += 1).unwrap();
        assert_eq!(batches, 3 * 2000usize.div_ceil(128));
        assert!(rep.mse < full.mse * 1.05, "{} vs {}", rep.mse, full.mse);
        for t in centres.chunks_exact(d) {
            assert!(nearest(t, &m.centroids, d) < 0.05);
        }
    }
    // k > n, and a truncated file.
    let mut s = RowStream::open(&npy).unwrap();
    assert!(matches!(
        fit_stream(&b, &mut s, &MiniBatchConfig::new(3000), &mut |_, _, _| {}),
        Err(Error::KLargerThanN { .. })
    ));
    let bytes = std::fs::read(&npy).unwrap();
    std::fs::write(&npy, &bytes[..bytes.len() - 10]).unwrap();
    assert!(matches!(RowStream::open(&npy), Err(Error::Format { .. })));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn avq_whose_distances_overflow_is_an_error_not_a_panic() {
    // Found by `cargo fuzz run models`: codebooks so large that every beam candidate's
    // distance is infinite left the beam empty, and encoding indexed into it.
    let m = vqkit::quant::avq::Avq {
        d: 2,
        m: 2,
        k: 2,
        beam: 2,
        codebooks: vec![3e30, -3e30, 1e30, 2e30, -3e30, 3e30, 2e30, 1e30],
    };
    assert!(matches!(
        m.encode(&[0.5, 0.5], 2),
        Err(Error::Overflow { row: 0 })
    ));
}
