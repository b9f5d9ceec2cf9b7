#!/usr/bin/env python3
"""Compiles one CUDA C file to PTX with NVRTC, loaded through ctypes from the pinned
`nvidia-cuda-nvrtc-cu12` wheel (kernels/build_ptx.sh installs it and passes its lib dir).

usage: nvrtc_ptx.py LIBDIR ARCH SRC.cu OUT.ptx
The program is named by the file's base name, so the output does not depend on where the
repository is checked out."""
import ctypes
import os
import sys


def main() -> int:
    libdir, arch, src, out = sys.argv[1:5]
    # libnvrtc dlopens its builtins by soname: load them first, globally, so it finds them.
    for name in sorted(os.listdir(libdir)):
        if name.startswith("libnvrtc-builtins.so"):
            ctypes.CDLL(os.path.join(libdir, name), mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(os.path.join(libdir, "libnvrtc.so.12"))
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(status: int, what: str) -> None:
        if status != 0:
            msg = nvrtc.nvrtcGetErrorString(status).decode()
            raise SystemExit(f"{what}: {msg}")

    with open(src, "rb") as f:
        code = f.read()
    prog = ctypes.c_void_p()
    name = os.path.basename(src).encode()
    check(nvrtc.nvrtcCreateProgram(ctypes.byref(prog), code, name, 0, None, None), "create")
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"--device-as-default-execution-space"]
    copts = (ctypes.c_char_p * len(opts))(*opts)
    status = nvrtc.nvrtcCompileProgram(prog, len(opts), copts)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    if log.value.strip():
        sys.stderr.write(log.value.decode())
    check(status, f"compile {src}")
    check(nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)), "ptx size")
    ptx = ctypes.create_string_buffer(size.value)
    check(nvrtc.nvrtcGetPTX(prog, ptx), "ptx")
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    with open(out, "wb") as f:
        f.write(ptx.value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
