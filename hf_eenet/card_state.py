"""Whether a folder's results card still describes the model saved into it, and marking it stale when not.

Kept apart from ``model_card.py`` (which builds cards from results and imports the reporting and plotting code): a
model's ``save_pretrained`` runs this, so its file ships with the model's remote code, and what ships must import
nothing a consumer without hf_eenet may lack (transformers checks every shipped file's imports on a Hub load)."""

from __future__ import annotations

from pathlib import Path

#: how the notes of :func:`mark_card_stale` begin, and what their first paragraph holds
_STALE_NOTES = ("> **Note:** the scheduler bank was", "> **Note:** the model was")
_STALE_NOTE_TAIL = "describe the earlier model: re-evaluate (`hf-eenet evaluate`) before relying on them."


def _is_stale_note(paragraph: str) -> bool:
    """Whether a card's first paragraph is a note :func:`mark_card_stale` wrote."""
    return paragraph.startswith(_STALE_NOTES) and _STALE_NOTE_TAIL in paragraph


def mark_card_stale(model_dir: str, model, what: str, subject: str = "scheduler bank") -> None:
    """After the model or its bank changed without a new evaluation (``hf-eenet fit-scheduler`` / ``rematch``, the
    recipe retraining into the folder without ``--do_eval``): the folder's card no longer describes the model it
    ships. Its model-index results (shown by the Hub) are removed and a note heads the text; other files are left as
    they are."""
    from huggingface_hub import ModelCard

    path = Path(model_dir) / "README.md"
    if not path.is_file():
        return
    card = ModelCard.load(str(path))
    if "hf_eenet" not in (card.data.tags or []):
        return  # not a card we wrote
    card.data.eval_results = None
    card.data.model_name = None
    note = (f"> **Note:** the {subject} was {what} after this card was written; it now serves "
            f"budgets {list(model.config.scheduler_budgets or [])}. The results below (and results.json) "
            f"{_STALE_NOTE_TAIL}\n\n")
    text = card.text.lstrip("\n")
    if _is_stale_note(text.split("\n\n", 1)[0]):  # an earlier note of ours (a user's own note stays)
        text = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    card.text = note + text
    card.save(str(path))


def card_status(model_dir, model, state_dict=None, changed_here: bool = False) -> str | None:
    """Whether the results card in ``model_dir`` (``README.md`` with model-index results, written from
    ``results.json``) describes ``model``: ``"current"`` or ``"stale"``, from the digest of the evaluated model's
    weights and scheduler bank that ``results.json`` records (``model_sha256``, against ``state_dict`` when given,
    e.g. the one a distributed save gathered, else ``model``'s). Files written before the digest: ``"stale"`` when the
    bank's budgets differ or ``changed_here`` (the caller trained or refitted the model since). ``"marked"``: a card of
    ours already marked stale (:func:`mark_card_stale`). ``None``: no card of ours, or one that cannot be read."""
    import json

    from huggingface_hub import ModelCard

    from .bank import state_digest

    folder = Path(model_dir)
    if not (folder / "README.md").is_file():
        return None
    try:
        card = ModelCard.load(str(folder / "README.md"))
    except Exception:  # noqa: BLE001 - a card we cannot parse (bad YAML, ...) is not ours to judge
        return None
    if "hf_eenet" not in (card.data.tags or []):
        return None
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    if not card.data.eval_results:  # one of our notes, on a card written from results.json (else: not ours)
        return "marked" if _is_stale_note(card.text.lstrip().split("\n\n", 1)[0]) else None
    if not isinstance(results, dict):
        return None
    if results.get("model_sha256"):
        return "current" if results["model_sha256"] == state_digest(
            state_dict if state_dict is not None else model) else "stale"
    if results.get("bank_budgets") is None:
        return None
    mine, theirs = list(model.config.scheduler_budgets or []), list(results["bank_budgets"])
    same = len(mine) == len(theirs) and all(abs(a - b) <= 1e-9 for a, b in zip(mine, theirs))
    return "current" if same and not changed_here else "stale"


def mark_card_stale_in_save(folder, tmp, model, state_dict=None, changed_here: bool = False,
                            by: str = "save_pretrained") -> str | None:
    """Within a save of ``model`` into ``folder`` (written into ``tmp``, then swapped in): a results card already in
    ``folder`` (a recipe's ``README.md`` + ``results.json``) that describes other weights or another scheduler bank
    than the model saved (:func:`card_status`; ``state_dict``: the weights written, where not the model's) is put
    into ``tmp`` marked stale (:func:`mark_card_stale`: its model-index results removed, a note on top) - else it
    would ship, and be pushed, as this model's results. A card already marked has its note brought up to date (the
    budgets the model serves now). Returns the card's status when it was marked (``"stale"``: the caller warns), else
    ``None``; a save that writes its own ``README.md`` is left alone."""
    import shutil

    if folder is None or Path(tmp, "README.md").exists() or not Path(folder, "README.md").is_file():
        return None
    status = card_status(folder, model, state_dict, changed_here=changed_here)
    if status not in ("stale", "marked"):
        return None
    if status == "marked" and f"it now serves budgets {list(model.config.scheduler_budgets or [])}." in \
            Path(folder, "README.md").read_text(encoding="utf-8"):
        return None  # the note is up to date
    shutil.copy(Path(folder, "README.md"), Path(tmp, "README.md"))
    mark_card_stale(tmp, model, f"changed (saved by {by} with other weights or another scheduler bank)",
                    subject="model")
    return status


__all__ = ["card_status", "mark_card_stale", "mark_card_stale_in_save"]
