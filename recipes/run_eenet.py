"""Fine-tune a multi-exit model, fit the EENet scheduler bank and compare it with the baselines (HF style).

Presets (JSON configs; flags after the file override it), run from the repository root:

    python recipes/run_eenet.py recipes/presets/sst2.json
    python recipes/run_eenet.py recipes/presets/ag_news.json
    python recipes/run_eenet.py recipes/presets/sst5.json

Your own data (csv, tsv, json, jsonl or parquet; one text column or a sentence pair):

    python recipes/run_eenet.py --model_name_or_path sentence-transformers/all-MiniLM-L6-v2 \\
        --train_file train.csv --validation_file dev.csv --test_file test.csv \\
        --text_column_names question,answer --label_column_name verdict \\
        --output_dir outputs/mine --do_train --do_eval --do_predict --num_train_epochs 2

Runs under `torchrun --nproc_per_node 2` (DDP, gloo on CPU) as well. All flags: python recipes/run_eenet.py --help
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_eenet.data import DataError  # noqa: E402
from hf_eenet.recipe import main  # noqa: E402
from recipes.presets import resolve_backbone  # noqa: E402

if __name__ == "__main__":
    try:
        main(prog="python recipes/run_eenet.py", resolve_model=resolve_backbone)
    except (DataError, ValueError, OSError) as err:  # OSError: files, permissions, a model not found offline
        # a problem with the user's data or flags: one line, no traceback (as `hf-eenet train`;
        # HF_EENET_TRACEBACK=1 shows it)
        if os.environ.get("HF_EENET_TRACEBACK"):
            raise
        sys.exit(f"run_eenet.py: error: {err}")
