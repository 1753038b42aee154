"""Data-free repair: what a pruned network's consumers lose, estimated from the weights alone.

Without calibration data the only description of what a layer computes on real inputs is the
BatchNormalization after it: in inference mode its output channel c is, on the training
distribution, ``y_c ~ N(beta_c, gamma_c^2)`` (mean beta, standard deviation |gamma|). From that,
per channel-tensor moments are propagated through the graph (`moments`):

- Conv -> BN: the BN output has mean beta and variance gamma^2 per channel; the *correlation*
  between two output channels is that of their pre-activations, ``w_i' S w_j / sqrt(..)``, with
  the flattened filters ``w`` and the input patch covariance ``S = Sigma_in (x) K``: ``Sigma_in``
  the channel covariance of the conv's input (propagated, identity for a graph input) and ``K``
  a spatial correlation ``rho^(|dy|+|dx|)`` whose ``rho`` is fitted so that the predicted
  pre-activation variances ``w_o' S w_o`` best match (up to one scale) the BN's running variances,
  the one measured fact about the inputs the file keeps;
- element-wise activations f (Relu, Clip/ReLU6, LeakyRelu, Sigmoid, Tanh, HardSigmoid, HardSwish,
  Elu, Softplus, ...): ``E f(y)`` and ``E f(y)^2`` in closed form for Relu, Clip (truncated
  Gaussian moments), LeakyRelu and PRelu, by Gauss-Hermite quadrature for the others; covariances ``E f(y_i) f(y_j)``
  by 2-D quadrature on the bivariate Gaussian;
- Add/Sum: means and covariances add (branches taken as independent); pass-through ops (pooling,
  Flatten, Identity, Dropout) keep them.

Repairs (each gives `rewrite.apply` its existing `means` / `merges` inputs, so the data-free steps
reuse the rewrite path of the data-driven ones):

1. expected-activation compensation: a removed channel is replaced by its expected value ``m_c``
   in the consumers' biases, the data-free form of mean compensation (lossless for a constant
   channel, gamma = 0);
2. neuron merging (Kim et al., NeurIPS 2020): a removed channel j whose estimated correlation
   with a kept channel i is at least MERGE_MIN_CORR is folded into i with the fitted scale
   ``alpha = cov_ij / var_i`` (and ``m_j - alpha m_i`` into the bias);
3. linear reconstruction, the data-free form of least squares: the removed channels R are
   replaced by their best linear estimate from the kept ones S under the propagated moments,
   ``a_R ~ m_R + B (a_S - m_S)``, ``B = Sigma_RS (Sigma_SS + lambda I)^-1``; consumers get
   ``W_S += W_R B`` (per kernel tap: the estimate is per pixel) and ``b += W_R (m_R - B m_S)``.

4. least squares (`reconstruct.reconstruct`, as with calibration data) fitted on synthetic images
   (FIT_BLURS) other than the check inputs.

Each step is kept only where it lowers the output error (relative squared error against the
original) on check inputs: synthetic images (`check_feeds`: Gaussian noise smoothed over the image
plane, CHECK_BLURS, standardised per image), or inputs given to `Checker`: `repair`. The fidelity
check (`Checker.fidelity`, `fidelity`) compares the outputs on seeded N(0, 1) inputs like the
verification's, which no step fits.
"""

from __future__ import annotations

import numpy as np
import onnx

from .. import rewrite
from ..analysis.graph import GraphIndex, attr
from ..analysis.ops import is_batchnorm, rule_or_default
from ..verification.evaluate import flat_cosine, flat_pair

ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
               "Softplus", "Gelu", "PRelu", "Softsign", "Mish"}
