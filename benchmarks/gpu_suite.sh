#!/usr/bin/env bash
# The GPU suite of unet_fast: one command on a GPU machine, from a fresh checkout, no network.
#
#   benchmarks/gpu_suite.sh [--quick|--full|--level L] [--out DIR] [--budget SECONDS] [--jobs N]
#                           [--skip-build] [--skip-tests] [--skip-sanitizer] [--skip-bench] [--skip-model]
#                           [--python PY] [--bench-args "ARGS"] [--tests-args "ARGS"]
#                           [--tests-timeout S] [--tests-workers N] [--sanitizer-timeout S] [--model-timeout S]
#                           [--assume-build S] [--fit-return] [--dry-run] [--schedule] [--simulate]
#                           [--prebuilt DIR] [--no-prebuilt]
#
# Stages (each logged, timed and recorded in stages.tsv):
#   1. build      MAX_JOBS=<cores> UNET_FAST_BUILD_EXT=1 UNET_FAST_FORCE_CUDA=1 pip install --no-build-isolation --no-deps -e .
#                 or, where a carried build/device/ (--prebuilt DIR) holds the extension built for this
#                 machine's Python, torch, sources and GPU (tools/device_prebuild.py build, here), that
#                 library once it loads (tools/device_prebuild.py use), and pip install -e . without a build
#   2. tests      pytest tests/ on the GPU, less what CPU_LADDER names (the parity tests in fp32/fp16/bf16; requires_cuda ones run,
#                 first: tests/conftest.py orders them; at the time limit pytest still reports, and the
#                 stage's row says how many GPU-only tests and others ran and passed: conftest's tally), in
#                 --tests-workers pytest-xdist workers (default 4; 1: one process) sharing the GPU:
#                 most of a first run's time is Triton compiling each test's kernels on one core
#   3. sanitizer  a small training step per backend (triton, cuda) under compute-sanitizer memcheck
#   4. bench      pytest benchmarks/ --benchmark-json (ceilings, whole models, every layer shape),
#                 in priority order within the time budget
#   5. model      tools/measure_kernels.py: the kernel model's predictions (docs/kernel_model.json)
#                 next to a measurement of every Triton launch of the same training step, then of
#                 every CUTLASS unit launch on backend="cuda", and the L2 bandwidth the model
#                 assumes (model_vs_measured.md/.json); its time is kept out of the bench budget
#   6. summary    benchmarks/summarize.py: summary.md, per_layer.png
# Results: ONE folder, $OUT when set, else benchmarks/results/<YYYY-MM-DD>_<gpu>/ (or --out):
#   summary.md  results.json  per_layer.png  log.txt  stages.tsv  model_vs_measured.{md,json}
# In $OUT (or with --fit-return) benchmarks/fit_return.py then keeps at most 8 files, what the
# device tool brings back, packing the rest into more.tar.gz.
# Exit status: 0 when every stage passed; 1 when the tests (parity) failed, did not finish or had
# no time, the build failed, the sanitizer found errors or had no time, or benchmarks failed; 2
# for bad arguments or a machine that cannot run the suite. The summary is written in every case.
#
# --budget (default 570 s: one 10-minute command of the device tool) is a ceiling on the whole
# run: the stages after the build get their timeouts cut to what is left, in priority order
# (tests, sanitizer, bench, model), each leaving the later ones a floor and the summary 40 s, and
# a stage that cannot get its floor is skipped, saying so; --schedule (or --dry-run) prints the
# worst case after a build of --assume-build seconds (default 180). Benchmarks that would not fit
# are skipped (the summary lists them). --quick measures less; --full measures everything (well
# over 10 minutes: give it --budget 0 and a machine with time).
# --bench-args / --tests-args pass extra pytest arguments (e.g. --bench-args "-k model").
# --simulate runs the suite without a GPU, the GPU benchmarks simulated on the CPU at toy sizes:
# it tests this script and the summary, its numbers mean nothing.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LEVEL=default
DRY=0
OUTDIR=""
BUDGET=570
JOBS="$(nproc 2>/dev/null || echo 4)"
SKIP_BUILD=0; SKIP_TESTS=0; SKIP_SAN=0; SKIP_BENCH=0; SKIP_MODEL=0
SIMULATE=0; BENCH_ARGS=""; TESTS_ARGS=""; TT_SET=0; ST_SET=0; AB_SET=0; SCHEDULE=0; FIT_RETURN=0
PREBUILT="$REPO/build/device"   # tools/device_prebuild.py build's folder, carried to the device (--prebuilt)
PY="${PYTHON:-python3}"
TESTS_TIMEOUT=240
TESTS_WORKERS=4   # pytest-xdist workers of the tests stage, where the image has pytest-xdist
SAN_TIMEOUT=200
SUMMARY_RESERVE=40  # kept at the end of the budget for the summary and the packing of the results
MODEL_TIMEOUT=180   # both model configs' warm-up (compiles cached by the bench stage) and profile,
                    # on the triton backend, then on the cuda one (the CUTLASS units)
# The budget is a ceiling on the whole run, build included. A stage after the build gets what it
# asks for (its timeout; the bench stage: all that is left but the model's), capped so that it
# ends, the 15 s between timeout's TERM and KILL included, leaving the summary its reserve and
# each later stage its floor; where that gives less than its own floor, it may take the later
# stages' floors; where even that is less, it is skipped, saying so. The build has no limit.
TESTS_MIN=60; SAN_MIN=60; BENCH_MIN=60; MODEL_MIN=60
KILL_GRACE=15       # timeout --kill-after
ASSUME_BUILD=180    # the dry run's worst-case schedule assumes a build this long (--assume-build)
PREBUILT_ASSUME=30  # ... or this long where a fitting prebuilt library is there (pip -e, the load check)

