#!/usr/bin/env python3
"""PyTorch (CPU) yardstick for vqkit's hand-written encoder/decoder.

The same architecture as `vqkit_nn::{Encoder, Decoder}` (crates/vqkit-nn/src/model.rs), PyTorch's
default initialisation (which vqkit reproduces in distribution), the same IDX data, batch
size, epochs, learning rate, seed and thread count. Prints training images/s and test
MSE / PSNR, so a run of vqkit with the same options can be compared line for line.

    python3 scripts/vqvae_torch.py --data /usr/share/datasets/fashion-mnist \
        --epochs 1 --batch-size 32 --threads 2 --limit 10000

Structure: `build_model` returns the modules in order; the quantizer (VQ or residual VQ,
with its codebook/commitment losses and straight-through estimator) slots in as a module
between `encoder` and `decoder`: only `Model.forward` and `loss_fn` change.
"""

import argparse
import gzip
import json
import math
import os
import struct
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path, limit=None):
    """uint8 array from an IDX file (gzipped or not); images (n, rows, cols)."""
    opener = gzip.open if open(path, "rb").read(2) == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        magic = struct.unpack(">I", f.read(4))[0]
        if magic not in (0x801, 0x803):
            raise ValueError(f"{path}: not an IDX u8 file (magic {magic:#x})")
        ndim = magic & 0xFF
        dims = list(struct.unpack(">" + "I" * ndim, f.read(4 * ndim)))
        if limit is not None:
            dims[0] = min(dims[0], limit)
        count = int(np.prod(dims))
        data = np.frombuffer(f.read(count), dtype=np.uint8)
        if data.size != count:
            raise ValueError(f"{path}: truncated")
        return data.reshape(dims)


def load_split(data_dir, prefix, limit):
    name = f"{prefix}-images-idx3-ubyte"
    for cand in (name, name + ".gz"):
        p = os.path.join(data_dir, cand)
        if os.path.isfile(p):
            x = read_idx(p, limit).astype(np.float32) / 255.0
            return torch.from_numpy(x).unsqueeze(1)  # (n, 1, 28, 28) in [0, 1]
    raise FileNotFoundError(os.path.join(data_dir, name))


