#!/usr/bin/env bash
# The full-scale run of bench/RESULTS.md ("full scale"), as it ran on a lent 4-GPU machine (no network there):
# released-size random checkpoints, loading, the notebooks on one GPU each, generation on 1, 2 and 4 GPUs.
#
#   bash bench/full_scale.sh setup            # wheels carried in .whl/ (bench/README.md) -> /tmp/site
#   bash bench/full_scale.sh load OUT         # write + check the released layout, load it three ways
#   bash bench/full_scale.sh notebooks OUT    # the notebooks, profile "gpu": NOTEBOOKS (default: all but 04) one per
#                                             # GPU, then ALL_GPU_NOTEBOOKS (default: 04, whose workers cell needs
#                                             # several GPUs) with every GPU visible, in OUT/all_gpus
#   bash bench/full_scale.sh parallel OUT     # torchrun generation: layouts 1x1 .. 2x2, then 50 steps
#   bash bench/full_scale.sh fa4              # FlashAttention 4 carried in .fa4/ (fa4.tar.xz, bench/README.md), with
#                                             # the other wheels / .tar.xz archives it holds (ftfy, a slim diffusers)
#   bash bench/full_scale.sh scaling OUT      # one DiT forward on 1, 2, 4 GPUs (compiled; ATTENTION, default flash4)
#   bash bench/full_scale.sh cli OUT          # the launcher itself: torchrun -m wclab.parallel generate on GPUS
#                                             # (default "1 2 4") processes, STEPS (default 4) steps, CKPT's files
#   bash bench/full_scale.sh alltoall OUT     # the forward's all-to-alls alone under each NCCL setting of A2A_SETTINGS
#                                             # (';'-separated, "" = NCCL's defaults); the fastest goes to OUT/nccl_best.env
#
# parallel: LAYOUTS, STEPS, FULL pick the runs; ATTENTION=flash4|sdpa|auto the kernel; RANDOM_WEIGHTS=1 builds random
# weights on each GPU instead of loading CKPT (no checkpoint files needed); NPROC ranks (default: every GPU) on
# PORT. scaling: GPUS="1 2 4" rank counts; PROFILE=1 also profiles one forward (device time by kernel kind in the
# JSON line, rank 0's costliest ops in OUT/profile_<n>gpu.txt, its compiled block code in OUT/code_<n>gpu.py).
# parallel and scaling: SEQ_ATTENTION=auto|ulysses|kv_gather|ulysses_push, how the split tokens attend (wclab.parallel.ParallelDiT;
# auto: kv_gather on 2 sequence ranks). scaling: SCALING_ARGS, parallel: PARALLEL_ARGS, more arguments for
# bench/parallel_scaling.py / bench/bench_parallel_e2e.py (e.g. --nccl-window).
#
# CKPT (default: a folder on the largest local file system) holds the checkpoints (~69 GB, + hard links for
# the WorldCanvas_ref pair).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${CKPT:-}" ]; then
  CKPT=$(df -P -BG --output=avail,target 2>/dev/null | tail -n +2 | sort -n | tail -1 | awk '{print $2}')/wclab_ckpt
  [ "$CKPT" = "//wclab_ckpt" ] && CKPT=/wclab_ckpt
fi
export WCLAB_CHECKPOINTS=$CKPT
# ENV_FILE: a file of export lines (as `alltoall` writes to OUT/nccl_best.env) to run under
if [ -n "${ENV_FILE:-}" ]; then source "$ENV_FILE" || exit 1; env | grep "^NCCL_" | sort | tr '\n' ' '; echo; fi
# Fail before the long work when a carried package is missing (as when imageio-ffmpeg's archive was not carried).
need() {
  python3 -c 'import importlib.util, sys
missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
sys.exit(f"missing python modules {missing}: carry their wheels / archives (bench/README.md)" if missing else 0)' "$@"
}
NOTEBOOK_MODULES=(nbclient nbformat ipykernel ipycanvas ipywidgets mediapy imageio_ffmpeg diffusers ftfy)
step=${1:?usage: full_scale.sh setup|load|notebooks|parallel|fa4|scaling|cli|alltoall OUT}
out=${2:-bench/out/full_scale}
mkdir -p "$out"