usage() {
  awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"
}
die_usage() { echo "gpu_suite.sh: $*" >&2; echo "run with --help for usage" >&2; exit 2; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
need() { [ "$2" -ge 2 ] && [[ "$3" != -* ]] || die_usage "$1"; }   # need MESSAGE $# NEXT

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) LEVEL=quick ;;
    --full) LEVEL=full ;;
    --level) need "--level needs a value" $# "${2:-}"; LEVEL="$2"; shift ;;
    --level=*) LEVEL="${1#*=}" ;;
    --dry-run|-n) DRY=1 ;;
    --out) need "--out needs a folder" $# "${2:-}"; OUTDIR="$2"; shift ;;
    --out=*) OUTDIR="${1#*=}" ;;
    --budget) need "--budget needs seconds" $# "${2:-}"; BUDGET="$2"; shift ;;
    --budget=*) BUDGET="${1#*=}" ;;
    --jobs|-j) need "--jobs needs a number" $# "${2:-}"; JOBS="$2"; shift ;;
    --jobs=*) JOBS="${1#*=}" ;;
    --python) need "--python needs a path" $# "${2:-}"; PY="$2"; shift ;;
    --python=*) PY="${1#*=}" ;;
    --bench-args) [ $# -ge 2 ] || die_usage "--bench-args needs a value"; BENCH_ARGS="$2"; shift ;;
    --bench-args=*) BENCH_ARGS="${1#*=}" ;;
    --tests-args) [ $# -ge 2 ] || die_usage "--tests-args needs a value"; TESTS_ARGS="$2"; shift ;;
    --tests-args=*) TESTS_ARGS="${1#*=}" ;;
    --tests-timeout) need "--tests-timeout needs seconds" $# "${2:-}"; TESTS_TIMEOUT="$2"; TT_SET=1; shift ;;
    --tests-workers) need "--tests-workers needs a number" $# "${2:-}"; TESTS_WORKERS="$2"; shift ;;
    --sanitizer-timeout) need "--sanitizer-timeout needs seconds" $# "${2:-}"; SAN_TIMEOUT="$2"; ST_SET=1; shift ;;
    --model-timeout) need "--model-timeout needs seconds" $# "${2:-}"; MODEL_TIMEOUT="$2"; shift ;;
    --assume-build) need "--assume-build needs seconds" $# "${2:-}"; ASSUME_BUILD="$2"; AB_SET=1; shift ;;
    --prebuilt) need "--prebuilt needs a folder" $# "${2:-}"; PREBUILT="$2"; shift ;;
    --prebuilt=*) PREBUILT="${1#*=}" ;;
    --no-prebuilt) PREBUILT="" ;;
    --schedule) SCHEDULE=1; DRY=1 ;;
    --fit-return) FIT_RETURN=1 ;;
    --simulate) SIMULATE=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --skip-tests) SKIP_TESTS=1 ;;
    --skip-sanitizer) SKIP_SAN=1 ;;
    --skip-bench) SKIP_BENCH=1 ;;
    --skip-model) SKIP_MODEL=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument: $1" ;;
  esac
  shift
done

case "$LEVEL" in quick|default|full) ;; *) die_usage "--level must be quick, default or full, got '$LEVEL'" ;; esac
is_uint "$BUDGET" || die_usage "--budget must be a whole number of seconds (0 = no limit), got '$BUDGET'"
if [ "$BUDGET" -ne 0 ] && [ "$BUDGET" -lt 120 ]; then die_usage "--budget must be 0 (no limit) or at least 120 s, got $BUDGET"; fi
is_uint "$JOBS" && [ "$JOBS" -ge 1 ] || die_usage "--jobs must be a positive number, got '$JOBS'"
is_uint "$TESTS_TIMEOUT" && [ "$TESTS_TIMEOUT" -ge 30 ] || die_usage "--tests-timeout must be >= 30 s"
is_uint "$TESTS_WORKERS" && [ "$TESTS_WORKERS" -ge 1 ] || die_usage "--tests-workers must be a positive number, got '$TESTS_WORKERS'"
is_uint "$SAN_TIMEOUT" && [ "$SAN_TIMEOUT" -ge 30 ] || die_usage "--sanitizer-timeout must be >= 30 s"
is_uint "$MODEL_TIMEOUT" && [ "$MODEL_TIMEOUT" -ge 30 ] || die_usage "--model-timeout must be >= 30 s"
is_uint "$ASSUME_BUILD" || die_usage "--assume-build must be a whole number of seconds, got '$ASSUME_BUILD'"
if [ "$LEVEL" = quick ]; then [ $TT_SET = 1 ] || TESTS_TIMEOUT=200; [ $ST_SET = 1 ] || SAN_TIMEOUT=150; fi
if [ -n "$OUTDIR" ]; then
  [ -e "$OUTDIR" ] && [ ! -d "$OUTDIR" ] && die_usage "--out $OUTDIR exists and is not a folder"
  p="$OUTDIR"; while [ ! -e "$p" ]; do p="$(dirname "$p")"; done
  [ -d "$p" ] && [ -w "$p" ] || die_usage "--out $OUTDIR: $p is not a writable folder"
fi

cd "$REPO" || exit 2
START=$(date +%s)
PROBLEMS=0      # things that stop a real run
WARNINGS=0
say() { echo "$*"; }
check() {  # check LABEL STATUS DETAIL ; STATUS: ok | missing | fatal
  local label="$1" status="$2" detail="$3"
  case "$status" in
    ok) printf '  %-22s ok       %s\n' "$label" "$detail" ;;
    missing) printf '  %-22s MISSING  %s\n' "$label" "$detail"; WARNINGS=$((WARNINGS + 1)) ;;
    fatal) printf '  %-22s ERROR    %s\n' "$label" "$detail"; PROBLEMS=$((PROBLEMS + 1)) ;;
  esac
}

