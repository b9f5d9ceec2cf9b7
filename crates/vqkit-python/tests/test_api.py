"""The package's contract: arrays, threads, processes, interrupts, files and bad input."""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

import vqkit


def run_python(code, timeout=120):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout,
    )


# ---- arrays -------------------------------------------------------------------------

def test_any_dtype_order_and_torch_tensor_give_the_same_codes(blobs):
    c = blobs[:50].copy()
    _, ref = vqkit.assign(blobs, c)
    for x in (blobs.astype(np.float64), np.asfortranarray(blobs), torch.from_numpy(blobs),
              torch.from_numpy(blobs).requires_grad_(), blobs.tolist()[:100]):
        _, got = vqkit.assign(x, c)
        assert np.array_equal(got, ref[: len(got)])


def test_float32_c_contiguous_input_is_not_copied():
    # A 400 MB input; the process's peak memory must not grow by anything near its size.
    out = run_python("""
        import numpy as np, vqkit
        def peak():  # VmHWM: this process image's peak (ru_maxrss inherits the parent's)
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        x = np.ones((3_200_000, 32), np.float32)
        x[::7] = 2.0
        c = np.ones((16, 32), np.float32) * np.arange(16, dtype=np.float32)[:, None]
        vqkit.assign(x[:10], c)            # pools and code paths warmed up
        before = peak()
        D, I = vqkit.assign(x, c)
        s, n, _ = vqkit.partial_stats(x, c)
        after = peak()
        assert n.sum() == len(x)
        print(after - before, x.nbytes)
    """)
    assert out.returncode == 0, out.stderr
    grew, size = map(int, out.stdout.split())
    # Outputs: D (4 B/row), I (8 B/row), the kernel's u32 codes (4 B/row), partial_stats'
    # grouping (4 B/row): 20 B/row against 128 B/row of input.
    assert grew < 0.4 * size, (grew, size)


# ---- threads, processes, interrupts ---------------------------------------------------

def test_the_gil_is_released_while_computing(blobs):
    x = np.tile(blobs, (10, 1))
    done = threading.Event()
    counted = []

    def work():
        vqkit.Kmeans(32, 512, niter=8, seed=0, max_points_per_centroid=0).train(x)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    ticks = 0
    while not done.is_set():
        ticks += 1
        time.sleep(0)
    t.join()
    counted.append(ticks)
    # Had the call held the GIL, this thread could not have run at all while it worked.
    assert ticks > 1000, ticks


def test_two_threads_compute_at_once_and_both_right(blobs):
    c = blobs[:300].copy()
    _, ref = vqkit.assign(blobs, c)
    results = [None, None]

    def work(i):
        results[i] = vqkit.assign(blobs, c)[1]

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(np.array_equal(r, ref) for r in results)


def _child_assign(x, c):
    return vqkit.assign(x, c)[1]


def test_a_forked_child_computes_rather_than_hangs(blobs):
    c = blobs[:100].copy()
    _, ref = vqkit.assign(blobs, c)   # the parent's pool now exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_child_assign, (blobs, c)).get(timeout=60)
    assert np.array_equal(got, ref)


def test_partial_stats_do_not_depend_on_threads(blobs):
    c = blobs[:64].copy()
    out = []
    for t in (1, 2, 3):
        vqkit.set_num_threads(t)
        out.append(vqkit.partial_stats(blobs, c))
    vqkit.set_num_threads(0)
    for s, n, inertia in out[1:]:
        assert np.array_equal(s, out[0][0]) and np.array_equal(n, out[0][1])
        assert inertia == out[0][2]
    # And they are the Lloyd step: sums / counts are the next k-means centroids.
    s, n, inertia = out[0]
    d, i = vqkit.assign(blobs, c)
    assert inertia == pytest.approx(float(d.astype(np.float64).sum()), rel=1e-12)
    for j in (0, 5, 63):
        np.testing.assert_allclose(s[j], blobs[i == j].astype(np.float64).sum(0), rtol=1e-9)
        assert n[j] == (i == j).sum()


