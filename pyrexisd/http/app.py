"""The HTTP API's routes, the dashboard's files and the API's description page.

Each route turns its path, query and body into the args of a protocol op and calls that
op's handler — the very function the socket calls (:class:`~pyrexisd.handlers.Handlers`),
with the same :class:`~pyrexisd.core.service.Service` behind it — as the daemon's own
user (an admin, see :func:`http_caller`). Records and error codes are the socket's;
errors answer with the status of the one table in :mod:`pyrexisd.http.errors`. Streams
(``logs?follow=1``, ``wait?events=1``, ``/events``) are Server-Sent Events
(:mod:`pyrexisd.http.sse`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from protocol.errors import Internal, InvalidRequest, NotFound, ShuttingDown, WireError
from protocol.models import Job, JobSpec
from pyrexisd import __version__
from pyrexisd.access import Caller
from pyrexisd.events import log_event, output_event
from pyrexisd.handlers import MAX_LIST, Handlers
from pyrexisd.http.errors import dumps, error_response_parts
from pyrexisd.http.sse import SseStream, StreamSlots, sse_body
from pyrexisd.prometheus import CONTENT_TYPE
from pyrexisd.server import Stream

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "api.html": "text/html; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
}
# The dashboard's pages load nothing from elsewhere, and nothing may frame them.
STATIC_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


JobId = Annotated[str, Path(min_length=1)]


def http_caller() -> Caller:
    """Who an HTTP request acts as: the daemon's own user, an admin. Only the daemon's
    machine reaches a loopback or Unix listener, and a listener on any other address
    admits only holders of its token (see :mod:`pyrexisd.http.guard`)."""
    return Caller(os.geteuid(), os.getegid(), None, True)


class JSONOut(Response):
    """JSON as :func:`~pyrexisd.http.errors.dumps` writes it (msgpack bytes as base64)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class _Unary:
    """The stream of a request that is not a stream: handlers of such ops never use it."""

    closing: Any = None
    streaming = False

    async def send(self, event: dict[str, Any]) -> None:
        raise Internal("this op does not stream")

    def send_nowait(self, event: dict[str, Any]) -> None:
        raise Internal("this op does not stream")

    def writable(self) -> bool:
        return True

    async def until_writable(self) -> None:
        return None

    def close_stream(self, stream_id: int) -> None:
        return None

    def begin_stream(self) -> None:
        raise Internal("this op does not stream")


class _Lease:
    """A stream slot, released once however the response ends (even never started)."""

    def __init__(self, slots: StreamSlots) -> None:
        slots.acquire()
        self._slots: StreamSlots | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()
            self._slots = None