# ------------------------------------------------------------------ preflight
say "unet_fast GPU suite: level=$LEVEL budget=${BUDGET}s jobs=$JOBS repo=$REPO$([ $DRY = 1 ] && echo ' (dry run)')$([ $SIMULATE = 1 ] && echo ' (SIMULATED on the CPU)')"
SIM_FLAG=""; [ $SIMULATE = 1 ] && SIM_FLAG="--bench-simulate"
# the model stage measures real kernels: not in a simulated run
MODEL_WHY=""; [ $SKIP_MODEL = 1 ] && MODEL_WHY="--skip-model"
[ -z "$MODEL_WHY" ] && [ $SIMULATE = 1 ] && MODEL_WHY="--simulate (it needs a GPU)"
# The rungs of the no-GPU ladder that a GPU makes moot: the CPU emulator of the CUDA kernels and the
# ahead-of-time Triton compiles (minutes of the ten); the GPU runs the real kernels instead. And the
# tests of the host-side tooling (this suite run simulated, the build system, the prebuilt
# library's checks: a minute of 2 cores here, no GPU code), which CI runs on every commit: a tests
# stage cut at its limit is recorded as failed, and its time belongs to the GPU's parity.
CPU_LADDER="--ignore=tests/test_cuda_emulated.py --ignore=tests/test_triton_aot.py"
CPU_LADDER="$CPU_LADDER --ignore=tests/test_benchmarks_tools.py --ignore=tests/test_build.py --ignore=tests/test_device_prebuild.py"

# the extra pytest arguments, split as the shell would (quotes kept: --bench-args "-k 'a or b'")
eval "BENCH_ARR=($BENCH_ARGS)" 2>/dev/null || die_usage "--bench-args: cannot parse '$BENCH_ARGS'"
eval "TESTS_ARR=($TESTS_ARGS)" 2>/dev/null || die_usage "--tests-args: cannot parse '$TESTS_ARGS'"
[ -n "$SIM_FLAG" ] && BENCH_ARR=("$SIM_FLAG" ${BENCH_ARR[@]+"${BENCH_ARR[@]}"})
say "checks:"
for f in setup.py unet_fast/__init__.py tests benchmarks/conftest.py benchmarks/harness.py \
         benchmarks/summarize.py benchmarks/compare.py benchmarks/sanitize_step.py benchmarks/fit_return.py \
         tools/measure_kernels.py tools/kernel_model.py docs/kernel_model.json; do
  if [ -e "$f" ]; then check "$f" ok ""; else check "$f" fatal "not found in $REPO"; fi
done

PYINFO=""
if command -v "$PY" >/dev/null 2>&1; then
  PYINFO=$("$PY" - <<'EOF' 2>&1
import importlib.metadata as md, importlib.util, sys
def v(name, dist=None):
    if importlib.util.find_spec(name) is None:
        return "MISSING"
    try:
        return md.version(dist or name)
    except md.PackageNotFoundError:
        return "yes"
print("python", sys.version.split()[0])
for n, d in (("torch", None), ("triton", None), ("pytest", None), ("pytest_benchmark", "pytest-benchmark"),
             ("xdist", "pytest-xdist"), ("matplotlib", None), ("numpy", None), ("ninja", None)):
    print(n, v(n, d))
try:
    import torch
    print("torch_cuda", torch.version.cuda)
    ok = torch.cuda.is_available()
    print("gpu", torch.cuda.get_device_name(0).replace(" ", "_") if ok else "none")
except Exception as e:  # noqa: BLE001
    print("torch_cuda None"); print("gpu none")
EOF
)
  check "python" ok "$(command -v "$PY") $(echo "$PYINFO" | awk '$1=="python"{print $2}')"
else
  check "python" fatal "'$PY' not found (set PYTHON or --python)"
fi
pyv() { echo "$PYINFO" | awk -v k="$1" '$1==k{print $2}'; }
for mod in torch pytest pytest_benchmark; do
  val="$(pyv $mod)"
  if [ -z "$val" ] || [ "$val" = MISSING ]; then check "$mod" fatal "not importable by $PY"; else check "$mod" ok "$val"; fi
done
for mod in triton matplotlib ninja; do
  val="$(pyv $mod)"
  if [ -z "$val" ] || [ "$val" = MISSING ]; then check "$mod" missing "not importable ($mod-dependent parts are skipped)"; else check "$mod" ok "$val"; fi
done
# the tests stage's workers: "load" hands tests out in collection order (the GPU ones first), in
# chunks of at most 16, so at the time limit what ran is still about the list's first part
XDIST=""
if [ "$TESTS_WORKERS" -gt 1 ]; then
  val="$(pyv xdist)"
  if [ -z "$val" ] || [ "$val" = MISSING ]; then
    check "pytest-xdist" missing "not importable: the tests stage runs in one process"
  else
    XDIST="-n $TESTS_WORKERS --dist load --maxschedchunk 16"
    check "pytest-xdist" ok "$val: the tests stage runs $TESTS_WORKERS workers on the GPU"
  fi
fi
TORCH_CUDA="$(pyv torch_cuda)"
GPU="$(pyv gpu)"; GPU="${GPU:-none}"
if [ "$GPU" = none ]; then
  if [ $DRY = 1 ] || [ $SIMULATE = 1 ]; then check "CUDA GPU" missing "none visible (fine for --dry-run/--simulate; the real run needs one)"
  else check "CUDA GPU" fatal "none visible to torch (torch CUDA build: ${TORCH_CUDA:-None})"; fi
else
  check "CUDA GPU" ok "${GPU//_/ } (torch CUDA $TORCH_CUDA)"
fi

CUDA_ROOT="${CUDA_HOME:-${CUDA_PATH:-}}"
if [ -z "$CUDA_ROOT" ] || [ ! -x "$CUDA_ROOT/bin/nvcc" ]; then
  for c in /usr/local/cuda /usr/local/cuda-*; do [ -x "$c/bin/nvcc" ] && { CUDA_ROOT="$c"; break; }; done
fi
if [ -n "$CUDA_ROOT" ] && [ -x "$CUDA_ROOT/bin/nvcc" ]; then
  check "nvcc" ok "$CUDA_ROOT/bin/nvcc ($("$CUDA_ROOT/bin/nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*' | head -1))"
  export CUDA_HOME="$CUDA_ROOT"
elif command -v nvcc >/dev/null 2>&1; then
  check "nvcc" ok "$(command -v nvcc) (CUDA_HOME not set: setup.py guesses it)"
else
  check "nvcc" missing "not found: the extension builds without CUDA kernels (backend cuda unavailable on GPU)"
fi

