"""The Celery executor's parts, without a broker: argument transfer, claiming, execution."""

from __future__ import annotations

import time

import pytest
from pydantic import BaseModel
from starlette.requests import Request

import repoll
from repoll import OperationStatus
from repoll.core._headers import new_operation_id
from repoll.core._model import Operation
from repoll.executors._celery import NotTransferable, decode_arguments, encode_arguments
from repoll.executors._celery_worker import WORKER_ID, _claim, execute
from repoll.server._endpoints import endpoint_name


class Spec(BaseModel):
    pages: int
    title: str = "untitled"


@repoll.deferred
async def make_report(spec: Spec, copies: int = 1) -> dict:
    repoll.report_progress(0.5, "half")
    return {"pages": spec.pages * copies, "title": spec.title}


@repoll.deferred
def make_report_sync(spec: Spec) -> Spec:
    return Spec(pages=spec.pages + 1, title=spec.title.upper())


def test_arguments_travel_as_json_and_come_back_typed():
    spec = Spec(pages=3, title="t")
    encoded = encode_arguments(make_report.__wrapped__, (spec,), {"copies": 2})
    assert encoded == {"spec": {"pages": 3, "title": "t"}, "copies": 2}
    decoded = decode_arguments(make_report.__wrapped__, encoded)
    assert decoded == {"spec": spec, "copies": 2}


def test_objects_that_are_not_data_cannot_travel():
    async def needs_request(request: Request) -> dict:
        return {}

    with pytest.raises(NotTransferable, match="request"):
        encode_arguments(needs_request, (object(),), {})


def new_operation(**changes) -> Operation:
    now = time.time()
    base = {
        "id": new_operation_id(),
        "principal": "",
        "endpoint": "POST /r",
        "status": OperationStatus.QUEUED,
        "created_at": now,
        "updated_at": now,
    }
    return Operation(**{**base, **changes})


@pytest.fixture
async def store(redis_url, redis_prefix):
    from repoll.stores._redis import RedisStore

    backend = RedisStore(redis_url, prefix=redis_prefix)
    await backend.open()
    yield backend
    await backend.close()


def payload_for(store, op, endpoint, arguments):
    return {
        "operation": op.id,
        "endpoint": endpoint_name(endpoint),
        "arguments": arguments,
        "status_code": 201,
        "store": f"{store.url}?prefix={store.prefix}",
        "retention": 60,
        "owner_ttl": 10,
        "heartbeat_interval": 1,
    }


@pytest.mark.anyio
async def test_a_worker_runs_the_endpoint_and_stores_its_response(store):
    op = new_operation()
    await store.create(op)
    await execute(
        payload_for(store, op, make_report.__wrapped__, {"spec": {"pages": 2}, "copies": 3})
    )
    done = await store.get(op.id)
    assert done.status is OperationStatus.SUCCEEDED
    assert done.response.status == 201
    assert done.response.body == b'{"pages":6,"title":"untitled"}'
    assert done.owner == WORKER_ID


@pytest.mark.anyio
async def test_a_sync_endpoint_with_a_model_return(store):
    op = new_operation()
    await store.create(op)
    await execute(
        payload_for(store, op, make_report_sync.__wrapped__, {"spec": {"pages": 1, "title": "x"}})
    )
    done = await store.get(op.id)
    assert done.response.body == b'{"pages":2,"title":"X"}'


@pytest.mark.anyio
async def test_an_ended_operation_is_not_run_again(store):
    op = new_operation(status=OperationStatus.CANCELED, expires_at=time.time() + 60)
    await store.create(op)
    await execute(payload_for(store, op, make_report.__wrapped__, {"spec": {"pages": 2}}))
    assert (await store.get(op.id)).status is OperationStatus.CANCELED


@pytest.mark.anyio
async def test_claiming_a_dead_workers_operation_only_when_safe_to_rerun(store):
    op = new_operation(status=OperationStatus.RUNNING, owner="worker:dead", started_at=time.time())
    await store.create(op)
    assert await _claim(store, op.id, live=set(), rerun=False) is None
    taken = await _claim(store, op.id, live=set(), rerun=True)
    assert taken is not None
    assert taken.owner == WORKER_ID
    assert taken.message == "Re-run after a worker stopped."
    other = new_operation(status=OperationStatus.RUNNING, owner="worker:alive")
    await store.create(other)
    assert await _claim(store, other.id, live={"worker:alive"}, rerun=True) is None
