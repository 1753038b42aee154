"""The order check: with `blend` and calibration data, prune by whichever of the blend and its
representatives alone loses least on held-out data after cheap recovery at the allocated counts.
"""

from __future__ import annotations

import numpy as np

from .. import progress, rewrite
from ..analysis.groups import Analysis
from ..calibration.calib import CalibData
from ..recovery import recover as recovery
from ..recovery.reconstruct import Teacher, reconstruct
from ..runtime import pool
from ..verification.evaluate import choice_loss
from .select import select

CHECK_FIT_SAMPLES = 32        # scoring images behind the order check's least-squares repair of a candidate
CLOSE_RUNNER_UP = 0.1         # a representative this close to a winning blend (relative loss) gets counts of its own


def candidate_orders(criterion: str, scores, ctx) -> dict[str, dict]:
    """The orders the order check compares: the criterion's own first, then, for `blend` with the
    check on (ctx.options["order_check"]), each representative criterion's ranks alone."""
    orders = {criterion: scores}
    summary = ctx.extras.get("blend")
    if criterion == "blend" and summary and ctx.options.get("order_check"):
        for name in summary["representatives"]:
            orders.setdefault(name, ctx.extras["ranks"][name])
    return orders


def check_orders(allocator, orders: dict[str, dict], target_macs, data: CalibData,
                  stats: dict, reference: list, recover: bool, question_variety: bool = False) -> dict:
    """Which order to prune by: the blend or one of its representatives alone (the vertices of the
    blend's simplex), whichever gives the lowest held-out loss after cheap recovery (criteria.md
    §5's fitness: the plan at the allocated counts, repaired as `recovery.sequence.recover`
    repairs it: mean compensation, then least squares; `repaired_loss`).
    Masked losses without recovery cannot tell the orders apart where recovery does most of the
    work (PaddleOCR's direction classifier: all within 10%). The first order (the blend) wins ties.

    The orders are compared at the blend's counts, which its own sensitivity curves chose: a
    group that is sensitive under the blend's order may not be under another's, and the reverse.
    So a winner other than the blend is probed again for counts of its own (`try_own_counts`),
    kept if they lower its loss; where the blend wins, the best representative is probed too when
    it came within CLOSE_RUNNER_UP of the blend and a second probe repeats the first (the first
    ran out of rows before its budget), and wins if its own counts beat the blend. PaddleOCR's
    recogniser (64 crops), seed 0: blend 0.104, mean_act 0.111 at the blend's counts, 0.096 at its own.
    With `question_variety` (variety was defaulted, not asked for), all this runs without the
    variety chooser, and the final order and counts keep it only if that lowers their loss: one
    keeper forced per activation cluster overrides the criterion (PaddleOCR's recogniser: mean_act
    from CER 0.34 to 0.80 against the original, the blend's held-out loss from 0.105 to 0.691; on
    the detector it kept the default from an IoU of 0.89), and own counts were once tried with a
    variety kept by a margin of 0.002 and repaired to 0.58 instead of about 0.1.
    With `recover` off, the loss is the pruned model's as it is (what the user will get).
    Switches `allocator.scores` (and `allocator.chooser`) to the winner and returns the report
    entry, with the image passes it cost."""
    an = allocator.an
    means = {t: st.mean for t, st in stats.items()}
    passes = 0
    config, counts, reasons, _ = allocator.counts_for(target_macs)   # the same counts for every order

    def loss_of(scores, chooser, config=config, counts=counts, reasons=reasons) -> float:
        return losses_of([scores], chooser, config, counts, reasons)[0]

    def losses_of(orders, chooser, config=config, counts=counts, reasons=reasons) -> list[float]:
        # the candidates are independent: the pool (--workers, --ray) repairs them, results in order
        nonlocal passes
        removed = [select(an, s, config, counts=counts, notes=reasons, chooser=chooser)[0].removed_units(an)
                   for s in orders]
        results = pool.current().map(repaired_task, removed, (an, data, means, reference, recover), "order check")
        passes += sum(cost for _, cost in results)
        progress.advance(len(results))
        return [loss for loss, _ in results]

    # variety questioned: compare the orders (and counts) without it (its forced keepers are the
    # same for every order and would blur the comparison), then try it on the final choice
    chooser = None if question_variety else allocator.chooser
    first = next(iter(orders))
    losses = dict(zip(orders, losses_of([{**allocator.scores, **order} for order in orders.values()], chooser)))
    best = min(orders, key=lambda n: (losses[n], n != first))
    held = losses[best]
    allocator.scores = {**allocator.scores, **orders[best]}
    challenger = best if best != first else close_runner_up(losses, first)
    own_counts = None
    if challenger is not None and allocator.curves is not None and (
            challenger == best or allocator.info.get("cost", {}).get("repeatable")):
        own_counts = try_own_counts(allocator, target_macs, orders[challenger], held, loss_of, chooser)
        passes += own_counts["probe_passes"]
        losses[f"{challenger} at its own counts"] = own_counts["loss"]
        if own_counts["kept"]:
            best, held = challenger, own_counts["loss"]
    variety = "kept" if allocator.chooser is not None else "off"
    if question_variety and allocator.chooser is not None:
        label = f"{best} with variety"
        final_config, final_counts, final_reasons, _ = allocator.counts_for(target_macs)
        losses[label] = loss_of(allocator.scores, allocator.chooser, final_config, final_counts, final_reasons)
        if losses[label] >= held:
            allocator.chooser, variety = None, "off"
    entry = {"losses": {n: round(v, 6) for n, v in losses.items()}, "chosen": best, "variety": variety,
             "passes": passes, "recovery": "mean compensation, then least squares" if recover else "none"}
    if own_counts:
        entry["own_counts"] = own_counts["kept"]
    return entry