# CUTLASS headers for the sm_90a units (csrc/cutlass_sm90): CUTLASS_HOME, the nvidia-cutlass
# package, or its wheel carried in .whl/ (the GPU machines have no network and no nvidia-cutlass:
# here `python3 -m pip download --no-deps -d .whl nvidia-cutlass==4.2.0.0`, then carry .whl); the
# build stage unpacks a carried wheel and points CUTLASS_HOME at its headers.
CUTLASS_WHEEL="$(ls "$REPO"/.whl/nvidia_cutlass-*.whl 2>/dev/null | head -1)"
if [ -n "${CUTLASS_HOME:-}" ]; then
  if [ -f "$CUTLASS_HOME/include/cutlass/cutlass.h" ]; then check "CUTLASS" ok "CUTLASS_HOME=$CUTLASS_HOME"
  else check "CUTLASS" fatal "CUTLASS_HOME=$CUTLASS_HOME has no include/cutlass/cutlass.h"; fi
elif "$PY" -c "import cutlass_library" >/dev/null 2>&1; then
  check "CUTLASS" ok "nvidia-cutlass $("$PY" -c 'import importlib.metadata as m; print(m.version("nvidia-cutlass"))' 2>/dev/null)"
elif [ -n "$CUTLASS_WHEEL" ]; then
  if "$PY" -m zipfile -l "$CUTLASS_WHEEL" 2>/dev/null | grep "cutlass_library/source/include/cutlass/cutlass.h" >/dev/null; then
    check "CUTLASS" ok "$CUTLASS_WHEEL (unpacked by the build stage)"
  else check "CUTLASS" fatal "$CUTLASS_WHEEL is not a readable nvidia-cutlass wheel with C++ headers"; fi
else
  check "CUTLASS" missing "none: the CUTLASS sm_90a units are not built, backend='cuda' runs the hand-written kernels (bring .whl/nvidia_cutlass-4.2.0.0-py3-none-any.whl)"
fi

# a library built here for this machine (tools/device_prebuild.py build, carried in build/device):
# the build stage uses it if it fits and loads, else builds
PRE_FITS=0
if [ $SKIP_BUILD = 0 ] && [ -n "$PREBUILT" ] && [ -d "$PREBUILT" ]; then
  pre_line=$("$PY" tools/device_prebuild.py check --dir "$PREBUILT" 2>&1); pre_rc=$?
  pre_line="$(echo "$pre_line" | tail -1)"; pre_line="${pre_line#prebuilt: }"
  if [ $pre_rc = 0 ]; then
    PRE_FITS=1; check "prebuilt extension" ok "$pre_line"
  else check "prebuilt extension" missing "$pre_line: the build stage builds"; fi
fi

find_sanitizer() {
  local c nv
  for c in "${COMPUTE_SANITIZER:-}" "$(command -v compute-sanitizer 2>/dev/null)" \
           "${CUDA_ROOT:-/nonexistent}/bin/compute-sanitizer" \
           "${CUDA_ROOT:-/nonexistent}/compute-sanitizer/compute-sanitizer" \
           /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
           /usr/local/cuda-*/bin/compute-sanitizer /usr/local/cuda-*/compute-sanitizer/compute-sanitizer \
           /opt/nvidia/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer \
           /opt/cuda/bin/compute-sanitizer /opt/cuda/compute-sanitizer/compute-sanitizer; do
    [ -n "$c" ] && [ -x "$c" ] && [ ! -d "$c" ] && { echo "$c"; return 0; }
  done
  nv="$(command -v nvcc 2>/dev/null)" && nv="$(readlink -f "$nv")" && for c in \
      "$(dirname "$nv")/compute-sanitizer" "$(dirname "$(dirname "$nv")")/compute-sanitizer/compute-sanitizer"; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  c="$(find /usr/local /opt -maxdepth 5 -name compute-sanitizer -type f -perm -u+x 2>/dev/null | head -1)"
  [ -n "$c" ] && { echo "$c"; return 0; }
  # pip wheels of the toolkit (nvidia-cuda-sanitizer-api, cuda-toolkit) put it in site-packages
  "$PY" - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for p in glob.glob(os.path.join(r, "nvidia", "**", "compute-sanitizer"), recursive=True):
        if os.path.isfile(p) and os.access(p, os.X_OK):
            print(p); sys.exit(0)
sys.exit(1)
EOF
}
SANITIZER="$(find_sanitizer || true)"
if [ -n "$SANITIZER" ]; then check "compute-sanitizer" ok "$SANITIZER"
else check "compute-sanitizer" missing "not found (set COMPUTE_SANITIZER=/path): the sanitizer stage is skipped"; fi

# the stages that will run after the build (1) or not (0)
RUN_TESTS=$(( 1 - SKIP_TESTS )); RUN_BENCH=$(( 1 - SKIP_BENCH ))
RUN_SAN=0; [ $SKIP_SAN = 0 ] && [ -n "$SANITIZER" ] && RUN_SAN=1
RUN_MODEL=0; [ -z "$MODEL_WHY" ] && RUN_MODEL=1
# lim_for STAGE LEFT: the stage's timeout in s when LEFT s of the budget are left; 0: skip it.
# Without a budget: its own timeout (the bench's 0: none).
lim_for() {
  local stage="$1" l="$2" want floor keep room lim
  case "$stage" in
    tests) want=$TESTS_TIMEOUT; floor=$TESTS_MIN
           keep=$(( RUN_SAN * (SAN_MIN + KILL_GRACE) + RUN_BENCH * (BENCH_MIN + KILL_GRACE) )) ;;
    sanitizer) want=$SAN_TIMEOUT; floor=$SAN_MIN; keep=$(( RUN_BENCH * (BENCH_MIN + KILL_GRACE) )) ;;
    bench) want=0; floor=$BENCH_MIN; keep=$(( RUN_MODEL * (MODEL_MIN + KILL_GRACE) )) ;;
    model) want=$MODEL_TIMEOUT; floor=$MODEL_MIN; keep=0 ;;
    model-tma) want=$MODEL_TIMEOUT; floor=$MODEL_TIMEOUT; keep=0 ;;
    *) echo 0; return ;;
  esac
  if [ "$BUDGET" -eq 0 ]; then echo "$want"; return; fi
  [ "$want" -gt 0 ] && [ "$floor" -gt "$want" ] && floor=$want
  room=$(( l - SUMMARY_RESERVE - KILL_GRACE ))
  if [ "$stage" = bench ]; then   # all that is left but the model's whole timeout, else its floor
    want=$(( room - RUN_MODEL * (MODEL_TIMEOUT + KILL_GRACE) )); [ $want -lt $floor ] && want=$room
  fi
  lim=$(( want < room - keep ? want : room - keep ))
  [ $lim -lt $floor ] && lim=$(( want < room ? want : room ))
  [ $lim -lt $floor ] && lim=0
  echo "$lim"
}
# the worst case: every stage runs to its limit (and the 15 s of grace) after a build of $1 s
schedule() {
  local e="$1" out="" st on lim
  [ "$BUDGET" -eq 0 ] && { echo "no time budget (--budget 0): each stage runs to its own timeout"; return; }
  for st in tests sanitizer bench model model-tma; do
    case $st in tests) on=$RUN_TESTS ;; sanitizer) on=$RUN_SAN ;; bench) on=$RUN_BENCH ;; *) on=$RUN_MODEL ;; esac
    [ "$on" = 1 ] || continue
    lim=$(lim_for $st $(( BUDGET - e )))
    if [ "$lim" -gt 0 ]; then out="$out, $st ${lim} s"; e=$(( e + lim + KILL_GRACE )); else out="$out, $st skipped"; fi
  done
  echo "budget ${BUDGET} s; worst case after a ${1} s build: ${out:+${out#, }; }summary ${SUMMARY_RESERVE} s: ends by $(( e + SUMMARY_RESERVE )) s"
}
command -v timeout >/dev/null 2>&1 || check "timeout (coreutils)" fatal "not found"