class Residual(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), convolutions without bias."""

    def __init__(self, channels, hidden):
        super().__init__()
        self.conv3 = nn.Conv2d(channels, hidden, 3, 1, 1, bias=False)
        self.conv1 = nn.Conv2d(hidden, channels, 1, 1, 0, bias=False)

    def forward(self, x):
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


class ResidualStack(nn.Module):
    def __init__(self, channels, hidden, layers):
        super().__init__()
        self.blocks = nn.ModuleList(Residual(channels, hidden) for _ in range(layers))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return F.relu(x)


class Encoder(nn.Module):
    def __init__(self, in_ch, hidden_dims, n_res, res_hidden, emb_dim):
        super().__init__()
        downs, c = [], in_ch
        for h in hidden_dims:
            downs.append(nn.Conv2d(c, h, 4, 2, 1))
            c = h
        self.downs = nn.ModuleList(downs)
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.stack = ResidualStack(c, res_hidden, n_res)
        self.proj = nn.Conv2d(c, emb_dim, 1)

    def forward(self, x):
        for d in self.downs:
            x = F.relu(d(x))
        return self.proj(self.stack(self.conv(x)))


class Decoder(nn.Module):
    def __init__(self, in_ch, hidden_dims, n_res, res_hidden, emb_dim):
        super().__init__()
        last = hidden_dims[-1]
        self.conv = nn.Conv2d(emb_dim, last, 3, 1, 1)
        self.stack = ResidualStack(last, res_hidden, n_res)
        ups, c = [], last
        for i in reversed(range(len(hidden_dims))):
            out = in_ch if i == 0 else hidden_dims[i - 1]
            ups.append(nn.ConvTranspose2d(c, out, 4, 2, 1))
            c = out
        self.ups = nn.ModuleList(ups)

    def forward(self, z):
        x = self.stack(self.conv(z))
        for i, u in enumerate(self.ups):
            x = u(x)
            if i < len(self.ups) - 1:
                x = F.relu(x)
        return x


class EmaVQ(nn.Module):
    """The VQ layer of vqkit's `VectorQuantizer` in EMA mode (crates/vqkit/src/quant/vq.rs): k-means
    initialisation on the first training batch, EMA codebook (decay 0.8 as vqkit's default, Laplace-smoothed
    counts, eps 1e-5), commitment beta mean (z - sg(q))^2, straight-through estimator, and
    dead-code replacement: a code whose EMA cluster size falls below `threshold` becomes a
    random vector of the batch (size reset to `threshold`)."""

    def __init__(self, k, d, beta=0.25, decay=0.8, eps=1e-5, threshold=1.0, kmeans_iters=10):
        super().__init__()
        self.k, self.d, self.beta, self.decay, self.eps = k, d, beta, decay, eps
        self.threshold, self.kmeans_iters = threshold, kmeans_iters
        self.replaced = 0  # dead codes replaced since the counter was last reset
        self.register_buffer("codebook", torch.randn(k, d))
        self.register_buffer("cluster_size", torch.zeros(k))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.initialised = False

    def assign(self, r):
        dist = (r * r).sum(1, keepdim=True) - 2 * r @ self.codebook.t() \
            + (self.codebook * self.codebook).sum(1)[None]
        return dist.argmin(1)

    @torch.no_grad()
    def kmeans_init(self, r):
        # k-means++ seeding, then Lloyd steps; empty clusters keep their centre.
        n = r.shape[0]
        c = r[torch.randint(n, (1,))]
        for _ in range(1, self.k):
            d2 = torch.cdist(r, c).min(1).values ** 2
            c = torch.cat([c, r[torch.multinomial(d2 / d2.sum(), 1)]])
        for _ in range(self.kmeans_iters):
            a = torch.cdist(r, c).argmin(1)
            counts = torch.bincount(a, minlength=self.k).float()
            sums = torch.zeros_like(c).index_add_(0, a, r)
            keep = counts > 0
            c[keep] = sums[keep] / counts[keep, None]
        self.codebook.copy_(c)
        a = self.assign(r)
        self.cluster_size.copy_(torch.bincount(a, minlength=self.k).float())
        self.embed_sum.copy_(c * self.cluster_size[:, None])
        self.initialised = True

    def forward(self, r):
        """r: (n, d) rows -> (q, indices, commitment loss, perplexity)."""
        if self.training and not self.initialised:
            self.kmeans_init(r.detach())
        a = self.assign(r.detach())
        q = self.codebook[a]
        commit = self.beta * F.mse_loss(r, q.detach())
        counts = torch.bincount(a, minlength=self.k).float()
        p = counts / counts.sum()
        perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
        if self.training:
            with torch.no_grad():
                rd = r.detach()
                self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
                sums = torch.zeros_like(self.embed_sum).index_add_(0, a, rd)
                self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
                total = self.cluster_size.sum()
                smoothed = (self.cluster_size + self.eps) / (total + self.k * self.eps) * total
                self.codebook.copy_(self.embed_sum / smoothed[:, None])
                dead = (self.cluster_size < self.threshold).nonzero().flatten()
                self.replaced += dead.numel()
                if dead.numel() > 0:
                    pick = rd[torch.randint(rd.shape[0], (dead.numel(),))]
                    self.codebook[dead] = pick
                    self.embed_sum[dead] = pick * self.threshold
                    self.cluster_size[dead] = self.threshold
        return q, a, commit, perplexity


class ResidualEmaVQ(nn.Module):
    """S levels, each quantizing the residual of the last; straight-through on the sum."""

    def __init__(self, levels, k, d, **kw):
        super().__init__()
        self.levels = nn.ModuleList(EmaVQ(k, d, **kw) for _ in range(levels))

    def forward(self, z):
        n, d, h, w = z.shape
        rows = z.permute(0, 2, 3, 1).reshape(-1, d)
        r, qsum = rows, torch.zeros_like(rows)
        aux = torch.zeros((), dtype=z.dtype)
        perps = []
        for vq in self.levels:
            q, _, commit, perp = vq(r)
            qsum = qsum + q
            r = r - q.detach()
            aux = aux + commit
            perps.append(perp.item())
        zq = rows + (qsum - rows).detach()
        return zq.reshape(n, h, w, d).permute(0, 3, 1, 2), aux, perps


class Model(nn.Module):
    """encoder -> residual EMA VQ (one level: VQ-VAE) -> decoder."""

    def __init__(self, args):
        super().__init__()
        cfg = (1, args.hidden_dims, args.num_residual_layers, args.residual_hidden,
               args.embedding_dim)
        self.encoder = Encoder(*cfg)
        self.quantizer = None
        if args.codebook > 0:
            self.quantizer = ResidualEmaVQ(args.levels, args.codebook, args.embedding_dim,
                                           beta=args.beta, decay=args.decay,
                                           threshold=args.dead_code_threshold)
        self.decoder = Decoder(*cfg)
        self.perplexity = []

    def forward(self, x):
        z = self.encoder(x)
        aux = torch.zeros((), dtype=x.dtype)
        if self.quantizer is not None:
            z, aux, self.perplexity = self.quantizer(z)
        return self.decoder(z), aux


def loss_fn(x_hat, x, aux):
    recon = F.mse_loss(x_hat, x)
    return recon + aux, recon


def read_safetensors_f32(path):
    """name -> float32 array, for the F32 tensors of a safetensors file (read by hand: the
    format is an 8-byte header length, a JSON header, then the raw little-endian data)."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32)
    return out


