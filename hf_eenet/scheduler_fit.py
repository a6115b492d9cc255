"""§5–§6 of docs/method.md: fitting the utility / assignment heads, honest selection among candidates, thresholds.

Fitting data: all-exits softmax outputs P [N, K, C] of a labelled validation split, A_{n,k} = 1[argmax p_{n,k} = y_n].

§5.1 losses on a mini-batch (eq. 5.1–5.3)
      L_bce  = (1/K) sum_k sum_n w_{n,k} BCE(q_{n,k}, A_{n,k}),   w_{n,k} = pi_{n,k} / sum_m pi_{m,k}   (pi detached)
      L_kl   = mean_n KL(t_n || pi_n),   t_{n,k} = q_{n,k}^beta / sum_j q_{n,j}^beta                     (q detached)
      L_cost = | mean_n sum_k pi_{n,k} c_k - B | / B                                                    (two-sided)
§5.2 phases alternate every ``period`` epochs: the q-phase minimises L_bce (utility heads only), the r-phase
      alpha_kl L_kl + alpha_cost L_cost (assignment heads only); the best epoch within ``budget_tolerance`` of B by
      training loss is kept (patience counted only there).
§5.3 honest selection (the paper keeps the best trial by validation accuracy). A seeded, class-stratified
      ``selection_fraction`` of the fitting rows is held out. Candidates, each = (utility heads, exit-share plan):
        - ``restarts`` runs from random initialisations and one run started at the max-prob ranking (q^_k = m_k),
          trained on the other rows, each with the learned shares pi_bar and/or geometric shares (``shares``);
        - with ``fallback``: the calibrated max-prob rule (q^_k = m_k, geometric shares, = MSDNet) and the static
          split (everyone at the deepest exit with c_k <= B, the share that tops the budget up continues to the next
          exit, chosen by max prob rather than by a hash). Both lie inside EENet's hypothesis space.
      Every candidate's thresholds are set on the selection rows to meet B there (§6), and the candidate with the
      best selection accuracy is kept (ties: trained runs first). The kept scheduler is therefore never worse than
      calibrated max-prob and static on the selection split at its budget; ``fit_info`` says when a fallback won.
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
(per-row std ~0.006 on SST-2). We keep the heads (they give the learned plan) and let the selection choose between
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
    sequential_quantile_thresholds,
)
from .scheduler_features import all_exit_features

_BCE_EPS = 1e-6
_MIN_SELECTION_ROWS = 30  # below this (either side of the split) selection uses the fitting rows themselves


def stratified_split(labels: torch.Tensor, fraction: float, seed: int):
    """Seeded class-stratified split -> (fit_rows, selection_rows) as sorted long tensors (``None`` = no split)."""
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
    mask = torch.ones(n, dtype=torch.bool)
    mask[sel] = False
    return mask.nonzero(as_tuple=True)[0], sel


def refine_thresholds(scores: torch.Tensor, thresholds: list[float]) -> list[float]:
    """D8: move every finite t_k (k < K) halfway to the next lower score among the rows that reach exit k, when a
    float32 value lies strictly between; the rows that pass are unchanged. ``scores`` [N, K] float32."""
    n, k_total = scores.shape
    out = list(thresholds)
    remaining = torch.ones(n, dtype=torch.bool)
    for k in range(k_total - 1):
        t = out[k]
        rows = remaining.nonzero(as_tuple=True)[0]
        if rows.numel() == 0 or math.isinf(t):
            if t == -math.inf:
                remaining[:] = False
            continue
        s = scores[rows, k]
        t32 = torch.tensor(t, dtype=torch.float32)
        passed = s >= t32
        below = s[~passed]
        if below.numel():
            lo = below.max()
            mid = torch.tensor(0.5 * (float(t32) + float(lo)), dtype=torch.float32)
            if lo < mid < t32:
                t32 = mid
        out[k] = float(t32)
        remaining[rows[passed]] = False
    out[-1] = -math.inf
    return out


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
            self._fit(probs, labels, correct, c, budget, seed, start_time)
        finally:
            torch.set_num_threads(threads)
            self.to(device)
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
        """Utility heads that read q^_k = max_c p_k exactly (the fallbacks' scores)."""
        with torch.no_grad():
            for lin in self.utility:
                lin.weight.zero_()
                lin.weight[0, self.num_classes] = 1.0

    # ------------------------------------------------------------------ §5.3 + §6
    def _fit(self, probs, labels, correct, c, budget, seed, start_time):
        n = probs.shape[0]
        with torch.no_grad():
            self.fitted.fill_(False)  # a fit that fails half-way leaves an unfitted scheduler, not a mixed one
        self._fitted_flag = False
        b_rel = budget / float(c[-1])
        c32 = (c / c[-1]).float()
        xs = self._inputs(probs)  # [K, N, d]
        split = stratified_split(labels, self.selection_fraction, seed)
        if split is None:
            fit_rows = sel_rows = torch.arange(n)
            source = "fitting data (no internal split)"
        else:
            fit_rows, sel_rows = split
            source = (f"held-out stratified {len(sel_rows)} of {n} fitting rows (seeded); heads trained on the "
                      f"other {len(fit_rows)}")
        xs_fit, xs_sel = xs[:, fit_rows].contiguous(), xs[:, sel_rows].contiguous()
        probs_sel, correct_sel = probs[sel_rows], correct[sel_rows]
        plans = ["learned", "geometric"] if self.shares == "auto" else [self.shares]

        def evaluate(plan, scores, log_pi_bar):
            th, _ = self._plan_thresholds(plan, scores, log_pi_bar, c, budget)
            exits = first_exit(scores, th)
            acc = float(correct_sel[torch.arange(len(exits)), exits].mean())
            cost = float(c[exits].mean())
            return acc, cost

        runs, candidates = [], []
        inits = [("random", r) for r in range(self.restarts)] + [("maxprob", self.restarts)]
        for mode, r in inits:
            gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + r) % (2**63))
            self._init_parameters(gen, mode)
            epochs, best_epoch = self._train(xs_fit, correct[fit_rows], c32, b_rel, gen)
            log_pi_fit = self._log_pi_bar(xs_fit)
            raw_planned = float((log_pi_fit.exp() * c).sum())
            within = abs(raw_planned - budget) / budget < self.budget_tolerance
            name = f"random init {r}" if mode == "random" else "max-prob init"
            run = {"restart": len(runs), "init": name, "epochs": epochs, "best_epoch": best_epoch,
                   "raw_planned_cost": raw_planned, "within_tolerance": within, "selection_accuracy": {}}
            scores = self._raw_scores(probs_sel)
            log_pi_sel = self._log_pi_bar(xs_sel)
            state = self._head_state()
            for plan in plans:
                acc, cost = evaluate(plan, scores, log_pi_sel)
                run["selection_accuracy"][plan] = acc
                ok = within or self.match_budget or plan != "learned"
                candidates.append({"name": name, "plan": plan, "accuracy": acc, "cost": cost, "run": len(runs),
                                   "eligible": ok, "state": state})
            runs.append(run)
        # fallbacks: max-prob readout with geometric shares (= calibrated MSDNet) and the static split
        self._set_maxprob_readout()
        mp_scores = self._raw_scores(probs_sel)
        mp_state = self._head_state()
        baselines = {}
        for plan, name in (("geometric", "max-prob (calibrated)"), ("static", "static split")):
            acc, cost = evaluate(plan, mp_scores, None)
            baselines[name] = {"accuracy": acc, "cost": cost}
            if self.fallback:
                candidates.append({"name": name, "plan": plan, "accuracy": acc, "cost": cost, "run": None,
                                   "eligible": True, "state": mp_state})
        # keep the best selection accuracy; ties go to the earlier candidate (trained runs come first)
        eligible = [cd for cd in candidates if cd["eligible"]] or candidates
        chosen = max(eligible, key=lambda cd: (cd["accuracy"], -candidates.index(cd)))
        best_trained = max((cd for cd in candidates if cd["run"] is not None), key=lambda cd: cd["accuracy"])
        self._load_head_state(chosen["state"])

        # §6 thresholds on all fitting rows for the kept candidate's plan
        scores_all = self._raw_scores(probs)
        log_pi_all = self._log_pi_bar(xs) if chosen["plan"] == "learned" else None
        thresholds, planned = self._plan_thresholds(chosen["plan"], scores_all, log_pi_all, c, budget)
        exits = first_exit(scores_all, thresholds)
        realized = float(c[exits].mean())
        if abs(realized - planned) > max(0.01 * planned, float(c[-1]) / n):
            warnings.warn(
                f"EENetScheduler: the thresholds give an average cost of {realized:.6g} on the fitting data instead "
                f"of the planned {planned:.6g}: tied utility scores (e.g. duplicate rows) cannot be split by thresholds",
                RuntimeWarning, stacklevel=3,
            )
        with torch.no_grad():
            self.exit_thresholds.copy_(torch.tensor(thresholds, dtype=torch.float32))
            self.exit_costs.copy_(c)
            self.budget_value.fill_(budget)
            self.planned_cost_value.fill_(realized)
            self.fitted.fill_(True)
        self._fitted_flag = True
        fallback = chosen["run"] is None
        reason = None
        if fallback:
            reason = (f"on the selection split the best trained candidate ({best_trained['name']}, "
                      f"{best_trained['plan']} shares) reached {100 * best_trained['accuracy']:.2f}% vs "
                      f"{100 * chosen['accuracy']:.2f}% for the {chosen['name']}; the {chosen['name']} is kept")
        k_total = c.shape[0]
        self.fit_info = {
            "seconds": time.perf_counter() - start_time,
            "restarts": len(runs),
            "chosen": f"{chosen['name']} / {chosen['plan']} shares",
            "chosen_restart": chosen["run"],
            "plan": chosen["plan"],
            "fallback": fallback,
            "fallback_reason": reason,
            "features": self.features,
            "epochs": runs[chosen["run"]]["epochs"] if not fallback else 0,
            "val_accuracy": chosen["accuracy"],
            "val_source": source,
            "selection_rows": int(len(sel_rows)),
            "fit_rows": int(len(fit_rows)),
            "selection_baselines": baselines,
            "candidates": [{k: v for k, v in cd.items() if k not in ("state", "run")} for cd in candidates],
            "within_tolerance": runs[chosen["run"]]["within_tolerance"] if not fallback else True,
            "budget": budget,
            "raw_planned_cost": runs[chosen["run"]]["raw_planned_cost"] if not fallback else realized,
            "planned_cost": planned,
            "realized_cost_fit": realized,
            "exit_shares": (torch.bincount(exits, minlength=k_total).double() / n).tolist(),
            "runs": runs,
            "seed": int(seed),
            "num_samples": n,
        }


__all__ = ["stratified_split", "refine_thresholds", "thresholds_from_counts", "first_exit"]