# results folder
GPU_SLUG="$(echo "${GPU:-none}" | tr 'A-Z' 'a-z' | sed -e 's/^nvidia_//' -e 's/[^a-z0-9.]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')"
[ "$GPU_SLUG" = none ] && GPU_SLUG=nogpu
if [ -n "$OUTDIR" ]; then RES="$OUTDIR"
elif [ -n "${OUT:-}" ]; then RES="$OUT"
else
  RES="$REPO/benchmarks/results/$(date +%Y-%m-%d)_${GPU_SLUG}"
  [ -e "$RES" ] && RES="${RES}_$(date +%H%M%S)"
fi
if [ -e "$RES" ] && [ ! -d "$RES" ]; then
  check "results folder" fatal "$RES exists and is not a folder"
else
  p="$RES"; while [ ! -e "$p" ]; do p="$(dirname "$p")"; done
  if [ -w "$p" ]; then check "results folder" ok "$RES"; else check "results folder" fatal "$p is not writable"; fi
fi

# packed to what the device tool brings back: results written into $OUT, or --fit-return
PACK=$FIT_RETURN
[ -n "${OUT:-}" ] && [ "$(realpath -m "$RES")" = "$(realpath -m "$OUT")" ] && PACK=1
PLAN_BUILD=$ASSUME_BUILD; [ $SKIP_BUILD = 1 ] && PLAN_BUILD=0   # the build the time plan assumes
[ $PRE_FITS = 1 ] && [ $AB_SET = 0 ] && PLAN_BUILD=$PREBUILT_ASSUME
PIP_E="$PY -m pip install --no-build-isolation --no-deps --no-index -e ."
BUILD_ENV="MAX_JOBS=$JOBS UNET_FAST_BUILD_EXT=1 UNET_FAST_FORCE_CUDA=1"
build_plan() {
  if [ $SKIP_BUILD = 1 ]; then echo "(skipped: --skip-build)"
  elif [ $PRE_FITS = 1 ]; then echo "$PY tools/device_prebuild.py use --dir $PREBUILT && UNET_FAST_SKIP_EXTENSION=1 $PIP_E  (if it does not load: $BUILD_ENV $PIP_E)"
  else echo "$BUILD_ENV $PIP_E"; fi
}
if [ $BUDGET -eq 0 ]; then BENCH_NOTE="no time limit"; else BENCH_NOTE="what the ${BUDGET} s budget has left but the model's and the summary's time"; fi
cat <<EOF
plan:
  1. build      $(build_plan)
  2. tests      $([ $SKIP_TESTS = 1 ] && echo "(skipped: --skip-tests)" || echo "UNET_FAST_REQUIRE_EXTENSION=1 UNET_FAST_TRITON_AUTOTUNE=0 $PY -m pytest tests/ -q -rs $CPU_LADDER${XDIST:+ $XDIST} $TESTS_ARGS  (timeout ${TESTS_TIMEOUT} s)")
  3. sanitizer  $([ $SKIP_SAN = 1 ] && echo "(skipped: --skip-sanitizer)" || { [ -n "$SANITIZER" ] && echo "PYTORCH_NO_CUDA_MEMORY_CACHING=1 $SANITIZER --tool memcheck --error-exitcode 86 $PY benchmarks/sanitize_step.py --backends triton,cuda   (timeout ${SAN_TIMEOUT} s)" || echo "(skipped: no compute-sanitizer)"; })
  4. bench      $([ $SKIP_BENCH = 1 ] && echo "(skipped: --skip-bench)" || echo "$PY -m pytest benchmarks/ -q -rs --bench-suite=gpu --bench-level=$LEVEL --bench-budget=<left> $SIM_FLAG --benchmark-json=$RES/results.json $BENCH_ARGS  ($BENCH_NOTE)")
  5. model      $([ -n "$MODEL_WHY" ] && echo "(skipped: $MODEL_WHY)" || echo "$PY tools/measure_kernels.py --out $RES  (timeout ${MODEL_TIMEOUT} s)")
  5b. model-tma $([ -n "$MODEL_WHY" ] && echo "(skipped: $MODEL_WHY)" || echo "UNET_FAST_TRITON_TMA=1 $PY tools/measure_kernels.py --out $RES/tma --no-l2 --no-cutlass  (if ${MODEL_TIMEOUT} s are left)")
  6. summary    $PY benchmarks/summarize.py $RES/results.json --out $RES --stages $RES/stages.tsv
  results: $RES/{summary.md,results.json,per_layer.png,log.txt,stages.tsv,model_vs_measured.md}$([ $PACK = 1 ] && echo " (at most 8 files: the rest packed into more.tar.gz)")
  time       $(schedule "$PLAN_BUILD")