class SseResponse(StreamingResponse):
    """``text/event-stream``, not buffered by proxies, with its slot always given back."""

    def __init__(self, body: Any, lease: _Lease) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})  # fmt: skip
        self.lease = lease

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.lease.release()


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` describing a JSON request body (validated by the op's handler)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _record_doc(description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": Job, "description": description}}


def _static(name: str) -> bytes:
    return resources.files("pyrexisd.http").joinpath("static", name).read_bytes()


def build_app(handlers: Handlers, slots: StreamSlots) -> FastAPI:
    """The FastAPI app over ``handlers`` (and their service)."""
    service = handlers.service
    table = handlers.table
    unary: Stream = _Unary()
    files = {name: _static(name) for name in STATIC_FILES}

    app = FastAPI(
        title="PYREXIS",
        version=__version__,
        description="The job daemon's HTTP API: the protocol's ops as JSON, streams as Server-Sent Events. "
        "Errors answer {\"error\": {code, message, details}} with the status of docs/http.md's table.",
        docs_url=None,  # its page loads scripts from a CDN: /docs is our own page instead
        redoc_url=None,
        default_response_class=JSONOut,
    )
    caller = http_caller()

    async def op(name: str, args: dict[str, Any]) -> Any:
        return await table[name](args, unary, caller)

    async def stream(name: str, args: dict[str, Any], resume_ids: bool = False) -> SseResponse:
        if args.get("job_id") is not None:
            await service.current(caller, args["job_id"])  # 404 before the stream begins
        lease = _Lease(slots)
        try:
            body = sse_body(table[name], args, SseStream(resume_ids), caller, lease.release)
            return SseResponse(body, lease)
        except BaseException:
            lease.release()
            raise

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"the body is not JSON: {exc}", {"errors": [{"loc": ["body"], "msg": "invalid JSON"}]}) from None

    # -- errors: one table, one body shape -------------------------------------------------
    @app.exception_handler(WireError)
    async def wire_error(request: Request, exc: WireError) -> Response:
        status, headers, body = error_response_parts(exc)
        return Response(body, status, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
        status, headers, body = error_response_parts(InvalidRequest("invalid arguments", {"errors": errors}))
        return Response(body, status, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error: WireError = NotFound(f"no route {request.url.path}") if exc.status_code == 404 else InvalidRequest(str(exc.detail))
        _, headers, body = error_response_parts(error)
        return Response(body, exc.status_code, headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> Response:
        # Starlette raises it again after this answer: the guard logs it, once.
        status, headers, body = error_response_parts(Internal(f"internal error: {type(exc).__name__}"))
        return Response(body, status, headers)

    # -- jobs ----------------------------------------------------------------------------
    spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    spec_schema.pop("$defs", None)

    @app.post("/jobs", status_code=201, tags=["jobs"], summary="Submit one job, or a list of jobs atomically",
              openapi_extra=_json_body({"oneOf": [spec_schema, {"type": "array", "items": spec_schema}]}),
              responses=_record_doc("The job's record (for a list: {\"jobs\": [records]}), once it is durable."))  # fmt: skip
    async def submit(request: Request) -> Any:
        body = await body_of(request)
        if isinstance(body, list):
            return await op("submit_many", {"jobs": body})
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a job spec or a list of them", {"errors": [{"loc": ["body"], "msg": "an object or an array"}]})
        return await op("submit", body)

    @app.get("/jobs", tags=["jobs"], summary="A page of jobs, oldest first (or newest first)")
    async def list_jobs(
        status: Annotated[list[str] | None, Query(description="Repeat for several statuses.")] = None,
        task: str | None = None,
        queue: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
        after: Annotated[str | None, Query(description="The `next` cursor of the previous page.")] = None,
        all_users: bool = False,
        newest_first: bool = False,
    ) -> Any:
        return await op("list", {"status": status, "task": task, "queue": queue, "limit": limit,
                                 "after": after, "all_users": all_users, "newest_first": newest_first})  # fmt: skip

    @app.get("/jobs/{job_id}", tags=["jobs"], responses=_record_doc("The job's record."))
    async def get_job(job_id: JobId) -> Any:
        return await op("get", {"job_id": job_id})

    @app.delete("/jobs/{job_id}", tags=["jobs"], summary="Cancel a job", responses=_record_doc("The job, cancelled."))
    async def cancel(job_id: JobId) -> Any:
        return await op("cancel", {"job_id": job_id})

    @app.post("/jobs/{job_id}/retry", tags=["jobs"], summary="Run a failed or cancelled job again",
              responses=_record_doc("The job, waiting again."))  # fmt: skip
    async def retry(job_id: JobId) -> Any:
        return await op("retry", {"job_id": job_id})

    @app.post("/jobs/{job_id}/hold", tags=["jobs"], summary="Keep a waiting job waiting")
    async def hold(job_id: JobId) -> Any:
        return await op("hold", {"job_id": job_id})

    @app.post("/jobs/{job_id}/release", tags=["jobs"], summary="Let a held job go on")
    async def release(job_id: JobId) -> Any:
        return await op("release", {"job_id": job_id})

    @app.patch("/jobs/{job_id}", tags=["jobs"], summary="Change a waiting job's priority or queue",
               openapi_extra=_json_body({"type": "object", "properties": {
                   "priority": {"type": "integer", "minimum": -1000, "maximum": 1000}, "queue": {"type": "string"}}}))  # fmt: skip
    async def update(job_id: JobId, request: Request) -> Any:
        body = await body_of(request)
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be an object", {"errors": [{"loc": ["body"], "msg": "an object"}]})
        return await op("update", {**body, "job_id": job_id})

    @app.get("/jobs/{job_id}/logs", tags=["jobs"], summary="A job's log lines; with follow=1 a stream of them",
             description="Without `follow`: `{\"lines\": [log events], \"next\": seq}`, at most 1,000 lines from "
             "`since`; ask again with `since=next`. With `follow=1`: Server-Sent Events `log`, then `end` once the "
             "job has ended and its log is drained; `Last-Event-ID` resumes after that line.")  # fmt: skip
    async def logs(
        job_id: JobId,
        since: Annotated[int, Query(ge=1)] = 1,
        follow: bool = False,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> Any:
        if follow:
            if last_event_id is not None and last_event_id.isdigit():
                since = max(since, int(last_event_id) + 1)
            return await stream("logs", {"job_id": job_id, "since": since, "follow": True}, resume_ids=True)
        row = await service.current(caller, job_id)
        lines = await service.read_logs(row.seq, since)
        return {"lines": [log_event(job_id, line) for line in lines], "next": lines[-1].seq + 1 if lines else since}

    @app.get("/jobs/{job_id}/outputs", tags=["jobs"], summary="A job's partial results (what a generator task yielded)",
             description="`{\"outputs\": [output events], \"next\": seq}`, at most 1,000 from `since`.")  # fmt: skip
    async def outputs(job_id: JobId, since: Annotated[int, Query(ge=1)] = 1) -> Any:
        row = await service.current(caller, job_id)
        items = await service.read_outputs(row.seq, since)
        return {"outputs": [output_event(job_id, item) for item in items], "next": items[-1].seq + 1 if items else since}

    @app.get("/jobs/{job_id}/wait", tags=["jobs"], summary="Wait until a job ends",
             description="The record once the job is terminal; after `timeout` seconds 408 `timeout`. With "
             "`events=1`: Server-Sent Events of the job (`state`, `progress`, `log`, `output`) and `end` with the record.",
             responses=_record_doc("The job's terminal record."))  # fmt: skip
    async def wait(job_id: JobId, timeout: Annotated[float | None, Query(ge=0)] = None, events: bool = False) -> Any:
        args: dict[str, Any] = {"job_id": job_id, "timeout": timeout}
        if events:
            return await stream("wait", {**args, "events": True})
        return await op("wait", args)

    @app.get("/events", tags=["events"], summary="Server-Sent Events of every matching job (the watch op)",
             description="Events from now on: `state`, `progress`, `log`, `output`; with `job_id`, first the job's "
             "current state. Filters combine; `kind` repeats.")  # fmt: skip
    async def events(
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        kind: Annotated[list[str] | None, Query()] = None,
    ) -> Any:
        return await stream("watch", {"job_id": job_id, "task": task, "queue": queue, "kinds": kind})

    # -- queues, schedules, figures --------------------------------------------------------
    @app.get("/queues", tags=["queues"])
    async def queues() -> Any:
        return await op("queues", {})

    @app.patch("/queues/{name}", tags=["queues"], summary="Pause, resume or configure a queue",
               openapi_extra=_json_body({"type": "object", "properties": {
                   "paused": {"type": "boolean"}, "weight": {"type": "number", "exclusiveMinimum": 0},
                   "max_concurrency": {"type": ["integer", "null"], "minimum": 1}, "aging": {"type": "number", "minimum": 0}}}))  # fmt: skip
    async def patch_queue(name: Annotated[str, Path(min_length=1, max_length=200)], request: Request) -> Any:
        body = await body_of(request)
        settings = {k: body[k] for k in ("weight", "max_concurrency", "aging") if k in body} if isinstance(body, dict) else {}
        if not isinstance(body, dict) or not settings and "paused" not in body:
            raise InvalidRequest(
                "give any of paused, weight, max_concurrency, aging",
                {"errors": [{"loc": ["body"], "msg": "an object with paused, weight, max_concurrency or aging"}]},
            )
        paused = body.get("paused")
        if paused is not None and not isinstance(paused, bool):
            raise InvalidRequest("paused must be true or false", {"errors": [{"loc": ["body", "paused"], "msg": "a boolean"}]})
        row: Any = None
        if settings:
            row = await op("configure_queue", {**settings, "queue": name})
        if paused is not None:
            rows = (await op("pause" if paused else "resume", {"queue": name}))["queues"]
            row = next((r for r in rows if r["queue"] == name), row)
        return row

    @app.get("/schedules", tags=["schedules"])
    async def schedules() -> Any:
        return await op("schedule_list", {})

    @app.post("/schedules", status_code=201, tags=["schedules"], summary="Add a recurring job",
              openapi_extra=_json_body({"type": "object", "required": ["name", "job"], "properties": {
                  "name": {"type": "string"}, "cron": {"type": "string"}, "every": {"type": "number"},
                  "job": spec_schema}}))  # fmt: skip
    async def add_schedule(request: Request) -> Any:
        body = await body_of(request)
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be an object", {"errors": [{"loc": ["body"], "msg": "an object"}]})
        return await op("schedule_add", body)

    @app.delete("/schedules/{name}", tags=["schedules"])
    async def remove_schedule(name: Annotated[str, Path(min_length=1)]) -> Any:
        return await op("schedule_remove", {"name": name})

    @app.get("/stats", tags=["daemon"])
    async def stats() -> Any:
        return await op("stats", {})

    @app.get("/tasks", tags=["daemon"], summary="The tasks, with the JSON Schema of their args")
    async def tasks() -> Any:
        return await op("tasks", {})

    @app.get("/healthz", tags=["daemon"], summary="200 while the daemon serves, 503 while it stops")
    async def healthz() -> Any:
        if service.stopping.is_set():
            raise ShuttingDown("the daemon is stopping")
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", tags=["daemon"], summary="Prometheus metrics (text format)",
             response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})  # fmt: skip
    async def metrics() -> Response:
        return Response(service.metrics_text(caller).encode(), media_type=CONTENT_TYPE)

    # -- the dashboard and the API's page --------------------------------------------------
    def page(name: str) -> Callable[[], Awaitable[Response]]:
        async def serve() -> Response:
            return Response(files[name], media_type=STATIC_FILES[name], headers=STATIC_HEADERS)

        return serve

    app.add_api_route("/", page("index.html"), include_in_schema=False)
    app.add_api_route("/docs", page("api.html"), include_in_schema=False)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files:
            raise NotFound(f"no file {name!r}")
        return Response(files[name], media_type=STATIC_FILES[name], headers=STATIC_HEADERS)

    return app


__all__ = ["build_app", "http_caller"]