def test_ctrl_c_interrupts_a_long_training():
    out = run_python("""
        import os, signal, threading, time, numpy as np, vqkit
        # A shell's background job starts with SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler: put it back, whatever the test runner inherited.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        x = np.random.default_rng(0).standard_normal((200_000, 64), dtype=np.float32)
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t = time.time()
        try:
            vqkit.Kmeans(64, 1024, niter=100_000, max_points_per_centroid=0).train(x)
            print("finished")
        except KeyboardInterrupt:
            print("interrupted after", round(time.time() - t, 1))
        # The package still works afterwards.
        print(vqkit.assign(x[:5], x[:3])[1].tolist())
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("interrupted"), out.stdout
    assert float(lines[0].split()[-1]) < 30
    # Rows 0..2 are the codewords themselves; rows 3 and 4 get some code below 3.
    codes = [int(c) for c in lines[1].strip("[]").split(",")]
    assert codes[:3] == [0, 1, 2] and len(codes) == 5 and all(0 <= c < 3 for c in codes)


# ---- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "x,codebook,match",
    [
        (np.zeros((4, 3), np.float32), np.zeros((2, 5), np.float32), "d = "),
        (np.zeros(12, np.float32), np.zeros((2, 3), np.float32), "2-D"),
        (np.array([[1, np.nan]], np.float32), np.zeros((2, 2), np.float32), "non-finite"),
        (np.zeros((3, 2), np.float32), np.array([[np.inf, 0]], np.float32), "non-finite"),
        (np.zeros((3, 2), np.float32), np.zeros((0, 2), np.float32), "empty"),
        (np.array([["a", "b"]]), np.zeros((2, 2), np.float32), "dtype"),
        (np.full((2, 2), 3e38, np.float32), np.full((1, 2), -3e38, np.float32), "overflow"),
    ],
)
def test_bad_arrays_raise_vqkit_errors(x, codebook, match):
    with pytest.raises(vqkit.VqkitError, match=match):
        vqkit.assign(x, codebook)


def test_bad_training_input_raises(blobs):
    with pytest.raises(ValueError, match="larger than the number of points"):
        vqkit.Kmeans(32, 100, niter=2).train(blobs[:50])
    with pytest.raises(vqkit.VqkitError, match="d = 31"):
        vqkit.Kmeans(32, 4).train(blobs[:, :31])
    with pytest.raises(vqkit.VqkitError, match="init"):
        vqkit.Kmeans(32, 4, init="best").train(blobs)
    with pytest.raises(vqkit.VqkitError, match="not trained"):
        vqkit.ResidualQuantizer(32, 2, 4).compute_codes(blobs)
    with pytest.raises(vqkit.VqkitError, match="divide"):
        vqkit.ProductQuantizer(32, 5, 4)
    with pytest.raises(vqkit.VqkitError, match="nbits"):
        vqkit.ResidualQuantizer(32, 2, 0)
    with pytest.raises(vqkit.VqkitError, match="backend"):
        vqkit.assign(blobs, blobs[:3], backend="tpu")
    with pytest.raises(vqkit.VqkitError, match="tensor on meta"):
        vqkit.assign(torch.zeros(3, 2, device="meta"), np.zeros((1, 2), np.float32))


def test_ema_update_writes_in_place_and_a_refused_step_changes_nothing():
    rng = np.random.default_rng(5)
    k, d = 4, 3
    size = np.zeros(k, np.float32)
    esum = rng.standard_normal((k, d), dtype=np.float32)
    code = esum.copy()
    for n in (10, 64):  # under and over 8 points per code (the CPU's two ways to check x)
        x = rng.standard_normal((n, d), dtype=np.float32)
        idx = np.arange(n) % k
        before = [a.copy() for a in (size, esum, code)]
        bad = x.copy()
        bad[n - 1, 2] = np.nan
        with pytest.raises(vqkit.VqkitError, match="non-finite"):
            vqkit.ema_update(bad, idx, size, esum, code, decay=0.8, eps=1e-5)
        with pytest.raises(vqkit.VqkitError, match="out of range"):
            vqkit.ema_update(x, np.full(n, k), size, esum, code, decay=0.8, eps=1e-5)
        # The first bad code is the one named, whichever comes after it.
        two_bad = idx.copy()
        two_bad[5], two_bad[9] = -3, k
        with pytest.raises(vqkit.VqkitError, match="code -3 at row 5 is out of range"):
            vqkit.ema_update(x, two_bad, size, esum, code, decay=0.8, eps=1e-5)
        for a, b in zip((size, esum, code), before):
            np.testing.assert_array_equal(a, b)
        # The step itself, against NumPy in float64.
        vqkit.ema_update(x, idx, size, esum, code, decay=0.8, eps=1e-5)
        counts = np.bincount(idx, minlength=k)
        sums = np.zeros((k, d))
        np.add.at(sums, idx, x.astype(np.float64))
        want_size = 0.8 * before[0] + 0.2 * counts
        want_esum = 0.8 * before[1] + 0.2 * sums.astype(np.float32)
        smoothed = (want_size + 1e-5) / (want_size.sum() + k * 1e-5) * want_size.sum()
        np.testing.assert_allclose(size, want_size, rtol=1e-6)
        np.testing.assert_allclose(esum, want_esum, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(code, want_esum / smoothed[:, None], rtol=1e-5, atol=1e-6)


def test_bad_codes_raise(blobs):
    rq = vqkit.ResidualQuantizer(32, 2, 4, niter=2)
    rq.train(blobs[:2000])
    with pytest.raises(vqkit.VqkitError, match="out of range"):
        rq.decode(np.full((3, 2), 16))
    with pytest.raises(vqkit.VqkitError, match="out of range"):
        rq.decode(np.full((3, 2), -1))
    with pytest.raises(vqkit.VqkitError, match="2 codes per vector"):
        rq.decode(np.zeros((3, 3), np.int64))
    with pytest.raises(vqkit.VqkitError, match="integers"):
        rq.decode(np.zeros((3, 2), np.float32))
    # Unsigned codes of up to 32 bits go to Rust as they are, read in place: the same
    # checks (the "row" is the code's flat index, as for int64), the same result.
    for dtype in (np.uint8, np.uint16, np.uint32, np.int64):
        with pytest.raises(vqkit.VqkitError, match="code 16 at row 2 is out of range"):
            rq.decode(np.array([[0, 1], [16, 0]], dtype))
        with pytest.raises(vqkit.VqkitError, match="2 codes per vector"):
            rq.decode(np.zeros((3, 3), dtype))
    codes = rq.compute_codes(blobs[:300])
    assert codes.dtype == np.uint8
    want = rq.decode(codes.astype(np.int64))
    np.testing.assert_array_equal(rq.decode(codes), want)
    np.testing.assert_array_equal(rq.decode(np.asfortranarray(codes)), want)
    np.testing.assert_array_equal(rq.decode(codes[::2]), want[::2])
    # The low-level module refuses Fortran order rather than read the codes transposed.
    square = np.asfortranarray(np.zeros((2, 2), np.uint32))
    for c in (square, square.astype(np.int64, order="F")):
        with pytest.raises(vqkit.VqkitError, match="C-contiguous"):
            rq.model.decode(c)


def test_codes_written_in_their_width(blobs):
    """The low-level ``encode`` writes uint8, uint16 or uint32 codes directly, the same codes
    in each, for every kind of model; it refuses a width too narrow for the codebook and
    widths other than 1, 2 and 4."""
    x = blobs[:700]
    small = [vqkit.ProductQuantizer(32, 4, 4, niter=2), vqkit.ResidualQuantizer(32, 2, 8, niter=2),
             vqkit.AdditiveQuantizer(32, 2, 4, niter=2, ls_rounds=1)]
    big = [vqkit.ProductQuantizer(32, 2, 9, niter=2), vqkit.ResidualQuantizer(32, 2, 9, niter=2)]
    for q in small + big:
        q.train(x)
        wide = q.model.encode(x, None, "cpu", 4)
        assert wide.dtype == np.uint32 and wide.shape == (700, q.M)
        widths = (2, 4) if q in big else (1, 2, 4)
        for b in widths:
            c = q.model.encode(x, None, "cpu", b)
            assert c.dtype == np.dtype(f"uint{8 * b}") and c.flags.c_contiguous
            np.testing.assert_array_equal(c, wide)
        np.testing.assert_array_equal(q.compute_codes(x), wide)
        # decode reads each width in place (and big-endian codes converted): the same rows.
        want = q.decode(wide.astype(np.int64))
        for c in [wide.astype(f"uint{8 * b}") for b in widths] + [wide.astype(">u2")]:
            np.testing.assert_array_equal(q.decode(c), want)
        assert q.compute_codes(x).dtype == np.dtype(np.uint8 if q in small else np.uint16)
        assert q.model.encode(x[:0], None, "cpu", 1 if q in small else 2).shape == (0, q.M)
        if q in big:
            with pytest.raises(vqkit.VqkitError, match="512 codewords do not fit u8 codes"):
                q.model.encode(x, None, "cpu", 1)
        with pytest.raises(vqkit.VqkitError, match="code_bytes must be 1, 2 or 4, got 3"):
            q.model.encode(x, None, "cpu", 3)
    # The points' errors are the same whatever the width.
    bad = x[:10].copy()
    bad[3, 5] = np.nan
    for b in (1, 4):
        with pytest.raises(vqkit.VqkitError, match="NaN"):
            small[0].model.encode(bad, None, "cpu", b)


def test_decode_into_out(blobs):
    """``decode(codes, out=)`` writes what ``decode`` returns into the caller's array, for
    each codec and codes of each dtype, and refuses a bad ``out``, leaving it untouched."""
    x = blobs[:2000]
    codecs = [vqkit.ResidualQuantizer(32, 2, 4, niter=2), vqkit.ProductQuantizer(32, 4, 4, niter=2),
              vqkit.AdditiveQuantizer(32, 2, 4, niter=2, ls_rounds=1)]
    for q in codecs:
        q.train(x)
        codes = q.compute_codes(x[:300])
        want = q.decode(codes)
        for c in (codes, codes.astype(np.int64)):
            out = np.full((300, 32), np.nan, np.float32)
            assert q.decode(c, out=out) is out
            np.testing.assert_array_equal(out, want)
        # One buffer for every batch, as the option is for.
        out = np.empty((100, 32), np.float32)
        for b in range(3):
            np.testing.assert_array_equal(q.decode(codes[100 * b:100 * (b + 1)], out=out),
                                          want[100 * b:100 * (b + 1)])
        ro = np.zeros((300, 32), np.float32)
        ro.flags.writeable = False
        bad_codes = codes.astype(np.int64)
        bad_codes[5, 0] = 1 << 20
        cases = [
            (np.zeros((300, 32), np.float64), codes, "2-D float32 NumPy array; got a 2-D float64"),
            ([[0.0] * 32] * 300, codes, "2-D float32 NumPy array; got list"),
            (np.zeros(300 * 32, np.float32), codes, "got a 1-D float32"),
            (np.zeros((1, 300, 32), np.float32), codes, "got a 3-D float32"),
            (np.zeros((299, 32), np.float32), codes, r"shape \(300, 32\)"),
            (np.zeros((300, 33), np.float32), codes, r"shape \(300, 32\)"),
            (np.zeros((300, 32), np.float32, order="F"), codes, "C-contiguous"),
            (np.zeros((300, 64), np.float32)[:, ::2], codes, "C-contiguous"),
            (ro, codes, "not writeable"),
            (np.full((300, 32), 7.0, np.float32), bad_codes, "out of range"),
        ]
        for out, c, match in cases:
            before = np.array(out, copy=True)
            with pytest.raises(vqkit.VqkitError, match=match):
                q.decode(c, out=out)
            np.testing.assert_array_equal(np.asarray(out), before)
    # Codes that share memory with out (PQ with one float per sub-vector: M = d codes a
    # row, read in place as uint32) are refused, not read while they are overwritten:
    # through one base object (numpy's borrow checker) or two (np.frombuffer twice).
    pq = vqkit.ProductQuantizer(8, 8, 4, niter=2)
    pq.train(x[:, :8].copy())
    raw = bytearray(50 * 8 * 4)
    buf = np.frombuffer(raw, np.float32).reshape(50, 8)
    for codes, match in ((buf.view(np.uint32), "already borrowed|shares memory"),
                         (np.frombuffer(raw, np.uint32).reshape(50, 8), "shares memory"),
                         (np.frombuffer(raw, np.uint32)[8:].reshape(49, 8), "shares memory"),
                         (np.frombuffer(raw, np.uint8)[:400].reshape(50, 8), "shares memory"),
                         (np.frombuffer(raw, np.uint16)[4:404].reshape(50, 8), "shares memory")):
        with pytest.raises(vqkit.VqkitError, match=match):
            pq.decode(codes, out=buf[:codes.shape[0]])
        assert not buf.any()
    # uint32 codes read in place, and no rows.
    codes = pq.compute_codes(x[:40, :8].copy()).astype(np.uint32)
    out = np.empty((40, 8), np.float32)
    np.testing.assert_array_equal(pq.decode(codes, out=out), pq.decode(codes))
    assert pq.decode(codes[:0], out=np.empty((0, 8), np.float32)).shape == (0, 8)


def test_missing_and_corrupt_model_files_raise(tmp_path, blobs):
    with pytest.raises(FileNotFoundError):
        vqkit.load(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(vqkit.VqkitError):
        vqkit.load(bad)
    good = tmp_path / "good.safetensors"
    pq = vqkit.ProductQuantizer(32, 4, 4, niter=2)
    pq.train(blobs[:1000])
    pq.save(good)
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(vqkit.VqkitError):
        vqkit.load(tmp_path / "cut.safetensors")
    with pytest.raises(OSError):
        pq.save(tmp_path / "no" / "such" / "dir" / "m.safetensors")


# ---- files shared with the CLI ---------------------------------------------------------

def test_models_move_between_the_cli_and_python(tmp_path, blobs, cli):
    x = blobs[:3000]
    np.save(tmp_path / "x.npy", x)
    # CLI -> Python
    subprocess.run([cli, "rq-kmeans", "-i", str(tmp_path / "x.npy"), "--stages", "3", "-k", "16",
                    "--iters", "5", "-o", str(tmp_path / "cli.safetensors")],
                   check=True, capture_output=True)
    subprocess.run([cli, "encode", "-m", str(tmp_path / "cli.safetensors"), "-i",
                    str(tmp_path / "x.npy"), "-o", str(tmp_path / "cli_codes.npy")],
                   check=True, capture_output=True)
    rq = vqkit.load(tmp_path / "cli.safetensors")
    assert isinstance(rq, vqkit.ResidualQuantizer) and rq.M == 3 and rq.nbits == 4
    assert np.array_equal(rq.compute_codes(x), np.load(tmp_path / "cli_codes.npy"))
    # Python -> CLI, for every kind.
    models = {
        "kmeans": vqkit.Kmeans(32, 16, niter=3),
        "pq": vqkit.ProductQuantizer(32, 4, 4, niter=3),
        "aq": vqkit.AdditiveQuantizer(32, 2, 4, niter=3, ls_rounds=1),
    }
    for name, m in models.items():
        m.train(x)
        path = tmp_path / f"{name}.safetensors"
        m.save(path)
        out = tmp_path / f"{name}_codes.npy"
        subprocess.run([cli, "encode", "-m", str(path), "-i", str(tmp_path / "x.npy"), "-o",
                        str(out)], check=True, capture_output=True)
        theirs = np.load(out)
        assert theirs.dtype == np.uint8, name  # 16 codewords: one byte a code
        ours = m.assign(x)[1][:, None] if name == "kmeans" else m.compute_codes(x)
        assert np.array_equal(theirs, ours.astype(theirs.dtype)), name
        back = vqkit.load(path)
        assert type(back) is type(m)


# ---- the rest of the surface -------------------------------------------------------------

def test_backends_lists_every_backend():
    names = [b["name"] for b in vqkit.backends()]
    assert names == ["cpu", "wgpu", "cuda"]
    cpu = vqkit.backends()[0]
    assert cpu["available"] and "cpu" in cpu["device"]
    for b in vqkit.backends():
        assert b["available"] or b["reason"]


def test_nsvq_trains_every_method(blobs):
    x = blobs[:4000]
    for method, cls in (("rvq", vqkit.ResidualQuantizer), ("pvq", vqkit.ProductQuantizer),
                        ("avq", vqkit.AdditiveQuantizer)):
        q, log = vqkit.train_nsvq(x, method, M=2, nbits=4, epochs=2, batch=128)
        assert isinstance(q, cls) and len(log) == 2
        codes = q.compute_codes(x)
        err = np.mean(np.sum((q.decode(codes) - x) ** 2, 1))
        assert err < np.mean(np.sum(x ** 2, 1))


def test_complexity_counts():
    c = vqkit.complexity("vq", d=4, stages=1, bits=3)
    # K (2d - 1) additions for the distances, K - 1 for the argmin.
    assert c["additions"] == 8 * 7 + 7
    assert c["multiplications"] == 8 * 4
    assert c["bits_per_vector"] == 3
    with pytest.raises(vqkit.VqkitError, match="method"):
        vqkit.complexity("xvq", 4, 1, 3)


def test_kmeans_warm_start_and_verbose(blobs, capsys):
    km = vqkit.Kmeans(32, 8, niter=3, verbose=True)
    km.train(blobs, init_centroids=blobs[:8])
    assert "objective" in capsys.readouterr().out
    ref = vqkit.Kmeans(32, 8, niter=3)
    ref.train(blobs, init_centroids=blobs[:8])
    assert np.array_equal(km.centroids, ref.centroids)