EOF
[ $SCHEDULE = 1 ] && exit 0

if [ $DRY = 1 ]; then
  if [ $PROBLEMS -gt 0 ]; then
    say "dry run: $PROBLEMS problem(s) above would stop the suite"; exit 2
  fi
  plan_out=$("$PY" -m pytest benchmarks/ --collect-only -q -p no:cacheprovider --bench-plan --bench-suite=gpu \
              --bench-level="$LEVEL" ${BENCH_ARR[@]+"${BENCH_ARR[@]}"} 2>&1)
  echo "$plan_out" | grep -E '^(benchmark plan|  tier|  total)'
  n=$(echo "$plan_out" | grep -Ec 'test_bench_(ceilings|layers|models)\.py::')
  say "pytest benchmarks/ --bench-plan collects $n GPU benchmark cases (3 ceilings included)"
  [ "$n" -gt 0 ] || { echo "$plan_out" | tail -20 >&2; echo "dry run: pytest collected no benchmarks" >&2; exit 2; }
  "$PY" benchmarks/summarize.py --help >/dev/null && "$PY" benchmarks/compare.py --help >/dev/null \
    && "$PY" benchmarks/sanitize_step.py --help >/dev/null && "$PY" benchmarks/fit_return.py --help >/dev/null && "$PY" tools/measure_kernels.py --help >/dev/null \
    || { echo "dry run: a script does not start" >&2; exit 2; }
  say "dry run: arguments, paths and scripts are fine ($WARNINGS warning(s) above); nothing was run or written"
  exit 0
fi

[ $PROBLEMS -gt 0 ] && { echo "gpu_suite.sh: $PROBLEMS problem(s) above; stopping (try --dry-run)" >&2; exit 2; }

# ------------------------------------------------------------------ run
mkdir -p "$RES" || exit 2
LOG="$RES/log.txt"; STAGES="$RES/stages.tsv"
: > "$LOG"; printf 'stage\tstatus\tseconds\tdetail\n' > "$STAGES"
FAILED=()
STAGE_OUT="$(mktemp "${TMPDIR:-/tmp}/unet_fast_stage.XXXXXX")"
# auto's measured choices start from nothing (a fresh cache of this run), and no backend is forced
export UNET_FAST_CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/unet_fast_cache.XXXXXX")"
unset UNET_FAST_BACKEND
PARTIAL="$(mktemp "${TMPDIR:-/tmp}/unet_fast_partial.XXXXXX")"
TALLY="$(mktemp "${TMPDIR:-/tmp}/unet_fast_tally.XXXXXX")"
trap 'rm -rf "$STAGE_OUT" "$UNET_FAST_CACHE_DIR" "$PARTIAL" "$PARTIAL.tmp" "$TALLY"' EXIT
# The tests stage's outcomes as tests/conftest.py tallies them (UNET_FAST_TEST_TALLY), a line as each
# test ends: "GPU-only tests: G of N ran: P passed, F failed; others: ...", which a stage cut
# at its time limit still has (pytest's own last line then counts only what finished).
tally_line() {
  awk -F'\t' '$1 == "collected" { n["gpu"] = $3; n["other"] = $5; next }
    { ran[$1]++; out[$1, $2]++ }
    function part(k, name,   s, o, sep) {
      s = sprintf("%s: %d of %s ran", name, ran[k], (k in n) ? n[k] : "?")
      sep = ": "
      split("passed failed skipped", o, " ")
      for (i = 1; i <= 3; i++) if (out[k, o[i]]) { s = s sep out[k, o[i]] " " o[i]; sep = ", " }
      return s
    }
    END { if (!("gpu" in n) && !ran["gpu"] && !ran["other"]) exit
          printf "%s; %s", part("gpu", "GPU-only tests"), part("other", "others") }' "$1"
}
left() { if [ $BUDGET -eq 0 ]; then echo 100000; else echo $(( BUDGET - ($(date +%s) - START) )); fi; }
no_time() { echo "not run: $2 s of the ${BUDGET} s budget left, less than the stage's floor and the summary's ${SUMMARY_RESERVE} s"; }
stage_rc=0
run_stage() {  # run_stage NAME TIMEOUT_S CMD... ; sets stage_rc, appends to the log
  local name="$1" limit="$2"; shift 2
  local t0; t0=$(date +%s)
  echo "=== [$name] $(date +%H:%M:%S) $*" | tee -a "$LOG"
  : > "$STAGE_OUT"
  if [ "$limit" -gt 0 ]; then
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG" "$STAGE_OUT"; stage_rc=${PIPESTATUS[0]}
  else
    "$@" 2>&1 | tee -a "$LOG" "$STAGE_OUT"; stage_rc=${PIPESTATUS[0]}
  fi
  STAGE_S=$(( $(date +%s) - t0 ))
  echo "=== [$name] exit $stage_rc after ${STAGE_S} s" | tee -a "$LOG"
}
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STAGES"; }
{ echo "unet_fast GPU suite $(date -Is) level=$LEVEL budget=$BUDGET"; echo "$PYINFO";
  echo "time plan: $(schedule "$PLAN_BUILD")";
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } >> "$LOG" 2>&1

# 1. build
PRE_USED=0
if [ $SKIP_BUILD = 0 ] && [ $PRE_FITS = 1 ]; then
  # the prebuilt library (it fitted at the preflight): installed and loaded in a fresh process, or
  # removed again; then the package is installed editable without building anything
  run_stage build-prebuilt 0 "$PY" tools/device_prebuild.py use --dir "$PREBUILT"
  if [ $stage_rc -eq 0 ]; then
    t_pre=$STAGE_S; PRE_USED=1; pre_used="$(grep '^prebuilt: ' "$STAGE_OUT" | tail -1 | cut -c11-)"
    run_stage build-pip 0 env UNET_FAST_SKIP_EXTENSION=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
    [ $stage_rc -eq 0 ] || echo "build: pip install -e . failed (exit $stage_rc); the tests run from the checkout" | tee -a "$LOG"
    record build ok $((t_pre + STAGE_S)) "$pre_used"
  else
    echo "build: the prebuilt library is not used; building here" | tee -a "$LOG"
    record prebuilt unused $STAGE_S "$(grep '^prebuilt: ' "$STAGE_OUT" | tail -1 | cut -c11-)"
  fi
