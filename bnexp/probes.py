"""The paper's Figure 1 (b, c) probe: how the input to one nonlinearity is distributed over time.

At every evaluation the trainer runs the test set through the inference network (eval mode, so BN
uses its population statistics) and this probe records, for one fixed unit of each probed layer,
the input to its nonlinearity; the 15th, 50th and 85th percentiles are logged as
probe/<layer>/p15|p50|p85. For a convolutional layer every spatial position of the unit counts.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

PERCENTILES = (15, 50, 85)


class PercentileProbe:
    def __init__(self, points: dict[str, nn.Module], unit: int):
        self.points, self.unit = points, unit
        self._values: dict[str, list[torch.Tensor]] = {name: [] for name in points}

    def _hook(self, name: str):
        def record(module, inputs):
            self._values[name].append(inputs[0][:, self.unit].detach().flatten().float())

        return record

    @contextmanager
    def recording(self):
        """Hooks exist only while recording: training steps pay nothing for the probe."""
        for values in self._values.values():
            values.clear()
        handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in self.points.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def percentiles(self) -> dict[str, float]:
        q = torch.tensor([p / 100 for p in PERCENTILES])
        out = {}
        for name, values in self._values.items():
            if values:
                found = torch.quantile(torch.cat(values).cpu(), q).tolist()
                out.update({f"probe/{name}/p{p}": v for p, v in zip(PERCENTILES, found, strict=True)})
        return out