PASS_THROUGH = {"Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                "Flatten", "Pad", "Resize", "Upsample"}
RHO_GRID = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
MERGE_MIN_CORR = 0.5      # neuron merging: estimated correlation a removed channel needs with a kept one
RIDGE = 1e-2              # linear reconstruction: lambda relative to the mean variance of the kept channels
QUAD_POINTS = 64          # Gauss-Hermite points for 1-D expectations (kinks: HardSwish)
QUAD_POINTS_2D = 12       # per axis, for covariances
MAX_COV_CHANNELS = 512    # above this the covariance is kept diagonal (no merging or reconstruction there)


class Moments:
    """Per-channel mean `mean` [C] and covariance `cov` [C, C] of a channel tensor (at one pixel)."""

    def __init__(self, mean: np.ndarray, cov: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.cov = np.asarray(cov, dtype=np.float64)
        self.pre: Moments | None = None      # a Relu output's input (positively homogeneous: merges are exact there)

    @property
    def var(self) -> np.ndarray:
        return np.clip(np.diag(self.cov), 0.0, None)


# ---------------------------------------------------------------- 1-D and 2-D Gaussian expectations

def _phi(x):
    return np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


def _Phi(x):
    from scipy.special import ndtr
    return ndtr(x)


def clip_moments(mean, std, lo=-np.inf, hi=np.inf) -> tuple[np.ndarray, np.ndarray]:
    """``E clip(y, lo, hi)`` and ``E clip(y, lo, hi)^2`` for ``y ~ N(mean, std^2)`` (Relu: lo=0, hi=inf).

    Closed form (moments of the truncated Gaussian): with ``a = (lo-m)/s``, ``b = (hi-m)/s``,
    ``E = lo Phi(a) + hi (1-Phi(b)) + m (Phi(b)-Phi(a)) + s (phi(a)-phi(b))`` and
    ``E2 = lo^2 Phi(a) + hi^2 (1-Phi(b)) + (m^2+s^2)(Phi(b)-Phi(a)) + 2ms (phi(a)-phi(b)) + s^2 (a phi(a) - b phi(b))``.
    """
    m = np.asarray(mean, dtype=np.float64)
    s = np.abs(np.asarray(std, dtype=np.float64))
    m, s = np.broadcast_arrays(m, s)
    safe = np.where(s > 0, s, 1.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        a, b = (lo - m) / safe, (hi - m) / safe
        Pa, Pb = _Phi(a), _Phi(b)
        pa, pb = _phi(a), _phi(b)
        apa = np.where(np.isfinite(a), a * pa, 0.0)
        bpb = np.where(np.isfinite(b), b * pb, 0.0)
        low = np.where(np.isfinite(lo), lo * Pa, 0.0) if np.isfinite(lo) else 0.0
        high = hi * (1 - Pb) if np.isfinite(hi) else 0.0
        low2 = lo * lo * Pa if np.isfinite(lo) else 0.0
        high2 = hi * hi * (1 - Pb) if np.isfinite(hi) else 0.0
        e1 = low + high + m * (Pb - Pa) + s * (pa - pb)
        e2 = low2 + high2 + (m * m + s * s) * (Pb - Pa) + 2 * m * s * (pa - pb) + s * s * (apa - bpb)
    det = np.clip(m, lo, hi)
    e1 = np.where(s > 0, e1, det)
    e2 = np.where(s > 0, e2, det * det)
    return e1, e2


def leaky_moments(mean, std, slope) -> tuple[np.ndarray, np.ndarray]:
    """``E`` and ``E^2`` of ``max(y, 0) + slope min(y, 0)`` (LeakyRelu, PRelu), closed form:
    ``relu(y) - slope relu(-y)``, the two parts never both non-zero."""
    p1, p2 = clip_moments(mean, std, 0.0, np.inf)
    n1, n2 = clip_moments(-np.asarray(mean, dtype=np.float64), std, 0.0, np.inf)
    return p1 - slope * n1, p2 + slope * slope * n2


def _hermite(n):
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()


def quad_moments(f, mean, std, n: int = QUAD_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """``E f(y)`` and ``E f(y)^2`` for ``y ~ N(mean, std^2)`` by Gauss-Hermite quadrature (vectorised f)."""
    x, w = _hermite(n)
    y = np.asarray(mean, dtype=np.float64)[..., None] + np.abs(np.asarray(std, dtype=np.float64))[..., None] * x
    fy = f(y)
    return fy @ w, (fy * fy) @ w


def act_cov(f, mean, cov, e1, n: int = QUAD_POINTS_2D, diag2=None) -> np.ndarray:
    """Covariance of ``f(y)`` for ``y ~ N(mean, cov)``: 2-D Gauss-Hermite on every channel pair.

    `e1` are the 1-D means ``E f(y_i)``; `diag2` (``E f(y_i)^2``) replaces the diagonal when given.
    """
    C = len(mean)
    s = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    out = np.zeros((C, C))
    if C == 0:
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip(np.nan_to_num(cov / np.outer(s, s)), -1.0, 1.0)
    x, w = _hermite(n)
    u, v = np.meshgrid(x, x, indexing="ij")
    ww = np.outer(w, w).ravel()
    u, v = u.ravel(), v.ravel()
    fi = f(mean[:, None] + s[:, None] * u[None, :])            # [C, P]: channel i at u
    step = max(1, int(4e6 // (C * len(u))))
    for start in range(0, C, step):
        r = rho[start:start + step]                                              # [c, C]
        zj = mean[None, :, None] + s[None, :, None] * (r[..., None] * u + np.sqrt(1 - r[..., None] ** 2) * v)
        out[start:start + step] = np.einsum("ip,ijp,p->ij", fi[start:start + step], f(zj), ww)
    out = out - np.outer(e1, e1)
    out = 0.5 * (out + out.T)
    if diag2 is not None:
        np.fill_diagonal(out, np.clip(diag2 - e1 * e1, 0.0, None))
    return out


def activation_fn(node: onnx.NodeProto, index: GraphIndex):
    """(f, closed-form clip bounds or None) of an element-wise activation node; None when unknown."""
    op = node.op_type
    if op == "Relu":
        return (lambda y: np.maximum(y, 0.0)), (0.0, np.inf)
    if op == "Clip":
        lo, hi = attr(node, "min", -np.inf), attr(node, "max", np.inf)
        if len(node.input) > 1 and node.input[1]:
            c = index.const(node.input[1])
            if c is None:
                return None
            lo = float(c)
        if len(node.input) > 2 and node.input[2]:
            c = index.const(node.input[2])
            if c is None:
                return None
            hi = float(c)
        return (lambda y: np.clip(y, lo, hi)), (lo, hi)
    if op == "LeakyRelu":
        a = attr(node, "alpha", 0.01)
        return (lambda y: np.where(y > 0, y, a * y)), None
    if op == "Sigmoid":
        return (lambda y: 0.5 * (1 + np.tanh(0.5 * y))), None
    if op == "Tanh":
        return np.tanh, None
    if op == "HardSigmoid":
        a, b = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
        return (lambda y: np.clip(a * y + b, 0, 1)), None
    if op == "HardSwish":
        return (lambda y: y * np.clip(y / 6 + 0.5, 0, 1)), None
    if op == "Elu":
        a = attr(node, "alpha", 1.0)
        return (lambda y: np.where(y > 0, y, a * np.expm1(np.minimum(y, 0)))), None
    if op == "Selu":
        a, g = attr(node, "alpha", 1.67326319217681884765625), attr(node, "gamma", 1.05070102214813232421875)
        return (lambda y: g * np.where(y > 0, y, a * np.expm1(np.minimum(y, 0)))), None
    if op == "Softplus":
        return (lambda y: np.logaddexp(0, y)), None
    if op == "Softsign":
        return (lambda y: y / (1 + np.abs(y))), None
    if op == "Mish":
        return (lambda y: y * np.tanh(np.logaddexp(0, y))), None
    if op == "Gelu":
        from scipy.special import erf
        return (lambda y: 0.5 * y * (1 + erf(y / np.sqrt(2)))), None
    return None


def _apply_activation(node, index, mom: Moments) -> Moments | None:
    if node.op_type == "PRelu":
        slope = index.const(node.input[1])
        if slope is None:
            return None
        slope = np.broadcast_to(np.asarray(slope, dtype=np.float64).reshape(-1), mom.mean.shape) \
            if slope.size in (1, mom.mean.size) else None
        if slope is None:
            return None
        e1, e2 = leaky_moments(mom.mean, np.sqrt(mom.var), slope)
        # per-channel slopes: the pair quadrature needs one function; use the mean slope there
        f = (lambda y, s=float(slope.mean()): np.where(y > 0, y, s * y))
    else:
        found = activation_fn(node, index)
        if found is None:
            return None
        f, bounds = found
        std = np.sqrt(mom.var)
        if node.op_type == "LeakyRelu":
            e1, e2 = leaky_moments(mom.mean, std, attr(node, "alpha", 0.01))
        else:
            e1, e2 = clip_moments(mom.mean, std, *bounds) if bounds else quad_moments(f, mom.mean, std)
    if len(e1) > MAX_COV_CHANNELS:
        return Moments(e1, np.diag(np.clip(e2 - e1 * e1, 0.0, None)))
    return Moments(e1, act_cov(f, mom.mean, mom.cov, e1, diag2=e2))


# ---------------------------------------------------------------- propagation through the graph

def _spatial_kernel(kh: int, kw: int, rho: float, dilations=(1, 1)) -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(kh) * dilations[0], np.arange(kw) * dilations[1], indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    d = np.abs(ys[:, None] - ys[None, :]) + np.abs(xs[:, None] - xs[None, :])
    return np.power(rho, d) if rho > 0 else (d == 0).astype(np.float64)


def conv_output_corr(w: np.ndarray, in_cov: np.ndarray, dilations=(1, 1), running_var=None) -> tuple[np.ndarray, float]:
    """Correlation of a (group 1) Conv's output channels, and the spatial rho it used.

    ``cov = W (Sigma_in (x) K(rho)) W'`` on flattened filters; `rho` from RHO_GRID, the one whose
    predicted variances best match `running_var` in log scale (up to one scale factor); 0.9
    without running variances.
    """
    O, C, kh, kw = w.shape
    wf = w.astype(np.float64).reshape(O, C, kh * kw)
    best = None
    for rho in (RHO_GRID if running_var is not None else (0.9,)):
        K = _spatial_kernel(kh, kw, rho, dilations)
        # cov_o,o' = sum_{c,c',p,q} w[o,c,p] S[c,c'] K[p,q] w[o',c',q]
        t = np.matmul(in_cov[None], wf @ K)             # [O, C, P]: (Sigma_in (x) K) w_o, by BLAS
        cov = t.reshape(O, -1) @ wf.reshape(O, -1).T    # [O, O]
        var = np.clip(np.diag(cov), 1e-30, None)
        if running_var is None:
            best = (cov, rho)
            break
        ok = running_var > 0
        err = np.log(var[ok]) - np.log(running_var[ok])
        fit = float(np.mean((err - err.mean()) ** 2)) if ok.any() else 0.0
        if best is None or fit < best[2] - 1e-12:
            best = (cov, rho, fit)
    cov, rho = best[0], best[1]
    s = np.sqrt(np.clip(np.diag(cov), 1e-30, None))
    return np.clip(cov / np.outer(s, s), -1.0, 1.0), rho


def moments(model: onnx.ModelProto, shapes: dict | None = None) -> tuple[dict[str, Moments], dict]:
    """Per-channel moments (at one pixel) of the tensors of `model` that follow from BN parameters.

    Returns (tensor name -> Moments, info) where info maps each Conv output feeding a BN to the
    spatial rho fitted there. Tensors whose distribution the rules cannot follow are absent.
    """
    index = GraphIndex(model)
    result: dict[str, Moments] = {}
    conv_corr: dict[str, np.ndarray] = {}
    info = {}
    for node in model.graph.node:
        op = node.op_type
        rule = rule_or_default(node)
        out = node.output[0] if node.output else None
        if rule.is_batchnorm:
            gamma, beta = index.const(node.input[1]), index.const(node.input[2])
            if gamma is None or beta is None:
                continue
            gamma, beta = gamma.astype(np.float64), beta.astype(np.float64)
            corr = conv_corr.get(node.input[0])
            if corr is None or len(corr) != len(gamma):
                corr = np.eye(len(gamma))
            result[out] = Moments(beta, corr * np.outer(gamma, gamma))
        elif rule.patch_rows:       # a Conv: its output correlation, when a BN follows
            w = index.const(node.input[1])
            if w is None or w.ndim != 4 or not rule.dense_filter(node) or len(w) > MAX_COV_CHANNELS:
                continue
            consumers = index.consumers.get(out, [])
            bn = next((n for n, slot in consumers if is_batchnorm(n) and slot == 0), None)
            if bn is None:
                continue
            src = result.get(node.input[0])
            in_cov = src.cov if src is not None and len(src.mean) == w.shape[1] else np.eye(w.shape[1])
            rv = index.const(bn.input[4])
            dil = tuple(attr(node, "dilations", [1, 1]))
            corr, rho = conv_output_corr(w, in_cov, dil, None if rv is None else rv.astype(np.float64))
            conv_corr[out] = corr
            info[out] = rho
        elif op in ACTIVATIONS:
            src = result.get(node.input[0])
            if src is not None:
                mom = _apply_activation(node, index, src)
                if mom is not None:
                    mom.pre = src if op == "Relu" else None    # neuron merging reads Relu inputs
                    result[out] = mom
        elif op in ("Add", "Sum"):
            parts = [result.get(i) for i in node.input]
            if parts and all(p is not None for p in parts) and len({len(p.mean) for p in parts}) == 1:
                result[out] = Moments(sum(p.mean for p in parts), sum(p.cov for p in parts))
        elif op in PASS_THROUGH:
            src = result.get(node.input[0]) if node.input else None
            if src is not None:
                result[out] = src
    return result, info


# ---------------------------------------------------------------- repairs as rewrite inputs

def expected_means(an, mom: dict[str, Moments]) -> dict[str, np.ndarray]:
    """Expected activation of every read channel tensor with known moments (rewrite's `means`)."""
    return {t: mom[t].mean for t in an.read_tensors() if t in mom}


def neuron_merges(mom: dict[str, Moments], kept: dict[str, np.ndarray], min_corr: float = MERGE_MIN_CORR) -> dict:
    """Removed channels with a kept channel of estimated correlation >= `min_corr`: (j, i, alpha, beta0).

    ``alpha = cov_ij / var_i`` (the least-squares scale), ``beta0 = m_j - alpha m_i``. Behind a Relu
    both are taken on its input, the BN output (Kim et al.: cosine of the BN-folded filters; Relu
    is positively homogeneous, so a positively scaled copy there merges exactly)."""
    result = {}
    for tensor, keep in kept.items():
        m = mom.get(tensor)
        if m is None or len(keep) == 0 or len(keep) == len(m.mean):
            continue
        fit = m.pre if m.pre is not None else m
        var = fit.var
        sd = np.sqrt(var)
        removed = np.setdiff1d(np.arange(len(m.mean)), keep)
        found = []
        for j in removed:
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = np.nan_to_num(fit.cov[j, keep] / (sd[j] * sd[keep]))
            k = int(np.argmax(corr))
            i = int(keep[k])
            if corr[k] >= min_corr and var[i] > 0:
                alpha = float(fit.cov[j, i] / var[i])
                found.append((int(j), i, alpha, float(m.mean[j] - alpha * m.mean[i])))
        if found:
            result[tensor] = found
    return result


def linear_merges(mom: dict[str, Moments], kept: dict[str, np.ndarray], ridge: float = RIDGE) -> dict:
    """The removed channels as a linear function of the kept ones (``B = Sigma_RS (Sigma_SS + lambda I)^-1``),
    as `compensation.LinearMerge` entries: rewrite folds them exactly, per kernel tap."""
    from .compensation import LinearMerge

    result = {}
    for tensor, keep in kept.items():
        m = mom.get(tensor)
        if m is None or len(keep) == 0 or len(keep) == len(m.mean):
            continue
        removed = np.setdiff1d(np.arange(len(m.mean)), keep)
        css = m.cov[np.ix_(keep, keep)]
        lam = ridge * max(float(np.mean(np.diag(css))), 1e-12)
        B = np.linalg.solve(css + lam * np.eye(len(keep)), m.cov[np.ix_(keep, removed)]).T    # [R, S]
        bias = m.mean[removed] - B @ m.mean[keep]
        result[tensor] = LinearMerge(removed.astype(np.int64), np.asarray(keep, dtype=np.int64), B, bias)
    return result


# ---------------------------------------------------------------- check inputs, repair, fidelity

CHECK_SAMPLES = 96            # synthetic check inputs per run (one batch where the batch is dynamic)
# spatial smoothing (Gaussian sigma, as a fraction of the shorter image side; cycled over the
# samples) of the synthetic check images, and of those least squares fits on. Measured on the
# demo (28 px): the check's sigmas of 1, 2, 4 px ranked the repairs as the test accuracy does in
# 6 of 6 budgets (unsmoothed noise did not); fitted on 4 and 8 px, least squares reached 73-74% on
# the calibration images at --ratio 0.5 (two seeds) where 1, 2, 4 px gave 45-47%
CHECK_BLURS = (1 / 28, 2 / 28, 4 / 28)
FIT_BLURS = (4 / 28, 8 / 28)
# collapse thresholds, measured on the bundled Fashion-MNIST ResNet (docs/results.md) on 96 seeded
# N(0, 1) inputs, which no repair step fits. Pruned models at 10-24% test accuracy (10k images) had
# output cosines 0.39-0.86 with the original and a top-1 agreement 0.00-0.01 above the agreement of
# two unrelated predictors with the same class frequencies (`chance`); those at 74-93% had cosines
# 0.88-0.96 and agreements 0.05-0.33 above chance.
COLLAPSE_COSINE = 0.75
COLLAPSE_MARGIN = 0.02     # top-1 agreement at most this far above chance: answers unrelated to the original's
CHANCE_MAX = 0.8           # ... judged only where chance is below this (the original's answers vary)


def _image_axes(shape) -> tuple[int, int] | None:
    """Spatial axes of an image-like input [N, C, H, W] or [N, H, W, C], else None."""
    if len(shape) != 4:
        return None
    if shape[1] is not None and shape[1] <= 4 and (shape[2] or 0) >= 8 and (shape[3] or 0) >= 8:
        return 2, 3
    if shape[3] is not None and shape[3] <= 4 and (shape[1] or 0) >= 8 and (shape[2] or 0) >= 8:
        return 1, 2
    return None


def check_feeds(model: onnx.ModelProto, input_shapes: dict, samples: int = CHECK_SAMPLES,
                seed: int = 0, blurs: tuple[float, ...] = CHECK_BLURS) -> list[dict[str, np.ndarray]]:
    """Seeded synthetic inputs for data-free decisions: a list of feed dicts.

    Image-like float inputs get Gaussian noise smoothed over the image plane (sigma `blurs` times
    the shorter side, cycled) and standardised per image: on the Fashion-MNIST demo, unsmoothed noise ranked the
    repairs wrongly (the original predicts 3 classes on it), smoothed noise ranked them as the
    test accuracy does. Other inputs are those of the verification (`verify.random_feeds`).
    A fixed batch dimension gives several feeds of that batch.
    """
    from scipy.ndimage import gaussian_filter

    from ..analysis.graph import real_inputs
    from ..runtime.sessions import random_feeds

    probe = random_feeds(model, input_shapes, batch=samples, seed=seed)
    batch = max(1, min(len(v) if np.ndim(v) else 1 for v in probe.values()))
    runs = max(1, -(-samples // batch))
    rng = np.random.default_rng(seed)
    feeds = []
    for r in range(runs):
        feed = random_feeds(model, input_shapes, batch=samples, seed=seed + r)
        for vi in real_inputs(model):
            x = feed[vi.name]
            axes = _image_axes(list(x.shape))
            if axes is None or not np.issubdtype(x.dtype, np.floating):
                continue
            noise = rng.standard_normal(x.shape)
            side = min(x.shape[a] for a in axes)
            for i in range(len(noise)):
                sigma = [0.0] * (noise.ndim - 1)
                for a in axes:
                    sigma[a - 1] = blurs[(r * batch + i) % len(blurs)] * side
                img = gaussian_filter(noise[i], sigma)
                noise[i] = (img - img.mean()) / max(img.std(), 1e-12)
            feed[vi.name] = noise.astype(x.dtype)
        feeds.append(feed)
    return feeds


def run_outputs(model, feeds: list[dict]) -> list[np.ndarray]:
    """The model's outputs on every feed, concatenated along the batch."""
    from ..runtime.sessions import session

    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    runs = [sess.run(names, f) for f in feeds]
    return [np.concatenate([r[k] for r in runs]) if np.ndim(runs[0][k]) else runs[0][k] for k in range(len(names))]


def output_error(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    """Sum over float outputs of the relative squared error ``|y - y0|^2 / |y0|^2`` (inf for NaN)."""
    total = 0.0
    for a, b in zip(reference, outputs):
        if not np.issubdtype(np.asarray(a).dtype, np.floating) or np.shape(a) != np.shape(b):
            continue
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        err = float(((b - a) ** 2).sum() / max(float((a ** 2).sum()), 1e-30))
        total += err if np.isfinite(err) else np.inf
    return total


def repair(an, removed: np.ndarray, pruned: onnx.ModelProto, feeds: list[dict], reference: list[np.ndarray],
           inputs: str = "synthetic", fit_feeds: list[dict] | None = None,
           input_shapes: dict | None = None) -> tuple[onnx.ModelProto, list[dict]]:
    """Data-free recovery of `pruned` (= `an`'s model without `removed`): expected-activation
    compensation, neuron merging, linear reconstruction, then (with `fit_feeds`) least squares
    fitted on those synthetic inputs; each is kept only if it lowers `output_error` against the
    original's `reference` outputs on `feeds` (other samples than `fit_feeds`).

    Returns the best model and the steps (as the data-driven recovery reports them, with
    ``"inputs"`` naming what the loss was measured on)."""
    best, best_loss = pruned, output_error(reference, run_outputs(pruned, feeds))
    steps = []

    def consider(name, model):
        nonlocal best, best_loss
        try:
            loss = output_error(reference, run_outputs(model, feeds))
        except Exception:  # noqa: BLE001 - a candidate onnxruntime rejects is not kept
            loss = np.inf
        accepted = bool(loss < best_loss)
        steps.append({"step": name, "loss_before": best_loss, "loss_after": loss, "kept": accepted, "inputs": inputs})
        if accepted:
            best, best_loss = model, loss

    mom, _ = moments(an.model)
    read = an.read_tensors()
    # per-channel moments only where the consumers read channels (not the C*H*W features of a Flatten)
    mom = {t: m for t, m in mom.items() if t in an.tensors and len(m.mean) == an.tensors[t].size}
    kept = {t: k for t, k in an.kept_channels(np.asarray(removed, dtype=np.int64)).items() if t in read}
    if any(t in mom for t in kept):
        means = expected_means(an, mom)
        consider("expected_compensation", rewrite.apply(an, removed, means=means))
        for name, merges in (("neuron_merging", neuron_merges(mom, kept)),
                             ("linear_reconstruction", linear_merges(mom, kept))):
            if merges:
                consider(name, rewrite.apply(an, removed, means=means, merges=merges))
    else:
        steps.append({"step": "compensation_skipped",
                      "layers": ["no pruned tensor follows from BatchNormalization parameters"]})
    if fit_feeds:
        repaired, skipped = synthetic_least_squares(an, removed, best, fit_feeds, input_shapes or {})
        consider("least_squares_synthetic", repaired)
        if skipped:
            steps.append({"step": "least_squares_skipped", "layers": [f"{n}: {why}" for n, why in skipped]})
    return best, steps


def synthetic_least_squares(an, removed: np.ndarray, start: onnx.ModelProto, fit_feeds: list[dict],
                            input_shapes: dict) -> tuple[onnx.ModelProto, list]:
    """`reconstruct.reconstruct` (sequential anchored least squares) of `start` on synthetic inputs."""
    import os
    import tempfile

    from ..calibration.calib import CalibConfig, CalibData, input_specs
    from .reconstruct import reconstruct

    arrays = {k: np.concatenate([f[k] for f in fit_feeds]) for k in fit_feeds[0]}
    n = len(next(iter(arrays.values())))
    with tempfile.TemporaryDirectory(prefix="onnxprune-synthetic-") as tmp:
        path = os.path.join(tmp, "synthetic.npz")
        np.savez(path, **arrays)
        data = CalibData(CalibConfig(path, n, 32, (0.0,), (1.0,), 1.0, 0.0, 0), input_specs(an.model, input_shapes))
        return reconstruct(an.model, start, an.kept_channels(np.asarray(removed, dtype=np.int64)), data)


def fidelity(reference: list[np.ndarray], outputs: list[np.ndarray], names: list[str],
             inputs: str = "random") -> dict:
    """Whether the pruned outputs still follow the original's on the fidelity inputs, per output.

    For each float output: the cosine of the whole output with the original's, and for classifier
    outputs ([N, K], K > 1) the top-1 agreement, the classes each model predicts, and `chance`, the
    agreement of two unrelated predictors with these class frequencies. An output has *collapsed*
    when its cosine is below COLLAPSE_COSINE, or the pruned model predicts one class where the
    original predicts several, or (where the original's answers vary, chance < CHANCE_MAX) its
    agreement is within COLLAPSE_MARGIN of chance. Returns {"inputs", "samples", "outputs":
    {name: ...}, "collapsed": [names]}."""
    result, collapsed = {}, []
    samples = int(len(reference[0])) if reference and np.ndim(reference[0]) else 0
    for name, a, b in zip(names, reference, outputs):
        if (pair := flat_pair(a, b)) is None:
            continue
        cos = flat_cosine(*pair)
        entry = {"cosine": cos}
        bad = not cos >= COLLAPSE_COSINE
        if np.ndim(a) == 2 and np.shape(a)[1] > 1 and len(a) > 1:
            pa, pb = np.argmax(a, 1), np.argmax(np.nan_to_num(b, nan=-np.inf), 1)
            k = np.shape(a)[1]
            fa_, fb_ = np.bincount(pa, minlength=k) / len(pa), np.bincount(pb, minlength=k) / len(pb)
            entry.update({"top1_agreement": float(np.mean(pa == pb)), "chance": float(fa_ @ fb_),
                          "classes_original": int(len(np.unique(pa))), "classes_pruned": int(len(np.unique(pb)))})
            bad = (bad or entry["classes_pruned"] == 1 < entry["classes_original"]
                   or (entry["chance"] < CHANCE_MAX and entry["top1_agreement"] <= entry["chance"] + COLLAPSE_MARGIN))
        entry["collapsed"] = bool(bad)
        if bad:
            collapsed.append(name)
        result[name] = entry
    return {"inputs": inputs, "samples": samples, "outputs": result, "collapsed": collapsed}


def fidelity_feeds(model: onnx.ModelProto, input_shapes: dict, samples: int, seed: int = 0) -> list[dict]:
    """`samples` verification inputs (`verify.random_feeds`: N(0, 1) floats), as a list of feeds."""
    from ..runtime.sessions import random_feeds

    feeds, total = [], 0
    while total < samples:
        feed = random_feeds(model, input_shapes, batch=samples - total, seed=seed + len(feeds))
        feeds.append(feed)
        total += max(1, min((len(v) if np.ndim(v) else 1) for v in feed.values()))
    return feeds


def collapse_warning(fid: dict, calib: bool) -> str | None:
    """The warning line for collapsed outputs (None when none collapsed)."""
    if not fid or not fid.get("collapsed"):
        return None
    parts = []
    for name in fid["collapsed"]:
        e = fid["outputs"][name]
        what = f"cosine {e['cosine']:.2f}"
        if "top1_agreement" in e:
            what += (f", top-1 agreement {e['top1_agreement']:.2f} (chance {e['chance']:.2f}), "
                     f"{e['classes_pruned']} class(es) predicted where the original predicts {e['classes_original']}")
        parts.append(f"'{name}' ({what})")
    advice = "a smaller --ratio/--target-macs" if calib else "--calib with a few hundred real inputs, or a smaller --ratio/--target-macs"
    return (f"the pruned model is structurally valid but not faithful: its outputs have collapsed on "
            f"{fid['samples']} {fid['inputs']} inputs: " + "; ".join(parts) + f"; try {advice}")


CHECK_MAC_BUDGET = 2e10   # multiply-accumulates per model for the check inputs (ResNet-50 gets CHECK_MIN)
CHECK_MIN = 8
FIT_SAMPLES = 256         # synthetic inputs the least-squares step fits on ...
FIT_MAC_BUDGET = 5e10     # ... at most this many MACs' worth (ResNet-50: FIT_MIN)
FIT_MIN = 16


class Checker:
    """The check inputs of a prune and the original's outputs on them: what data-free steps are
    accepted on and what the fidelity check compares (`fidelity`)."""

    def __init__(self, original: onnx.ModelProto, input_shapes: dict, seed: int = 0, macs: float = 0.0,
                 feeds: list[dict] | None = None, inputs: str = "synthetic"):
        self.original, self.input_shapes, self.seed, self.inputs = original, input_shapes, seed, inputs
        self.samples = int(np.clip(CHECK_MAC_BUDGET // max(macs, 1.0), CHECK_MIN, CHECK_SAMPLES))
        self.fit_samples = int(np.clip(FIT_MAC_BUDGET // max(macs, 1.0), FIT_MIN, FIT_SAMPLES))
        self.given = feeds is not None     # inputs from elsewhere (synthetic calibration): no smoothed noise
        self._feeds, self._reference = feeds, None
        self.names = [o.name for o in original.graph.output]

    @property
    def feeds(self) -> list[dict]:
        """The check inputs (made on first use)."""
        if self._feeds is None:
            self._feeds = check_feeds(self.original, self.input_shapes, self.samples, self.seed)
        return self._feeds

    @property
    def reference(self) -> list[np.ndarray]:
        """The original's outputs on the check inputs."""
        if self._reference is None:
            self._reference = run_outputs(self.original, self.feeds)
        return self._reference

    def runs(self) -> str | None:
        """None when the original runs in onnxruntime on the check inputs, else why not (a custom op)."""
        try:
            self.reference
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            return f"the original does not run in onnxruntime: {str(exc).splitlines()[0][:200] if str(exc) else exc}"
        return None

    def repair(self, an, removed, pruned) -> tuple[onnx.ModelProto, list[dict], int]:
        """`repair` on these inputs; returns (model, steps, image passes spent)."""
        if len(removed) == 0:
            return pruned, [], 0
        why = self.runs()
        if why:
            return pruned, [{"step": "datafree_skipped", "layers": [why]}], 0
        fit = None if self.given else check_feeds(self.original, self.input_shapes, self.fit_samples, self.seed + 1000,
                                                       FIT_BLURS)
        model, steps = repair(an, removed, pruned, self.feeds, self.reference, self.inputs, fit, self.input_shapes)
        checks = len(self.reference[0]) * (1 + sum("loss_after" in s for s in steps))
        return model, steps, checks + (3 * self.fit_samples if fit else 0)   # teacher targets + one walk

    def fidelity(self, pruned: onnx.ModelProto) -> dict:
        """`fidelity` of `pruned` on random verification inputs (not the synthetic ones the repair
        was chosen and fitted on: after least squares on them, a model at 23% test accuracy still
        had cosine 0.99 there)."""
        feeds = fidelity_feeds(self.original, self.input_shapes, self.samples, self.seed)
        try:
            reference = run_outputs(self.original, feeds)
        except Exception:  # noqa: BLE001 - the original does not run (custom ops): verify says so
            return None
        return fidelity(reference, run_outputs(pruned, feeds), self.names, "random")


def fidelity_failure(fid: dict | None, min_fidelity: float | None) -> str | None:
    """Why `fid` fails `--min-fidelity` (a collapsed output, or a cosine below it), or None."""
    if min_fidelity is None or not fid:
        return None
    low = {n: e["cosine"] for n, e in fid["outputs"].items() if not e["cosine"] >= min_fidelity}
    if not fid["collapsed"] and not low:
        return None
    what = ", ".join(f"'{n}' collapsed" for n in fid["collapsed"]) or \
        ", ".join(f"'{n}' cosine {c:.3f}" for n, c in low.items())
    return (f"the pruned model is not faithful enough, nothing written: {what} on {fid['samples']} {fid['inputs']} "
            f"inputs (--min-fidelity {min_fidelity:g}); try --calib with real inputs or a smaller ratio")