def vqkit_parameters(model, path):
    """(torch parameter, vqkit array) pairs, in order, for the encoder and decoder."""
    theirs = read_safetensors_f32(path)
    pairs = []
    for part in ("encoder", "decoder"):
        ours = list(getattr(model, part).named_parameters())
        names = sorted((k for k in theirs if k.startswith(part + ".") and k.split(".")[1].isdigit()),
                       key=lambda k: int(k.split(".")[1]))
        if len(names) != len(ours):
            raise ValueError(f"{path}: {len(names)} {part} tensors, expected {len(ours)}")
        for (n, p), k in zip(ours, names):
            if theirs[k].size != p.numel():
                raise ValueError(f"{path}: {k} has {theirs[k].size} values, {n} has {p.numel()}")
            pairs.append((f"{part}.{n}", p, theirs[k]))
    return pairs


def load_vqkit_weights(model, path):
    """vqkit stores convolutions as PyTorch does ((out, in, k, k); transposed: (in, out, k, k))."""
    with torch.no_grad():
        for _, p, v in vqkit_parameters(model, path):
            p.copy_(torch.from_numpy(v.copy()).reshape(p.shape))


MASK64 = (1 << 64) - 1


class VqkitRng:
    """vqkit's `Rng` (crates/vqkit/src/rng.rs): xoshiro256++ seeded through splitmix64."""

    def __init__(self, seed):
        z, self.s = seed & MASK64, []
        for _ in range(4):
            z = (z + 0x9E3779B97F4A7C15) & MASK64
            x = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
            self.s.append(x ^ (x >> 31))

    @staticmethod
    def _rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & MASK64

    def next_u64(self):
        s = self.s
        out = (self._rotl((s[0] + s[3]) & MASK64, 23) + s[0]) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return out

    def below(self, n):
        return (self.next_u64() * n) >> 64

    def shuffle(self, v):
        for i in range(len(v) - 1, 0, -1):
            j = self.below(i + 1)
            v[i], v[j] = v[j], v[i]


def vqkit_order(seed, epoch, n):
    """The order in which `vqkit train-vqvae --seed SEED` visits n images in an epoch."""
    order = list(range(n))
    VqkitRng(VqkitRng(seed).next_u64() ^ epoch).shuffle(order)
    return order


