#!/usr/bin/env bash
# The GPU checks of the cupy backend in one run (about 6-8 minutes on an H100), from the repo root
# on a GPU machine that has CUDA, cupy, numpy, scipy, numba, scikit-learn and matplotlib but not
# quimb (the device image of this workplace). Prepare here, once:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl quimb==1.15.0 cotengra==0.8.3 autoray==0.11.0 cytoolz==1.2.0
#
# then run `bash benchmarks/gpu_check.sh` there with `.whl` carried (`carry=[".whl"]`, timeout ~590 s).
# What it prints (and writes to $OUT when set): the GPU, the cupy-path tests (numpy vs cupy sweeps,
# float64 to 1e-7 and float32 learning), then bench_gpu.py: seconds per sweep at m = 20 and 64 on
# 60,000 MNIST-shaped samples, CPU vs GPU, and the GPU sweep's fractions in host algebra (SVD / eigh),
# transfers and syncs. Pass FASHION_DIR=<dir with the four Fashion-MNIST IDX files> (carried) to add
# the accuracy comparison on real images.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import cupy, numpy, tnlearn; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'tnlearn', tnlearn.__version__)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_device_path.py tests/test_kernels.py 2>&1 | tee "$OUT/tests.log"
tests_status=$?
extra=()
if [ -n "${FASHION_DIR:-}" ]; then extra=(--accuracy fashion-mnist --data-dir "$FASHION_DIR"); fi
timeout 420 python3 benchmarks/bench_gpu.py --bonds 20 64 --sweeps 3 --cpu-sweeps 1 --cpu-reference 13.82 109.3 \
    "${extra[@]}" 2>&1 | tee "$OUT/bench_gpu.log"
bench_status=$?
echo "gpu_check: tests exit $tests_status, benchmark exit $bench_status"
exit $(( tests_status != 0 || bench_status != 0 ))
