"""The optional HTTP listener (``pyrexisd --http ADDR``, extra ``pyrexis[http]``).

A FastAPI app on uvicorn, served as a task of the daemon's own event loop: one process,
one loop. Every route maps to a protocol op and calls the same handler the socket does
(:mod:`pyrexisd.handlers`), so the arguments are validated by the same models, the
service applies the same rules, and errors carry the same codes (mapped to HTTP statuses
in one table, :mod:`pyrexisd.http.errors`). Streams are Server-Sent Events.

Rooms: ``address`` (what ``--http`` means; no third-party import, so the configuration
can check it without the extra), ``errors`` (the one table), ``guard`` (token, rate,
body and host checks, in front of the app), ``sse`` (a stream of a handler as
Server-Sent Events), ``app`` (the routes and the dashboard's files), ``listener``
(uvicorn in our loop), ``setup`` (the daemon's part: checks, bind, stop, figures).
"""

EXTRA_HINT = "--http needs the HTTP extra: pip install 'pyrexis[http]'"


def missing_extra() -> str | None:
    """The one line to print when the HTTP extra is not installed, else None."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return EXTRA_HINT
    return None
