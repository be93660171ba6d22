"""Per-layer statistics as cuda-convnet printed them, every ``--stats-every`` steps.

For each weight layer: the RMS of its weights (after the step), of its gradients and of
the step's update, and update RMS / weight RMS; for each ReLU, the fraction of its outputs
that are zero. The ReLU is fused into conv/fc in the engines and their activations are
freed during backward, so the zero fractions come from a separate test-mode forward (no
dropout) of the step's batch with the updated weights, run after the step (outside its
fixed buffers, pyalexnet.memory). Records go to
metrics.jsonl (kind "layers"); `plot_layers` draws layers.png from them. A ratio outside
[1e-5, 1e-1] or a ReLU more than 90% dead gets a one-line warning.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..layers import Pass, ReLU, build_steps
from ..model import layer_params

RATIO_RANGE = (1e-5, 1e-1)
DEAD_LIMIT = 0.9


def _rms(a):
    a = np.asarray(a, np.float64)
    return float(np.sqrt(np.mean(a * a))) if a.size else 0.0


def relu_zero_fractions(net, x) -> dict:
    """{layer name: fraction of zero ReLU outputs} of a test-mode forward of ``x``."""
    config, be = net.config, net.backend
    params = {k: be.asarray(v) for k, v in net.state_dict().items()}
    ctx = Pass(train=False, towers=tuple(range(config.towers)))
    out, h = {}, be.asarray(x)
    for step in build_steps(config.layers):
        h, _ = step.forward(be, h, layer_params(params, step.layer), ctx)
        if step.relu or isinstance(step.layer, ReLU):
            out[step.name] = float(np.mean(be.to_numpy(h) == 0))
    return out


class LayerStats:
    """Call `before` ahead of a due step and `after` once its update is applied."""

    def __init__(self, every):
        self.every = int(every or 0)

    def due(self, step) -> bool:
        return self.every > 0 and step % self.every == 0

    def before(self, net):
        return net.state_dict()

    def after(self, net, weights_before, x, step):
        """(the metrics record, warning lines) of the step that ``x`` was the batch of."""
        weights, grads = net.state_dict(), net.grad_state_dict()
        dead = relu_zero_fractions(net, x)
        layers, warnings = {}, []
        for layer in net.config.layers:
            if "w" not in layer.param_shapes:
                continue
            k = f"{layer.name}.w"
            w_rms, u_rms = _rms(weights[k]), _rms(weights[k] - weights_before[k])
            ratio = u_rms / w_rms if w_rms else math.inf
            layers[layer.name] = {"weight_rms": w_rms, "grad_rms": _rms(grads[k]),
                                  "update_rms": u_rms, "update_ratio": ratio}
            if not RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]:
                warnings.append(f"warning: step {step}: layer {layer.name}'s update/weight ratio "
                                f"is {ratio:.2g}, outside [{RATIO_RANGE[0]:g}, {RATIO_RANGE[1]:g}]")
        for name, frac in dead.items():
            layers.setdefault(name, {})["relu_zero"] = frac
            if frac > DEAD_LIMIT:
                warnings.append(f"warning: step {step}: {100 * frac:.1f}% of layer {name}'s ReLU "
                                f"outputs are zero (more than {100 * DEAD_LIMIT:.0f}%)")
        return {"kind": "layers", "step": step, "layers": layers}, warnings


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot_layers(path, metrics_path):
    """layers.png: the four statistics of each layer against the step; None if no records."""
    from PIL import Image

    from ..plots import BACKGROUND, _chart

    recs = []
    for line in Path(metrics_path).read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind") == "layers":
            recs.append(r)
    if not recs:
        return None
    names = list(dict.fromkeys(n for r in recs for n in r["layers"]))
    colors = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}

    def series(key, f):
        out = []
        for n in names:
            pts = [(r["step"], r["layers"][n][key]) for r in recs
                   if key in r["layers"].get(n, {}) and (key == "relu_zero" or
                                                        0 < r["layers"][n][key] < math.inf)]
            if pts:
                out.append((n, [p[0] for p in pts], [f(p[1]) for p in pts]))
        return out

    img = Image.new("RGB", (1200, 900), BACKGROUND)
    panels = [("update_ratio", "log10 update / weight RMS", math.log10, None, None),
              ("weight_rms", "log10 weight RMS", math.log10, None, None),
              ("grad_rms", "log10 gradient RMS", math.log10, None, None),
              ("relu_zero", "ReLU outputs that are zero (%)", lambda v: 100 * v, 0.0, 100.0)]
    for i, (key, title, f, lo, hi) in enumerate(panels):
        x, y = (i % 2) * 600, (i // 2) * 450
        _chart(img, (x, y, x + 600, y + 450), series(key, f), title, "step", "", lo, hi, colors)
    path = Path(path)
    img.save(path, format="PNG")
    return path
