"""The page's files: examples/web (the page), examples/node-client/lib (preprocessing and
packing, the very files the Node edge runs), the sample images, onnxruntime-web and protobufjs from that client's
node_modules (``npm ci``, ``make node-client``), the contract's .proto, and the exported edge
(``--web-edge``: edge.json and the graph it names, read at each request, so an edge exported
after the server started is served). Only these: no folder listing, nothing else of the
checkout. A folder that is missing (no ``npm ci`` yet, an installed wheel without the examples)
is logged and its URLs answer 404; the page then says what is missing."""

from __future__ import annotations

import json
import logging
import mimetypes
from pathlib import Path

from aiohttp import web

from common.paths import REPO_ROOT, SAMPLES_DIR

log = logging.getLogger("cloud_server")

# Module scripts must be served as JavaScript, and WebAssembly as application/wasm (what
# streaming compilation requires); Python's table lacks both on some systems.
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("application/wasm", ".wasm")

PAGE = REPO_ROOT / "examples" / "web"
NODE_CLIENT = REPO_ROOT / "examples" / "node-client"
FOLDERS = {
    "/app/": PAGE,
    "/lib/": NODE_CLIENT / "lib",
    "/vendor/onnxruntime-web/": NODE_CLIENT / "node_modules" / "onnxruntime-web" / "dist",
    "/vendor/protobufjs/": NODE_CLIENT / "node_modules" / "protobufjs" / "dist",
    # The shipped sample images, for deep links that need no other host (make demo prints one).
    "/samples/": SAMPLES_DIR / "images",
}
PROTO = REPO_ROOT / "protos" / "alignedvq" / "v1" / "inference.proto"


def add_routes(app: web.Application, edge_dir: str) -> None:
    app.router.add_get("/", _file(PAGE / "index.html"))
    app.router.add_get("/protos/inference.proto", _file(PROTO))
    for prefix, folder in FOLDERS.items():
        if folder.is_dir():
            app.router.add_static(prefix, folder, follow_symlinks=False, show_index=False)
        else:
            log.warning("web: %s is missing, so %s* is not served (run `make node-client`)",
                        folder, prefix)
    app.router.add_get("/edge/{name}", _edge(Path(edge_dir)))


def _file(path: Path):
    async def serve(request: web.Request) -> web.StreamResponse:
        if not path.is_file():
            raise web.HTTPNotFound(text=f"{path.name} is not on this server\n")
        return web.FileResponse(path)
    return serve


def _edge(folder: Path):
    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        spec = folder / "edge.json"
        try:
            graph = json.loads(spec.read_text())["graph"]
        except (OSError, ValueError, KeyError):
            raise web.HTTPNotFound(text=f"no exported edge in --web-edge {folder} (alignedvq "
                                   f"export-edge --out {folder})\n") from None
        if name not in ("edge.json", graph) or "/" in graph:
            raise web.HTTPNotFound()
        # The graph may hold external weights beside it; the page loads only edge.json's graph.
        return web.FileResponse(folder / name, headers={"cache-control": "no-cache"})
    return serve
