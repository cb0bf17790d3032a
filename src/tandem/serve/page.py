"""The search page of `tandem serve` (`GET /`) and the item photos it shows (`GET /items/{item_id}/image`).

The page is one static file (`static/index.html`, shipped in the package; vanilla JS, nothing fetched
from elsewhere) that calls the JSON endpoints: /search, /similar/{item_id} and POST /click, so that
what a person clicks is logged like any client's click.

Photos: an item's first image file as its run's catalogue lists it (`runs/<run_id>/data/catalog.parquet`,
absolute paths written by the loader) for the served collections (the champion's and the challenger's
runs). The client names an item, never a path, so only files the catalogue lists can be sent; remote
images (URLs) and files that are not images are not served (404, and the page shows a placeholder).
"""

from __future__ import annotations

import logging
import mimetypes
import threading
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse

from tandem.core import layout
from tandem.serve.routing import Unavailable

log = logging.getLogger(__name__)
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp"}  # fmt: skip


def page_html() -> str:
    """The search page's HTML (read from the package, so it works from a wheel too)."""
    return resources.files("tandem.serve").joinpath("static", "index.html").read_text(encoding="utf-8")


class ItemImages:
    """item_id -> its first local image file, per run, read once from the run's catalogue."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self._by_run: dict[str, dict[str, Path]] = {}
        self._lock = threading.Lock()

    def _load(self, run_id: str) -> dict[str, Path]:
        import pandas as pd

        path = layout.run_dir(self.workdir, run_id) / "data" / "catalog.parquet"
        if not path.is_file():
            log.warning("no catalogue at %s: items of run %s are shown without photos", path, run_id)
            return {}
        frame = pd.read_parquet(path, columns=["item_id", "images"])
        out = {}
        for item_id, images in zip(frame["item_id"], frame["images"]):
            for image in images if images is not None else ():
                image = str(image)
                if "://" not in image and Path(image).suffix.lower() in IMAGE_TYPES:
                    out[str(item_id)] = Path(image)
                    break
        return out

    def of_run(self, run_id: str) -> dict[str, Path]:
        if run_id not in self._by_run:
            with self._lock:
                if run_id not in self._by_run:
                    self._by_run[run_id] = self._load(run_id)
        return self._by_run[run_id]

    def find(self, item_id: str, run_ids: list[str]) -> Path | None:
        """The item's photo in the first of `run_ids` whose catalogue lists one that exists, else None."""
        for run_id in run_ids:
            path = self.of_run(run_id).get(item_id)
            if path is not None and path.is_file():
                return path
        return None


def add_page_routes(app: FastAPI, workdir: Path, ids: dict) -> None:
    """`GET /` (the page) and `GET /items/{item_id}/image` on `app` (whose state has the router)."""
    images = ItemImages(workdir)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        """The search page: a query box, results with photos, titles and scores, similar items on click."""
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache"})

    @app.get(
        "/items/{item_id}/image",
        response_class=FileResponse,
        responses={200: {"content": {t: {} for t in sorted(set(IMAGE_TYPES.values()))}}, 404: {}},
    )
    def item_image(request: Request, item_id: str = PathParam(..., description="a served item", **ids)):
        """The item's first photo as the catalogue of a served run lists it; 404 when it has none."""
        router = request.app.state.router
        try:
            view = router.refresh()
        except (ValueError, OSError) as e:  # the workdir, not the request, is at fault: a 503
            raise Unavailable(str(e)) from e
        runs = [router.arm(c).run_id for c in (view.live, view.challenger) if c]
        path = images.find(item_id, runs)
        if path is None:
            raise HTTPException(404, f"item {item_id!r} has no photo in the served catalogue")
        media = IMAGE_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})
