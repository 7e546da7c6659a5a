"""A reference FastAPI chat service on turnstore (see README.md)."""

__all__: list[str] = []
