"""Multi-exit BERT / RoBERTa sequence classifiers with real per-sample early exit inside a batch.

One exit loop (:class:`EENetModelMixin`) serves both backbones. It runs the encoder layer by layer; after an exit
layer it computes that exit's logits for the rows still running, asks the exit policy which rows stop, writes their
logits to the output, and *removes them from the batch* (hidden states and the 2-D padding mask, then trailing
all-padding columns) before the next layer, so a batch costs what its rows need. Without a policy the same loop
computes every exit for every row (the "all exits" forward used for training and scheduler fitting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel
from transformers.models.roberta.modeling_roberta import (
    RobertaClassificationHead,
    RobertaModel,
    RobertaPreTrainedModel,
)
from transformers.utils import ModelOutput

from .configuration_eenet import EENetBertConfig, EENetRobertaConfig
from .policies import ExitPolicy


@dataclass
class EENetSequenceClassifierOutput(ModelOutput):
    """Output of the multi-exit classifiers.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): with `labels`: Σ_k w_k · loss_k over all exits
            (all-exits forward, w_k ∝ k normalised) or the loss of the taken exits (early-exit forward).
        logits (`torch.FloatTensor` of shape `[B, C]`): each row's logits from the exit it took (the last exit in
            the all-exits forward).
        exit_logits (`torch.FloatTensor` of shape `[B, K, C]`, *optional*): logits of every exit; only in the
            all-exits forward (in the early-exit forward later exits are never computed for rows that left).
        exit_index (`torch.LongTensor` of shape `[B]`): 0-based index into `config.exit_layers` of the exit taken.
        exit_layer (`torch.LongTensor` of shape `[B]`): 1-based encoder layer of the exit taken.
        exit_cost (`torch.FloatTensor` of shape `[B]`): cost of the exit taken as a fraction of the full model
            (`config.exit_costs`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    exit_logits: torch.FloatTensor | None = None
    exit_index: torch.LongTensor | None = None
    exit_layer: torch.LongTensor | None = None
    exit_cost: torch.FloatTensor | None = None


def pool_hidden(hidden_states: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """``[b, S, h]`` hidden states → ``[b, h]``: the first token (``"cls"``) or the mean over the tokens where the
    ``[b, S]`` ``attention_mask`` is non-zero (``"mean"``)."""
    if how == "cls":
        return hidden_states[:, 0]
    mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class EENetExitHead(nn.Module):
    """An early exit: pooler (Linear + tanh) and a linear classifier on a pooled ``[b, h]`` vector.

    ``roberta_style=False`` (BERT, docs/method.md §1): pooler → dropout → Linear(h, C).
    ``roberta_style=True`` mirrors ``RobertaClassificationHead``: dropout → dense → tanh → dropout → out_proj.
    Input ``[b, h]`` pooled states (see ``pool_hidden``), output ``[b, C]`` logits.
    """

    def __init__(self, config, roberta_style: bool = False):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.roberta_style = roberta_style
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = pooled
        if self.roberta_style:
            x = self.dropout(x)
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


def exit_loss_weights(num_exits: int) -> list[float]:
    """w_k ∝ k (deeper exits weigh more), normalised to sum to 1 (docs/method.md §2)."""
    total = num_exits * (num_exits + 1) / 2
    return [(k + 1) / total for k in range(num_exits)]


class EENetModelMixin:
    """The shared exit loop. Subclasses provide ``self.backbone`` (embeddings + encoder.layer) and
    ``self.exit_head(k, pooled [b, h]) -> logits [b, C]``."""

    accepts_loss_kwargs = False  # our loss is a per-batch mean: let Trainer scale it for gradient accumulation

    # ------------------------------------------------------------------ losses
    def problem_type(self, labels: torch.Tensor) -> str:
        if self.config.problem_type is None:
            if self.config.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        return self.config.problem_type

    def single_exit_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of one exit: CE (single label), MSE (regression, num_labels=1) or BCE-with-logits (multi-label)."""
        kind = self.problem_type(labels)
        if kind == "regression":
            if self.config.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
            return F.mse_loss(logits.float(), labels.float())
        if kind == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.config.num_labels).float(), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def multi_exit_loss(self, exit_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k · loss(z_k, y), ``exit_logits`` ``[B, K, C]``."""
        weights = exit_loss_weights(exit_logits.shape[1])
        return sum(w * self.single_exit_loss(exit_logits[:, k], labels) for k, w in enumerate(weights))

    # ------------------------------------------------------------------ policies and budgets
    def get_exit_policy(self, budget: float):
        """The fitted EENet scheduler of the bank for ``budget`` (a fraction of the full cost, in (0, 1]).

        Rule between grid points: the largest fitted budget that does not exceed ``budget`` (so the realised cost
        never plans above what was asked); an exact grid point is used as is. Outside the fitted range → ValueError.
        """
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise TypeError(f"budget must be a number (fraction of the full cost), got {type(budget).__name__}")
        budget = float(budget)
        if math.isnan(budget) or budget <= 0 or budget > 1:
            raise ValueError(f"budget must be a fraction of the full model's cost in (0, 1], got {budget}")
        budgets = list(self.config.scheduler_budgets or [])
        if not budgets:
            raise ValueError(
                "this model has no fitted EENet scheduler, so it cannot take a budget. Fit one with "
                "`hf_eenet.EENetTrainer(...).fit_scheduler(budgets=[...])` or `model.add_scheduler(scheduler, budget)`, "
                "or pass an explicit `exit_policy=`."
            )
        eps = 1e-6
        if budget < budgets[0] - eps or budget > budgets[-1] + eps:
            raise ValueError(
                f"budget {budget} is outside the fitted range [{budgets[0]}, {budgets[-1]}] "
                f"(fitted budgets: {budgets}); refit the scheduler bank with this budget"
            )
        idx = max(i for i, b in enumerate(budgets) if b <= budget + eps)
        return self.eenet_schedulers[idx]

    def _build_scheduler_bank(self) -> None:
        """Empty schedulers, one per ``config.scheduler_budgets`` entry; ``from_pretrained`` fills their weights."""
        self.eenet_schedulers = nn.ModuleList()
        if self.config.scheduler_budgets:
            from .scheduler import EENetScheduler

            cfg = dict(self.config.scheduler_config or {})
            cfg.setdefault("num_exits", self.config.num_exits)
            cfg.setdefault("num_classes", self.config.num_labels)
            self.eenet_schedulers.extend(EENetScheduler.from_config(cfg) for _ in self.config.scheduler_budgets)

    def add_scheduler(self, scheduler, budget: float) -> None:
        """Put a fitted :class:`EENetScheduler` into the bank under ``budget`` (fraction of the full cost); replaces
        an entry with the same budget. Its costs must be this model's ``config.exit_costs`` (fractions)."""
        from .scheduler import EENetScheduler

        if not isinstance(scheduler, EENetScheduler):
            raise TypeError(f"expected an EENetScheduler, got {type(scheduler).__name__}")
        if not getattr(scheduler, "is_fitted", False):
            raise ValueError("the scheduler is not fitted: call scheduler.fit(...) first")
        scheduler.check_num_exits(self.config.num_exits)
        budget = float(budget)
        if not (0 < budget <= 1):
            raise ValueError(f"budget must be a fraction of the full cost in (0, 1], got {budget}")
        cfg = scheduler.get_config()
        if self.config.scheduler_config and self.config.scheduler_budgets:
            if {k: v for k, v in cfg.items()} != self.config.scheduler_config:
                raise ValueError("all schedulers of a bank must share one configuration (scheduler_config)")
        entries = dict(zip(self.config.scheduler_budgets or [], list(self.eenet_schedulers)))
        entries[budget] = scheduler.to(next(self.parameters()).device)
        budgets = sorted(entries)
        self.config.scheduler_config = cfg
        self.config.scheduler_budgets = budgets
        self.eenet_schedulers = nn.ModuleList([entries[b] for b in budgets])

    # ------------------------------------------------------------------ the exit loop
    def _check_inputs(self, input_ids, attention_mask, inputs_embeds):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        ref = input_ids if input_ids is not None else inputs_embeds
        if not isinstance(ref, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(ref).__name__}")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [batch, seq_len], got {tuple(input_ids.shape)}")
        if ref.shape[0] == 0 or ref.shape[1] == 0:
            raise ValueError(f"empty batch: input shape {tuple(ref.shape)}")
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
            if tuple(attention_mask.shape) != tuple(ref.shape[:2]):
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} does not match input shape "
                    f"{tuple(ref.shape[:2])}"
                )
            if not attention_mask.bool().any(-1).all():
                raise ValueError("attention_mask has a row with no tokens (all zeros)")

    def _mask(self, hidden: torch.Tensor, mask2d: torch.Tensor):
        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask2d)

    def _exit_logits(self, k: int, hidden: torch.Tensor, mask2d: torch.Tensor) -> torch.Tensor:
        return self.exit_head(k, pool_hidden(hidden, mask2d, self.config.exit_pooling))

    def exit_forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        exit_policy: ExitPolicy | None = None,
    ):
        """Run the encoder layer by layer. Returns ``(logits [B, C], exit_index [B], exit_logits [B, K, C] | None)``."""
        self._check_inputs(input_ids, attention_mask, inputs_embeds)
        backbone = self.backbone
        exit_layers = self.config.exit_layers
        num_exits = len(exit_layers)
        hidden = backbone.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        batch = hidden.shape[0]
        mask2d = attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)
        mask = self._mask(hidden, mask2d)
        exit_at = {layer: k for k, layer in enumerate(exit_layers)}

        if exit_policy is None:  # all-exits forward
            all_logits = []
            for i, layer in enumerate(backbone.encoder.layer):
                hidden = layer(hidden, mask)
                if i + 1 in exit_at:
                    all_logits.append(self._exit_logits(exit_at[i + 1], hidden, mask2d))
            exit_logits = torch.stack(all_logits, dim=1)
            exit_index = torch.full((batch,), num_exits - 1, dtype=torch.long, device=hidden.device)
            return exit_logits[:, -1], exit_index, exit_logits

        if self.config.num_labels < 2:
            raise ValueError("early-exit policies need a classification head (num_labels >= 2)")
        exit_policy.check_num_exits(num_exits)
        state = exit_policy.init_state(batch, hidden.device)
        rows = torch.arange(batch, device=hidden.device)  # original row of each running row
        logits_out = None
        exit_index = torch.full((batch,), num_exits - 1, dtype=torch.long, device=hidden.device)
        for i, layer in enumerate(backbone.encoder.layer):
            hidden = layer(hidden, mask)
            k = exit_at.get(i + 1)
            if k is None:
                continue
            logits = self._exit_logits(k, hidden, mask2d)
            if logits_out is None:
                logits_out = logits.new_empty((batch, logits.shape[-1]))
            if k == num_exits - 1:  # the last exit always accepts
                logits_out[rows] = logits
                break
            probs = torch.softmax(logits.float(), dim=-1)
            stop = exit_policy.decide(k, probs, state).to(torch.bool)
            if stop.any():
                logits_out[rows[stop]] = logits[stop]
                exit_index[rows[stop]] = k
                keep = ~stop
                if not keep.any():
                    break
                rows, hidden, mask2d = rows[keep], hidden[keep], mask2d[keep]
                for key in list(state):
                    state[key] = state[key][keep]
                # drop trailing columns that are padding for every remaining row
                length = int(mask2d.bool().any(0).nonzero().max()) + 1
                if length < mask2d.shape[1]:
                    hidden, mask2d = hidden[:, :length], mask2d[:, :length]
                mask = self._mask(hidden, mask2d)
        return logits_out, exit_index, None

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        exit_policy=None,
        budget=None,
        return_dict=None,
        **kwargs,
    ):
        if exit_policy is not None and budget is not None:
            raise ValueError("give either exit_policy or budget, not both")
        if budget is not None:
            exit_policy = self.get_exit_policy(budget)
        if exit_policy is not None and not isinstance(exit_policy, ExitPolicy):
            raise TypeError(f"exit_policy must be an hf_eenet ExitPolicy, got {type(exit_policy).__name__}")
        logits, exit_index, exit_logits = self.exit_forward(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, exit_policy
        )
        loss = None
        if labels is not None:
            loss = self.multi_exit_loss(exit_logits, labels) if exit_logits is not None else self.single_exit_loss(logits, labels)
        layers = torch.tensor(self.config.exit_layers, device=exit_index.device)
        costs = torch.tensor(self.config.exit_costs, device=exit_index.device)
        out = EENetSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            exit_logits=exit_logits,
            exit_index=exit_index,
            exit_layer=layers[exit_index],
            exit_cost=costs[exit_index],
        )
        if return_dict is False:
            return out.to_tuple()
        return out

    forward.__doc__ = """
        Args:
            input_ids (`torch.LongTensor` of shape `[B, S]`), attention_mask (`[B, S]`), token_type_ids (`[B, S]`),
            position_ids (`[B, S]`), inputs_embeds (`[B, S, h]`): as in the stock model.
            labels (`torch.LongTensor` of shape `[B]`, or `[B]` floats for regression, `[B, C]` for multi-label).
            exit_policy (`ExitPolicy`, *optional*): early-exit forward driven by this policy (rows leave the batch
                at their exit). Without it (and without `budget`) every exit is computed for every row.
            budget (`float`, *optional*): fraction of the full cost in (0, 1]; uses the fitted scheduler bank
                (see `get_exit_policy`).
        Returns: [`EENetSequenceClassifierOutput`].
    """


