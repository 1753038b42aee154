"""Synthetic calibration inputs made from the model itself (`--calib synthetic`; needs torch).

Batches of inputs are optimised so that, at every BatchNormalization, the batch statistics of the
BN's input match the running mean and variance the BN stores (ZeroQ, Cai et al. 2020;
DeepInversion, Yin et al. 2020):

    L(x) = sum_l ( ||mu_l(x) - mu_l||^2 + ||sigma_l(x) - sigma_l||^2 ) / C_l
           + TV_WEIGHT * TV(x) + CLASS_WEIGHT * CE(f(x), y)

with mu_l(x), sigma_l(x) the per-channel mean and standard deviation of BN l's input over the
batch and positions, TV the mean squared difference of neighbouring pixels (a smoothness prior
for image inputs), and, for a classifier with one [N, K] output, the cross-entropy to classes
drawn uniformly (so every class is represented). Inputs start from N(0, 1) in the model's input
space and are optimised with Adam for `steps` steps per batch. A model without BatchNormalization
(BN folded into the convs by its exporter) stores no statistics to match and is refused.
"""

from __future__ import annotations

import time

import numpy as np
import onnx

from ..errors import OnnxPruneError

TV_WEIGHT = 1e-2
CLASS_WEIGHT = 0.1
STEPS = 200
BATCH = 64
LR = 0.1


def _frozen_bridge(model: onnx.ModelProto) -> tuple:
    """The model in torch, in eval mode with frozen parameters, and its BatchNorm modules (at least one)."""
    import torch

    from .bridge import Bridge

    bridge = Bridge(model, "model")
    bridge.module.eval()
    for p in bridge.module.parameters():
        p.requires_grad_(False)
    bns = [m for m in bridge.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise OnnxPruneError("--calib synthetic: the model has no BatchNormalization (folded into the convs by its "
                             "exporter), so there are no statistics to match; give real calibration data")
    return bridge, bns


def synthesize(model: onnx.ModelProto, specs, samples: int, seed: int = 0, steps: int = STEPS,
               batch: int = BATCH, progress=None) -> tuple[dict[str, np.ndarray], dict]:
    """`samples` synthetic inputs for `model`.

    Args:
        model: the original model (not modified).
        specs: its inputs (`calib.input_specs`); float inputs only.
        samples: how many inputs to make.
        seed: seeds the start points and the target classes.
        steps, batch: Adam steps per batch, inputs per batch (the BN statistics are over a batch).
        progress: optional callable(done, samples).
    Returns:
        ({input name: array [samples, ...]}, info): info records the method and how well the
        statistics were matched (the mean relative error of the BN means and standard deviations,
        before and after optimisation).
    """
    import torch

    if any(s.dtype.kind != "f" for s in specs):
        raise OnnxPruneError("--calib synthetic: the model has a non-float input; give real calibration data")
    bridge, bns = _frozen_bridge(model)
    seen = []

    def hook(module, args):
        x = args[0]
        dims = [0] + list(range(2, x.ndim))
        seen.append((module, x.mean(dims), x.var(dims, unbiased=False).add(module.eps).sqrt()))
    handles = [m.register_forward_pre_hook(hook) for m in bns]
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    outputs = {s.name: [] for s in specs}
    errors_before, errors_after = [], []
    try:
        for start in range(0, samples, batch):
            n = min(batch, samples - start)
            n = max(n, 2)        # a batch statistic needs two samples
            xs = {s.name: torch.randn((n, *s.sample_shape), generator=gen).requires_grad_(True) for s in specs}
            opt = torch.optim.Adam(list(xs.values()), lr=LR)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            targets = None
            for step in range(steps + 1):
                seen.clear()
                out = bridge.forward(xs)
                bn_loss = sum(((mu - m.running_mean) ** 2).sum() / len(mu) +
                              ((sd - (m.running_var + m.eps).sqrt()) ** 2).sum() / len(sd) for m, mu, sd in seen)
                if step in (0, steps):
                    (errors_before if step == 0 else errors_after).append(_match_error(seen))
                if step == steps:
                    break
                loss = bn_loss + TV_WEIGHT * sum(_tv(x, s) for x, s in zip(xs.values(), specs))
                if len(out) == 1 and out[0].ndim == 2 and out[0].shape[1] > 1:
                    if targets is None:
                        targets = torch.from_numpy(rng.integers(0, out[0].shape[1], n))
                    loss = loss + CLASS_WEIGHT * torch.nn.functional.cross_entropy(out[0], targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            for s in specs:
                outputs[s.name].append(xs[s.name].detach().numpy()[:min(batch, samples - start)].astype(s.dtype))
            if progress is not None:
                progress(min(start + batch, samples), samples)
    finally:
        for h in handles:
            h.remove()
    arrays = {name: np.concatenate(parts) for name, parts in outputs.items()}
    info = {"method": "BN statistics matching (ZeroQ/DeepInversion) with a smoothness prior"
                      + (" and random target classes" if CLASS_WEIGHT else ""),
            "samples": samples, "steps_per_batch": steps, "batch": batch, "bn_layers": len(bns),
            "bn_match_error_start": float(np.mean(errors_before)), "bn_match_error": float(np.mean(errors_after)),
            "seconds": round(time.perf_counter() - t0, 2)}
    return arrays, info


def _match_error(seen) -> float:
    """Mean over BN layers of the mean relative error of the batch's per-channel mean and std,
    relative to the stored std (a mean off by one std counts 1)."""
    errors = []
    for m, mu, sd in seen:
        mu, sd = mu.detach(), sd.detach()
        ref_sd = (m.running_var + m.eps).sqrt()
        errors.append(float(((mu - m.running_mean).abs() / ref_sd).mean() + ((sd - ref_sd).abs() / ref_sd).mean()) / 2)
    return float(np.mean(errors)) if errors else 0.0


def _tv(x, spec):
    """Mean squared difference of neighbouring pixels of an image input (0 for other inputs)."""
    if x.ndim != 4 or spec.layout not in ("NCHW", "NHWC"):
        return x.new_zeros(())
    h, w = (2, 3) if spec.layout == "NCHW" else (1, 2)
    return (x.diff(dim=h) ** 2).mean() + (x.diff(dim=w) ** 2).mean()


def synthetic_calib(model: onnx.ModelProto, config, specs, progress=None):
    """A CalibData of `config.samples` synthetic inputs (`synthesize`), split as real data would be;
    its `synthetic` attribute holds the info of `synthesize`, and a note says how the data were made."""
    import dataclasses
    import os
    import tempfile

    from ..calibration.calib import CalibData

    arrays, info = synthesize(model, specs, config.samples, config.seed, progress=progress)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "synthetic.npz")
        np.savez(path, **arrays)
        data = CalibData(dataclasses.replace(config, path=path), specs)   # .npz arrays are read into memory here
    data.synthetic = info
    data.notes.append(f"calibration on {info['samples']} synthetic inputs ({info['method']}): BN statistics matched to "
                      f"a mean relative error of {info['bn_match_error']:.3f} (from {info['bn_match_error_start']:.3f} "
                      f"at the random start), {info['seconds']:g} s")
    return data