fi
if [ $SKIP_BUILD = 1 ]; then record build skipped 0 "--skip-build"
elif [ $PRE_USED = 1 ]; then :
else
  if [ -z "${CUTLASS_HOME:-}" ] && [ -n "$CUTLASS_WHEEL" ] && ! "$PY" -c "import cutlass_library" >/dev/null 2>&1; then
    CUT_DIR="${TMPDIR:-/tmp}/unet_fast_cutlass"
    rm -rf "$CUT_DIR" && "$PY" -m zipfile -e "$CUTLASS_WHEEL" "$CUT_DIR" >> "$LOG" 2>&1 \
      && export CUTLASS_HOME="$CUT_DIR/cutlass_library/source" \
      && echo "CUTLASS: headers unpacked from $CUTLASS_WHEEL into $CUTLASS_HOME" | tee -a "$LOG"
  fi
  run_stage build 0 env MAX_JOBS="$JOBS" UNET_FAST_BUILD_EXT=1 UNET_FAST_FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
  if [ $stage_rc -eq 0 ]; then record build ok $STAGE_S "pip install -e . (MAX_JOBS=$JOBS)"
  else
    t_pip=$STAGE_S
    # pip refused (read-only site-packages, old pip, ...): build the extension in place instead
    run_stage build-inplace 0 env MAX_JOBS="$JOBS" UNET_FAST_BUILD_EXT=1 UNET_FAST_FORCE_CUDA=1 "$PY" setup.py build_ext --inplace
    if [ $stage_rc -eq 0 ]; then record build ok $((t_pip + STAGE_S)) "pip failed; setup.py build_ext --inplace (MAX_JOBS=$JOBS)"
    else record build FAILED $((t_pip + STAGE_S)) "pip and setup.py build_ext both failed (see log.txt)"; FAILED+=(build); fi
  fi
fi
AVAIL=$("$PY" -c "import unet_fast as uf; print(';'.join(f'{k}={\"ok\" if v is None else v}' for k, v in uf.backends.available().items()))" 2>&1 | tail -1)
echo "backends: $AVAIL" | tee -a "$LOG"
record backends info 0 "$AVAIL"

# 2. tests (the parity gate)
if [ $SKIP_TESTS = 1 ]; then record tests skipped 0 "--skip-tests"
elif l=$(left); lim=$(lim_for tests "$l"); [ "$lim" -eq 0 ]; then
  record tests skipped 0 "$(no_time tests "$l")"; FAILED+=(tests)
else
  # shellcheck disable=SC2086  # (CPU_LADDER, XDIST: plain words)
  : > "$TALLY"
  run_stage tests "$lim" env UNET_FAST_REQUIRE_EXTENSION=1 UNET_FAST_TRITON_AUTOTUNE=0 UNET_FAST_TEST_TALLY="$TALLY" \
      "$PY" -m pytest tests/ -q -rs -p no:cacheprovider $CPU_LADDER $XDIST ${TESTS_ARR[@]+"${TESTS_ARR[@]}"}
  last=$(grep -E '[0-9]+ (passed|failed|skipped|errors?)|no tests ran' "$STAGE_OUT" | tail -1 | tr -d '=' | sed 's/^ *//')
  tally=$(tally_line "$TALLY")
  [ -n "$tally" ] && echo "tests: $tally" | tee -a "$LOG"
  case $stage_rc in
    0) record tests ok $STAGE_S "$last${tally:+ ($tally)}" ;;
    124|137) record tests TIMEOUT $STAGE_S "did not finish in ${lim} s (--tests-timeout): ${tally:-$last}"; FAILED+=(tests) ;;
    5) record tests FAILED $STAGE_S "no tests collected"; FAILED+=(tests) ;;
    *) record tests FAILED $STAGE_S "pytest exit $stage_rc: $last${tally:+ ($tally)}"; FAILED+=(tests) ;;
  esac
fi

# 3. sanitizer
if [ $SKIP_SAN = 1 ]; then record sanitizer skipped 0 "--skip-sanitizer"
elif [ -z "$SANITIZER" ]; then record sanitizer skipped 0 "compute-sanitizer not found (set COMPUTE_SANITIZER)"
elif l=$(left); lim=$(lim_for sanitizer "$l"); [ "$lim" -eq 0 ]; then
  record sanitizer skipped 0 "$(no_time sanitizer "$l")"; FAILED+=(sanitizer)
else
  run_stage sanitizer "$lim" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 UNET_FAST_TRITON_AUTOTUNE=0 "$SANITIZER" --tool memcheck \
      --error-exitcode 86 --print-limit 30 "$PY" benchmarks/sanitize_step.py --backends triton,cuda
  per=$(grep -o 'SANITIZE backend=[a-z]* status=[a-z]*' "$STAGE_OUT" | sed 's/SANITIZE backend=//; s/ status=/: /' | paste -sd, -)
  errs=$(grep -Eo 'ERROR SUMMARY: [0-9]+ errors?' "$STAGE_OUT" | tail -1)
  case $stage_rc in
    0) record sanitizer ok $STAGE_S "${per:-no backend ran}; ${errs:-memcheck clean}" ;;
    86) record sanitizer FAILED $STAGE_S "memcheck found errors ($errs); $per"; FAILED+=(sanitizer) ;;
    124|137) record sanitizer TIMEOUT $STAGE_S "did not finish in ${lim} s (--sanitizer-timeout); $per"; FAILED+=(sanitizer) ;;
    *) record sanitizer FAILED $STAGE_S "exit $stage_rc; $per"; FAILED+=(sanitizer) ;;
  esac
fi

# 4. benchmarks
if [ $SKIP_BENCH = 1 ]; then record bench skipped 0 "--skip-bench"
elif l=$(left); lim=$(lim_for bench "$l"); [ $BUDGET -gt 0 ] && [ "$lim" -eq 0 ]; then
  record bench skipped 0 "$(no_time bench "$l")"
