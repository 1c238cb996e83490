#!/usr/bin/env bash
# cuda-toolchain.sh — a local, GPU-less CUDA build toolchain for `--features cuda`.
#
# Builds `cargo build --release --features cuda -p trainer -p firmware-sim` on a machine with no
# CUDA toolkit and no GPU (CI, the 2-core dev machines). Everything goes into one folder
# ($BCAE_CUDA_TOOLCHAIN_DIR, default <repo>/.cuda-toolchain, git-ignored); nothing system-wide,
# no sudo. Re-running is cheap: each step is skipped when its output is already there.
#
# Usage (from anywhere):
#   eval "$(scripts/cuda-toolchain.sh --env)"     # install if needed, export the build env
#   CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda -p trainer -p firmware-sim
#
#   scripts/cuda-toolchain.sh                     # install if needed, print the env (readable)
#
# Knobs (environment):
#   BCAE_CUDA_TOOLCHAIN_DIR  where to install            (default <repo>/.cuda-toolchain)
#   CUDA_COMPUTE_CAP         GPU arch for candle-kernels (default 90 = Hopper, H100/H200 -> sm_90a)
#   BCAE_NICE                niceness for pip and cc     (default 19; the build itself is yours to nice)
#   CUDAFORGE_THREADS        parallel nvcc jobs of candle-kernels' build (default: all cores)
#
# What it installs (CUDA 13.0, PyPI wheels pinned by version and sha256, manylinux x86_64;
# together they unpack into one CUDA_HOME-like tree, site/nvidia/cu13 = bin/ include/ lib/ nvvm/):
#   nvidia-cuda-nvcc     13.0.88  nvcc, ptxas, fatbinary, nvlink, cudafe++   (37 MB download)
#   nvidia-nvvm          13.0.88  cicc, libdevice, libnvvm                   (62 MB)
#   nvidia-cuda-crt      13.0.88  crt/ headers nvcc includes                 (0.1 MB)
#   nvidia-cuda-runtime  13.0.96  cuda.h, cuda_runtime.h, cuda_fp16/bf16/fp8.h, libcudart.so.13 (2 MB)
#   nvidia-cuda-cccl     13.0.85  CUB / Thrust / libcu++ headers (sort and MoE kernels)  (3 MB)
# Why CUDA 13: the CUDA 12 wheels (nvidia-cuda-nvcc-cu12, every version up to 12.9.86) ship only
# ptxas/libnvvm, no nvcc driver and no cicc; the CUDA 13 wheels carry the whole compiler. 13.0 is
# the oldest 13.x: candle loads most kernels as PTX that the driver JIT-compiles, and a driver only
# takes PTX of its own CUDA version or older, so the GPU machine needs a driver >= 580 (CUDA 13.0).
#
# Link stubs. The cuda build links libcuda, libnvrtc, libcurand, libcublas and libcublasLt
# dynamically (cudarc's `dynamic-linking`). Those libraries are not installed here (cuBLAS alone is
# hundreds of MB); instead $CUDA_HOME/lib/stubs/ gets small stand-ins, like the toolkit's own
# lib64/stubs/libcuda.so: each has the real library's SONAME (libcuda.so.1, libnvrtc.so.13,
# libcurand.so.10, libcublas.so.13, libcublasLt.so.13) and defines every function cudarc declares
# for it (read from cudarc's `sys` bindings), each a dummy returning 34 (CUDA_ERROR_STUB_LIBRARY).
# The binary thus records DT_NEEDED on the real SONAMEs and binds the real libraries at run time.
# The stubs are for the linker only: they are named lib*.so (no lib*.so.N file), so the dynamic
# loader never picks them up by SONAME; still, never put their folder on LD_LIBRARY_PATH.
# libcudart is the real one from the wheel ($CUDA_HOME/lib); the binary needs libcudart.so.13 at
# run time too (from a CUDA 13 install, or the nvidia-cuda-runtime wheel's lib/ on LD_LIBRARY_PATH).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TC_DIR=${BCAE_CUDA_TOOLCHAIN_DIR:-$REPO_ROOT/.cuda-toolchain}
COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
NICE=(nice -n "${BCAE_NICE:-19}")
# Parallel nvcc jobs in candle-kernels' build (cudaforge uses half the cores by default; its slow
# MMQ kernels are independent files, so every core helps).
NVCC_JOBS=${CUDAFORGE_THREADS:-$(nproc 2>/dev/null || echo 2)}
export PIP_ROOT_USER_ACTION=ignore # pip as root in CI: no warning

