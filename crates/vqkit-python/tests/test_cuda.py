"""vqkit's CUDA kernels on device memory vqkit does not own, through
``__cuda_array_interface__``, with no copy to the host.

Without a GPU this runs on vqkit's stand-in CUDA driver (kernels/emu/driver.sh; `.ci/run`
puts it on LD_LIBRARY_PATH): the device arrays here are allocated through the driver API
with ctypes, as another engine (PyTorch, CuPy) would allocate them in the device's primary
context. On a machine with an NVIDIA driver, the same tests run on the GPU.
"""

import ctypes
import os

import numpy as np
import pytest

import vqkit


def _driver():
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        msg = f"no CUDA driver library ({e}); see kernels/emu/driver.sh for the stand-in"
        if os.environ.get("VQKIT_REQUIRE_CUDA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    ok = lambda r, what: r == 0 or pytest.fail(f"{what} returned CUDA error {r}")  # noqa: E731
    ok(lib.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    ok(lib.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    ok(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    ok(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    return lib


@pytest.fixture(scope="module")
def cuda():
    return _driver()


class Device:
    """A device array owned by "another engine": allocated, filled and read back through
    the driver API, exposing ``__cuda_array_interface__`` as PyTorch and CuPy do."""

    def __init__(self, lib, host):
        self.lib, self.host = lib, np.ascontiguousarray(host)
        self.ptr = ctypes.c_uint64()
        assert lib.cuMemAlloc_v2(ctypes.byref(self.ptr), ctypes.c_size_t(max(self.host.nbytes, 4))) == 0
        assert lib.cuMemcpyHtoD_v2(self.ptr, self.host.ctypes.data_as(ctypes.c_void_p),
                                   ctypes.c_size_t(self.host.nbytes)) == 0
        self.__cuda_array_interface__ = {
            "shape": self.host.shape, "typestr": self.host.dtype.str, "data": (self.ptr.value, False),
            "version": 3, "strides": None, "stream": 1,
        }

    def get(self):
        return read(self.lib, self, self.host.dtype)

    def __del__(self):
        self.lib.cuMemFree_v2(self.ptr)


def read(lib, arr, dtype):
    cai = arr.__cuda_array_interface__
    out = np.empty(cai["shape"], dtype=np.dtype(cai["typestr"]))
    assert lib.cuMemcpyDtoH_v2(out.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(cai["data"][0]),
                               ctypes.c_size_t(out.nbytes)) == 0
    return out.astype(dtype)


@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (130, 17, 5), (1000, 300, 33)])
def test_assign_on_device_arrays_matches_the_cpu(cuda, n, k, d):
    rng = np.random.default_rng(n + k)
    x = rng.standard_normal((n, d)).astype(np.float32)
    c = rng.standard_normal((k, d)).astype(np.float32)
    D, I = vqkit.assign(Device(cuda, x), Device(cuda, c))
    assert isinstance(D, vqkit.DeviceArray) and isinstance(I, vqkit.DeviceArray)
    assert D.__cuda_array_interface__["typestr"] == "<f4"
    assert I.__cuda_array_interface__["typestr"] == "<i4" and len(I) == n
    d_ref, i_ref = vqkit.assign(x, c)
    assert np.array_equal(read(cuda, I, np.int64), i_ref)
    np.testing.assert_allclose(read(cuda, D, np.float32), d_ref, rtol=1e-5, atol=1e-5)


def test_ema_update_in_place_on_device_arrays_matches_the_cpu(cuda):
    rng = np.random.default_rng(3)
    n, k, d = 500, 40, 12
    x = rng.standard_normal((n, d)).astype(np.float32)
    c = rng.standard_normal((k, d)).astype(np.float32)
    size, esum, code = np.ones(k, np.float32), c.copy(), c.copy()
    dx, dc = Device(cuda, x), Device(cuda, c)
    dsize, desum = Device(cuda, size), Device(cuda, esum)
    for _ in range(3):
        _, I = vqkit.assign(dx, dc)
        vqkit.ema_update(dx, I, dsize, desum, dc, decay=0.8, eps=1e-5)
        _, i_ref = vqkit.assign(x, code)
        assert np.array_equal(read(cuda, I, np.int64), i_ref)
        vqkit.ema_update(x, i_ref, size, esum, code, decay=0.8, eps=1e-5)
    np.testing.assert_allclose(dsize.get(), size, rtol=1e-5)
    np.testing.assert_allclose(desum.get(), esum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dc.get(), code, rtol=1e-5, atol=1e-6)


def test_device_input_errors(cuda):
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(vqkit.VqkitError, match="d = "):
        vqkit.assign(Device(cuda, x), Device(cuda, np.zeros((2, 5), np.float32)))
    with pytest.raises(vqkit.VqkitError, match="not a device array"):
        vqkit.assign(Device(cuda, x), np.zeros((2, 3), np.float32))
    with pytest.raises(vqkit.VqkitError, match="typestr"):
        vqkit.assign(Device(cuda, x.astype(np.float64)), Device(cuda, x))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(vqkit.VqkitError, match="points: a non-finite"):
        vqkit.assign(Device(cuda, bad), Device(cuda, x[:2]))
    with pytest.raises(vqkit.VqkitError, match="codebook: a non-finite"):
        vqkit.assign(Device(cuda, x), Device(cuda, bad))
    strided = Device(cuda, x)
    strided.__cuda_array_interface__ = dict(strided.__cuda_array_interface__, strides=(4, 16))
    with pytest.raises(vqkit.VqkitError, match="C-contiguous"):
        vqkit.assign(strided, Device(cuda, x))
