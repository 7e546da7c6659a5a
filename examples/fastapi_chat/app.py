"""The HTTP layer: FastAPI routes, Server-Sent Events, and refusals as JSON errors.

Run it with ``uvicorn --factory fastapi_chat.app:create_app`` (README.md). Configuration
comes from the environment (``Settings.from_env``). Every turnstore call lives in
``service.py``; this module maps requests to it and refusals to statuses with
``turnstore.http``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

import pydantic
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from fastapi_chat import messages
from fastapi_chat.model import FakeModel, Model
from fastapi_chat.service import Caller, ChatService, Refused, Reply
from fastapi_chat.streams import End
from fastapi_chat.telemetry import metrics_app, setup_telemetry
from turnstore import (
    KeepAliveSettings,
    OrphanWatchdog,
    PostgresStore,
    TurnLifecycle,
    TurnStoreError,
    WatchdogSettings,
)
from turnstore.http import error_body, headers_for, status_for

__all__ = ["Settings", "create_app"]


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class Settings:
    """The service's configuration (environment variable in brackets)."""

    dsn: str  # TURNSTORE_DSN
    pool_size: int = 10  # FASTAPI_CHAT_POOL_SIZE
    token_delay_secs: float = 0.02  # FASTAPI_CHAT_TOKEN_DELAY_SECS
    orphan_timeout_secs: int = 300  # FASTAPI_CHAT_ORPHAN_TIMEOUT_SECS (60..3600)
    scan_interval_secs: float = 60.0  # FASTAPI_CHAT_SCAN_INTERVAL_SECS
    admin: bool = False  # FASTAPI_CHAT_ADMIN=1 enables POST /admin/sweep
    telemetry: bool = True  # FASTAPI_CHAT_TELEMETRY=0 turns spans and /metrics off

    @classmethod
    def from_env(cls) -> Settings:
        dsn = os.environ.get("TURNSTORE_DSN")
        if not dsn:
            raise RuntimeError("set TURNSTORE_DSN to a PostgreSQL connection string")
        return cls(
            dsn=dsn,
            pool_size=int(_env("FASTAPI_CHAT_POOL_SIZE", "10")),
            token_delay_secs=float(_env("FASTAPI_CHAT_TOKEN_DELAY_SECS", "0.02")),
            orphan_timeout_secs=int(_env("FASTAPI_CHAT_ORPHAN_TIMEOUT_SECS", "300")),
            scan_interval_secs=float(_env("FASTAPI_CHAT_SCAN_INTERVAL_SECS", "60")),
            admin=_env("FASTAPI_CHAT_ADMIN", "0") == "1",
            telemetry=_env("FASTAPI_CHAT_TELEMETRY", "1") == "1",
        )


# --------------------------------------------------------------------------- requests


class SendMessage(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)
    request_id: UUID


class EditMessage(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)


