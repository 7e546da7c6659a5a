"""tests/unit needs no PostgreSQL: ``pytest tests/unit`` runs on a machine without one.

The plugin's fixtures start a server only when a test asks for one, and every server
fixture (``turnstore_pg_dsn``, ``turnstore_postgres_store``, ``turnstore_backend`` on
PostgreSQL, ...) goes through ``turnstore_admin_dsn``; here it fails the test instead.
"""

import pytest


@pytest.fixture(scope="session")
def turnstore_admin_dsn() -> str:
    pytest.fail(
        "a test in tests/unit asked for a PostgreSQL server: it belongs in tests/postgres "
        "(or another layer that has one)"
    )
