"""The explorer's web app: one static page (``page.html``) and a JSON / PNG API over an
:class:`~mimkit.explore.session.Explorer`, served by uvicorn on a socket bound before the run is loaded.

    GET  /                                    the page
    GET  /api/info                            run, data, grid, what is off and why
    GET  /api/image/{split}/{index}           an image, PNG
    POST /api/reconstruct                     {split, index, seed, ratio | mask} -> {mask, panels, loss}
    GET  /api/attention?split&index&block     {maps: [mean of heads, head 0, ...]} as PNG data URLs
    GET  /api/neighbours?split&index&k        {neighbours: [{split, index, distance, label}]}

A request the explorer refuses (an index out of range, a mask of the wrong length, a run without a
decoder) is answered 400 with ``{"error": one line}``.
"""

from __future__ import annotations

import base64
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route
except ImportError as err:  # the optional extra
    raise ImportError(
        f"mimkit explore needs starlette and uvicorn ({err.name} is missing): pip install 'mimkit[explore]'"
    ) from None

from mimkit.explore.session import ExploreOptions, Explorer

log = logging.getLogger("mimkit")


def data_url(picture: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(picture).decode("ascii")


def _int(request: Request, name: str, default: int | None = None) -> int:
    value = request.query_params.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def create_app(explorer: Explorer) -> Starlette:
    """The Starlette app of ``explorer``: the page and its API (see the module docstring)."""
    page = resources.files("mimkit.explore").joinpath("page.html").read_text(encoding="utf-8")

    def refusals(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except (ValueError, TypeError) as err:
                return JSONResponse({"error": str(err)}, status_code=400)

        return answer

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def info(request: Request) -> Response:
        return JSONResponse(explorer.info())

    async def image(request: Request) -> Response:
        split, i = request.path_params["split"], request.path_params["index"]
        return Response(await run_in_threadpool(explorer.picture, split, i), media_type="image/png")

    async def reconstruct(request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        out = await run_in_threadpool(
            explorer.reconstruction,
            body.get("split", "test"),
            body.get("index", 0),
            int(body.get("seed", 0)),
            body.get("mask"),
            float(body.get("ratio", 0.75)),
        )
        out["panels"] = {name: data_url(p) for name, p in out["panels"].items()}
        return JSONResponse(out)

    async def attention(request: Request) -> Response:
        split, i = request.query_params.get("split", "test"), _int(request, "index")
        maps = await run_in_threadpool(explorer.attention, split, i, _int(request, "block", -1))
        return JSONResponse({"maps": [data_url(m) for m in maps]})

    async def neighbours(request: Request) -> Response:
        split, i, k = request.query_params.get("split", "test"), _int(request, "index"), _int(request, "k", 8)
        return JSONResponse({"neighbours": await run_in_threadpool(explorer.neighbours, split, i, k)})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/info", refusals(info)),
            Route("/api/image/{split}/{index:int}", refusals(image)),
            Route("/api/reconstruct", refusals(reconstruct), methods=["POST"]),
            Route("/api/attention", refusals(attention)),
            Route("/api/neighbours", refusals(neighbours)),
        ]
    )


def open_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one), before anything slow is loaded.

    Raises:
        ValueError: the port is in use, or ``host`` is not an address of this machine.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0-65535, got {port!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is in use: choose another with --port") from None
        raise ValueError(
            f"cannot listen on {host}:{port} ({err.strerror}): check --host and --port"
        ) from None
    return sock


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until interrupted (Ctrl+C), quietly (uvicorn logs warnings only)."""
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", access_log=False))
    server.run(sockets=[sock])


def explore(
    run: str, options: ExploreOptions | None = None, host: str = "127.0.0.1", port: int = 8765
) -> None:
    """``mimkit explore RUN``: bind ``host:port`` (a port in use is refused before anything loads), load the
    run and its embeddings, then serve the page until interrupted."""
    sock = open_socket(host, port)
    try:
        explorer = Explorer(run, options)
        bound_host, bound_port = sock.getsockname()[:2]
        where = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info("explore: serving %s at http://%s:%d/ (Ctrl+C stops)", run, where, bound_port)
        serve(create_app(explorer), sock)
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl+C, then raises it again: nothing to resume
        log.info("explore: stopped")
    finally:
        sock.close()