class ApiError(Exception):
    """A refusal of the service itself (not of turnstore)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _uuid_header(name: str, value: str | None) -> UUID:
    try:
        return UUID(value or "")
    except ValueError:
        raise ApiError(422, "invalid_parameter", f"header {name} must be a UUID") from None


def caller(
    x_tenant_id: Annotated[str | None, Header()] = None,
    x_user_id: Annotated[str | None, Header()] = None,
) -> Caller:
    """The tenant and the user of a request, from ``X-Tenant-Id`` and ``X-User-Id``."""
    return Caller(_uuid_header("X-Tenant-Id", x_tenant_id), _uuid_header("X-User-Id", x_user_id))


CallerDep = Annotated[Caller, Depends(caller)]


def service_of(request: Request) -> ChatService:
    service: ChatService = request.app.state.service
    return service


ServiceDep = Annotated[ChatService, Depends(service_of)]


# --------------------------------------------------------------------------- responses


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _end_event(end: End) -> bytes:
    return _sse(
        "end",
        {
            "state": end.state,
            "message_id": str(end.message_id) if end.message_id else None,
            "error_code": end.error_code,
        },
    )


def stream_reply(reply: Reply) -> StreamingResponse:
    """The answer as Server-Sent Events: ``turn``, then ``token``s, then ``end``."""
    turn = reply.turn

    async def events() -> AsyncIterator[bytes]:
        yield _sse(
            "turn",
            {
                "turn_id": str(turn.id),
                "chat_id": str(turn.chat_id),
                "request_id": str(turn.request_id),
                "replay": reply.stream is None,
            },
        )
        if reply.stream is None:
            yield _sse("token", {"text": reply.stored_answer or ""})
            yield _end_event(End("completed", turn.assistant_message_id))
            return
        async for item in reply.stream.follow():
            if isinstance(item, End):
                yield _end_event(item)
            else:
                yield _sse("token", {"text": item})

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _turn_json(turn: Any) -> dict[str, Any]:
    return {
        "turn_id": str(turn.id),
        "chat_id": str(turn.chat_id),
        "request_id": str(turn.request_id),
        "state": turn.state.value,
        "error_code": turn.error_code,
        "assistant_message_id": str(turn.assistant_message_id)
        if turn.assistant_message_id
        else None,
    }


# --------------------------------------------------------------------------- the app


def create_app(settings: Settings | None = None, model: Model | None = None) -> FastAPI:
    """The application; ``settings`` default to the environment, ``model`` to
    ``FakeModel``."""
    settings = settings if settings is not None else Settings.from_env()
    model = model if model is not None else FakeModel(settings.token_delay_secs)
    telemetry = setup_telemetry(enabled=settings.telemetry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await PostgresStore.open(settings.dsn, max_size=settings.pool_size)
        try:
            await store.migrate()
            async with store.connection() as conn:
                await messages.create_table(conn)
            watchdog_settings = WatchdogSettings(
                orphan_timeout_secs=settings.orphan_timeout_secs,
                scan_interval_secs=settings.scan_interval_secs,
            )
            lifecycle = TurnLifecycle(
                store,
                keep_alive=KeepAliveSettings.for_watchdog(watchdog_settings),
                telemetry=telemetry,
            )
            watchdog = OrphanWatchdog(store, watchdog_settings, telemetry=telemetry)
            service = ChatService(store, lifecycle, watchdog, model)
            app.state.service = service
            async with watchdog:
                try:
                    yield
                finally:
                    await service.shutdown()
        finally:
            await store.close()

    app = FastAPI(title="turnstore chat example", lifespan=lifespan)
    _install_error_handlers(app)
    if settings.telemetry and (metrics := metrics_app()) is not None:
        app.mount("/metrics", metrics)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/chats/{chat_id}/messages")
    async def send_message(
        chat_id: UUID, body: SendMessage, who: CallerDep, service: ServiceDep
    ) -> StreamingResponse:
        """Start a turn and stream its answer; a resend replays the stored answer."""
        return stream_reply(await service.send(who, chat_id, body.request_id, body.text))

    @app.get("/chats/{chat_id}/messages")
    async def list_messages(chat_id: UUID, who: CallerDep, service: ServiceDep) -> dict[str, Any]:
        found = await service.history(who, chat_id)
        if not found:
            raise ApiError(404, "chat_not_found", f"chat {chat_id} not found")
        return {
            "messages": [
                {"id": str(m.id), "turn_id": str(m.turn_id), "role": m.role, "content": m.content}
                for m in found
            ]
        }

    @app.get("/chats/{chat_id}/turns/{turn_id}")
    async def get_turn(
        chat_id: UUID, turn_id: UUID, who: CallerDep, service: ServiceDep
    ) -> dict[str, Any]:
        return _turn_json(await service.find_turn(who.scope, who.tenant_id, chat_id, turn_id))

    @app.post("/chats/{chat_id}/turns/{turn_id}/cancel")
    async def cancel_turn(
        chat_id: UUID, turn_id: UUID, who: CallerDep, service: ServiceDep
    ) -> dict[str, Any]:
        return _turn_json(await service.cancel(who, chat_id, turn_id))

    @app.post("/chats/{chat_id}/turns/{turn_id}/retry")
    async def retry_turn(
        chat_id: UUID, turn_id: UUID, who: CallerDep, service: ServiceDep
    ) -> StreamingResponse:
        return stream_reply(await service.retry(who, chat_id, turn_id))

    @app.post("/chats/{chat_id}/turns/{turn_id}/edit")
    async def edit_turn(
        chat_id: UUID, turn_id: UUID, body: EditMessage, who: CallerDep, service: ServiceDep
    ) -> StreamingResponse:
        return stream_reply(await service.edit(who, chat_id, turn_id, body.text))

    @app.delete("/chats/{chat_id}/turns/{turn_id}", status_code=204)
    async def delete_turn(
        chat_id: UUID, turn_id: UUID, who: CallerDep, service: ServiceDep
    ) -> Response:
        await service.delete(who, chat_id, turn_id)
        return Response(status_code=204)

    if settings.admin:

        @app.post("/admin/sweep")
        async def sweep(service: ServiceDep) -> dict[str, Any]:
            """One orphan-watchdog scan now (operations and tests only)."""
            report = await service.sweep()
            return {
                "leader": report.leader,
                "detected": [str(t.id) for t in report.detected],
                "finalized": [str(t.id) for t in report.finalized],
            }

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TurnStoreError)
    async def turnstore_error(request: Request, exc: TurnStoreError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_for(exc), headers_for(exc))

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        outcome = exc.outcome
        details: dict[str, Any] = {}
        # Ids only from what the caller's scope could see (the lifecycle leaves them out
        # otherwise).
        running = getattr(outcome, "running_turn_id", None)
        if running is not None:
            details["running_turn_id"] = str(running)
        return JSONResponse(error_body(outcome, **details), status_for(outcome))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        body = {"error": {"code": exc.code, "message": exc.message, "retryable": False}}
        return JSONResponse(body, exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(exc.errors())

    @app.exception_handler(pydantic.ValidationError)
    async def invalid_value(request: Request, exc: pydantic.ValidationError) -> JSONResponse:
        return _invalid(exc.errors())


def _invalid(errors: Any) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors
    )
    return JSONResponse(error_body("invalid_parameter", message=problems or "invalid request"), 422)
