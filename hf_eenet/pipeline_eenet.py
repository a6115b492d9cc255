"""Budgeted text classification: ``pipeline("text-classification", model=d)(texts, budget=0.5)``.

Each result carries the stock fields plus ``exit_layer`` (1-based encoder layer the text exited at) and ``cost``
(fraction of the full model's cost). Inside a batch (``batch_size=``) every row really stops at its own exit.

With ``import hf_eenet``, the stock ``"text-classification"`` task builds this class for hf_eenet early-exit models
only (:class:`TextClassificationDispatch`); every other model gets the stock ``TextClassificationPipeline`` itself, so
its outputs and errors are unchanged. ``save_pretrained`` / ``push_to_hub`` of an EENet model write this file next to
the model code and ``custom_pipelines = {"text-classification": ...}`` into ``config.json``: without hf_eenet,
``pipeline("text-classification", model=d, trust_remote_code=True)`` (or ``pipeline(model=d, trust_remote_code=True)``)
then loads this class from the folder and honours ``budget=``.
"""

from __future__ import annotations

from transformers import TextClassificationPipeline


class EENetTextClassificationPipeline(TextClassificationPipeline):
    """``TextClassificationPipeline`` + per-call ``budget`` / ``exit_policy`` and the exit taken per text.

    Call kwargs:
        budget (`float`): fraction of the full cost in (0, 1]; uses the model's fitted scheduler bank (default:
            ``config.default_budget`` when the model has a bank, else the full model).
        exit_policy (`ExitPolicy`): an explicit policy instead of a budget.
        top_k, function_to_apply, batch_size, truncation, max_length: as in the stock pipeline. Over-long texts are
            truncated to the model's maximum length by default.
    """

    def _is_early_exit_model(self) -> bool:
        return is_early_exit_model(self.model)

    def _sanitize_parameters(self, budget=None, exit_policy=None, function_to_apply=None, top_k="", **tokenizer_kwargs):
        preprocess, forward, postprocess = super()._sanitize_parameters(
            function_to_apply=function_to_apply, top_k=top_k, **tokenizer_kwargs
        )
        if (budget is not None or exit_policy is not None) and not self._is_early_exit_model():
            raise ValueError(f"budget/exit_policy need an hf_eenet early-exit model, got {type(self.model).__name__}")
        if budget is not None and exit_policy is not None:
            raise ValueError("give either budget or exit_policy, not both")
        if budget is not None:
            self.model.get_exit_policy(budget)  # validates now: type, NaN, (0, 1], fitted range, a bank exists
            forward["budget"] = float(budget)
        if exit_policy is not None:
            forward["exit_policy"] = exit_policy
        return preprocess, forward, postprocess

    def preprocess(self, inputs, **tokenizer_kwargs):
        if not self._is_early_exit_model():  # exactly the stock behaviour
            return super().preprocess(inputs, **tokenizer_kwargs)
        if inputs is None:
            raise ValueError("the pipeline got None instead of a text")
        if isinstance(inputs, dict):
            texts = [inputs.get("text"), inputs.get("text_pair")]
        elif isinstance(inputs, list) and len(inputs) == 1 and isinstance(inputs[0], list) and len(inputs[0]) == 2:
            texts = list(inputs[0])  # the stock pipeline's legacy [["text", "pair"]] form
        else:
            texts = [inputs]
        for t in texts:
            if t is None and isinstance(inputs, dict):
                continue
            if not isinstance(t, str):
                raise TypeError(f"texts must be str (or a {{'text', 'text_pair'}} dict), got {type(t).__name__}: {t!r}")
            if not t.strip():
                raise ValueError("the pipeline got an empty string; give non-empty text")
        tokenizer_kwargs.setdefault("truncation", True)
        if tokenizer_kwargs["truncation"] and "max_length" not in tokenizer_kwargs:
            tokenizer_kwargs["max_length"] = self._max_tokens()
        return super().preprocess(inputs, **tokenizer_kwargs)

    def _max_tokens(self) -> int:
        """Longest input the model takes: its position table (RoBERTa positions start after the padding index),
        capped by the tokenizer's own limit."""
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or 512
        if "roberta" in getattr(config, "model_type", ""):
            limit -= (config.pad_token_id or 0) + 1
        tok_limit = getattr(self.tokenizer, "model_max_length", None)
        return min(limit, tok_limit) if tok_limit and tok_limit < 10**6 else limit

    def _forward(self, model_inputs, budget=None, exit_policy=None):
        if not self._is_early_exit_model():
            return super()._forward(model_inputs)
        config = self.model.config
        if budget is None and exit_policy is None and config.scheduler_budgets:
            budget = config.default_budget if config.default_budget is not None else config.scheduler_budgets[-1]
        out = self.model(**model_inputs, budget=budget, exit_policy=exit_policy)
        # batch-first tensors only: the pipeline unbatches every field along dim 0
        return {"logits": out.logits, "exit_layer": out.exit_layer, "exit_cost": out.exit_cost}

    def postprocess(self, model_outputs, function_to_apply=None, top_k=1, _legacy=True):
        result = super().postprocess(model_outputs, function_to_apply=function_to_apply, top_k=top_k, _legacy=_legacy)
        if "exit_layer" not in model_outputs:
            return result
        extra = {"exit_layer": int(model_outputs["exit_layer"].reshape(-1)[0]),
                 "cost": float(model_outputs["exit_cost"].reshape(-1)[0])}
        if isinstance(result, dict):
            return {**result, **extra}
        return [{**r, **extra} for r in result]


def is_early_exit_model(model) -> bool:
    """An hf_eenet early-exit classifier (installed package or its Hub remote-code copy)."""
    return hasattr(model, "exit_forward") and hasattr(model, "get_exit_policy")


class TextClassificationDispatch(TextClassificationPipeline):
    """What ``import hf_eenet`` registers as the ``"text-classification"`` implementation: constructing it returns an
    :class:`EENetTextClassificationPipeline` for early-exit models and a plain stock ``TextClassificationPipeline``
    for every other model (so ``import hf_eenet`` changes nothing for them)."""

    def __new__(cls, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        impl = EENetTextClassificationPipeline if is_early_exit_model(model) else TextClassificationPipeline
        return impl(*args, **kwargs)


__all__ = ["EENetTextClassificationPipeline", "TextClassificationDispatch", "is_early_exit_model"]
