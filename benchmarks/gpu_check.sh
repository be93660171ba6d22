#!/usr/bin/env bash
# The prepared GPU check. On a machine with an NVIDIA GPU and no network it installs
# pyalexnet from this working tree using only packages already there (CuPy, NumPy,
# Pillow, pybind11, pytest, PyTorch), runs the whole test suite on the cuda backend, the
# kernel benchmark (fp32, then the tensor-core rows), the device probes of the emulator's
# model (benchmarks/bench_device.py) and whole training steps against
# PyTorch in fp32 (implicit GEMM, then --conv-algo auto), tf32 and bf16, and writes
# summary.json, steps.log and logs.tar.gz (every log) into $OUT (default: a new temporary
# folder). Budget: BUDGET seconds (540) for everything before the summary; each step's
# timeout is cut to what is left, the crash reruns run last.
#
# A crash leaves evidence in crash/ (in logs.tar.gz): the compiler and flags the emulator
# was built with, every pytest worker's faulthandler output (in the pytest logs), a gdb
# backtrace of each core dump, and an emulator-only rerun (8 workers, repeated) to
# reproduce it.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/pyalexnet-cupy-cache}
T0=$(date +%s)
step() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/steps.log"; }
# Every step's timeout is cut to what is left of BUDGET seconds, so the summary and the
# packing always run before the device tool's 600 s limit on one command.
BUDGET=${BUDGET:-540}
cap() {
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ "$left" -lt "$1" ]; then echo $(( left > 1 ? left : 1 )); else echo "$1"; fi
}
mkdir -p "$OUT/crash"
# core dumps: into $OUT/crash where the kernel lets us choose, else wherever core_pattern says
ulimit -c unlimited 2>/dev/null || true
cat /proc/sys/kernel/core_pattern > "$OUT/crash/core_pattern.txt" 2>&1
echo "$OUT/crash/core.%e.%p" > /proc/sys/kernel/core_pattern 2>/dev/null || true
export PYTHONFAULTHANDLER=1

step "device"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)" \
  > "$OUT/versions.txt" 2>&1

step "install (no network, no build isolation)"
# -v: the log keeps every compiler command line
if ! "$PY" -m pip install -v --no-build-isolation --no-deps -e . > "$OUT/install.log" 2>&1; then
  step "pip install failed; building the extension in place instead"
  "$PY" setup.py build_ext --inplace >> "$OUT/install.log" 2>&1
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

{
  "$PY" -c "import sysconfig as s; print('python', s.get_python_version(), 'CC', s.get_config_var('CC')); print('CFLAGS', s.get_config_var('CFLAGS'))"
  g++ --version | head -1; clang++ --version 2>/dev/null | head -1
  "$PY" -c "import pyalexnet._emu as m; print('pyalexnet._emu', m.BUILD_INFO)"
  grep -E "^\s*(g\+\+|gcc|c\+\+|x86_64-linux-gnu-g)" "$OUT/install.log" | head -5
} > "$OUT/crash/build-info.txt" 2>&1

step "test suite on the cuda backend"
# CPU-side tests (references, emulator) run alongside in worker processes when
# pytest-xdist is there; each emulator then uses two OS threads.
PARALLEL=()
"$PY" -c "import xdist" 2>/dev/null && PARALLEL=(-n 8)
PYALEXNET_TEST_BACKENDS=cuda PYALEXNET_EMU_THREADS=2 timeout "$(cap "${TEST_TIMEOUT:-150}")" \
  "$PY" -m pytest -q -p no:cacheprovider "${PARALLEL[@]}" tests \
  --junitxml="$OUT/junit-cuda.xml" > "$OUT/pytest-cuda.log" 2>&1
echo "pytest exit $?" >> "$OUT/pytest-cuda.log"
tail -3 "$OUT/pytest-cuda.log" | tee -a "$OUT/steps.log"

# About 100 rows now (37 s for 40 on 2026-11-30); the JSON is rewritten after every row, so
# a timeout keeps the rows timed so far ("complete": false).
step "kernel benchmark (batch 128, vs cuDNN/cuBLAS)"
timeout "$(cap "${BENCH_TIMEOUT:-120}")" "$PY" benchmarks/bench_kernels.py --repeats 10 --precision fp32 \
  --out "$OUT/kernels.json" > "$OUT/bench_kernels.log" 2>&1
echo "bench exit $?" >> "$OUT/bench_kernels.log"

# Whole training steps, ours against PyTorch on the same GPU and batch (128): fp32 as
# captured graphs (TF32 off on both sides; torch.compile as a second anchor), then tf32 and
# bf16 (PyTorch with TF32 on / autocast(bfloat16)). Each first checks equal work in fp32.
step "whole step vs PyTorch, fp32 (captured graphs; eager and torch.compile anchors)"
timeout "$(cap "${E2E_TIMEOUT:-150}")" "$PY" benchmarks/bench_alexnet.py --devices 1 --cuda-graph \
  --max-seconds 15 --out "$OUT/alexnet.json" > "$OUT/bench_alexnet.log" 2>&1
echo "bench exit $?" >> "$OUT/bench_alexnet.log"
step "whole step vs PyTorch, fp32, --conv-algo auto (Winograd where the cost model picks it)"
timeout "$(cap "${E2E_PREC_TIMEOUT:-60}")" "$PY" benchmarks/bench_alexnet.py --devices 1 --cuda-graph \
  --conv-algo auto --no-compile --max-seconds 10 --out "$OUT/alexnet_auto.json" \
  > "$OUT/bench_alexnet_auto.log" 2>&1
