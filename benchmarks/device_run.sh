#!/usr/bin/env bash
# One call on a lent GPU machine: the training-throughput probe, a time-limited training run, then
# GPU latency of the result. Everything it writes lands in $OUT (the device tool returns it).
#   [BATCH=32 LR=1e-3 ANYWHERE=1 WEIGHTS=1,1 PROBE=0 BENCH=0 DEVICE=cuda] bash benchmarks/device_run.sh DATA[,DATA2...] MINUTES [INIT_CKPT]
# DATA: EG1800-layout folders inside the repo, comma-separated (the tool carries only the repo and
# at most 64 MiB), e.g. .data/eg1800,.data/ccp with CCP shrunk by benchmarks/carry.py.
# PROBE=0 skips the throughput probe and BENCH=0 the GPU benchmark after the training (about 2
# minutes), giving their time to the training. DEVICE=cpu is a dry run
# of the same steps on any machine. The tool returns at most 8 files, so the benchmark tables stay
# JSON only: run/{best,last}.pt, run/{history,config}.json, run/history.png, train.log, bench-gpu*.json.
set -euo pipefail
data=${1:?data folder}; minutes=${2:?training minutes}; init=${3:-}
out=${OUT:-rcr-deploy-out/device}; mkdir -p "$out"
data_args=(); for d in ${data//,/ }; do data_args+=(--data "$d"); done
first=${data%%,*}
export PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}
stamp() { echo "[$(date -u +%T)] $*"; }
workers=$(( $(nproc) - 2 ))
# The image has every dependency the training path needs; this maps rcr_deploy.benchmarks to benchmarks/.
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi -L || true
python3 -c "import torch, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__)"
stamp start
if [ "${PROBE:-1}" != 0 ]; then
  python3 -m rcr_deploy.benchmarks.train_throughput --data "$first" --device "$device" --workers "$workers" --seconds 3 --profile --out "$out/throughput.json"
fi
stamp train
# Validation only after the last epoch (always validated): on the first H200 call it ran at 5 images/s
# beside the loader's busy workers, 86 s at epoch 40, time the plan does not budget.
python3 -m rcr_deploy train "${data_args[@]}" ${WEIGHTS:+--data-weights "$WEIGHTS"} --out "$out/run" --device "$device" --time-limit "$minutes" \
  --schedule cosine --warmup-epochs 5 --batch "${BATCH:-32}" --lr "${LR:-1e-3}" --workers "$workers" --cache --val-every 1000 ${ANYWHERE:+--anywhere} \
  ${init:+--init "$init"} 2>&1 | tee "$out/train.log" | tr '\r' '\n' | grep -v '^epoch .*step/s' || true
test -f "$out/run/best.pt"
stamp bench
if [ "${BENCH:-1}" = 0 ]; then stamp done; exit 0; fi
# GPU latency: torch eager (fp32, fp16), torch.compile, then CUDA-graph replays, at batch 1 and 32.
python3 -m rcr_deploy bench --backend torch-train,torch-deploy,torch-compile,torch-fp16 --device "$device" --ckpt "$out/run/best.pt" \
  --batch 1,32 --iters 200 --max-seconds 5 --json-out "$out/bench-gpu.json" || echo "bench failed: $?"
python3 -m rcr_deploy bench --backend torch-deploy,torch-fp16 --cuda-graphs --device "$device" --ckpt "$out/run/best.pt" \
  --batch 1,32 --iters 200 --max-seconds 5 --json-out "$out/bench-gpu-graphs.json" || echo "bench failed: $?"
stamp done
