"""What the tests and benchmarks take on the shared services, they give back.

The fixtures (``broker_queue``, ``redis_prefix``, ``postgres_url``) and the
distributed benchmark remove their queues, keys and schemas with these
helpers; here each helper removes exactly what it is given, and nothing else.
"""

from __future__ import annotations

import uuid

import pytest
from tests.services import (
    BROKER_URL,
    delete_amqp_queues,
    delete_redis_keys,
    drop_postgres_schema,
)

from conftest import POSTGRES_URL, need_service


def test_a_queue_and_its_exchange_are_deleted():
    need_service("RabbitMQ", "127.0.0.1", 5672)
    from kombu import Connection, Exchange, Queue

    name = f"repoll-test-{uuid.uuid4().hex[:12]}"

    def exists(kind: str) -> bool:
        with Connection(BROKER_URL, connect_timeout=5) as connection:
            channel = connection.channel()
            try:
                if kind == "queue":
                    channel.queue_declare(queue=name, passive=True)
                else:
                    channel.exchange_declare(exchange=name, type="direct", passive=True)
            except connection.channel_errors:  # NOT_FOUND, and the channel is closed
                return False
            channel.close()
            return True

    try:
        # What Celery declares for `--queues NAME` and `send_task(queue=NAME)`.
        with Connection(BROKER_URL, connect_timeout=5) as connection:
            channel = connection.channel()
            exchange = Exchange(name, "direct", durable=True)
            Queue(name, exchange, routing_key=name, durable=True)(channel).declare()
            channel.close()
        assert exists("queue")
        assert exists("exchange")
    finally:
        delete_amqp_queues(BROKER_URL, [name])
    assert not exists("queue")
    assert not exists("exchange")
    delete_amqp_queues(BROKER_URL, [name])  # already gone: no error


def test_redis_keys_go_by_their_prefix_only(redis_url):
    import redis

    # Glob characters in a prefix are taken literally: the neighbour would match them.
    base = f"repoll-test-{uuid.uuid4().hex[:12]}"
    prefix, neighbour = f"{base}-[ab]*:", f"{base}-a:kept"
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(neighbour, b"x")
        for part in ("op:1", "owners", "secret"):
            client.set(prefix + part, b"x")
        assert delete_redis_keys(redis_url, prefix) == 3
        assert list(client.scan_iter(match=f"{base}*")) == [neighbour.encode()]
        assert delete_redis_keys(redis_url, prefix) == 0
        with pytest.raises(ValueError, match="whole database"):
            delete_redis_keys(redis_url, "")
    finally:
        client.delete(neighbour, *(prefix + part for part in ("op:1", "owners", "secret")))
        client.close()


def test_a_schema_goes_with_its_tables():
    need_service("PostgreSQL", "127.0.0.1", 5432)
    import psycopg

    schema = f"repoll_test_{uuid.uuid4().hex[:12]}"

    def tables() -> int | None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = %s) "
                "FROM pg_namespace WHERE nspname = %s",
                (schema, schema),
            ).fetchone()
        return None if row is None else int(row[0])

    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"CREATE TABLE {schema}.repoll_operations (id TEXT PRIMARY KEY)")
        assert tables() == 1
    finally:
        drop_postgres_schema(POSTGRES_URL, schema)
    assert tables() is None
    drop_postgres_schema(POSTGRES_URL, schema)  # already gone: no error


def test_a_celery_worker_declares_no_queue_of_its_own():
    """No pidbox (``NAME.celery.pidbox``) or reply queue: nothing would delete them."""
    pytest.importorskip("celery")
    from repoll.executors._celery_worker import make_celery

    app = make_celery("memory://")
    assert app.conf.worker_enable_remote_control is False
    assert app.conf.worker_send_task_events is False
    assert app.conf.task_ignore_result is True