case $step in
setup)
  mkdir -p /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  for a in .whl/*.tar.xz; do [ -e "$a" ] && tar xJf "$a" -C /tmp/site; done
  nvidia-smi -L; df -h "$(dirname "$CKPT")"; free -g | head -2; echo "CKPT=$CKPT"
  need "${NOTEBOOK_MODULES[@]}" || exit 1
  ;;
load)
  mkdir -p "$CKPT"
  python3 bench/bench_load.py --dir "$CKPT" --out "$out/load.json" 2>&1 | tee "$out/load.log"
  mkdir -p "$CKPT/WorldCanvas_dit/WorldCanvas_ref"
  for e in high low; do
    ln -f "$CKPT/WorldCanvas_dit/WorldCanvas/${e}_model.safetensors" "$CKPT/WorldCanvas_dit/WorldCanvas_ref/"
  done
  python3 -m wclab.checkpoints "$CKPT" --variant WorldCanvas_ref | tail -3
  ;;
notebooks)
  need "${NOTEBOOK_MODULES[@]}" || exit 1
  gpus=$(nvidia-smi -L | awk -F'[ :]' '{printf "%s%s", sep, $2; sep=","}')
  # 04 runs with every GPU visible (its workers cell needs several), the others one per GPU
  spread=${NOTEBOOKS-$(ls notebooks/0*.ipynb | grep -v 04_attention)}
  every=${ALL_GPU_NOTEBOOKS-notebooks/04_attention.ipynb}
  [ -n "$spread" ] && python3 bench/run_notebooks.py --profile gpu --gpus "$gpus" --out "$out" $spread 2>&1 \
    | tee "$out/notebooks.log"
  [ -n "$every" ] && python3 bench/run_notebooks.py --profile gpu --gpus all --out "$out/all_gpus" $every 2>&1 \
    | tee "$out/all_gpus.log"
  ;;
parallel)
  n=${NPROC:-$(nvidia-smi -L | wc -l)}
  if [ "${RANDOM_WEIGHTS:-0}" = 1 ]; then weights=(--random); else weights=(--checkpoints "$CKPT"); fi
  torchrun --nproc-per-node "$n" --master-port "${PORT:-29500}" bench/bench_parallel_e2e.py "${weights[@]}" --compile \
    --attention "${ATTENTION:-auto}" --layouts "${LAYOUTS:-1x1,1x2,2x1,1x4,2x2}" --steps "${STEPS:-4}" \
    --full "${FULL-4:50,2:50}" --sequence-attention "${SEQ_ATTENTION:-auto}" ${PARALLEL_ARGS:-} --out "$out" 2>&1 | grep --line-buffered -v "Warning\|warn(" | tee "$out/parallel.log"
  ;;
fa4)
  mkdir -p /tmp/site
  if ls .fa4/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .fa4/*.whl
  fi
  for a in .fa4/*.tar.xz; do tar xJf "$a" -C /tmp/site; done
  python3 -c "from wclab.models.attention import available_backends as a; b = a(); print('attention:', b); \
assert 'flash4' in b, 'flash4 missing'"
  ;;
scaling)
  for n in ${GPUS:-1 2 4}; do
    if [ "${PROFILE:-0}" = 1 ]; then prof=(--profile "$out/profile_${n}gpu.txt" --code "$out/code_${n}gpu.py"); else prof=(); fi
    torchrun --nproc-per-node "$n" --master-port "${PORT:-29501}" bench/parallel_scaling.py --compile --attention "${ATTENTION:-flash4}" \
      --warmup 2 --repeat 5 --check --sequence-attention "${SEQ_ATTENTION:-auto}" "${prof[@]}" ${SCALING_ARGS:-} \
      --out "$out/scaling.jsonl" 2>&1 | grep --line-buffered -v "Warning\|warn(" | tail -2
  done
  python3 bench/parallel_scaling.py --table "$out/scaling.jsonl" | tee "$out/scaling.md"
  ;;
alltoall)
  IFS=';' read -r -a settings <<< "${A2A_SETTINGS:-;NCCL_MIN_NCHANNELS=32;NCCL_MIN_P2P_NCHANNELS=32;NCCL_P2P_NVL_CHUNKSIZE=2097152;NCCL_BUFFSIZE=16777216 NCCL_P2P_NVL_CHUNKSIZE=2097152;NCCL_P2P_USE_CUDA_MEMCPY=1}"
  n=$(nvidia-smi -L | wc -l)
  NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT torchrun --nproc-per-node "$n" --master-port "${PORT:-29502}" bench/all_to_all.py \
    --out "$out/nccl_default_info.jsonl" 2>&1 | grep -i "channels\|NCCL version" | sort -u | head -8
  for setting in "${settings[@]}"; do
    echo "== ${setting:-NCCL defaults}"
    env $setting timeout 120 torchrun --nproc-per-node "$n" --master-port "${PORT:-29502}" bench/all_to_all.py \
      --out "$out/alltoall.jsonl" 2>&1 | grep --line-buffered "^{\|Error\|error" | tail -3
  done
  python3 bench/all_to_all.py --table "$out/alltoall.jsonl" --best "$out/nccl_best.env" | tee "$out/alltoall.md"
  ;;
cli)
  need mediapy imageio_ffmpeg || exit 1
  gpus=$(echo "${GPUS:-1 2 4}" | tr ' ' ',')
  python3 bench/cli_runs.py --checkpoints "$CKPT" --example "${EXAMPLE:-full/ball}" --gpus "$gpus" \
    --steps "${STEPS:-4}" --compile --attention "${ATTENTION:-flash4}" --out "$out/cli" 2>&1 | tee "$out/cli.log"
  ;;
*) echo "unknown step $step"; exit 2 ;;
esac
