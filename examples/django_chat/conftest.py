"""Django configured on a fresh database of the turnstore pytest plugin's server (embedded
PostgreSQL, or ``TURNSTORE_TEST_DSN``), with turnstore's schema and the app's table."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from turnstore.embedded import create_database, drop_database, with_dbname


@pytest.fixture(scope="session")
def example_dsn(turnstore_admin_dsn: str) -> Iterator[str]:
    import django
    import psycopg
    from chat_project_settings import settings_for
    from django.conf import settings
    from django.core.management import call_command

    from turnstore.sync.postgres import migrate

    name = f"turnstore_django_{uuid.uuid4().hex[:12]}"
    create_database(turnstore_admin_dsn, name)
    dsn = with_dbname(turnstore_admin_dsn, name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    settings.configure(**settings_for(dsn))
    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    try:
        yield dsn
    finally:
        from chat.views import lifecycle
        from django.db import connections

        connections.close_all()
        lifecycle().store.close()
        drop_database(turnstore_admin_dsn, name)
