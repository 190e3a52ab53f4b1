#!/usr/bin/env bash
# The one prepared script for a session that is lent a GPU machine (#13): the test suite, then the
# speed tables (LeNet-5 and ResNet-20 steps against Flax, Equinox and PyTorch on CUDA, and
# ResNet-20's layers one at a time), each under its own time limit so that one slow part cannot
# starve the others. Run it from the repository root, e.g. through the device tool:
#
#     bash experiments/gpu_report.sh          # tables and logs into $OUT (else ./gpu_report)
#     GPU_REPORT_QUICK=1 bash experiments/gpu_report.sh   # a dry run in a minute or two, on any machine
#
# It installs nothing: the machine's image has jax with CUDA, torch with CUDA, flax, equinox, optax,
# pytest and hypothesis; jaxconv is read from this checkout (PYTHONPATH). It writes at most 7 files
# (the device tool brings back 8): machine.txt, pytest.log, lenet.md/.log, resnet.md/.log, conv.log.
set -uo pipefail
out=${OUT:-gpu_report}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
tmp=$(mktemp -d)
if [ -n "${GPU_REPORT_QUICK:-}" ]; then
  tests=(-k "readme or auto") bench=(--quick) resnet=(--quick) conv=(--quick)
else
  # ResNet-20: jaxconv (default, impl=lax) against the peers only: the plain-JAX variants would not fit the time limit
  tests=() bench=(--rounds 10) conv=(--resnet --rounds 5)
  resnet=(--batch-sizes 128 512 --rounds 5 --steps 5 --only "jaxconv default" "impl=lax" Flax Equinox PyTorch)
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  "$py" -c "import jax, torch; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} > "$out/machine.txt" 2>&1

timeout 180 "$py" -m pytest -q --maxfail=20 -p no:cacheprovider "${tests[@]}" > "$out/pytest.log" 2>&1
echo "pytest exit status $?" >> "$out/pytest.log"

timeout 120 "$py" experiments/benchmark.py --devices 1 "${bench[@]}" --out "$tmp/lenet" > "$out/lenet.log" 2>&1 \
  && cp "$tmp/lenet/benchmark.md" "$out/lenet.md"
timeout 150 "$py" experiments/benchmark.py --model resnet20 --devices 1 "${resnet[@]}" --out "$tmp/resnet" > "$out/resnet.log" 2>&1 \
  && cp "$tmp/resnet/benchmark.md" "$out/resnet.md"
timeout 100 "$py" experiments/bench_conv.py "${conv[@]}" --out "$tmp/conv" > "$out/conv.log" 2>&1
echo "done: $(ls "$out" | tr '\n' ' ')"
