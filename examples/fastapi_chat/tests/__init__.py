"""End-to-end tests of the FastAPI chat service: uvicorn in a subprocess, driven by httpx."""

__all__: list[str] = []
