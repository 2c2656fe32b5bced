"""``/ui``: the console's pages (one HTML shell, routed in the browser), its modules and npm libraries.

Every page path answers the same shell; the modules read ``location.pathname``. The shell carries a
Content-Security-Policy that allows this origin only: no CDN, no inline script.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
# Installed by `make console` (npm ci); not committed.
VENDOR = {"uplot": HERE / "node_modules" / "uplot" / "dist"}
PAGES = ("", "jobs", "jobs/{job_id}", "submit", "analytics", "dead-letters", "replays", "replays/{replay_id}", "sql")
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def install(app: FastAPI) -> None:
    """Mount the console under ``/ui`` (libraries missing from ``node_modules`` answer 404, the rest works)."""
    for name, directory in VENDOR.items():
        if directory.is_dir():
            app.mount(f"/ui/vendor/{name}", StaticFiles(directory=directory), name=f"console-vendor-{name}")
        else:
            logger.warning("console library %s is not installed (run `make console`): charts are off", name)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")
    for page in PAGES:
        app.add_api_route(f"/ui/{page}".rstrip("/") or "/ui", _shell, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui/", _shell, methods=["GET"], include_in_schema=False)


async def _shell() -> Response:
    return FileResponse(
        STATIC / "index.html",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"},
    )