else
  # pytest's own budget: no benchmark starts later than 20 s before the stage's limit (0: none)
  bb=0; [ "$lim" -gt 0 ] && bb=$(( lim - 20 ))
  run_stage bench "$lim" "$PY" -m pytest benchmarks/ -q -rs -p no:cacheprovider --bench-suite=gpu \
      --bench-level="$LEVEL" --bench-budget="$bb" --bench-partial="$PARTIAL" --benchmark-json="$RES/results.json" \
      ${BENCH_ARR[@]+"${BENCH_ARR[@]}"}
  if [ ! -s "$RES/results.json" ] && [ -s "$PARTIAL" ]; then   # killed or crashed: keep what was measured
    cp "$PARTIAL" "$RES/results.json"
    echo "bench: pytest wrote no JSON; results.json holds the partial results" | tee -a "$LOG"
  fi
  n_budget=$(awk '/^SKIPPED \[[0-9]+\].*time budget/ {gsub(/[^0-9]/, "", $2); s += $2} END {print s + 0}' "$STAGE_OUT")
  last=$(grep -E '[0-9]+ (passed|failed|skipped|errors?)' "$STAGE_OUT" | tail -1 | tr -d '=' | sed 's/^ *//')
  [ -n "$n_budget" ] && [ "$n_budget" != 0 ] && last="$last; $n_budget not started (time budget)"
  # backend="auto" checks what it measures: a kernel far from the reference's numbers is left out
  # (explicit backends' first-run check is off in the benchmarks: benchmarks/conftest.py)
  n_wrong=$(grep -c 'NumericMismatch' "$STAGE_OUT" || true)
  [ "${n_wrong:-0}" != 0 ] && last="$last; WRONG NUMBERS: $n_wrong NumericMismatch line(s) in log.txt (auto fell back)"
  case $stage_rc in
    0) record bench ok $STAGE_S "$last" ;;
    124|137) record bench TIMEOUT $STAGE_S "killed at the time limit (${lim} s), partial results kept: $last"; FAILED+=(bench) ;;
    *) record bench FAILED $STAGE_S "pytest exit $stage_rc: $last"; FAILED+=(bench) ;;
  esac
fi

# 5. the kernel model next to the measurement (after the bench stage: its compiles are cached)
if [ -n "$MODEL_WHY" ]; then record model skipped 0 "$MODEL_WHY"
elif l=$(left); lim=$(lim_for model "$l"); [ "$lim" -eq 0 ]; then
  record model skipped 0 "$(no_time model "$l")"
else
  run_stage model "$lim" "$PY" tools/measure_kernels.py --out "$RES"
  per=$(grep -E '^(MODEL |L2 )' "$STAGE_OUT" | sed 's/^MODEL //' | paste -sd';' -)
  case $stage_rc in
    0) record model ok $STAGE_S "$per" ;;
    124|137) record model TIMEOUT $STAGE_S "killed at ${lim} s, what was measured is kept: ${per:-nothing}"; FAILED+=(model) ;;
    *) record model FAILED $STAGE_S "exit $stage_rc: ${per:-see log.txt}"; FAILED+=(model) ;;
  esac
fi

# 5b. the same with TMA descriptors in the Triton convs (UNET_FAST_TRITON_TMA=1, opt-in until
# measured: docs/design.md), only in time the budget has left over; model_vs_measured in tma/
if [ -n "$MODEL_WHY" ]; then record model-tma skipped 0 "$MODEL_WHY"
elif l=$(left); [ "$(lim_for model-tma "$l")" -eq 0 ]; then
  record model-tma skipped 0 "$(no_time model-tma "$l")"
else
  run_stage model-tma "$MODEL_TIMEOUT" env UNET_FAST_TRITON_TMA=1 "$PY" tools/measure_kernels.py \
      --out "$RES/tma" --no-l2 --no-cutlass
  per=$(grep -E '^MODEL ' "$STAGE_OUT" | sed 's/^MODEL //' | paste -sd';' -)
  case $stage_rc in
    0) record model-tma ok $STAGE_S "$per" ;;
    124|137) record model-tma TIMEOUT $STAGE_S "killed at ${MODEL_TIMEOUT} s: ${per:-nothing}"; FAILED+=(model-tma) ;;
    *) record model-tma FAILED $STAGE_S "exit $stage_rc: ${per:-see log.txt}"; FAILED+=(model-tma) ;;
  esac
fi

# 6. summary (always)
GPU_LABEL="${GPU//_/ }"; [ "$GPU" = none ] && GPU_LABEL="no GPU"
title="unet_fast benchmarks: $(date +%Y-%m-%d), $GPU_LABEL, level $LEVEL$([ $SIMULATE = 1 ] && echo ', SIMULATED on the CPU (numbers mean nothing)')"
if [ -f "$RES/results.json" ]; then
  "$PY" benchmarks/summarize.py "$RES/results.json" --out "$RES" --stages "$STAGES" --title "$title" 2>&1 | tee -a "$LOG"
else
  { echo "# $title"; echo; echo "No benchmark results (see log.txt)."; echo; echo '```'; cat "$STAGES"; echo '```'; } > "$RES/summary.md"
fi
total=$(( $(date +%s) - START ))
echo "=== done in ${total} s; results in $RES" | tee -a "$LOG"
column -t -s $'\t' "$STAGES" 2>/dev/null || cat "$STAGES"
# keep the log under the 16 MiB a returned file may have
if [ "$(wc -c < "$LOG")" -gt 15000000 ]; then
  { head -c 7000000 "$LOG"; printf '\n\n[... log cut to 14 MB ...]\n\n'; tail -c 7000000 "$LOG"; } > "$LOG.tmp" && mv "$LOG.tmp" "$LOG"
fi
# what the device tool brings back from $OUT: at most 8 files (benchmarks/fit_return.py packs the
# rest into more.tar.gz); a folder elsewhere (--out, benchmarks/results/) is left as written
if [ $PACK = 1 ]; then
  "$PY" benchmarks/fit_return.py "$RES" 2>&1 | tee -a "$LOG"
fi
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_suite.sh: FAILED stages: ${FAILED[*]}" >&2
  exit 1
fi
exit 0
