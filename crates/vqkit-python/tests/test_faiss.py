"""vqkit side by side with faiss-cpu on the same seeded data."""

import faiss
import numpy as np
import pytest

import vqkit


def recon_error(x, y):
    return float(np.mean(np.sum((x.astype(np.float64) - y) ** 2, axis=1)))


@pytest.mark.parametrize("n,k,d", [(1000, 1, 3), (2049, 17, 5), (3000, 256, 32), (513, 1024, 67)])
def test_assign_matches_index_flat_l2(n, k, d):
    rng = np.random.default_rng(n + k + d)
    x = rng.standard_normal((n, d)).astype(np.float32)
    c = rng.standard_normal((k, d)).astype(np.float32)
    index = faiss.IndexFlatL2(d)
    index.add(c)
    fd, fi = index.search(x, 1)
    vd, vi = vqkit.assign(x, c)
    assert vd.dtype == np.float32 and vi.dtype == np.int64
    assert vd.shape == (n,) and vi.shape == (n,)
    # Same codes, but where two codewords are within float rounding of each other.
    differ = vi != fi[:, 0]
    if differ.any():
        exact = ((x[differ, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
        rows = np.arange(differ.sum())
        gap = np.abs(exact[rows, vi[differ]] - exact[rows, fi[differ, 0]])
        assert np.all(gap <= 1e-4 * (1 + exact[rows, fi[differ, 0]])), gap.max()
    np.testing.assert_allclose(vd, fd[:, 0], rtol=1e-4, atol=1e-4)


def test_kmeans_objective_within_half_a_percent_of_faiss(fashion):
    x = fashion
    d, k = x.shape[1], 256
    ours = vqkit.Kmeans(d, k, niter=20, seed=1)
    ours.train(x)
    theirs = faiss.Kmeans(d, k, niter=20, seed=1)
    theirs.train(x)
    mine = float(vqkit.assign(x, ours.centroids)[0].astype(np.float64).sum())
    ref = float(vqkit.assign(x, theirs.centroids)[0].astype(np.float64).sum())
    assert mine <= ref * 1.005, (mine, ref)
    # FAISS's names and shapes.
    assert ours.centroids.shape == (k, d) and ours.centroids.dtype == np.float32
    assert 1 <= len(ours.obj) <= 20
    D, I = ours.assign(x)
    assert D.shape == (len(x),) and I.dtype == np.int64


def test_residual_quantizer_within_one_percent_of_faiss(fashion):
    x = fashion
    d, M, nbits = x.shape[1], 4, 6
    theirs = faiss.ResidualQuantizer(d, M, nbits)
    theirs.max_beam_size = 1
    theirs.cp.seed = 1
    theirs.train(x)
    ref = recon_error(x, theirs.decode(theirs.compute_codes(x)))
    ours = vqkit.ResidualQuantizer(d, M, nbits, seed=1)
    ours.train(x)
    codes = ours.compute_codes(x)
    assert codes.shape == (len(x), M) and codes.dtype == np.uint8
    mine = recon_error(x, ours.decode(codes))
    assert mine <= ref * 1.01, (mine, ref)
    # The per-stage errors end at the final error and decrease.
    errs = [s["mse"] for s in ours.stage_errors]
    assert len(errs) == M and all(a >= b for a, b in zip(errs, errs[1:]))
    assert errs[-1] == pytest.approx(mine, rel=1e-4)


def test_product_quantizer_within_one_percent_of_faiss(fashion):
    x = fashion
    d, M, nbits = x.shape[1], 7, 6
    theirs = faiss.ProductQuantizer(d, M, nbits)
    theirs.cp.seed = 1
    theirs.train(x)
    ref = recon_error(x, theirs.decode(theirs.compute_codes(x)))
    ours = vqkit.ProductQuantizer(d, M, nbits, seed=1)
    ours.train(x)
    codes = ours.compute_codes(x)
    assert codes.shape == (len(x), M) and codes.dtype == np.uint8
    mine = recon_error(x, ours.decode(codes))
    assert mine <= ref * 1.01, (mine, ref)
    # Per sub-space errors add up to the total.
    assert sum(s["mse"] for s in ours.stage_errors) == pytest.approx(mine, rel=1e-4)


def test_additive_quantizer_beats_its_residual_start(blobs):
    x = blobs[:5000]
    aq = vqkit.AdditiveQuantizer(32, 3, 6, beam=4, ls_rounds=2)
    aq.train(x)
    err = recon_error(x, aq.decode(aq.compute_codes(x)))
    assert aq.round_errors[0] >= aq.round_errors[-1]
    assert err <= aq.round_errors[0] * 1.0001


def test_sixteen_bit_codes_are_uint16():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 4)).astype(np.float32)
    pq = vqkit.ProductQuantizer(4, 2, 9, niter=2)
    pq.train(x)
    assert pq.compute_codes(x).dtype == np.uint16