class EENetBertForSequenceClassification(EENetModelMixin, BertPreTrainedModel):
    """BERT with an exit head after each layer of ``config.exit_layers``.

    Early exits are :class:`EENetExitHead` (own pooler + classifier); the last exit reuses the pretrained pooler
    and ``classifier`` exactly like ``BertForSequenceClassification`` (a fine-tuned BERT classifier checkpoint
    loads into it unchanged).
    """

    config_class = EENetBertConfig
    config: EENetBertConfig
    _no_split_modules = ["BertEmbeddings", "BertLayer"]
    _keep_in_fp32_modules = ["eenet_schedulers"]

    def __init__(self, config: EENetBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=True)
        self.exit_heads = nn.ModuleList([EENetExitHead(config) for _ in config.exit_layers[:-1]])
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self._build_scheduler_bank()
        self.post_init()

    @property
    def backbone(self):
        return self.bert

    def exit_head(self, k: int, pooled: torch.Tensor) -> torch.Tensor:
        if k < len(self.exit_heads):
            return self.exit_heads[k](pooled)
        return self.classifier(self.dropout(self.bert.pooler(pooled.unsqueeze(1))))  # BertPooler reads token 0


class EENetRobertaForSequenceClassification(EENetModelMixin, RobertaPreTrainedModel):
    """RoBERTa with an exit head after each layer of ``config.exit_layers``.

    Every exit mirrors ``RobertaClassificationHead`` on the ``<s>`` token (or the token mean, ``exit_pooling``); the last one *is* the stock
    ``classifier`` (a fine-tuned RoBERTa classifier checkpoint loads into it unchanged).
    """

    config_class = EENetRobertaConfig
    config: EENetRobertaConfig
    _no_split_modules = ["RobertaEmbeddings", "RobertaLayer"]
    _keep_in_fp32_modules = ["eenet_schedulers"]

    def __init__(self, config: EENetRobertaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.exit_heads = nn.ModuleList([EENetExitHead(config, roberta_style=True) for _ in config.exit_layers[:-1]])
        self.classifier = RobertaClassificationHead(config)
        self._build_scheduler_bank()
        self.post_init()

    @property
    def backbone(self):
        return self.roberta

    def exit_head(self, k: int, pooled: torch.Tensor) -> torch.Tensor:
        if k < len(self.exit_heads):
            return self.exit_heads[k](pooled)
        return self.classifier(pooled.unsqueeze(1))  # RobertaClassificationHead reads token 0


__all__ = [
    "EENetSequenceClassifierOutput",
    "EENetExitHead",
    "EENetBertForSequenceClassification",
    "EENetRobertaForSequenceClassification",
    "exit_loss_weights",
    "pool_hidden",
]
