"""Run the conformance suite the way a host with its own configuration would: PostgreSQL
only, in a schema whose name needs quoting (upper case, a space, a quote, a dash, non-ASCII)
and holds a ``%`` (which psycopg reads as a placeholder unless it is escaped)."""

import pytest

ODD_SCHEMA = 'Odd "Turns" schema-ü 50%off'


@pytest.fixture(scope="session")
def turnstore_schema() -> str:
    return ODD_SCHEMA


@pytest.fixture(params=["postgres"])
def turnstore_backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)
