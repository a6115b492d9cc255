"""§5–§6 of docs/method.md: fitting the utility / assignment heads, honest selection among candidates, thresholds.

Fitting data: all-exits softmax outputs P [N, K, C] of a labelled validation split, A_{n,k} = 1[argmax p_{n,k} = y_n].

§5.1 losses on a mini-batch (eq. 5.1–5.3)
      L_bce  = (1/K) sum_k sum_n w_{n,k} BCE(q_{n,k}, A_{n,k}),   w_{n,k} = pi_{n,k} / sum_m pi_{m,k}   (pi detached)
      L_kl   = mean_n KL(t_n || pi_n),   t_{n,k} = q_{n,k}^beta / sum_j q_{n,j}^beta                     (q detached)
      L_cost = | mean_n sum_k pi_{n,k} c_k - B | / B                                                    (two-sided)
§5.2 phases alternate every ``period`` epochs: the q-phase minimises L_bce (utility heads only), the r-phase
      alpha_kl L_kl + alpha_cost L_cost (assignment heads only); the best epoch within ``budget_tolerance`` of B by
      training loss is kept (patience counted only there).
§5.3 honest selection (the paper keeps the best trial by validation accuracy): seeded, class-stratified
      ``selection_folds``-fold cross-selection (auto: 5 folds below 4,000 rows, else one 30 % hold-out).
      Candidates, each = (utility heads, exit-share plan):
        - ``restarts`` runs from random initialisations and one run started at the max-prob ranking (q^_k = m_k),
          trained on k-1 folds, each with the learned shares pi_bar and/or geometric shares (``shares``);
        - with ``fallback``: fixed heads inside EENet's hypothesis space: calibrated max-prob (q^_k = m_k, geometric
          shares, = MSDNet), calibrated voting (q^_k = v_k + g_k + m_k / 2, agreement features only) and the static
          split (everyone at the deepest exit with c_k <= B, the share that tops the budget up continues to the next
          exit, chosen by max prob rather than by a hash).
      On every held-out fold each candidate's thresholds are set on that fold to meet B there (§6); every row is
      held out once. One-standard-error rule: the kept candidate is the simplest (max-prob < static < voting <
      trained) whose paired per-row gap to the most accurate candidate is within ``selection_margin`` standard
      errors and which is no less accurate than a simpler candidate outside that margin, so a trained run is kept
      only when it beats every fallback by more than noise or the fallbacks within noise are passed over
      (``fit_info`` says when a fallback won, by how much, and what was passed over). A kept trained run is refitted
      on all rows.
§6  thresholds on *all* fitting rows for the kept candidate's plan:
      learned:   pi_bar_k = mean_n pi_{n,k}, tilted to meet B (D9), planned counts n_k, and for k = 1..K-1 in order
                 t_k = the n_k-th largest q^_k among the rows not yet assigned (eq. 6.1); t_K = -inf.
      geometric: pi_k ~ q^k bisected on the realised cost (as ``MaxProbPolicy.calibrate``) on the candidate's q^.
      static:    n_{k*} = N - round(mix N), n_{k*+1} = the rest, through eq. 6.1.
    then every finite t_k moves halfway to the next lower fitting score, rounded to float32 (D8).

Why pi is a share vector (§4 of the method, measured in ``benchmarks/eenet_seeds.py``): the §6 rule reads the
assignment heads only through pi_bar, the *mean* over rows; per-row pi never reaches a decision, because a per-row
"exit at argmax pi" rule would need every exit's features before deciding (not online). L_kl pulls pi_n towards the
normalised q_n, which varies little across rows, and L_cost acts on the mean; so pi_n collapses to the share vector
(per-row std ~0.006 on SST-2 in the audit that opened issue 12). We keep the heads (they give the learned plan) and let the selection choose between
learned and geometric shares, which is the part that measurably matters.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import torch
from torch.nn import functional as F

from .policies import (
    _as_probs_tensor,
    _calibrate_geometric,
    check_budget,
    check_costs,
    check_labels,
    refine_thresholds,
    sequential_quantile_thresholds,
)
from .scheduler_features import all_exit_features

_BCE_EPS = 1e-6
_MIN_SELECTION_ROWS = 30  # below this (either side of the split) selection uses the fitting rows themselves
#: §5.3 one-SE rule: the order in which candidates count as simpler (trained runs come after all of these)
_SIMPLICITY = {"max-prob (calibrated)": 0, "static split": 1, "voting (calibrated)": 2}
_AUTO_FOLDS, _AUTO_FOLDS_BELOW_ROWS = 5, 4000  # selection_folds=None: 5-fold below 4,000 rows, else one hold-out


def stratified_split(labels: torch.Tensor, fraction: float, seed: int):
    """Seeded class-stratified split -> (fit_rows, selection_rows) as sorted long tensors; ``None`` (no split:
    selection reads the fitting rows) when either side would hold fewer than the minimum selection rows."""
    n = labels.shape[0]
    n_sel = int(round(fraction * n))
    if fraction <= 0 or n_sel < _MIN_SELECTION_ROWS or n - n_sel < _MIN_SELECTION_ROWS:
        return None
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + 999_983) % (2**63))
    sel = []
    for cls in torch.unique(labels).tolist():
        rows = (labels == cls).nonzero(as_tuple=True)[0]
        rows = rows[torch.randperm(rows.numel(), generator=gen)]
        sel.append(rows[: int(round(fraction * rows.numel()))])
    sel = torch.sort(torch.cat(sel)).values
    if sel.numel() < _MIN_SELECTION_ROWS or n - sel.numel() < _MIN_SELECTION_ROWS:
        return None  # each class rounds its share: many tiny classes can leave too few rows on one side
    mask = torch.ones(n, dtype=torch.bool)
    mask[sel] = False
    return mask.nonzero(as_tuple=True)[0], sel


def stratified_folds(labels: torch.Tensor, folds: int, seed: int):
    """Seeded class-stratified partition of the rows into ``folds`` held-out sets (sorted long tensors); ``None``
    when a fold would hold fewer than the minimum selection rows. Each class is dealt round-robin over the folds
    after a seeded shuffle, continuing where the previous class stopped, so fold sizes differ by at most one."""
    n = labels.shape[0]
    if folds < 2 or n // folds < _MIN_SELECTION_ROWS:
        return None
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + 999_979) % (2**63))
    assign = torch.empty(n, dtype=torch.long)
    offset = 0
    for cls in torch.unique(labels).tolist():
        rows = (labels == cls).nonzero(as_tuple=True)[0]
        rows = rows[torch.randperm(rows.numel(), generator=gen)]
        assign[rows] = (torch.arange(rows.numel()) + offset) % folds
        offset += rows.numel()
    return [(assign == f).nonzero(as_tuple=True)[0] for f in range(folds)]


def thresholds_from_counts(scores: torch.Tensor, counts: torch.Tensor) -> list[float]:
    """eq. 6.1 for planned counts [K], with D7 (t = -inf when the plan sends every remaining row) and D8."""
    n, k_total = scores.shape
    shares = (counts.double() + 0.5) / n  # floor(share * N) == count in sequential_quantile_thresholds
    thresholds = sequential_quantile_thresholds(scores, shares)
    remaining = torch.ones(n, dtype=torch.bool)
    for k in range(k_total - 1):
        rows = remaining.nonzero(as_tuple=True)[0]
        if rows.numel() == 0 or math.isinf(thresholds[k]):
            continue
        if int(counts[k]) >= rows.numel():
            thresholds[k] = -math.inf
            remaining[:] = False
            continue
        remaining[rows[scores[rows, k].double() >= thresholds[k]]] = False
    # sequential_quantile_thresholds compares in float64; the values are float32 scores, so float32 compares equally
    return refine_thresholds(scores, thresholds)


def _warn_if_ties(realized: float, planned: float, c: torch.Tensor, n: int, who: str, where: str,
                  stacklevel: int, budget: float | None = None) -> None:
    """Warn when the thresholds miss their cost by more than 1 %.

    * Against the planned cost (the plan's own rounded counts): by more than one row's cost, tied utility scores
      cannot be split by thresholds.
    * Against ``budget`` (given where the plan aims at it: not learned shares without budget matching): the rows
      are too few for an average to come closer (one row moves it by up to the last exit's cost / n: a 2-row fit at
      budget 0.5 of a 4-exit model can only spend 0.375, 0.5 or 0.625 ...; a learned plan rounds its counts so)."""
    step = float(c[-1]) / n
    target, name, miss = planned, "planned", abs(realized - planned)
    if miss > max(0.01 * planned, step):
        why = "tied utility scores (e.g. duplicate rows) cannot be split by thresholds"
    elif budget is not None and abs(realized - budget) > 0.01 * budget:
        target, name = budget, "budget"
        why = (f"with {n} rows one row moves the average cost by up to {step:.3g}, so it cannot come closer; fit on "
               "more rows (a few hundred make the step below 1 % of most budgets)")
    else:
        return
    warnings.warn(f"{who}: the thresholds give an average cost of {realized:.6g} on {where} instead of the "
                  f"{name} {target:.6g} "
                  f"({100 * (realized - target) / target:+.1f} %): {why}", RuntimeWarning, stacklevel=stacklevel)


def first_exit(scores: torch.Tensor, thresholds) -> torch.Tensor:
    """eq. 7.1 offline: first k with q^_k >= t_k (float32 compare, as ``decide``)."""
    t = torch.tensor(thresholds, dtype=torch.float32)
    stop = scores >= t
    stop[:, -1] = True
    return stop.to(torch.int8).argmax(-1)


class _FitMixin:
    """Fitting methods of :class:`~hf_eenet.scheduler.EENetScheduler`."""

    def fit(self, exit_probs, labels, costs, budget, seed: int = 0):
        """Fit heads, choose a candidate (§5.3) and set thresholds (§6) on all-exits outputs of a validation set.

        Args:
            exit_probs: ``[N, K, C]`` softmax outputs of every exit.
            labels: ``[N]`` integer labels in ``[0, C)``.
            costs: ``[K]`` cumulative cost up to each exit (strictly increasing, > 0, any unit; include the decision
                time, see :func:`hf_eenet.costs.profile_exit_costs`).
            budget: target average cost per sample, same unit, ``costs[0] <= budget <= costs[-1]``.
            seed: seeds the split, initialisations and shuffling (local generators; global RNG untouched).
        Returns:
            ``self``. Fitting runs on CPU (tiny nets); a module that lives on another device is moved back after.
        """
        start_time = time.perf_counter()
        probs, labels, correct, c, budget = self._validate_fit_inputs(exit_probs, labels, costs, budget, seed)
        n, k_total, n_classes = probs.shape
        if self.num_exits is None:
            self._build(k_total, n_classes)
        device = self.exit_thresholds.device
        self.cpu()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny nets: intra-op threads only add contention (10x slower on a busy 2-core box)
        try:
            self.requires_grad_(True)
            self._fit(probs, labels, correct, c, budget, seed, start_time)
        finally:
            torch.set_num_threads(threads)
            self.to(device)
            # fitted: frozen, with no gradients left over from the fit, so no optimizer over a model's parameters
            # (a training loop of the user's, Trainer's) can move the heads its thresholds were set on
            self.zero_grad(set_to_none=True)
            self.requires_grad_(False)
        return self

    def _validate_fit_inputs(self, exit_probs, labels, costs, budget, seed):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        probs = _as_probs_tensor(exit_probs).cpu()
        n, k_total, n_classes = probs.shape
        if k_total < 2:
            raise ValueError(f"EENet needs at least 2 exits, exit_probs has K = {k_total}")
        if self.num_exits is not None and (k_total != self.num_exits or n_classes != self.num_classes):
            raise ValueError(
                f"exit_probs has K = {k_total} exits and C = {n_classes} classes but the scheduler was built for "
                f"num_exits = {self.num_exits}, num_classes = {self.num_classes}"
            )
        labels = check_labels(labels, n, n_classes)
        if int(labels.min()) == int(labels.max()):
            raise ValueError(
                f"labels contain a single class ({int(labels.min())}): the scheduler needs right and wrong exits "
                "to learn from"
            )
        costs = check_costs(costs, k_total)
        budget = check_budget(budget, costs)
        correct = (probs.argmax(-1) == labels.unsqueeze(1)).float()  # A_{n,k}
        return probs, labels, correct, torch.tensor(costs, dtype=torch.float64), budget

    # ------------------------------------------------------------------ §6 on unlabelled traffic
    def rematch_budget(self, exit_probs):
        """Re-run §6 (thresholds) on *unlabelled* all-exits outputs of the traffic the model will serve; the heads
        (§4–§5, which need labels) stay as fitted.

        Why: thresholds turn a plan into a cost only on the rows they were set on. When the traffic is less (or more)
        confident than the labelled validation rows, the same thresholds send more (fewer) rows deep, and the realised
        cost drifts from the budget (e.g. AG News: a hold-out of the training file is more confident than the test
        set, about +4 % of the budget at B = 0.3 and 0.4). Costs depend only on the exits, not on labels, so the plan
        can be met on unlabelled rows: the kept candidate's plan (learned pi_bar on these rows' features, geometric,
        or static) and eq. 6.1 + D8 on these rows' scores, exactly as :meth:`fit` does on the fitting rows.

        Args:
            exit_probs: ``[N, K, C]`` softmax outputs of every exit on unlabelled rows (no labels needed).
        Returns:
            ``self``, with new ``thresholds`` and ``planned_cost`` (the cost on these rows); ``fit_info["rematch"]``
            records the rows, the plan, the cost the old thresholds gave on them and ``cost_standard_error`` (one
            standard error of the traffic's mean cost from sampling these rows: use enough rows to make it small
            against the budget; it shrinks as 1 / sqrt(rows)).
        """
        self._check_fitted()
        plan = (self.fit_info or {}).get("plan")
        if plan not in ("learned", "geometric", "static"):
            raise ValueError(
                "this scheduler does not record the share plan it was fitted with (fit_info['plan'] is "
                f"{plan!r}, e.g. a scheduler saved by an older version): refit it with .fit(...) first")
        probs = self._check_probs(exit_probs).detach().to("cpu", torch.float32)
        n = probs.shape[0]
        if n < 2:
            raise ValueError(f"exit_probs has {n} row(s): re-matching a budget needs a sample of the traffic")
        c = self.exit_costs.detach().to("cpu", torch.float64)
        budget = self.budget
        device = self.exit_thresholds.device
        self.cpu()
        try:
            scores = self._raw_scores(probs)
            before = float(c[first_exit(scores, self.thresholds)].mean())
            log_pi = self._log_pi_bar(self._inputs(probs)) if plan == "learned" else None
            thresholds, planned = self._plan_thresholds(plan, scores, log_pi, c, budget)
            per_row = c[first_exit(scores, thresholds)]
            realized = float(per_row.mean())
            # how far the traffic's true mean cost can sit from the matched one by sampling alone (one SE)
            standard_error = float(per_row.std(unbiased=True)) / math.sqrt(n)
            _warn_if_ties(realized, planned, c, n, f"EENetScheduler.rematch_budget (budget {budget:g})",
                          "these rows", stacklevel=3, budget=budget if self._aims_at_budget(plan) else None)
            with torch.no_grad():
                self.exit_thresholds.copy_(torch.tensor(thresholds, dtype=torch.float32))
                self.planned_cost_value.fill_(realized)
        finally:
            self.to(device)
        self.fit_info = dict(self.fit_info)
        self.fit_info["rematch"] = {"rows": n, "plan": plan, "cost_before": before, "cost_after": realized,
                                    "cost_standard_error": standard_error, "budget": budget}
        return self

    # ------------------------------------------------------------------ §5 training
    def _inputs(self, probs: torch.Tensor) -> torch.Tensor:
        """Exit-major features without q_{<k}, ``[K, N, d]`` float32 (features.py eq. 3.1)."""
        return all_exit_features(probs, self.features)

    def _forward(self, xs: torch.Tensor, rows=None, *, with_assign=True, q_grad=False, r_grad=False):
        """All exits at once from exit-major features ``xs`` [K, N, d] (``rows``: a mini-batch) ->
        (q^ raw, q clamped, r or None), each ``[n, K]``."""
        k_total = xs.shape[0]
        n = xs.shape[1] if rows is None else rows.shape[0]
        q_hat, q, r = [], [], []
        for k in range(k_total):
            q_prev = torch.stack(q, -1).detach() if k else xs.new_zeros(n, 0)  # §3 earlier scores, detached
            x = torch.cat([xs[k] if rows is None else xs[k][rows], q_prev], -1)
            with torch.set_grad_enabled(q_grad):
                q_hat.append((x * self.utility[k].weight[0]).sum(-1))  # eq. 4.1
                q.append(q_hat[-1].clamp(0.0, 1.0))  # eq. 4.2 (D4)
            if with_assign:
                with torch.set_grad_enabled(r_grad):
                    r.append(self._assign_logit(k, x))
        return torch.stack(q_hat, -1), torch.stack(q, -1), (torch.stack(r, -1) if with_assign else None)

    def _losses(self, q, r, correct, c, budget):
        """eq. 5.1–5.3 -> (L_bce, L_kl, L_cost, planned cost)."""
        k_total = q.shape[1]
        log_pi = torch.log_softmax(r, -1)
        pi = log_pi.exp()
        w = pi.detach()
        w = w / w.sum(0, keepdim=True)
        bce = F.binary_cross_entropy(q.clamp(_BCE_EPS, 1 - _BCE_EPS), correct, reduction="none")
        l_bce = (w * bce).sum() / k_total  # eq. 5.1
        tq = q.detach().pow(self.beta)
        t = tq / tq.sum(-1, keepdim=True).clamp_min(1e-12)
        l_kl = (torch.xlogy(t, t) - t * log_pi).sum(-1).mean()  # eq. 5.2 (D11)
        planned = (pi * c).sum(-1).mean()
        l_cost = (planned - budget).abs() / budget  # eq. 5.3
        return l_bce, l_kl, l_cost, planned

    def _init_parameters(self, gen: torch.Generator, mode: str = "random") -> None:
        """Seeded init. ``random``: utility near q^ = 0.5 (D12); ``maxprob``: q^_k = max_c p_k exactly (the MSDNet
        ranking, §5.3). Assignment MLPs like ``nn.Linear``'s default in both."""
        c_dim = self.num_classes
        with torch.no_grad():
            for lin in self.utility:
                d = lin.weight.shape[1]
                if mode == "maxprob":
                    lin.weight.zero_()
                    lin.weight[0, c_dim] = 1.0
                else:
                    lin.weight.uniform_(-0.1 / math.sqrt(d), 0.1 / math.sqrt(d), generator=gen)
                    lin.weight[0, :c_dim] += 0.5  # sum_c p = 1, so the p part contributes 0.5
            for mlp in self.assign:
                for lin in (mlp[0], mlp[2]):
                    bound = 1.0 / math.sqrt(lin.weight.shape[1])
                    lin.weight.uniform_(-bound, bound, generator=gen)
                    lin.bias.uniform_(-bound, bound, generator=gen)

    def _batch_rows(self, n: int) -> int:
        if self.batch_size is not None:
            return min(self.batch_size, n)
        return max(1, min(1024, -(-n // 8)))

    def _train(self, xs, correct, c32, b_rel, gen):
        """§5.2 alternating q-/r-phases with AdamW; keeps the best epoch within tolerance. Returns (epochs, best)."""
        n = xs.shape[1]
        batch = self._batch_rows(n)
        opt = torch.optim.AdamW(list(self.utility.parameters()) + list(self.assign.parameters()), lr=self.lr,
                                weight_decay=self.weight_decay, foreach=True)  # D10
        best_loss, best_state, best_epoch = math.inf, None, -1
        wait = self.patience
        epoch = 0
        for epoch in range(self.max_epochs):
            q_phase = (epoch // self.period) % 2 == 0  # §5.2 q-phase first
            order = torch.randperm(n, generator=gen) if batch < n else None
            sums = torch.zeros(4, dtype=torch.float64)
            for start in range(0, n, batch):
                idx = order[start:start + batch] if order is not None else None
                _, q, r = self._forward(xs, idx, q_grad=q_phase, r_grad=not q_phase)
                l_bce, l_kl, l_cost, planned = self._losses(q, r, correct if idx is None else correct[idx], c32, b_rel)
                loss = l_bce if q_phase else self.alpha_kl * l_kl + self.alpha_cost * l_cost
                opt.zero_grad(set_to_none=True)  # D2
                loss.backward()
                opt.step()
                sums += torch.stack([l_bce.detach(), l_kl.detach(), l_cost.detach(), planned.detach()]).double() * q.shape[0]
            l_bce, l_kl, l_cost, planned = (sums / n).tolist()
            if abs(planned - b_rel) / b_rel < self.budget_tolerance:
                total = l_bce + self.alpha_kl * l_kl + self.alpha_cost * l_cost
                if total < best_loss:
                    best_loss, best_epoch, wait = total, epoch, self.patience
                    best_state = copy.deepcopy(self._head_state())  # D3
                else:
                    wait -= 1
                    if wait <= 0:
                        break
        if best_state is not None:
            self._load_head_state(best_state)
        return epoch + 1, best_epoch

    def _head_state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(("utility.", "assign."))}

    def _load_head_state(self, state: dict) -> None:
        with torch.no_grad():
            own = self.state_dict()
            for k, v in state.items():
                own[k].copy_(v)

    # ------------------------------------------------------------------ §6 plans
    def _log_pi_bar(self, xs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            r = self._forward(xs, with_assign=True)[2].double()
        return torch.logsumexp(torch.log_softmax(r, -1), 0) - math.log(xs.shape[1])  # log mean_n pi_{n,k}

    def _plan_counts(self, log_pi_bar, c_rel, b_rel, n):
        """Planned counts [K] from pi_bar: tilted to meet B with cumulative rounding (D9, ``match_budget``), else
        n_k = floor(pi_bar_k N) for k < K, the rest to K. At B = c_1 or c_K the only plan that meets B is used."""
        k_total = c_rel.shape[0]
        if b_rel <= float(c_rel[0]) or b_rel >= 1.0:
            shares = torch.zeros(k_total, dtype=torch.float64)
            shares[0 if b_rel <= float(c_rel[0]) else -1] = 1.0
        elif not self.match_budget:
            counts = torch.floor(log_pi_bar.exp() * n + 1e-9).long()
            counts[-1] = 0
            counts[-1] = n - int(counts.sum())
            return counts
        else:
            def excess(lam):  # planned cost - B, decreasing in lam
                return float((torch.softmax(log_pi_bar - lam * c_rel, 0) * c_rel).sum()) - b_rel

            lo, hi = -1.0, 1.0
            while excess(lo) < 0 and lo > -1e12:
                lo *= 2
            while excess(hi) > 0 and hi < 1e12:
                hi *= 2
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                if excess(mid) > 0:
                    lo = mid
                else:
                    hi = mid
                if hi - lo <= 1e-12 * max(1.0, abs(mid)):
                    break
            shares = torch.softmax(log_pi_bar - 0.5 * (lo + hi) * c_rel, 0)
        cumulative = torch.round(torch.cumsum(shares, 0) * n).long().clamp(0, n)
        cumulative[-1] = n
        return torch.diff(cumulative, prepend=cumulative.new_zeros(1))

    @staticmethod
    def _static_counts(c: torch.Tensor, budget: float, n: int) -> torch.Tensor:
        """Static split: the deepest exit k* with c_k* <= B, and round(mix N) rows on to k*+1 so the cost meets B."""
        k_total = c.shape[0]
        slack = 1e-12 * float(c[-1])
        k = max(i for i in range(k_total) if float(c[i]) <= budget + slack)
        counts = torch.zeros(k_total, dtype=torch.long)
        if k == k_total - 1:
            counts[k] = n
            return counts
        mix = min(max((budget - float(c[k])) / float(c[k + 1] - c[k]), 0.0), 1.0)
        m = int(round(mix * n))
        counts[k], counts[k + 1] = n - m, m
        return counts

    def _aims_at_budget(self, plan) -> bool:
        """Whether a plan's thresholds aim at B (all but learned shares without budget matching, the paper's plain
        pi_bar)."""
        return plan != "learned" or bool(self.match_budget)

    def _plan_thresholds(self, plan, scores, log_pi_bar, c, budget):
        """(thresholds (list of float32 values), planned cost) for a plan on these rows' raw scores [n, K]. The
        planned cost is B, except for learned shares without budget matching (the paper's plain pi_bar)."""
        n = scores.shape[0]
        if plan == "learned":
            counts = self._plan_counts(log_pi_bar, c / c[-1], budget / float(c[-1]), n)
            return thresholds_from_counts(scores, counts), float((counts.double() * c).sum() / n)
        if plan == "static":
            return thresholds_from_counts(scores, self._static_counts(c, budget, n)), budget
        if plan == "geometric":
            th, _, _ = _calibrate_geometric(scores, c.tolist(), budget)
            return refine_thresholds(scores, th), budget
        raise ValueError(plan)

    def _set_maxprob_readout(self) -> None:
        """Utility heads that read q^_k = max_c p_k exactly (the max-prob / static fallbacks' scores)."""
        self._set_readout("maxprob")

    def _set_readout(self, readout: str) -> None:
        """Fixed utility heads of the fallbacks (§5.3), both linear in x_{n,k} of eq. 3.1:
        ``maxprob``: q^_k = m_k;  ``voting``: q^_k = v_k + g_k + m_k / 2 (rows ranked by how many earlier exits
        agree with exit k, a streak counting the previous exit twice, ties broken by max prob; m_k / 2 < 1)."""
        c_dim = self.num_classes
        with torch.no_grad():
            for lin in self.utility:
                lin.weight.zero_()
                if readout == "maxprob":
                    lin.weight[0, c_dim] = 1.0
                else:
                    lin.weight[0, c_dim] = 0.5
                    lin.weight[0, c_dim + 2] = 1.0
                    lin.weight[0, c_dim + 3] = 1.0

    def _fallback_rules(self) -> list[tuple[str, str, str]]:
        """(plan, name, readout) of the fallback candidates: calibrated max-prob (= MSDNet), the static split, and
        with the agreement features calibrated voting (the paper's third confidence measure, PABEE-like)."""
        rules = [("geometric", "max-prob (calibrated)", "maxprob"), ("static", "static split", "maxprob")]
        if self.features == "agreement":
            rules.append(("geometric", "voting (calibrated)", "voting"))
        return rules

    # ------------------------------------------------------------------ §5.3 + §6
    def _selection_splits(self, labels: torch.Tensor, seed: int):
        """§5.3 the (training rows, held-out rows) pairs candidates are judged on, and a description."""
        n = labels.shape[0]
        k = self.selection_folds
        if k is None:  # auto: k-fold where a single hold-out is small, one hold-out where it is large
            k = _AUTO_FOLDS if n < _AUTO_FOLDS_BELOW_ROWS else 0
        if k >= 2:
            folds = stratified_folds(labels, k, seed)
            if folds is not None:
                everything = torch.arange(n)
                splits = []
                for held in folds:
                    mask = torch.ones(n, dtype=torch.bool)
                    mask[held] = False
                    splits.append((everything[mask], held))
                return splits, (f"{len(folds)}-fold stratified cross-selection over all {n} fitting rows (seeded): "
                                "every row is held out once; the kept candidate is refitted on all rows")
        split = stratified_split(labels, self.selection_fraction, seed)
        if split is not None:
            return [split], (f"held-out stratified {len(split[1])} of {n} fitting rows (seeded); the kept candidate "
                             "is refitted on all rows")
        return [(torch.arange(n), torch.arange(n))], "fitting data (no internal split)"

    def _fit(self, probs, labels, correct, c, budget, seed, start_time):
        n = probs.shape[0]
        with torch.no_grad():
            self.fitted.fill_(False)  # a fit that fails half-way leaves an unfitted scheduler, not a mixed one
        self._fitted_flag = False
        b_rel = budget / float(c[-1])
        c32 = (c / c[-1]).float()
        xs = self._inputs(probs)  # [K, N, d]
        splits, source = self._selection_splits(labels, seed)
        plans = ["learned", "geometric"] if self.shares == "auto" else [self.shares]
        inits = [("random", r) for r in range(self.restarts)] + [("maxprob", self.restarts)]
        names = [f"random init {r}" if mode == "random" else "max-prob init" for mode, r in inits]

        def gen_for(r):
            return torch.Generator().manual_seed((int(seed) * 1_000_003 + r) % (2**63))

        def held_out(plan, scores, log_pi_bar, rows):
            """Thresholds set on the held-out rows to meet B there -> (per-row correctness, per-row cost)."""
            th, _ = self._plan_thresholds(plan, scores, log_pi_bar, c, budget)
            exits = first_exit(scores, th)
            return correct[rows, exits], c[exits]

        # per candidate: held-out correctness and cost of every row (each row is held out once)
        keys = [(i, plan) for i in range(len(inits)) for plan in plans]
        rules = self._fallback_rules()
        fb_keys = [(plan, name) for plan, name, _ in rules]
        right = {key: torch.zeros(n) for key in keys + fb_keys}
        spent = {key: torch.zeros(n, dtype=torch.float64) for key in keys + fb_keys}
        runs = [{"restart": i, "init": names[i], "fold_epochs": [], "fold_best_epoch": [], "fold_raw_planned_cost": [],
                 "fold_within_tolerance": []} for i in range(len(inits))]
        last_state = {}
        for fit_rows, sel_rows in splits:
            xs_fit, xs_sel = xs[:, fit_rows].contiguous(), xs[:, sel_rows].contiguous()
            probs_sel = probs[sel_rows]
            for i, (mode, r) in enumerate(inits):
                gen = gen_for(r)
                self._init_parameters(gen, mode)
                epochs, best_epoch = self._train(xs_fit, correct[fit_rows], c32, b_rel, gen)
                raw_planned = float((self._log_pi_bar(xs_fit).exp() * c).sum())
                runs[i]["fold_epochs"].append(epochs)
                runs[i]["fold_best_epoch"].append(best_epoch)
                runs[i]["fold_raw_planned_cost"].append(raw_planned)
                runs[i]["fold_within_tolerance"].append(abs(raw_planned - budget) / budget < self.budget_tolerance)
                scores = self._raw_scores(probs_sel)
                log_pi_sel = self._log_pi_bar(xs_sel)
                for plan in plans:
                    right[(i, plan)][sel_rows], spent[(i, plan)][sel_rows] = held_out(plan, scores, log_pi_sel,
                                                                                     sel_rows)
                last_state[i] = self._head_state()
            # fallbacks: fixed readouts (max prob, voting) with geometric shares, and the static split
            for plan, name, readout in rules:
                self._set_readout(readout)
                fb_scores = self._raw_scores(probs_sel)
                right[(plan, name)][sel_rows], spent[(plan, name)][sel_rows] = held_out(plan, fb_scores, None, sel_rows)

        # the rows that were held out (all rows with k folds; one share with a single hold-out): every held-out figure
        # below is a mean over these rows only
        held = torch.zeros(n, dtype=torch.bool)
        for _, sel_rows in splits:
            held[sel_rows] = True
        n_held = int(held.sum())
        right = {key: v[held] for key, v in right.items()}
        spent = {key: v[held] for key, v in spent.items()}
        candidates = []
        for i, plan in keys:
            ok = all(runs[i]["fold_within_tolerance"]) or self.match_budget or plan != "learned"
            candidates.append({"name": names[i], "plan": plan, "key": (i, plan), "run": i, "eligible": ok})
        baselines = {}
        for plan, name, readout in rules:
            baselines[name] = {"accuracy": float(right[(plan, name)].mean()), "cost": float(spent[(plan, name)].mean())}
            if self.fallback:
                candidates.append({"name": name, "plan": plan, "key": (plan, name), "run": None, "eligible": True,
                                   "readout": readout})
        for cd in candidates:
            cd["accuracy"] = float(right[cd["key"]].mean())
            cd["cost"] = float(spent[cd["key"]].mean())
        # tied scores (duplicate rows, saturated probabilities) cannot be split by thresholds: a candidate then spends
        # more or less than B held out, and the accuracies below are not compared at equal cost -- say which. Each
        # fold's thresholds are set on that fold, so rounding alone can miss B by one row of the smallest fold; learned
        # shares without budget matching do not aim at B at all (by design, not ties)
        one_row = float(c[-1]) / max(min(len(sel) for _, sel in splits), 1)
        off_cost = [cd for cd in candidates if (self.match_budget or cd["plan"] != "learned")
                    and abs(cd["cost"] - budget) > max(0.01 * budget, one_row)]

        # one-standard-error rule (§5.3): the simplest candidate whose paired per-row held-out gap to the most
        # accurate one is within selection_margin standard errors, and no less accurate than a simpler candidate
        # that was not; simplicity: max-prob < static < voting < trained
        trained = [cd for cd in candidates if cd["run"] is not None and cd["eligible"]] or \
            [cd for cd in candidates if cd["run"] is not None]
        best_trained = max(trained, key=lambda cd: (cd["accuracy"], -candidates.index(cd)))
        fallbacks = sorted((cd for cd in candidates if cd["run"] is None), key=lambda cd: _SIMPLICITY[cd["name"]])
        pool = fallbacks + [best_trained]  # trained runs have no simplicity order: the most accurate stands for them
        best = max(pool, key=lambda cd: (cd["accuracy"], -pool.index(cd)))
        for cd in candidates:
            diff = right[best["key"]] - right[cd["key"]]
            cd["gap_points"] = 100 * float(diff.mean())
            cd["gap_se_points"] = 100 * (float(diff.std() / math.sqrt(n_held)) if n_held > 1 else 0.0)
        chosen, passed_over = best_trained, []
        if fallbacks:  # each gap has its own paired SE, so "within" is no accuracy cut-off: a candidate is kept only
            # if it is at least as accurate as every simpler one rejected (a static split with a large SE must not
            # pass where a more accurate max-prob with a tiny SE did not); the most accurate always qualifies
            rejected = -math.inf
            for cd in pool:
                within = cd["gap_points"] <= self.selection_margin * cd["gap_se_points"]
                if within and cd["accuracy"] >= rejected:
                    chosen = cd
                    break
                if within:
                    passed_over.append(cd["name"])
                rejected = max(rejected, cd["accuracy"])
        advantage = {"best": f"{best['name']} / {best['plan']} shares", "best_accuracy": best["accuracy"],
                     "kept": f"{chosen['name']} / {chosen['plan']} shares", "gap_points": chosen["gap_points"],
                     "gap_se_points": chosen["gap_se_points"], "margin_se": self.selection_margin,
                     "passed_over": passed_over}  # within the margin, but below a simpler rule outside it
        fallback = chosen["run"] is None

        # refit the kept candidate on all rows (§5.3), then §6 thresholds on all fitting rows for its plan
        final = {"epochs": 0, "raw_planned_cost": None, "within_tolerance": True}
        if fallback:
            self._set_readout(chosen["readout"])
        else:
            mode, r = inits[chosen["run"]]
            if len(splits) == 1 and len(splits[0][0]) == n:  # no split: the run already saw every row
                self._load_head_state(last_state[chosen["run"]])
                epochs = runs[chosen["run"]]["fold_epochs"][0]
            else:
                gen = gen_for(r)
                self._init_parameters(gen, mode)
                epochs, _ = self._train(xs, correct, c32, b_rel, gen)
            raw_planned = float((self._log_pi_bar(xs).exp() * c).sum())
            final = {"epochs": epochs, "raw_planned_cost": raw_planned,
                     "within_tolerance": abs(raw_planned - budget) / budget < self.budget_tolerance}
        scores_all = self._raw_scores(probs)
        log_pi_all = self._log_pi_bar(xs) if chosen["plan"] == "learned" else None
        thresholds, planned = self._plan_thresholds(chosen["plan"], scores_all, log_pi_all, c, budget)
        exits = first_exit(scores_all, thresholds)
        realized = float(c[exits].mean())
        _warn_if_ties(realized, planned, c, n, "EENetScheduler", "the fitting data", stacklevel=4,
                      budget=budget if self._aims_at_budget(chosen["plan"]) else None)
        with torch.no_grad():
            self.exit_thresholds.copy_(torch.tensor(thresholds, dtype=torch.float32))
            self.exit_costs.copy_(c)
            self.budget_value.fill_(budget)
            self.planned_cost_value.fill_(realized)
            self.fitted.fill_(True)
        self._fitted_flag = True
        reason = None
        if fallback:
            reason = (f"held out, the most accurate candidate ({advantage['best']}) reached "
                      f"{100 * best['accuracy']:.2f}% and the best trained one ({best_trained['name']}, "
                      f"{best_trained['plan']} shares) {100 * best_trained['accuracy']:.2f}%; the {chosen['name']} "
                      f"({100 * chosen['accuracy']:.2f}%) is the simplest rule within {self.selection_margin:g} SE of "
                      f"the best (gap {chosen['gap_points']:.2f} pt, SE {chosen['gap_se_points']:.2f} pt) that is no "
                      "less accurate than every simpler rule outside it, and is kept")
        cost_note = None
        if off_cost:
            cost_note = (
                "held out, " + ", ".join(f"{cd['name']} / {cd['plan']} shares spent {cd['cost'] / budget:.3f}x"
                                         for cd in off_cost)
                + f" the budget {budget:g} (tied scores cannot be split by thresholds), so the candidates were not "
                "compared at equal cost" + ("; the kept one is among them" if chosen in off_cost else ""))
        k_total = c.shape[0]
        for run in runs:
            run["within_tolerance"] = all(run["fold_within_tolerance"])
            run["raw_planned_cost"] = sum(run["fold_raw_planned_cost"]) / len(run["fold_raw_planned_cost"])
            run["selection_accuracy"] = {cd["plan"]: cd["accuracy"] for cd in candidates if cd["run"] == run["restart"]}
        self.fit_info = {
            "seconds": time.perf_counter() - start_time,
            "restarts": len(runs),
            "chosen": f"{chosen['name']} / {chosen['plan']} shares",
            "chosen_restart": chosen["run"],
            "plan": chosen["plan"],
            "fallback": fallback,
            "fallback_reason": reason,
            "features": self.features,
            "epochs": final["epochs"],
            "val_accuracy": chosen["accuracy"],
            "val_source": source,
            "selection_folds": len(splits),
            "selection_rows": int(sum(len(held) for _, held in splits)),
            "fit_rows": n,
            "selection_advantage": advantage,
            "selection_baselines": baselines,
            "selection_cost_note": cost_note,  # None: every candidate aiming at B spent it held out, within 1 % or
            # one row of the smallest held-out fold
            "candidates": [{k: v for k, v in cd.items() if k not in ("key", "run")} for cd in candidates],
            "within_tolerance": final["within_tolerance"],
            "budget": budget,
            "raw_planned_cost": final["raw_planned_cost"],  # the trained plan's cost (None: a fixed rule was kept)
            "planned_cost": planned,
            "realized_cost_fit": realized,
            "exit_shares": (torch.bincount(exits, minlength=k_total).double() / n).tolist(),
            "runs": runs,
            "seed": int(seed),
            "num_samples": n,
        }


__all__ = ["stratified_split", "stratified_folds", "refine_thresholds", "thresholds_from_counts", "first_exit"]