# One CUDA version for everything: the wheels, cudarc's bindings (CUDARC_CUDA_VERSION) and the
# SONAMEs of the stubs.
CUDA_VERSION=13.0
CUDARC_CUDA_VERSION=13000
WHEELS=(
  "nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
  "nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
  "nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
  "nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
)
# stub library  SONAME              cudarc module whose symbols it defines
STUBS=(
  "cuda       libcuda.so.1       driver"
  "nvrtc      libnvrtc.so.13     nvrtc"
  "curand     libcurand.so.10    curand"
  "cublas     libcublas.so.13    cublas"
  "cublasLt   libcublasLt.so.13  cublaslt"
)

# $TC_DIR/cuda is a link to site/nvidia/cu13, the tree the wheels unpack into.
CUDA_HOME_DIR=$TC_DIR/cuda
STUB_DIR=$CUDA_HOME_DIR/lib/stubs

log() { echo "cuda-toolchain: $*" >&2; }
die() { log "error: $*"; exit 1; }

# 1. Download the pinned wheels (kept in $TC_DIR/wheels, so a re-run needs no network) and unpack
#    them with pip --target into $TC_DIR/site. Skipped when site/ holds exactly this pin list.
install_wheels() {
  local stamp=$TC_DIR/site/.installed reqs=$TC_DIR/requirements.txt
  mkdir -p "$TC_DIR"
  printf '%s\n' "${WHEELS[@]}" >"$reqs"
  if [ -f "$stamp" ] && cmp -s "$reqs" "$stamp"; then
    return
  fi
  log "downloading the CUDA $CUDA_VERSION wheels into $TC_DIR/wheels"
  "${NICE[@]}" python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --require-hashes -r "$reqs" -d "$TC_DIR/wheels" >&2
  log "unpacking them into $TC_DIR/site"
  rm -rf "$TC_DIR/site" "$CUDA_HOME_DIR"
  "${NICE[@]}" python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-index --find-links "$TC_DIR/wheels" --only-binary=:all: --require-hashes \
    --target "$TC_DIR/site" -r "$reqs" >&2
  cp "$reqs" "$stamp"
}

# 2. Make the unpacked tree a CUDA_HOME that nvcc, cudaforge (candle-kernels' build.rs:
#    $CUDA_HOME/bin/nvcc, include/) and cudarc's build.rs (link search in $CUDA_HOME/lib and
#    lib/stubs) all understand: nvidia/cu13 already has bin/ (nvcc, nvcc.profile) include/
#    (+ include/cccl) lib/ nvvm/; add the linker name libcudart.so (wheels ship only the
#    SONAME file libcudart.so.13) and lib64 -> lib.
layout_tree() {
  local cu=$TC_DIR/site/nvidia/cu13
  [ -x "$cu/bin/nvcc" ] && [ -x "$cu/nvvm/bin/cicc" ] || die "$cu is incomplete (nvcc/cicc missing)"
  [ -e "$cu/lib/libcudart.so.13" ] || die "libcudart.so.13 missing from the runtime wheel"
  ln -sfn libcudart.so.13 "$cu/lib/libcudart.so"
  [ -e "$cu/lib64" ] || ln -s lib "$cu/lib64"
  ln -sfn site/nvidia/cu13 "$CUDA_HOME_DIR"
  "$CUDA_HOME_DIR/bin/nvcc" --version >/dev/null || die "nvcc from the wheel does not run"
}

