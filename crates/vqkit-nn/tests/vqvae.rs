//! VQ-VAE / RQ-VAE: safetensors round trip (bit-exact), corrupt checkpoints as typed errors,
//! and a training smoke test on a small real Fashion-MNIST subset. The whole-model gradient
//! check is in `gradients.rs`; `vqkit train-vqvae` end to end in the CLI's tests.

use std::path::PathBuf;
use vqkit::Error;
use vqkit::backend::cpu::CpuBackend;
use vqkit::quant::model_io::TensorFile;
use vqkit::rng::Rng;
use vqkit_nn::data;
use vqkit_nn::{Adam, NsvqSchedule, QuantizerKind, Tensor, VqVae, VqVaeConfig};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vqkit-vqvae-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny(levels: usize, q: QuantizerKind) -> VqVaeConfig {
    let mut c = VqVaeConfig::new(1, 16, levels);
    c.hidden_dims = vec![8, 16];
    c.num_residual_layers = 1;
    c.residual_hidden = 4;
    c.embedding_dim = 8;
    c.quantizer = q;
    c.seed = 3;
    c
}

fn params(m: &mut VqVae) -> Vec<Vec<f32>> {
    m.params_mut().iter().map(|p| p.value.clone()).collect()
}

#[test]
fn save_load_is_bit_exact_for_every_quantizer() {
    let b = CpuBackend::new(Some(1)).unwrap();
    let dir = tmp("roundtrip");
    let mut rng = Rng::new(5);
    let x = Tensor::randn([4, 1, 12, 12], 0.5, &mut rng);
    for (levels, q, shared) in [
        (1, QuantizerKind::Ema, false),
        (3, QuantizerKind::Codebook, false),
        (2, QuantizerKind::Nsvq, false),
        (2, QuantizerKind::Ema, true),
    ] {
        let mut cfg = tiny(levels, q);
        cfg.shared_codebook = shared;
        let mut m = VqVae::new(cfg.clone()).unwrap();
        // Train two steps so codebooks and EMA state differ from their initial values.
        let mut opt = Adam::new(1e-3);
        for _ in 0..2 {
            m.zero_grad();
            m.forward(&b, &x, true).unwrap();
            m.backward().unwrap();
            opt.step(&mut m.params_mut()).unwrap();
        }
        let path = dir.join(format!("m{levels}{}.safetensors", q.as_str()));
        m.to_file().unwrap().write(&path).unwrap();
        let mut back = VqVae::from_file(&TensorFile::read(&path).unwrap()).unwrap();
        assert_eq!(back.cfg, cfg);
        assert!(params(&mut back) == params(&mut m), "parameters differ");
        for (a, c) in back.quantizers.iter().zip(&m.quantizers) {
            assert_eq!(a, c, "quantizer state");
        }
        // The same reconstructions, bit for bit.
        let r1 = m.forward(&b, &x, false).unwrap();
        let r2 = back.forward(&b, &x, false).unwrap();
        assert!(r1.recon.data == r2.recon.data, "reconstructions differ");
        assert_eq!(r1.indices, r2.indices);
        // encode_to_indices / decode_from_indices agree with the forward pass.
        let (codes, shape) = back.encode_to_indices(&b, &x).unwrap();
        assert_eq!(codes, r1.indices);
        let dec = back.decode_from_indices(&codes, shape).unwrap();
        assert!(dec.data == r1.recon.data, "decode_from_indices differs");
        let lv = back.reconstruct_levels(&b, &x).unwrap();
        assert_eq!(lv.len(), levels);
        assert!(lv[levels - 1].data == r1.recon.data, "last level differs");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_checkpoints_are_typed_errors() {
    let dir = tmp("corrupt");
    let mut m = VqVae::new(tiny(2, QuantizerKind::Ema)).unwrap();
    let f = m.to_file().unwrap();
    let good = f.to_bytes().unwrap();
    let expect_format = |bytes: &[u8], needle: &str| {
        let p = dir.join("bad.safetensors");
        std::fs::write(&p, bytes).unwrap();
        match TensorFile::read(&p).and_then(|f| VqVae::from_file(&f)) {
            Err(Error::Format { reason, path }) => {
                assert!(reason.contains(needle), "{reason}");
                assert_eq!(path, p);
            }
            Err(e) => panic!("expected a format error with '{needle}', got {e}"),
            Ok(_) => panic!("corrupt file '{needle}' was accepted"),
        }
    };
    expect_format(&good[..good.len() / 2], "safetensors");
    expect_format(b"not a model", "safetensors");
    let mut g = f.clone();
    g.tensors.remove("decoder.3");
    expect_format(&g.to_bytes().unwrap(), "decoder.3");
    let mut g = f.clone();
    g.put("vq.1.codebook", vec![3, 8], vec![0.0; 24]);
    expect_format(&g.to_bytes().unwrap(), "vq.1.codebook");
    let mut g = f.clone();
    g.set("vqkit.config", "{broken");
    expect_format(&g.to_bytes().unwrap(), "vqkit.config");
    let mut g = f.clone();
    g.set("vqkit.kind", "kmeans");
    expect_format(&g.to_bytes().unwrap(), "not a vqvae");
    let mut g = f.clone();
    if let Some((_, data)) = g.tensors.get_mut("encoder.0") {
        data[0] = f32::NAN;
    }
    expect_format(&g.to_bytes().unwrap(), "non-finite");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn real_subset(n: usize) -> Option<Tensor> {
    let dir = data::installed_dataset().unwrap()?;
    Some(data::load_split(dir, "t10k", Some(n)).unwrap().images)
}

#[test]
fn vqvae_and_rqvae_loss_falls_on_real_fashion_mnist() {
    let Some(data) = real_subset(256) else {
        return;
    };
    let b = CpuBackend::new(None).unwrap();
    for (levels, q) in [
        (1, QuantizerKind::Ema),
        (2, QuantizerKind::Codebook),
        (2, QuantizerKind::Nsvq),
    ] {
        let mut cfg = tiny(levels, q);
        cfg.num_embeddings = 32;
        let mut m = VqVae::new(cfg).unwrap();
        let mut opt = Adam::new(3e-3);
        let batch = 32;
        let img = 28 * 28;
        let mut losses = Vec::new();
        for step in 0..16 {
            let s = (step % (256 / batch)) * batch;
            let x = Tensor::from_vec(
                [batch, 1, 28, 28],
                data.data[s * img..(s + batch) * img].to_vec(),
            )
            .unwrap();
            m.zero_grad();
            let out = m.forward(&b, &x, true).unwrap();
            assert!(out.loss().is_finite());
            assert_eq!(out.recon.shape, x.shape);
            assert_eq!(out.perplexity.len(), levels);
            losses.push(out.recon_loss);
            m.backward().unwrap();
            opt.step(&mut m.params_mut()).unwrap();
        }
        let first: f32 = losses[..4].iter().sum::<f32>() / 4.0;
        let last: f32 = losses[12..].iter().sum::<f32>() / 4.0;
        println!("levels {levels} {}: {losses:?}", q.as_str());
        assert!(last < 0.7 * first, "loss did not fall: {first} -> {last}");
    }
}

#[test]
fn ssim_psnr_and_png_are_sane() {
    use vqkit_nn::metrics::{psnr, ssim};
    let mut rng = Rng::new(9);
    let a: Vec<f32> = (0..28 * 28).map(|_| rng.uniform() as f32).collect();
    assert!((ssim(&a, &a, 28, 28) - 1.0).abs() < 1e-12);
    let small: Vec<f32> = a.iter().map(|v| v + 0.02 * rng.normal() as f32).collect();
    let large: Vec<f32> = a.iter().map(|v| v + 0.2 * rng.normal() as f32).collect();
    let (s1, s2) = (ssim(&a, &small, 28, 28), ssim(&a, &large, 28, 28));
    assert!(1.0 > s1 && s1 > s2 && s2 > 0.0, "{s1} {s2}");
    // A constant offset: luminance term only, 2 mu1 mu2 + C1 over mu1^2 + mu2^2 + C1.
    let flat = vec![0.5f32; 15 * 15];
    let up = vec![0.6f32; 15 * 15];
    let c1 = 1e-4;
    let want = (2.0 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1);
    assert!((ssim(&flat, &up, 15, 15) - want).abs() < 1e-6);
    assert!((psnr(0.01) - 20.0).abs() < 1e-12);

    // PNG: signature, IHDR, and an IDAT whose zlib payload inflates to the filtered rows.
    let px: Vec<u8> = (0..6 * 4).map(|i| (i * 10) as u8).collect();
    let png = vqkit::io::png::encode_gray(6, 4, &px).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
    assert_eq!(&png[37..41], b"IDAT");
    let mut raw = Vec::new();
    use std::io::Read;
    flate2::read::ZlibDecoder::new(&png[41..41 + idat_len])
        .read_to_end(&mut raw)
        .unwrap();
    let want: Vec<u8> = px
        .chunks(6)
        .flat_map(|r| std::iter::once(0).chain(r.iter().copied()))
        .collect();
    assert_eq!(raw, want);
    let mut crc = flate2::Crc::new();
    crc.update(&png[37..41 + idat_len]);
    assert_eq!(crc.sum().to_be_bytes(), png[41 + idat_len..45 + idat_len]);
    assert!(vqkit::io::png::encode_gray(6, 4, &px[..5]).is_err());
}

#[test]
fn nsvq_schedules_replace_when_they_say() {
    use vqkit::quant::vq::DeadCodes;
    let b = CpuBackend::new(Some(1)).unwrap();
    // After a first batch of 4 images (36 latent rows for the k-means start of 16 codes),
    // one image, the same every batch: its 9 latent rows use at most 9 of the 16 codes, so
    // the others are used in at most 1 of 100 batches and due for replacement.
    let first = Tensor::randn([4, 1, 12, 12], 0.5, &mut Rng::new(7));
    let x = Tensor::randn([1, 1, 12, 12], 0.5, &mut Rng::new(8));
    for (schedule, rule) in [
        (NsvqSchedule::Frequent, (0.03, 100)),
        (NsvqSchedule::Published, (0.01, 1000)),
    ] {
        let mut cfg = tiny(1, QuantizerKind::Nsvq);
        cfg.nsvq_schedule = schedule;
        assert_eq!(schedule.rule(), rule);
        let mut m = VqVae::new(cfg).unwrap();
        assert_eq!(
            m.quantizers[0].cfg.dead_codes,
            DeadCodes::Nsvq {
                discard_threshold: rule.0,
                num_batches: rule.1,
                noise: 0.01
            }
        );
        let replaced: Vec<usize> = (0..100)
            .map(|i| {
                let batch = if i == 0 { &first } else { &x };
                m.forward(&b, batch, true).unwrap().replaced
            })
            .collect();
        let at: Vec<usize> = (0..100).filter(|&i| replaced[i] > 0).collect();
        match schedule {
            NsvqSchedule::Frequent => assert_eq!(at, [99], "{replaced:?}"),
            NsvqSchedule::Published => assert!(at.is_empty(), "{at:?}"),
        }
    }
    // A configuration saved before the schedule existed reads as the frequent one.
    let mut v = serde_json::to_value(tiny(1, QuantizerKind::Nsvq)).unwrap();
    v.as_object_mut().unwrap().remove("nsvq_schedule");
    let old: VqVaeConfig = serde_json::from_value(v).unwrap();
    assert_eq!(old.nsvq_schedule, NsvqSchedule::Frequent);
}
