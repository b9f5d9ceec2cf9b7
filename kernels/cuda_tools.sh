# Sourced by build_ptx.sh and check_ptx.sh: installs the pinned CUDA compilers from PyPI
# into a cache directory (once) and exports NVRTC_LIB, PTXAS and PTX_ARCH.
CUDA_TOOLS_VERSION=12.0.140
PTX_ARCH=compute_80
VQKIT_CUDA_TOOLS="${VQKIT_CUDA_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/vqkit/cuda-$CUDA_TOOLS_VERSION}"
NVRTC_LIB="$VQKIT_CUDA_TOOLS/nvidia/cuda_nvrtc/lib"
PTXAS="$VQKIT_CUDA_TOOLS/nvidia/cuda_nvcc/bin/ptxas"
if [ ! -x "$PTXAS" ] || [ ! -f "$NVRTC_LIB/libnvrtc.so.12" ]; then
    echo "installing nvidia-cuda-nvrtc-cu12 and nvidia-cuda-nvcc-cu12 $CUDA_TOOLS_VERSION into $VQKIT_CUDA_TOOLS" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$VQKIT_CUDA_TOOLS" \
        "nvidia-cuda-nvrtc-cu12==$CUDA_TOOLS_VERSION" "nvidia-cuda-nvcc-cu12==$CUDA_TOOLS_VERSION" >&2
fi
export NVRTC_LIB PTXAS PTX_ARCH