# The cudarc sources the build will compile: version from Cargo.lock, in cargo's registry cache.
cudarc_src() {
  local ver home=${CARGO_HOME:-$HOME/.cargo} dir
  ver=$(awk '/^name = "cudarc"$/ { getline; gsub(/"/, "", $3); print $3; exit }' "$REPO_ROOT/Cargo.lock")
  [ -n "$ver" ] || die "cudarc not in Cargo.lock"
  dir=$(ls -d "$home"/registry/src/*/"cudarc-$ver" 2>/dev/null | head -n1 || true)
  if [ -z "$dir" ]; then
    (cd "$REPO_ROOT" && cargo fetch --locked >&2)
    dir=$(ls -d "$home"/registry/src/*/"cudarc-$ver" 2>/dev/null | head -n1 || true)
  fi
  [ -n "$dir" ] || die "cudarc-$ver sources not found under $home/registry/src"
  echo "$dir"
}

# 3. Link stubs, one per library: every symbol cudarc's bindings may reference (the names its
#    `sys` module loads by name, `load::<_F>("cuInit")`), defined as a dummy function, in a shared
#    library with the real SONAME. Defining more than the binary uses is harmless.
make_stubs() {
  local src stamp=$STUB_DIR/.stamp
  src=$(cudarc_src)
  local want="$src ${STUBS[*]}"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return
  log "generating link stubs in $STUB_DIR from $src"
  rm -rf "$STUB_DIR"
  mkdir -p "$STUB_DIR"
  local entry lib soname module csrc n
  for entry in "${STUBS[@]}"; do
    read -r lib soname module <<<"$entry"
    csrc=$STUB_DIR/lib$lib.stub.c
    {
      echo "/* Link stub for $soname, generated by scripts/cuda-toolchain.sh from"
      echo "   cudarc's src/$module/sys/mod.rs. For linking only: never load it. */"
      { grep -oE 'load::<_F>\("[A-Za-z_][A-Za-z0-9_]*"\)' "$src/src/$module/sys/mod.rs" || true; } |
        sed -E 's/^load::<_F>\("(.*)"\)$/\1/' | sort -u |
        sed -E 's/.*/int &(void) { return 34; }/'
    } >"$csrc"
    n=$(grep -c 'return 34' "$csrc")
    [ "$n" -gt 0 ] || die "no symbols found for $lib in $src/src/$module/sys/mod.rs"
    "${NICE[@]}" cc -shared -fPIC -O0 -w -Wl,-soname,"$soname" -o "$STUB_DIR/lib$lib.so" "$csrc"
    log "  lib$lib.so (SONAME $soname): $n symbols"
  done
  echo "$want" >"$stamp"
}

print_env() {
  cat <<EOF
export CUDA_HOME='$CUDA_HOME_DIR'
export CUDA_PATH='$CUDA_HOME_DIR'
export PATH='$CUDA_HOME_DIR/bin':"\$PATH"
export CUDA_COMPUTE_CAP='$COMPUTE_CAP'
export CUDARC_CUDA_VERSION='$CUDARC_CUDA_VERSION'
export LIBRARY_PATH='$CUDA_HOME_DIR/lib:$STUB_DIR'"\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDAFORGE_THREADS='$NVCC_JOBS'
EOF
}

main() {
  local mode=${1:-}
  case "$mode" in
    "" | --env) ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d'; exit 0 ;;
    *) die "unknown argument '$mode' (use --env or --help)" ;;
  esac
  command -v python3 >/dev/null || die "python3 is needed (pip downloads the wheels)"
  command -v cc >/dev/null || die "a C compiler (cc) is needed for the stubs and by nvcc"
  install_wheels
  layout_tree
  make_stubs
  if [ "$mode" = --env ]; then
    print_env
  else
    log "ready. Export this (or: eval \"\$(scripts/cuda-toolchain.sh --env)\"):"
    print_env
  fi
}

main "$@"
