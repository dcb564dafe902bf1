#!/usr/bin/env bash
# The GPU checks of the cupy backend in one run (about 5 minutes on an H200), from the repo root
# on a GPU machine that has CUDA, cupy, numpy, scipy, numba, scikit-learn and matplotlib but not
# quimb (the device image of this workplace). Prepare here, once:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl quimb==1.16.0 cotengra==0.8.3 autoray==0.11.0 cytoolz==1.2.0
#
# then run `bash benchmarks/gpu_check.sh` there with `.whl` carried (timeout ~540 s). Where a GPU
# machine can install packages, `pip install -e '.[gpu,test]'` (CUDA 12) or `'.[gpu-cuda13,test]'`
# replaces the wheels.
#
# What it prints (and writes to $OUT when set): the GPU and CPU, the cupy-path tests (numpy vs
# cupy sweeps, float64 to 1e-7 and float32 learning), then bench_gpu.py: seconds per sweep at
# m = 20 and 64 on 60,000 MNIST-shaped samples, GPU vs this machine's CPU (all cores; at m = 20 also
# 2 BLAS threads) and vs the project's 2-core reference figures, peak device memory, and the GPU
# sweep's shares of host algebra (split / preconditioner factors), transfers and device passes.
# Pass FASHION_DIR=<dir with the four Fashion-MNIST IDX files> (carried) to add the test accuracy
# per sweep of both backends on the real images (m = 20, 60,000 training images).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  echo "CPU: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  python3 -c "import cupy, numpy, quimb, tnlearn; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'quimb', quimb.__version__, 'tnlearn', tnlearn.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_device_path.py tests/test_kernels.py 2>&1 | tee "$OUT/tests.log"
tests_status=$?
extra=()
if [ -n "${FASHION_DIR:-}" ]; then extra=(--accuracy fashion-mnist --data-dir "$FASHION_DIR"); fi
# m = 20: CPU with all cores and with 2 BLAS threads (the reference machine's count) on this processor
timeout 180 python3 benchmarks/bench_gpu.py --bonds 20 --sweeps 3 --cpu-sweeps 1 --cpu-threads 0 2 \
    --cpu-reference 13.82 "${extra[@]}" 2>&1 | tee "$OUT/bench_gpu_m20.log"
bench20_status=$?
# m = 64: a 2-thread CPU sweep takes ~2 minutes; the 2-core reference (109.3 s) stands in for it
timeout 120 python3 benchmarks/bench_gpu.py --bonds 64 --sweeps 3 --cpu-sweeps 1 --cpu-threads 0 \
    --cpu-reference 109.3 2>&1 | tee "$OUT/bench_gpu_m64.log"
bench64_status=$?
echo "gpu_check: tests exit $tests_status, benchmark exits $bench20_status (m = 20), $bench64_status (m = 64)"
exit $(( tests_status != 0 || bench20_status != 0 || bench64_status != 0 ))
