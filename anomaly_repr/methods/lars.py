"""LARS (You et al. 2017), the layer-wise adaptive optimiser of SimCLR and CSI's contrastive stage."""

from __future__ import annotations

from typing import Any

import torch

TRUST = 0.001  # LARS trust coefficient


class Lars(torch.optim.SGD):
    """SGD with momentum whose update of each weight tensor is scaled by TRUST * |w| / |grad + wd w| (You et
    al. 2017); groups without weight decay (biases, norms) keep plain SGD, as in SimCLR."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        decays = [group["weight_decay"] for group in self.param_groups]
        for group in self.param_groups:
            if not group["weight_decay"]:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.grad.add_(p, alpha=group["weight_decay"])  # the decay joins the gradient before the scaling
                w_norm, g_norm = p.norm(), p.grad.norm()
                if w_norm > 0 and g_norm > 0:
                    p.grad.mul_(TRUST * w_norm / g_norm)
            group["weight_decay"] = 0.0  # already in the gradient
        try:
            return super().step(closure)
        finally:
            for group, decay in zip(self.param_groups, decays, strict=True):
                group["weight_decay"] = decay
