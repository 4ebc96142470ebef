"""A thin front for the serving benchmark: takes one case's packed inputs and asks the
real model service (radfusion.serving.http.service:RadfusionModel) for its
probabilities, exactly as the public API service does after preprocessing.

POST /packed takes the packed rows as raw float32 bytes (application/octet-stream,
``?rows=N``): what the API service holds in memory after preprocessing, so the front
adds only an HTTP hop and no serde of its own. BentoML refuses its pickle serde from
outside callers (rightly), and base64 in JSON (POST /probabilities, kept) cost the
front about a quarter of its time per request, on the cores the model service needs.
For benchmarks only: it has no authentication and must stay on loopback."""

from __future__ import annotations

import base64
import typing as t

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from radfusion.serving.http.service import Radfusion, RadfusionModel


async def _packed(request: Request) -> JSONResponse:
    rows = int(request.query_params.get("rows", "1"))
    array = np.frombuffer(await request.body(), dtype=np.float32).reshape(rows, -1)
    front = t.cast("PackedFront", bentoml.get_current_service())
    return JSONResponse(np.asarray(await front._infer(array)).tolist())


raw_app = Starlette(routes=[Route("/packed", _packed, methods=["POST"])])


@bentoml.service(name="bench_packed_front", workers=1)
class PackedFront:
    model_service = bentoml.depends(RadfusionModel)
    # The API service's model call, with its retry of connections BentoML drops.
    _infer = Radfusion.inner._infer

    @bentoml.api
    async def probabilities(self, packed: str, rows: int = 1) -> list[list[float]]:
        array = np.frombuffer(base64.b64decode(packed), dtype=np.float32).reshape(rows, -1)
        return np.asarray(await self._infer(array)).tolist()


t.cast("bentoml.Service[PackedFront]", PackedFront).mount_asgi_app(raw_app, path="/raw")
