#!/usr/bin/env bash
# The measurements that need a GPU, in one short run (for a session that has the device machine):
#   bash benchmarks/gpu_session.sh            # writes benchmarks/gpu_results.txt (copy it into RESULTS.md)
# About 8-11 minutes on an H200: issue 9's LeNet batched-vs-loop round (the one open target), the CUDA tests, gossip at N = 100k and 1M (issue 2's >= 10M node-updates/s
# target) and batched gradient inversion with 1-256 victims (issue 4's >= 30x the official 157 / 23 it/s).
set -u
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks}/gpu_results.txt
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo "## issue 9: LeNet gossip round batched vs loop (target >= 20x), async vs sync, corrected combine"
  timeout 200 python benchmarks/bench_vv.py --device cuda --threads 0 --items 1 2 3 --lenet-nodes 100 1000
  echo "## CUDA tests"
  FEDSIM_DATA_DIR=${FEDSIM_DATA_DIR:-../shared/data} timeout 120 python -m pytest -q -m "gpu or not slow" -k "cuda or gpu" 2>&1 | tail -3
  echo "## gossip"
  timeout 240 python benchmarks/bench_gossip.py --device cuda --sizes 100000 1000000 --threads 0 --loop-max-n 0
  echo "## gradient inversion"
  timeout 240 python benchmarks/bench_attacks.py --device cuda --victims 1 8 64 256
} 2>&1 | tee "$out"