def compare_init(model, path):
    """Standard deviation of every initial parameter here and in the vqkit model, in
    parameter order (vqkit's `encoder.i` / `decoder.i` follow the same layer order)."""
    for name, p, v in vqkit_parameters(model, path):
        p = p.detach().numpy()
        print(f"{name:40s} {p.size:7d} values: std torch {p.std():.5f}, vqkit {v.std():.5f}")


def psnr(mse):
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))  # images in [0, 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--hidden-dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--num-residual-layers", type=int, default=2)
    ap.add_argument("--residual-hidden", type=int, default=32)
    ap.add_argument("--embedding-dim", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--codebook", type=int, default=512, help="K per level; 0: no quantizer")
    ap.add_argument("--levels", type=int, default=1)
    ap.add_argument("--beta", type=float, default=0.25)
    ap.add_argument("--decay", type=float, default=0.8)
    ap.add_argument("--dead-code-threshold", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    ap.add_argument("--init-from", metavar="MODEL", default=None,
                    help="start from a vqkit model file's encoder/decoder weights (e.g. "
                         "`vqkit train-vqvae --epochs 0 -o MODEL`) and print the first step losses")
    ap.add_argument("--vqkit-order", action="store_true",
                    help="visit the training images in vqkit's order for --seed")
    ap.add_argument("--compare-init", metavar="MODEL", default=None,
                    help="print the spread of this script's initial parameters next to those "
                         "of a vqkit model file (`vqkit train-vqvae --epochs 0 -o MODEL`) and exit")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train = load_split(args.data, "train", args.limit)
    test = load_split(args.data, "t10k", args.limit)
    model = Model(args)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {args.threads} threads, {n_params} parameters, "
          f"train {tuple(train.shape)}, test {tuple(test.shape)}")

    if args.compare_init:
        compare_init(model, args.compare_init)
        return
    if args.init_from:
        load_vqkit_weights(model, args.init_from)

    gen = torch.Generator().manual_seed(args.seed)
    bs = args.batch_size
    for epoch in range(args.epochs):
        model.train()
        if args.vqkit_order:
            perm = torch.tensor(vqkit_order(args.seed, epoch, train.shape[0]))
        else:
            perm = torch.randperm(train.shape[0], generator=gen)
        first = []
        t0, seen, total = time.perf_counter(), 0, 0.0
        perp_sum, steps = 0.0, 0
        levels = model.quantizer.levels if model.quantizer is not None else []
        for vq in levels:
            vq.replaced = 0
        for s in range(0, train.shape[0] - bs + 1, bs):  # whole batches only
            x = train[perm[s:s + bs]]
            x_hat, aux = model(x)
            loss, recon = loss_fn(x_hat, x, aux)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            seen += bs
            total += recon.item() * bs
            if len(first) < 12:
                first.append(loss.item())
            if model.perplexity:
                perp_sum += model.perplexity[0]
                steps += 1
        dt = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            se = 0.0
            for s in range(0, test.shape[0], 256):
                x = test[s:s + 256]
                x_hat, _ = model(x)
                se += F.mse_loss(x_hat, x, reduction="sum").item()
            mse = se / test.numel()
            usage = []
            if model.quantizer is not None:
                z = torch.cat([model.encoder(test[s:s + 256]) for s in range(0, test.shape[0], 256)])
                r = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                for vq in model.quantizer.levels:
                    a = vq.assign(r)
                    r = r - vq.codebook[a]
                    usage.append(torch.unique(a).numel() / vq.k)
        print(f"epoch {epoch + 1}: train mse {total / seen:.5f}, {seen / dt:.1f} images/s, "
              f"test mse {mse:.5f}, test psnr {psnr(mse):.2f} dB, "
              f"perplexity {model.perplexity}, test usage {usage}")
        if args.init_from and epoch == 0:
            print("  first step losses: " + " ".join(f"{v:.3f}" for v in first))
        if levels:
            print(f"  level 1: mean batch perplexity {perp_sum / max(steps, 1):.1f}, "
                  f"dead codes replaced {[vq.replaced for vq in levels]}")


if __name__ == "__main__":
    main()