echo "bench exit $?" >> "$OUT/bench_alexnet_auto.log"

# conv and fc rows in tf32 and bf16, and the [bf16] rows of the memory-bound layers that
# bf16 training runs on bf16 activations
step "tensor-core kernels (tf32, bf16 vs PyTorch at the same precision)"
timeout "$(cap "${TC_BENCH_TIMEOUT:-180}")" "$PY" benchmarks/bench_kernels.py --repeats 10 --precision tf32 bf16 \
  --only conv fc "[bf16]" --out "$OUT/kernels_tc.json" > "$OUT/bench_kernels_tc.log" 2>&1
echo "bench exit $?" >> "$OUT/bench_kernels_tc.log"

for pr in tf32 bf16; do
  step "whole step vs PyTorch, $pr"
  timeout "$(cap "${E2E_PREC_TIMEOUT:-60}")" "$PY" benchmarks/bench_alexnet.py --devices 1 --cuda-graph \
    --precision "$pr" --no-compile --max-seconds 10 --out "$OUT/alexnet_$pr.json" \
    > "$OUT/bench_alexnet_$pr.log" 2>&1
  echo "bench exit $?" >> "$OUT/bench_alexnet_$pr.log"
done

# the rates and latencies the emulator's model assumes (bench_kernels.py --emulated
# --device-probe device_probe.json puts them in its place)
step "device probes (memory rate against warps and loads in flight, latencies, peaks)"
timeout "$(cap "${PROBE_TIMEOUT:-90}")" "$PY" benchmarks/bench_device.py --out "$OUT/device_probe.json" \
  > "$OUT/bench_device.log" 2>&1
echo "bench exit $?" >> "$OUT/bench_device.log"

# Crash evidence last: the measurements above matter more if time runs short.
step "emulator tests alone, 8 workers, twice (reproduce a crash)"
for i in 1 2; do
  timeout "$(cap 60)" "$PY" -m pytest -q -p no:cacheprovider "${PARALLEL[@]}" tests/test_emulator.py \
    > "$OUT/crash/pytest-emulator-$i.log" 2>&1
  echo "pytest exit $?" >> "$OUT/crash/pytest-emulator-$i.log"
done
grep -h "pytest exit\|passed\|failed\|crashed" "$OUT"/crash/pytest-emulator-*.log | tee -a "$OUT/steps.log"
if LIBS=$(timeout "$(cap 150)" "$PY" kernels/emu/build.py asan 2>>"$OUT/crash/asan.log" >/dev/null && "$PY" -c \
    "import sys; sys.path.insert(0, 'kernels/emu'); import build; print(build.sanitizer_runtime())"); then
  step "emulator tests on the ASan/UBSan build"
  ASAN_OPTIONS=detect_leaks=0:detect_stack_use_after_return=0:handle_segv=0:allow_user_segv_handler=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 LD_PRELOAD="$LIBS" PYALEXNET_EMU_TEST_BUILD=asan \
    timeout "$(cap 90)" "$PY" -m pytest -q -s -p no:cacheprovider tests/test_emulator.py >> "$OUT/crash/asan.log" 2>&1
  echo "pytest exit $?" >> "$OUT/crash/asan.log"
fi
# a gdb backtrace of every core dump (the cores themselves stay out of logs.tar.gz)
for c in core core.[0-9]*; do [ -f "$c" ] && mv "$c" "$OUT/crash/"; done
for core in "$OUT"/crash/core*; do
  [ -f "$core" ] && [ "${core%.bt.txt}" = "$core" ] && [ "${core%_pattern.txt}" = "$core" ] || continue
  gdb -batch -ex "info sharedlibrary" -ex "thread apply all bt" "$PY" "$core" > "$core.bt.txt" 2>&1 || true
  [ "$(stat -c %s "$core")" -lt 200000000 ] || rm -f "$core"
done

step "summary"
"$PY" - "$OUT" <<'PYEOF'
import json, sys, pathlib, xml.etree.ElementTree as ET
out = pathlib.Path(sys.argv[1])
s = {"device": (out / "nvidia-smi.txt").read_text().splitlines()[:12],
     "versions": (out / "versions.txt").read_text().strip()}
junit = out / "junit-cuda.xml"
if junit.exists():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    s["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    s["tests"]["seconds"] = float(suite.get("time", 0))
    s["failed_tests"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                         if c.find("failure") is not None or c.find("error") is not None]
for name in ("kernels", "device_probe", "kernels_tc", "alexnet", "alexnet_auto", "alexnet_tf32",
             "alexnet_bf16"):
    p = out / f"{name}.json"
    if p.exists():
        s[name] = json.loads(p.read_text())
(out / "summary.json").write_text(json.dumps(s, indent=1))
print(json.dumps(s.get("tests"), indent=None))
PYEOF
# The device tool brings back at most 8 files of 16 MiB: everything but the summary and
# this log goes into one archive (raw core dumps stay out; their backtraces go in).
step "pack $OUT/logs.tar.gz"
tar czf /tmp/gpu-check-logs.tar.gz -C "$OUT" --exclude=summary.json --exclude=steps.log \
  --exclude='crash/core.*[0-9]' . \
  && find "$OUT" -mindepth 1 ! -name summary.json ! -name steps.log -delete \
  && mv /tmp/gpu-check-logs.tar.gz "$OUT/logs.tar.gz"
step "done"
