"""The test servers of tests/servers.py start, answer and stop (they are real Debian packages)."""

from __future__ import annotations

import psycopg
import redis


def test_postgres_answers_as_superuser(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute("select current_user, inet_server_addr()::text").fetchone()
    assert row is not None and row[0] == "postgres" and row[1].startswith("127.0.0.1")


def test_redis_answers_without_persistence(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.ping()
    assert client.config_get("save") == {"save": ""}
