"""The same network in PyTorch, built from one of our configs, with our weights.

`TorchTwin(config)` is a torch.nn.Module that computes exactly what our Net computes:
grouped convolutions for the two towers, LRN with the paper's formula (our ``alpha`` is
not divided by the window, torch's is, so torch gets ``alpha * size`` unless the layer
says ``alpha_over_n``), overlapping max-pooling, dropout, fully connected layers. For an
equality check, `masks` can replace torch's dropout with given masks (ours).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MaskedDropout(nn.Module):
    """nn.Dropout, or the mask set in ``mask`` (a tensor of 0 and 1/(1-p)) when given."""

    def __init__(self, p):
        super().__init__()
        self.drop = nn.Dropout(p)
        self.mask = None

    def forward(self, x):
        return x * self.mask if self.mask is not None and self.training else self.drop(x)


class Flatten(nn.Module):
    def forward(self, x):
        return torch.flatten(x, 1)


def _lrn(layer):
    alpha = layer.alpha if layer.alpha_over_n else layer.alpha * layer.size
    return nn.LocalResponseNorm(layer.size, alpha=alpha, beta=layer.beta, k=layer.k)


def _lrn_grouped(layer):
    """LRN windows inside each group (tower): torch's LRN spans all channels."""
    lrn = _lrn(layer)
    groups = layer.groups

    class GroupedLRN(nn.Module):
        def forward(self, x):
            n, c, h, w = x.shape
            return lrn(x.reshape(n * groups, c // groups, h, w)).reshape(n, c, h, w)

    return GroupedLRN() if groups > 1 else lrn


# Our layer types as torch modules: layer -> the modules that compute it
BUILDERS = {
    "conv": lambda L: [nn.Conv2d(L.in_shape[0], L.filters, L.size, L.stride, L.pad,
                                 groups=L.groups)],
    "fc": lambda L: ([Flatten()] if len(L.in_shape) == 3 else []) + [
        nn.Linear(int(np.prod(L.in_shape)), L.outputs)],
    "relu": lambda L: [nn.ReLU(inplace=True)],
    "lrn": lambda L: [_lrn_grouped(L)],
    "maxpool": lambda L: [nn.MaxPool2d(L.size, L.stride)],
    "dropout": lambda L: [MaskedDropout(L.p)],
}


class TorchTwin(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.names, mods = [], []
        for layer in config.layers:
            built = BUILDERS[layer.type](layer)
            mods.extend(built)
            self.names.extend([layer.name] * len(built))
        self.body = nn.Sequential(*mods)
        self.config = config

    def forward(self, x):
        return self.body(x)

    def weighted(self):
        """(our layer name, module) of the conv and fc modules, in order."""
        return [(n, m) for n, m in zip(self.names, self.body)
                if isinstance(m, (nn.Conv2d, nn.Linear))]

    def load_ours(self, state: dict):
        """Copy a grouped-layout state dict of ours into the torch modules."""
        with torch.no_grad():
            for name, m in self.weighted():
                m.weight.copy_(torch.from_numpy(state[f"{name}.w"]))
                m.bias.copy_(torch.from_numpy(state[f"{name}.b"]))

    def grads(self) -> dict:
        out = {}
        for name, m in self.weighted():
            out[f"{name}.w"] = m.weight.grad.detach().cpu().numpy()
            out[f"{name}.b"] = m.bias.grad.detach().cpu().numpy()
        return out

    def set_dropout_masks(self, masks):
        """masks: one tensor per dropout layer, in order (None: torch's own dropout)."""
        drops = [m for m in self.body if isinstance(m, MaskedDropout)]
        for m, mask in zip(drops, masks if masks is not None else [None] * len(drops)):
            m.mask = mask
