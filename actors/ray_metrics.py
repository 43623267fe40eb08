"""Step metrics as Ray metrics (`ray.util.metrics` gauges), so they show in the Ray dashboard and Prometheus.

Metric names may hold only letters, digits and underscores: `reward/total` is exported as `medr3_reward_total`, with
the stage as a tag.
"""

from __future__ import annotations

import re

from ray.util.metrics import Gauge


class RayMetrics:
    def __init__(self):
        self.gauges: dict[str, Gauge] = {}

    def log(self, record: dict) -> None:
        stage = str(record.get("stage", ""))
        for key, value in record.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            name = "medr3_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
            if name not in self.gauges:
                self.gauges[name] = Gauge(name, description=f"Med-R3 {key}", tag_keys=("stage",))
            self.gauges[name].set(float(value), tags={"stage": stage})
