"""Settings of the example project, built from one DSN (``settings_for``)."""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import conninfo_to_dict

__all__ = ["settings_for"]


def settings_for(dsn: str) -> dict[str, Any]:
    """Django settings for a database given as a libpq DSN (the embedded PostgreSQL of the
    tests, or ``TURNSTORE_TEST_DSN``)."""
    info = conninfo_to_dict(dsn)
    return {
        "DEBUG": False,
        "SECRET_KEY": "example-only",
        "ALLOWED_HOSTS": ["testserver"],
        "ROOT_URLCONF": "chat_urls",
        "INSTALLED_APPS": ["chat"],
        "USE_TZ": True,
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "TURNSTORE_DSN": dsn,
        "DATABASES": {
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": info.get("dbname", "postgres"),
                "USER": info.get("user", "postgres"),
                "PASSWORD": info.get("password", ""),
                "HOST": info.get("host", "127.0.0.1"),
                "PORT": info.get("port", "5432"),
            }
        },
    }
