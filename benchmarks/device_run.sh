#!/usr/bin/env bash
# One call on a lent GPU machine: the training-throughput probe, a time-limited training run, then
# GPU latency of the result. Everything it writes lands in $OUT (the device tool returns it).
#   [BATCH=32 LR=1e-3 ANYWHERE=1 WEIGHTS=1,1] bash benchmarks/device_run.sh DATA[,DATA2...] MINUTES [INIT_CKPT]
# DATA: EG1800-layout folders inside the repo, comma-separated (the tool carries only the repo and
# at most 64 MiB), e.g. .data/eg1800,.data/ccp with CCP shrunk by benchmarks/carry.py.
set -euo pipefail
data=${1:?data folder}; minutes=${2:?training minutes}; init=${3:-}
out=${OUT:-rcr-deploy-out/device}; mkdir -p "$out"
data_args=(); for d in ${data//,/ }; do data_args+=(--data "$d"); done
first=${data%%,*}
export PYTHONUNBUFFERED=1
workers=$(( $(nproc) - 2 ))
# The image has every dependency the training path needs; this maps rcr_deploy.benchmarks to benchmarks/.
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi -L || true
python3 -c "import torch, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__)"
python3 -m rcr_deploy.benchmarks.train_throughput --data "$first" --device cuda --workers "$workers" --seconds 3 --profile --out "$out/throughput.json"
python3 -m rcr_deploy train "${data_args[@]}" ${WEIGHTS:+--data-weights "$WEIGHTS"} --out "$out/run" --device cuda --time-limit "$minutes" \
  --schedule cosine --warmup-epochs 5 --batch "${BATCH:-32}" --lr "${LR:-1e-3}" --workers "$workers" --cache --val-every 40 ${ANYWHERE:+--anywhere} \
  ${init:+--init "$init"} 2>&1 | tr '\r' '\n' | grep -v '^epoch .*step/s' || true
test -f "$out/run/best.pt"
# GPU latency: torch eager (fp32, fp16), torch.compile, then CUDA-graph replays, at batch 1 and 32.
python3 -m rcr_deploy bench --backend torch-train,torch-deploy,torch-compile,torch-fp16 --device cuda --ckpt "$out/run/best.pt" \
  --batch 1,32 --iters 200 --max-seconds 5 --json-out "$out/bench-gpu.json" --md "$out/bench-gpu.md" || echo "bench failed: $?"
python3 -m rcr_deploy bench --backend torch-deploy,torch-fp16 --cuda-graphs --device cuda --ckpt "$out/run/best.pt" \
  --batch 1,32 --iters 200 --max-seconds 5 --json-out "$out/bench-gpu-graphs.json" --md "$out/bench-gpu-graphs.md" || echo "bench failed: $?"
