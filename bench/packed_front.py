"""A thin front for the serving benchmark: takes one case's packed inputs (float32
bytes, base64 in JSON) and asks the real model service (radfusion.serving.http.service:RadfusionModel)
for its probabilities, exactly as the public API service does after preprocessing.

BentoML refuses its pickle serde from outside callers (rightly), and a JSON list of
~10^5 floats per request would cost more than the model itself; this front keeps the
benchmark's clients cheap so the model service and its batcher are what is measured.
For benchmarks only: it has no authentication and must stay on loopback."""

from __future__ import annotations

import base64

import bentoml
import numpy as np

from radfusion.serving.http.service import Radfusion, RadfusionModel


@bentoml.service(name="bench_packed_front", workers=1)
class PackedFront:
    model_service = bentoml.depends(RadfusionModel)
    # The API service's model call, with its retry of connections BentoML drops.
    _infer = Radfusion.inner._infer

    @bentoml.api
    async def probabilities(self, packed: str, rows: int = 1) -> list[list[float]]:
        array = np.frombuffer(base64.b64decode(packed), dtype=np.float32).reshape(rows, -1)
        return np.asarray(await self._infer(array)).tolist()
