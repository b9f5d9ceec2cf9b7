"""vqkit.torch side by side with vector-quantize-pytorch (from PyPI): from the same codebook
and inputs, the same indices, outputs, losses, gradients and EMA codebook, step after step."""

import numpy as np
import pytest
import torch
from vector_quantize_pytorch import ResidualVQ as TheirResidualVQ
from vector_quantize_pytorch import VectorQuantize as TheirVectorQuantize

import vqkit
from vqkit.torch import ResidualVQ, VectorQuantize


def set_theirs(vq, codebook):
    """Their codebook and EMA state restarted at `codebook` (what our setter does)."""
    with torch.no_grad():
        vq._codebook.embed.copy_(codebook[None])
        vq._codebook.embed_avg.copy_(codebook[None])
        vq._codebook.cluster_size.fill_(1.0)


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("k,d", [(16, 8), (64, 33)])
def test_vector_quantize_matches_step_after_step(k, d, requires_grad):
    torch.manual_seed(0)
    codebook = torch.randn(k, d)
    theirs = TheirVectorQuantize(dim=d, codebook_size=k, decay=0.8, rotation_trick=False).train()
    ours = VectorQuantize(dim=d, codebook_size=k, decay=0.8).train()
    set_theirs(theirs, codebook)
    ours.codebook = codebook
    for step in range(5):
        x = torch.randn(3, 70, d) * (1 + step)
        xa = x.clone().requires_grad_(requires_grad)
        xb = x.clone().requires_grad_(requires_grad)
        qa, ia, la = theirs(xa)
        qb, ib, lb = ours(xb)
        assert ib.dtype == torch.int64 and ib.shape == ia.shape == (3, 70)
        assert torch.equal(ia, ib), f"step {step}"
        close(qb, qa)
        assert lb.shape == la.shape == ()
        close(lb, la)
        if requires_grad:
            w = torch.randn_like(x)
            ((qa * w).sum() + la).backward()
            ((qb * w).sum() + lb).backward()
            close(xb.grad, xa.grad)
        close(ours.codebook, theirs.codebook[0] if theirs.codebook.ndim == 3 else theirs.codebook)
        close(ours.cluster_size, theirs._codebook.cluster_size[0])
        close(ours.embed_avg, theirs._codebook.embed_avg[0])


def test_eval_mode_leaves_the_codebook_and_returns_zero_loss():
    torch.manual_seed(1)
    ours = VectorQuantize(dim=4, codebook_size=8).eval()
    before = ours.codebook.clone()
    q, i, loss = ours(torch.randn(2, 10, 4))
    assert torch.equal(ours.codebook, before)
    assert float(loss) == 0.0
    assert torch.equal(q, before[i])


def test_same_initial_codebook_as_theirs_from_the_same_seed():
    torch.manual_seed(5)
    theirs = TheirVectorQuantize(dim=6, codebook_size=32, rotation_trick=False)
    torch.manual_seed(5)
    ours = VectorQuantize(dim=6, codebook_size=32)
    assert torch.equal(ours.codebook, theirs._codebook.embed[0])


@pytest.mark.parametrize("shared", [False, True])
def test_residual_vq_matches(shared):
    torch.manual_seed(2)
    q, k, d = 3, 32, 12
    theirs = TheirResidualVQ(dim=d, num_quantizers=q, codebook_size=k, shared_codebook=shared,
                             decay=0.9, rotation_trick=False).train()
    ours = ResidualVQ(dim=d, num_quantizers=q, codebook_size=k, shared_codebook=shared, decay=0.9).train()
    for s in range(q):
        cb = torch.randn(k, d) / (1 + s)
        set_theirs(theirs.layers[s], cb)
        ours.layers[s].codebook = cb
    for step in range(4):
        x = torch.randn(2, 40, d).requires_grad_()
        y = x.detach().clone().requires_grad_()
        qa, ia, la = theirs(x)
        qb, ib, lb = ours(y)
        assert ib.shape == ia.shape == (2, 40, q)
        assert torch.equal(ia, ib), f"step {step}"
        close(qb, qa, 1e-5)
        close(lb, la)
        qa.sum().backward()
        qb.sum().backward()
        close(y.grad, x.grad)
        for s in range(q):
            close(ours.layers[s].codebook, theirs.layers[s]._codebook.embed[0])


