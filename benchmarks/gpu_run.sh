#!/usr/bin/env bash
# Issue 11's GPU run: one prepared script (about 7-8 minutes on an H200 with all parts), results under $OUT.
#
# Needs the ignored folder .gpu/ beside the checkout (what travels to the GPU machine besides the repository):
#   .gpu/whl/           transformers wheel (the machine has torch, not transformers >= 5.23; installed with --target)
#   .gpu/tok/           MiniLM tokenizer files (sweep mode tokenizes the SST-2 test sentences)
#   .gpu/sst2_test.tsv  ../shared/data/sst2/test.tsv
#   .gpu/sst2_model/    the fitted SST-2 model (config.json, tokenizer files, model.safetensors with the backbone and
#                       heads stored as fp16 to fit the 64 MiB transfer, the scheduler bank as saved; computed in fp32)
# On the device:  bash benchmarks/gpu_run.sh
# CPU smoke test: QUICK=1 DEV=cpu PY=.venv/bin/python SKIP_INSTALL=1 OUT=/tmp/gpu_smoke bash benchmarks/gpu_run.sh
#   (PIPE_BUDGETS=0.5,0.8 for a model whose bank stops at 0.8, e.g. the `make demo` one)
# PARTS=pipeline (or any of sweep,pipeline,decide,profile, comma-separated) runs only those parts (default: all four;
#   profile = torch.profiler of stock vs depth waves at micro-batch 128, a diagnosis without a target).
# .gpu/ is made by `bash benchmarks/prepare_gpu_run.sh [MODEL_DIR]` (this machine, before the device call).
set -euo pipefail
OUT=${OUT:-/tmp/gpu_out}
DEV=${DEV:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT"
if [ -z "${SKIP_INSTALL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -n "${QUICK:-}" ]; then
  SWEEP="--n_texts 96 --n_texts_bs1 4 --repeats 1 --budgets 0.5,0.9 --mbs 1,32 --chunk_sizes 32,64"
  PIPE="--n_texts 96 --n_texts_bs1 4 --repeats 1 --mbs 1,32"
else
  SWEEP="--chunk_sizes 1024,2048,4096"
  PIPE="--n_texts 1821 --n_texts_bs1 200 --mbs 1,32,128"
fi
PIPE_BUDGETS=${PIPE_BUDGETS:-0.5,0.9}  # budgets of the real-model part (the SST-2 preset's bank serves 0.25-0.9)
NOTE="real SST-2 model; its fp32 weights travelled as fp16 (64 MiB transfer limit) and run in fp32; bank as saved"
status=0
# pre-flight of the experimental CUDA-graph engine in its own process (a failed capture must not sink the sweep)
ENGINES=loop,waves
if [ "$DEV" = cuda ] && $PY benchmarks/bench_engine.py --device cuda --texts .gpu/sst2_test.tsv --tokenizer .gpu/tok \
    --shapes minilm_l6 --dtypes fp32 --mbs 1,32 --budgets 0.5 --engines waves,waves_graphs,loop_graphs --n_texts 256 --n_texts_bs1 8 --repeats 1 \
    --chunk_sizes "" --json "$OUT/preflight.json" && ! grep -q "_graphs/error" "$OUT/preflight.json"; then
  ENGINES=loop,waves,waves_graphs,loop_graphs
  PIPE="$PIPE --graphs"
fi
echo "engines: $ENGINES"
PARTS=",${PARTS:-sweep,pipeline,decide,profile},"
if [[ $PARTS == *,sweep,* ]]; then
  $PY benchmarks/bench_engine.py --device "$DEV" --texts .gpu/sst2_test.tsv --tokenizer .gpu/tok \
      --engines "$ENGINES" $SWEEP --json "$OUT/engine_gpu.json" || { echo "FAILED: sweep"; status=1; }
fi
if [[ $PARTS == *,pipeline,* ]]; then
  $PY benchmarks/bench_engine.py --device "$DEV" --pipeline --model_dir .gpu/sst2_model --texts .gpu/sst2_test.tsv \
      --budgets "$PIPE_BUDGETS" $PIPE --note "$NOTE" --json "$OUT/engine_gpu_pipeline.json" || { echo "FAILED: pipeline"; status=1; }
fi
if [[ $PARTS == *,decide,* ]]; then
  $PY benchmarks/gpu_decide_check.py --device "$DEV" --json "$OUT/gpu_decide_check.json" || { echo "FAILED: decide"; status=1; }
fi
if [[ $PARTS == *,profile,* ]]; then
  PROF=""
  [ -n "${QUICK:-}" ] && PROF="--n_texts 64 --shapes minilm_l6 --dtypes fp32 --repeats 1"
  $PY benchmarks/gpu_profile_waves.py --device "$DEV" --texts .gpu/sst2_test.tsv --tokenizer .gpu/tok $PROF \
      --json "$OUT/gpu_profile_waves.json" || { echo "FAILED: profile"; status=1; }
fi
exit $status
