"""PyTorch VQ layers on vqkit's fused kernels.

``VectorQuantize`` and ``ResidualVQ`` take and return what vector-quantize-pytorch's
classes of the same names do, for the options the two share; from the same codebook and
inputs they give the same indices, outputs, losses and EMA codebook, step after step
(``tests/test_torch_layers.py`` checks it against the package itself).

What differs is how: the nearest codeword comes from vqkit's fused distance-argmin, so the
(n, k) distance matrix, and the (n, k) one-hot matrix of the EMA sums, are never formed;
the EMA update is vqkit's kernel, in place on the layer's buffers.

Training, for inputs ``x`` flattened to (n, d) and codebook ``E`` (k, d)::

    a_i = argmin_j |x_i - e_j|^2                          (fused; never an n x k matrix)
    q_i = e_{a_i}                                           (the codebook before this step)
    N_j <- decay N_j + (1 - decay) |{i : a_i = j}|          (EMA cluster sizes, start at 1)
    S_j <- decay S_j + (1 - decay) sum_{a_i = j} x_i        (EMA sums, start at E)
    e_j <- S_j / ((N_j + eps) / (sum N + k eps) * sum N)    (Laplace-smoothed sizes)
    loss = commitment_weight * mean (x - sg(q))^2
    out  = x + sg(q - x)                                    (straight-through)

Dead codes (``threshold_ema_dead_code > 0``): after the update, codes whose EMA size is
below the threshold become random vectors of the batch, with size = threshold and sum =
vector x threshold.

CUDA tensors run on vqkit's CUDA kernels in torch's device memory, without a copy to the
host (through ``__cuda_array_interface__``; see docs/python.md). That path is tested on
vqkit's stand-in CUDA driver with device arrays that are not torch's (torch needs a real
GPU), not yet with torch on a GPU.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import VqkitError, _device, _vqkit, ema_update

__all__ = ["VectorQuantize", "ResidualVQ"]

# vector-quantize-pytorch options vqkit does not offer, with the value that means "off".
# Passing any other value raises rather than being silently ignored.
_OFF: Dict[str, Any] = {
    "heads": 1,
    "separate_codebook_per_head": False,
    "freeze_codebook": False,
    "use_cosine_sim": False,
    "layernorm_after_project_in": False,
    "accept_3d_fmap": False,
    "commitment_use_cross_entropy_loss": False,
    "orthogonal_reg_weight": 0.0,
    "orthogonal_reg_active_codes_only": False,
    "orthogonal_reg_max_codes": None,
    "codebook_diversity_loss_weight": 0.0,
    "stochastic_sample_codes": False,
    "straight_through": False,
    "rotation_trick": False,
    "directional_reparam": False,
    "sync_codebook": None,
    "sync_affine_param": False,
    "vq_bridge": None,
    "manual_ema_update": False,
    "learnable_codebook": False,
    "in_place_codebook_optimizer": None,
    "manual_in_place_optimizer_update": False,
    "affine_param": False,
    "sync_update_v": 0.0,
}
# Options that only matter with an option above on, or in a distributed run: accepted.
_INERT = {
    "sync_kmeans",
    "sample_codebook_temp",
    "codebook_diversity_temperature",
    "directional_reparam_variance",
    "affine_param_batch_decay",
    "affine_param_codebook_decay",
    "return_zeros_for_masked_padding",
    "route_gradients_to_input",
}


def _check_options(cls: str, options: Dict[str, Any]) -> None:
    for name, value in options.items():
        if name in _INERT:
            continue
        if name not in _OFF:
            raise TypeError(f"{cls}() got an unexpected keyword argument '{name}'")
        off = _OFF[name]
        if value is not off and value != off:
            raise NotImplementedError(
                f"vqkit.torch.{cls} does not offer {name}={value!r} (vector-quantize-pytorch's "
                f"option); leave it at {off!r}. vqkit's layer is the Euclidean EMA VQ with "
                "the classic straight-through estimator."
            )


def _host(t: torch.Tensor) -> np.ndarray:
    """A contiguous float32 CPU tensor as a NumPy array over the same memory."""
    return t.detach().numpy()


class VectorQuantize(nn.Module):
    """A VQ layer with an EMA codebook, vector-quantize-pytorch's ``VectorQuantize``.

    ``forward(x)`` takes (b, n, dim) (or (b, dim, n) with ``channel_last=False``, (b, dim,
    h, w) with ``accept_image_fmap=True``, or (b, dim)) and returns ``(quantized, indices,
    loss)``: the straight-through output in ``x``'s layout, int64 indices (b, n), and the
    commitment loss (a 0-dim tensor; zero in eval mode).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: Optional[int] = None,
        decay: float = 0.8,
        eps: float = 1e-5,
        commitment_weight: float = 1.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float = 0,
        channel_last: bool = True,
        accept_image_fmap: bool = False,
        ema_update: bool = True,
        backend: str = "cpu",
        **options: Any,
    ) -> None:
        super().__init__()
        _check_options("VectorQuantize", options)
        if codebook_dim is not None and codebook_dim != dim:
            raise NotImplementedError(
                f"vqkit.torch.VectorQuantize has no projection: codebook_dim ({codebook_dim}) "
                f"must equal dim ({dim})"
            )
        if not ema_update:
            raise NotImplementedError(
                "vqkit.torch.VectorQuantize learns its codebook by EMA: ema_update=False is "
                "not offered"
            )
        if not 0.0 <= decay <= 1.0 or not eps > 0:
            raise VqkitError(f"decay must be in [0, 1] and eps positive; got {decay}, {eps}")
        self.dim, self.codebook_size = int(dim), int(codebook_size)
        self.decay, self.eps = float(decay), float(eps)
        self.commitment_weight = float(commitment_weight)
        self.kmeans_init, self.kmeans_iters = bool(kmeans_init), int(kmeans_iters)
        self.threshold_ema_dead_code = float(threshold_ema_dead_code)
        self.channel_last, self.accept_image_fmap = bool(channel_last), bool(accept_image_fmap)
        self.backend = backend
        # As vector-quantize-pytorch: Kaiming-uniform over a (1, k, dim) tensor (the same
        # draws from torch's generator), or zeros until k-means sets it on the first batch.
        embed = torch.empty(1, self.codebook_size, self.dim)
        if kmeans_init:
            embed.zero_()
        else:
            nn.init.kaiming_uniform_(embed)
        embed = embed[0].contiguous()
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("cluster_size", torch.ones(self.codebook_size))

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook, (codebook_size, dim)."""
        return self.embed

    @codebook.setter
    def codebook(self, value: torch.Tensor) -> None:
        """Sets the codebook and restarts the EMA state at it (sizes 1, sums = codebook)."""
        value = torch.as_tensor(value, dtype=torch.float32)
        if tuple(value.shape) != (self.codebook_size, self.dim):
            raise VqkitError(
                f"codebook must have shape ({self.codebook_size}, {self.dim}); got {tuple(value.shape)}"
            )
        if not torch.isfinite(value).all():
            raise VqkitError("codebook contains a non-finite value")
        with torch.no_grad():
            self.embed.copy_(value)
            self.embed_avg.copy_(value)
            self.cluster_size.fill_(1.0)
            self.initted.fill_(True)

    def _layout_in(self, x: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        """``x`` as (b, n, dim), and what it takes to put the output back."""
        if x.ndim == 2:
            return x[:, None, :], ("one", None)
        if self.accept_image_fmap:
            if x.ndim != 4:
                raise VqkitError(f"accept_image_fmap expects (b, c, h, w); got {tuple(x.shape)}")
            b, c, h, w = x.shape
            return x.permute(0, 2, 3, 1).reshape(b, h * w, c), ("image", (h, w))
        if x.ndim != 3:
            raise VqkitError(f"expected (b, n, dim) input; got shape {tuple(x.shape)}")
        if not self.channel_last:
            return x.transpose(1, 2), ("channel_first", None)
        return x, ("last", None)

    @staticmethod
    def _layout_out(t: torch.Tensor, idx: torch.Tensor, how: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        kind, extra = how
        if kind == "one":
            return t[:, 0], idx[:, 0]
        if kind == "image":
            h, w = extra
            b = t.shape[0]
            return t.reshape(b, h, w, -1).permute(0, 3, 1, 2), idx.reshape(b, h, w)
        if kind == "channel_first":
            return t.transpose(1, 2), idx
        return t, idx

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type not in ("cpu", "cuda"):
            raise VqkitError(f"input is on {x.device}; vqkit.torch runs on CPU and CUDA tensors")
        if x.device != self.embed.device:
            raise VqkitError(f"input is on {x.device}, the codebook on {self.embed.device}")
        if x.shape[-1] != self.dim:
            raise VqkitError(f"input has dim {x.shape[-1]}; this layer expects {self.dim}")
        return x.reshape(-1, self.dim).detach().float().contiguous()

    def _kmeans_init(self, flat: torch.Tensor) -> None:
        from . import Kmeans, partial_stats

        if flat.shape[0] < self.codebook_size:
            raise VqkitError(
                f"kmeans_init needs at least codebook_size = {self.codebook_size} vectors in "
                f"the first batch; got {flat.shape[0]}"
            )
        km = Kmeans(self.dim, self.codebook_size, niter=self.kmeans_iters, init="kmeans++",
                    seed=int(torch.randint(0, 2**31 - 1, ()).item()), max_points_per_centroid=0,
                    backend=self.backend)
        host = flat.cpu()
        km.train(_host(host))
        assert km.centroids is not None
        c = torch.from_numpy(km.centroids).to(flat.device)
        _, counts, _ = partial_stats(_host(host), km.centroids, self.backend)
        with torch.no_grad():
            self.embed.copy_(c)
            self.embed_avg.copy_(c)
            self.cluster_size.copy_(torch.from_numpy(counts).float().to(flat.device))
            self.initted.fill_(True)

    def quantize_flat(self, flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest codewords of (n, dim) float32 rows, no update: ``(codes, indices,
        indices as the EMA kernel takes them)`` (int64; on CUDA, int32 for the kernel)."""
        if flat.is_cuda:
            _, i32 = _vqkit.cuda_assign(_device(flat, "x", 2), _device(self.embed, "codebook", 2))
            native = torch.as_tensor(i32, device=flat.device)
            ind = native.long()
        else:
            _, idx = _vqkit.assign(_host(flat), _host(self.embed), self.backend)
            ind = native = torch.from_numpy(idx)
        return self.embed[ind], ind, native

    def ema_step(self, flat: torch.Tensor, native: torch.Tensor) -> None:
        """The EMA update (vqkit's kernel, in place on the buffers, on the CPU or the
        device) for rows assigned to ``native`` (from :meth:`quantize_flat`), then dead-code
        expiry."""
        ema_update(flat, native, self.cluster_size, self.embed_avg, self.embed,
                   self.decay, self.eps, self.backend)
        self.expire_codes(flat)

    def expire_codes(self, flat: torch.Tensor) -> None:
        """Replaces codes whose EMA size is below the threshold by random batch vectors."""
        if self.threshold_ema_dead_code <= 0:
            return
        dead = self.cluster_size < self.threshold_ema_dead_code
        num = int(dead.sum())
        if num == 0:
            return
        n = flat.shape[0]
        pick = torch.randperm(n, device=flat.device)[:num] if n >= num else torch.randint(0, n, (num,), device=flat.device)
        samples = flat[pick]
        with torch.no_grad():
            self.embed[dead] = samples
            self.cluster_size[dead] = self.threshold_ema_dead_code
            self.embed_avg[dead] = samples * self.threshold_ema_dead_code

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for name, value in kwargs.items():
            if value is not None:
                raise NotImplementedError(f"vqkit.torch.VectorQuantize.forward has no {name}=")
        return self.quantize(x, lambda flat, ind, native: self.ema_step(flat, native))

    def quantize(self, x: torch.Tensor, update: Any) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The forward pass with ``update(flat, indices, native indices)`` as the codebook
        update in training (the EMA step; ``ResidualVQ`` passes its shared-codebook one)."""
        xin, how = self._layout_in(x)
        flat = self._flat(xin)
        if self.training and not bool(self.initted):
            self._kmeans_init(flat)
        with torch.no_grad():
            q, ind, native = self.quantize_flat(flat)
            if self.training:
                update(flat, ind, native)
        q = q.view(xin.shape).to(xin.dtype)
        loss = torch.zeros((), device=x.device)
        if self.training and self.commitment_weight > 0:
            loss = loss + F.mse_loss(q, xin) * self.commitment_weight
        if xin.requires_grad:
            q = xin + (q - xin).detach()
        out, indices = self._layout_out(q, ind.view(xin.shape[:-1]), how)
        return out, indices, loss


class ResidualVQ(nn.Module):
    """Residual VQ, vector-quantize-pytorch's ``ResidualVQ``: ``num_quantizers`` layers,
    each quantizing what the ones before left. Returns ``(quantized, indices (b, n, q),
    losses (q,))``. With ``shared_codebook=True`` every stage uses one codebook, updated
    once per step from every stage's assignments (as theirs does)."""

    def __init__(
        self,
        *,
        dim: int,
        num_quantizers: int,
        codebook_size: int,
        codebook_dim: Optional[int] = None,
        shared_codebook: bool = False,
        quantize_dropout: bool = False,
        accept_image_fmap: bool = False,
        beam_size: Optional[int] = None,
        **vq_kwargs: Any,
    ) -> None:
        super().__init__()
        if codebook_dim is not None and codebook_dim != dim:
            raise NotImplementedError("vqkit.torch.ResidualVQ has no projection: codebook_dim must equal dim")
        if quantize_dropout:
            raise NotImplementedError("vqkit.torch.ResidualVQ does not offer quantize_dropout")
        if beam_size not in (None, 1):
            raise NotImplementedError("vqkit.torch.ResidualVQ encodes greedily: beam_size must be None")
        if accept_image_fmap:
            raise NotImplementedError("vqkit.torch.ResidualVQ takes (b, n, dim): accept_image_fmap is not offered")
        if num_quantizers < 1:
            raise VqkitError("num_quantizers must be at least 1")
        self.shared_codebook = bool(shared_codebook)
        self.layers = nn.ModuleList(
            VectorQuantize(dim=dim, codebook_size=codebook_size, **vq_kwargs)
            for _ in range(num_quantizers)
        )
        if self.shared_codebook:
            first = self.layers[0]
            for layer in self.layers[1:]:
                for name in ("embed", "embed_avg", "cluster_size", "initted"):
                    setattr(layer, name, getattr(first, name))

    @property
    def codebooks(self) -> torch.Tensor:
        """(num_quantizers, codebook_size, dim)."""
        return torch.stack([layer.codebook for layer in self.layers])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        first: VectorQuantize = self.layers[0]
        k = first.codebook_size
        flats: List[torch.Tensor] = []

        def accumulate(flat: torch.Tensor, ind: torch.Tensor, _native: torch.Tensor) -> None:
            # Shared codebook: every stage quantizes with it as it was before this step;
            # each stage's sizes and sums go into the EMA in turn; it is recomputed once.
            counts = torch.bincount(ind, minlength=k).float()
            sums = torch.zeros_like(first.embed_avg).index_add_(0, ind, flat)
            first.cluster_size.lerp_(counts, 1 - first.decay)
            first.embed_avg.lerp_(sums, 1 - first.decay)
            flats.append(flat)

        out = torch.zeros_like(x)
        residual = x
        indices: List[torch.Tensor] = []
        losses: List[torch.Tensor] = []
        for layer in self.layers:
            q, ind, loss = first.quantize(residual, accumulate) if self.shared_codebook else layer(residual)
            residual = residual - q.detach()
            out = out + q
            indices.append(ind)
            losses.append(loss)
        if self.shared_codebook and first.training:
            with torch.no_grad():
                total = first.cluster_size.sum()
                smoothed = (first.cluster_size + first.eps) / (total + k * first.eps) * total
                first.embed.copy_(first.embed_avg / smoothed[:, None])
                first.expire_codes(torch.cat(flats))
        return out, torch.stack(indices, dim=-1), torch.stack(losses)