def test_dead_codes_are_replaced_by_batch_vectors():
    torch.manual_seed(3)
    ours = VectorQuantize(dim=4, codebook_size=16, threshold_ema_dead_code=0.5).train()
    far = torch.full((16, 4), 100.0)
    far[0] = 0.0
    ours.codebook = far
    x = torch.randn(1, 64, 4)
    ours(x)
    # Every code but 0 got nothing: its EMA size fell to 0.8 * 1 = 0.8, above 0.5 ...
    assert (ours.cluster_size[1:] == 0.8).all()
    ours(x)
    ours(x)
    # ... and after three steps to 0.512, then 0.41 < 0.5: replaced by rows of the batch.
    ours(x)
    rows = {tuple(r.tolist()) for r in x[0]}
    replaced = [tuple(c.tolist()) for c in ours.codebook[1:]]
    assert all(r in rows for r in replaced)
    assert (ours.cluster_size[1:] == 0.5).all()


def test_kmeans_init_fits_the_first_batch():
    torch.manual_seed(4)
    centres = torch.randn(8, 5) * 10
    x = (centres[torch.randint(0, 8, (1, 800))] + 0.01 * torch.randn(1, 800, 5))
    ours = VectorQuantize(dim=5, codebook_size=8, kmeans_init=True, kmeans_iters=20).train()
    q, _, loss = ours(x)
    assert float(loss) < 1.0
    assert bool(ours.initted)


def test_layouts_image_channel_first_and_flat():
    torch.manual_seed(6)
    ours = VectorQuantize(dim=3, codebook_size=8, accept_image_fmap=True).eval()
    img = torch.randn(2, 3, 4, 5)
    q, i, _ = ours(img)
    assert q.shape == img.shape and i.shape == (2, 4, 5)
    flat = VectorQuantize(dim=3, codebook_size=8).eval()
    flat.codebook = ours.codebook
    q2, i2, _ = flat(img.permute(0, 2, 3, 1).reshape(2, 20, 3))
    assert torch.equal(i.reshape(2, 20), i2)
    cf = VectorQuantize(dim=3, codebook_size=8, channel_last=False).eval()
    cf.codebook = ours.codebook
    q3, i3, _ = cf(img.reshape(2, 3, 20))
    assert torch.equal(i3, i2) and q3.shape == (2, 3, 20)
    q4, i4, _ = flat(torch.randn(7, 3))
    assert q4.shape == (7, 3) and i4.shape == (7,)


@pytest.mark.parametrize(
    "option",
    [{"rotation_trick": True}, {"use_cosine_sim": True}, {"heads": 2},
     {"orthogonal_reg_weight": 0.1}, {"learnable_codebook": True}, {"codebook_dim": 4},
     {"stochastic_sample_codes": True}],
)
def test_options_not_offered_raise(option):
    with pytest.raises(NotImplementedError, match=next(iter(option))):
        VectorQuantize(dim=8, codebook_size=16, **option)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="no_such_option"):
        VectorQuantize(dim=8, codebook_size=16, no_such_option=1)


def test_bad_codebook_and_inputs_raise():
    vq = VectorQuantize(dim=4, codebook_size=8)
    with pytest.raises(vqkit.VqkitError, match="shape"):
        vq.codebook = torch.zeros(8, 5)
    with pytest.raises(vqkit.VqkitError, match="non-finite"):
        vq.codebook = torch.full((8, 4), float("nan"))
    with pytest.raises(vqkit.VqkitError, match="dim"):
        vq(torch.randn(2, 3, 5))
    with pytest.raises(vqkit.VqkitError, match="non-finite"):
        vq(torch.full((1, 3, 4), float("inf")))