def close_runner_up(losses: dict[str, float], first: str) -> str | None:
    """The best order other than `first` if its loss is within CLOSE_RUNNER_UP of `first`'s."""
    others = [n for n in losses if n != first]
    if not others:
        return None
    runner_up = min(others, key=lambda n: losses[n])
    return runner_up if losses[runner_up] <= (1.0 + CLOSE_RUNNER_UP) * losses[first] else None


def try_own_counts(allocator, target_macs, order: dict, to_beat: float, loss_of, chooser) -> dict:
    """Re-probe the sensitivity curves in `order` and switch the allocator to that order and the
    counts they give if its loss there is below `to_beat`; otherwise the allocator's scores and
    curves stay as they were.

    On PaddleOCR's recogniser mean_act won at the blend's counts with CER 0.62 against the
    original, at its own counts 0.33.
    Returns {"loss": at those counts, "kept": bool, "probe_passes": full-network passes the probe cost}."""
    first_scores, first_curves = allocator.scores, allocator.curves
    allocator.scores = {**allocator.scores, **order}
    # the first probe again where cheap, else on half the budget; its cost is the check's (the
    # report's sensitivity cost stays the first probe's)
    allocator.curves, cost = allocator.probe(allocator.scores, second=True)
    config, counts, reasons, _ = allocator.counts_for(target_macs)
    loss = loss_of(allocator.scores, chooser, config, counts, reasons)
    kept = loss < to_beat
    if not kept:
        allocator.scores, allocator.curves = first_scores, first_curves
    return {"loss": loss, "kept": kept, "probe_passes": round(cost["full_model_passes"], 1)}


def repaired_task(shared, removed) -> tuple[float, int]:
    """`repaired_loss` as a task of `runtime.pool`: shared = (an, data, means, reference, recover)."""
    return repaired_loss(shared[0], removed, *shared[1:])


def repaired_loss(an: Analysis, removed, data: CalibData, means: dict, reference: list,
                   recover: bool) -> tuple[float, float]:
    """Held-out loss (evaluate.choice_loss: top-1 disagreement, then KL) of the network without
    `removed`, repaired as `recovery.sequence.recover` repairs it (mean compensation, then least
    squares fitted on the first CHECK_FIT_SAMPLES scoring images), or as it is without `recover`;
    NaN counts as inf. Returns (loss, image passes spent).

    Only the repaired model is evaluated: least squares refits every consumer of the pruned
    channels it can (biases included), so what mean compensation did for them is replaced, and the
    comparison is between repaired candidates. The original's least-squares targets are computed
    once for every candidate (reconstruct.Teacher) and counted where they are first computed.
    Bundled Fashion-MNIST model, --ratio 0.5, seed 0: the same choice as evaluating the plain, the
    compensated and the repaired model of each candidate and taking the best, at 160 instead of
    512 image passes per candidate (benchmarks/passes.py)."""
    held = data.size("holdout")
    model = rewrite.apply(an, removed, means=means if recover else None)
    passes = held
    if recover:
        fit = data.with_score_limit(CHECK_FIT_SAMPLES)    # a comparison, not the final repair
        teacher = Teacher.of(an.model, fit)
        spent = teacher.passes
        model, _ = reconstruct(an.model, model, an.kept_channels(removed), fit)
        passes += fit.size("score") + teacher.passes - spent
    loss = float(recovery.held_out_loss(model, data, reference, choice_loss))
    return (loss if np.isfinite(loss) else float("inf")), passes    # a NaN must not win min()
