"""Submits per second over HTTP beside the same over the Unix socket, in one run.

usage: .venv/bin/python docs/perf/http_vs_socket.py [N] [ROUNDS]

Starts one ``pyrexisd --http 127.0.0.1:0 --http-rate 0`` on a fresh database (a paused
queue takes the jobs, so only the submit path is measured: validation, the group commit,
the answer), then, ROUNDS times, alternating socket and HTTP so that drift hits both:

- serial: one client, N submits, each awaited before the next;
- concurrent: 32 submits in flight (the socket: one connection, pipelined; HTTP: 32
  keep-alive connections, as 32 HTTP/1.1 clients would);
- batch: N jobs as lists of 500 (``submit_many`` / ``POST /jobs`` with a JSON array).

Both sides use a lean client: the socket the project's own ``AsyncClient``, HTTP a
minimal keep-alive HTTP/1.1 client written here on asyncio streams (``RawHttp``), so the
figures compare the daemon's two fronts, not two client libraries (httpx, measured too,
spends several milliseconds of its own per request on a loaded 2-core box).

Prints jobs/s per workload and transport, the HTTP/socket ratio of each round, and the
daemon's CPU (all its threads, from ``/proc/PID/stat``) per job of each.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from pyrexisctl.aio import AsyncClient  # noqa: E402

CONCURRENCY = 32
BATCH = 500
QUEUE = "perf"


def spec(i: int) -> dict[str, object]:
    return {"task": "echo", "args": {"value": i}, "queue": QUEUE}


class RawHttp:
    """One keep-alive HTTP/1.1 connection: a request, then its answer (Content-Length)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: object) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)  # fmt: skip
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        answer = await self.reader.readexactly(length)
        if status >= 300:
            raise RuntimeError(f"HTTP {status}: {answer[:200]!r}")
        return answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


DAEMON_PID = 0


def daemon_cpu() -> float:
    fields = Path(f"/proc/{DAEMON_PID}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LAST_CPU: list[float] = []


async def timed(n: int, work: Callable[[], Awaitable[None]]) -> float:
    cpu = daemon_cpu()
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    LAST_CPU.append((daemon_cpu() - cpu) / n * 1e6)
    return n / elapsed


async def socket_round(client: AsyncClient, n: int) -> dict[str, float]:
    async def serial() -> None:
        for i in range(n):
            await client.submit("echo", {"value": i}, queue=QUEUE)

    async def concurrent() -> None:
        async def worker(k: int) -> None:
            for i in range(k, n, CONCURRENCY):
                await client.submit("echo", {"value": i}, queue=QUEUE)

        await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))

    async def batch() -> None:
        for start in range(0, n, BATCH):
            await client.submit_many([spec(i) for i in range(start, min(n, start + BATCH))])

    return {"serial": await timed(n, serial), "concurrent": await timed(n, concurrent), "batch": await timed(n, batch)}


async def raw_http_round(url: str, n: int) -> dict[str, float]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conns = [RawHttp(host, int(port)) for _ in range(CONCURRENCY)]

    async def warm(n_conns: int) -> None:
        # Connections open before the clock starts (uvicorn closes them after 5 idle s).
        for c in conns[:n_conns]:
            c.close()
            c.writer = None
            await c.post("/jobs", spec(-1))

    try:

        async def serial() -> None:
            for i in range(n):
                await conns[0].post("/jobs", spec(i))

        async def concurrent() -> None:
            async def worker(k: int) -> None:
                for i in range(k, n, CONCURRENCY):
                    await conns[k].post("/jobs", spec(i))

            await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))

        async def batch() -> None:
            for start in range(0, n, BATCH):
                await conns[0].post("/jobs", [spec(i) for i in range(start, min(n, start + BATCH))])

        await warm(1)
        out = {"serial": await timed(n, serial)}
        await warm(CONCURRENCY)
        out["concurrent"] = await timed(n, concurrent)
        await warm(1)
        out["batch"] = await timed(n, batch)
        return out
    finally:
        for c in conns:
            c.close()


async def http_round(url: str, n: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as api:

        async def post(body: object) -> None:
            response = await api.post("/jobs", json=body)
            response.raise_for_status()

        async def serial() -> None:
            for i in range(n):
                await post(spec(i))

        async def concurrent() -> None:
            async def worker(k: int) -> None:
                for i in range(k, n, CONCURRENCY):
                    await post(spec(i))

            await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))

        async def batch() -> None:
            for start in range(0, n, BATCH):
                await post([spec(i) for i in range(start, min(n, start + BATCH))])

        await post(spec(-1))  # the connection is open before the clock starts
        return {"serial": await timed(n, serial), "concurrent": await timed(n, concurrent), "batch": await timed(n, batch)}


async def main(n: int, rounds: int) -> None:
    work = tempfile.mkdtemp(prefix="pxperf", dir="/tmp")
    sock = os.path.join(work, "s.sock")
    log_path = os.path.join(work, "daemon.log")
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [str(ROOT / ".venv/bin/pyrexisd"), "--socket", sock, "--db", os.path.join(work, "d.db"),
             "--http", "127.0.0.1:0", "--http-rate", "0"],
            stderr=log, stdout=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    global DAEMON_PID
    DAEMON_PID = daemon.pid
    try:
        url = None
        for _ in range(600):
            match = re.search(r"HTTP API and dashboard on (\S+)", Path(log_path).read_text())
            if match:
                url = match.group(1)
                break
            await asyncio.sleep(0.05)
        assert url is not None, Path(log_path).read_text()
        async with AsyncClient(sock) as client:
            await client.pause(QUEUE)
            print(f"{n} echo submits per workload into a paused queue; {rounds} rounds: socket, HTTP, HTTP via httpx")
            for r in range(rounds):
                LAST_CPU.clear()
                s = await socket_round(client, n)
                h = await raw_http_round(url, n)
                cpu = list(LAST_CPU)  # socket's three, then HTTP's three
                x = await http_round(url, n)
                for i, name in enumerate(s):
                    print(f"round {r + 1} {name:>10}: socket {s[name]:7.0f}/s {cpu[i]:5.0f} µs CPU/job   "
                          f"HTTP {h[name]:7.0f}/s {cpu[i + 3]:5.0f} µs CPU/job (HTTP/socket {h[name] / s[name]:.2f})   "
                          f"httpx {x[name]:7.0f}/s")  # fmt: skip
    finally:
        daemon.terminate()
        daemon.wait(60)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
