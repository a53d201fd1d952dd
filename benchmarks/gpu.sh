#!/usr/bin/env bash
# Every check that needs a GPU, as one script (about 6 minutes on one H200):
#   1. the CUDA tests (sparse gradients equal dense ones on the GPU);
#   2. one pass of synthetic activations training all five architectures at once on CUDA
#      in bf16 with the auto step, then evaluating one of them;
#   3. benchmarks/peers.py at the GPU shape (d_in 2304, d_sae 65536, batch 4096, bf16),
#      with the dense/sparse crossover, writing peers_cuda.json under $OUT.
# The peers and anything else the machine lacks must be importable (pip install -e '.[bench]',
# or wheels on PYTHONPATH). DEVICE=cpu PRECISION=float32 D_IN=256 D_SAE=2048 TOKENS=200000
# runs it small on a CPU (the peers' bf16 is CUDA autocast).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
D_IN=${D_IN:-2304}
D_SAE=${D_SAE:-65536}
TOKENS=${TOKENS:-4000000}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

echo "== 1. CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_sparse_step.py -k cuda

echo "== 2. five SAEs on one stream, $DEVICE, $PRECISION, auto step"
cat >"$WORK/saes.yaml" <<EOF
batch_size: 4096
tokens: $TOKENS
saes:
  - {arch: relu, d_sae: $((D_SAE / 4)), sparsity_coef: 4.0}
  - {arch: gated, d_sae: $((D_SAE / 4)), sparsity_coef: 8.0}
  - {arch: jumprelu, d_sae: $((D_SAE / 4)), sparsity_coef: 4.0}
  - {arch: topk, d_sae: $((D_SAE / 4)), options: {k: 32}}
  - {arch: batchtopk, d_sae: $((D_SAE / 4)), options: {k: 32}}
EOF
python3 -m gated_sae synth --out "$WORK/acts.pt" --n 131072 --dim 256 --features 2048
python3 -m gated_sae train --acts "$WORK/acts.pt" --config "$WORK/saes.yaml" --out "$WORK/run" \
    --device "$DEVICE" --precision "$PRECISION"
python3 - "$WORK/run" <<'EOF'
import json, sys
run = json.load(open(f"{sys.argv[1]}/run.json"))
print(json.dumps(run["timing"], indent=1))
EOF
python3 -m gated_sae eval "$WORK/run/gated" --acts "$WORK/acts.pt" --device "$DEVICE"

echo "== 3. peers, d_in $D_IN, d_sae $D_SAE, $PRECISION"
python3 benchmarks/peers.py --synthetic --device "$DEVICE" --precision "$PRECISION" --d-in "$D_IN" \
    --d-sae "$D_SAE" --batch 4096 --rounds 10 --crossover --out "$OUT"
