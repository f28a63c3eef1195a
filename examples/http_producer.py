"""An asyncio HTTP producer for the cab ride, like the seeds' RequestHandler.

    POLARIS_REDIS_URL=redis://... uvicorn examples.http_producer:app --port 8000

    POST /rides/{ride_id}             body: RideRequested      -> starts the ride, waits for it
    POST /rides/{ride_id}/events      body: {"CabbieArrived": {...}}   any later delta
    GET  /rides/{ride_id}             the ride's data so far

Handlers await the run without holding a thread (`await handle`), so one process serves many
riders at once. The `Idempotency-Key` header becomes the delta id: a client retrying a request
applies it once.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Header, HTTPException

import polaris_celery as pc
import worker
from worker.cab_ride import RideRequested

app = FastAPI(title="cab rides")
WORKFLOW = "cab-ride"


def _payload(result: pc.RunResult) -> dict[str, Any]:
    return {
        "run": result.run,
        "status": result.status,
        "completed": result.completed,
        "produced": {name: value.model_dump() for name, value in result.data.items()},
    }


async def _run(ride_id: str, data: list[Any], key: str | None, wait: float) -> dict[str, Any]:
    try:
        handle = await worker.executor.submit_delta_async(WORKFLOW, ride_id, *data, delta_id=key)
        return _payload(await handle.wait_async(wait))
    except pc.WaitTimeout as exc:
        raise HTTPException(202, f"accepted, still running: {exc}") from exc
    except pc.BuilderFailed as exc:
        raise HTTPException(502, {"builder": exc.builder, "error": exc.error_type,
                                  "message": exc.message}) from exc
    except pc.InstanceClosed as exc:
        raise HTTPException(409, str(exc)) from exc
    except (pc.UnknownData, pc.InvalidInput) as exc:
        raise HTTPException(422, str(exc)) from exc


@app.post("/rides/{ride_id}")
async def request_ride(ride_id: str, request: RideRequested, wait: float = 10.0,
                       idempotency_key: str | None = Header(None)) -> dict[str, Any]:
    return await _run(ride_id, [request], idempotency_key, wait)


@app.post("/rides/{ride_id}/events")
async def ride_event(ride_id: str, body: dict[str, dict[str, Any]], wait: float = 10.0,
                     idempotency_key: str | None = Header(None)) -> dict[str, Any]:
    graph = worker.registry.graph(WORKFLOW)
    data = []
    for name, fields in body.items():
        tp = graph.types.get(name)
        if tp is None or name not in graph.inputs:
            raise HTTPException(422, f"{name} is not an input of {WORKFLOW}; inputs are "
                                     f"{', '.join(sorted(graph.inputs))}")
        try:
            data.append(tp.model_validate(fields))
        except ValueError as exc:
            raise HTTPException(422, f"{name}: {exc}") from exc
    return await _run(ride_id, data, idempotency_key, wait)


@app.get("/rides/{ride_id}")
async def ride(ride_id: str) -> dict[str, Any]:
    store = worker.registry.store
    names = sorted(store.data_names(WORKFLOW, ride_id))
    if not names:
        raise HTTPException(404, f"no ride {ride_id}")
    graph = worker.registry.graph(WORKFLOW)
    raw = store.read_data(WORKFLOW, ride_id, names)
    return {n: pc.codec.decode(graph, n, v).model_dump() for n, v in raw.items()}
