"""Which collection, and which query tower (torch, or its ONNX export), serves a user.

The champion is whatever the live alias points at; while a rollout is running, the users that
`tandem.release.rollout.arm` puts in the challenger arm get the rollout's challenger collection. The
rollout state file is re-read whenever it changes (so `tandem rollout advance` takes effect
without a restart) and the alias every `ServeConfig.refresh_seconds`. Each collection's model
is loaded once and dropped when its collection leaves both arms.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tandem.core import layout
from tandem.core.config import RunConfig
from tandem.release.attempts import frozen
from tandem.release.index import ItemIndex, model_dir_of

log = logging.getLogger(__name__)


class Unavailable(RuntimeError):
    """The service cannot serve right now (no live collection, a model that will not load): a 503."""


@dataclass(frozen=True)
class Arm:
    """One served collection and the run model whose query tower embeds into it."""

    collection: str
    run_id: str
    model: object
    family: str
    items: int
    queries: object  # what embeds /search queries: the model itself, or its ONNX query encoder


@dataclass(frozen=True)
class View:
    """A consistent snapshot of what serves whom (requests read it once, without a lock)."""

    live: str
    state: object | None  # tandem.release.rollout.RolloutState, or None when no rollout was ever started

    @property
    def running(self) -> bool:
        return self.state is not None and self.state.status == "running"

    @property
    def challenger(self) -> str | None:
        return self.state.challenger if self.running else None

    @property
    def experiment(self) -> str:
        return self.state.experiment if self.running else ""


def check_query_encoder(model_dir: Path, setting: str) -> None:
    """ValueError when the saved model in `model_dir` cannot embed queries with `setting` (read from its
    config.json, without loading the weights)."""
    family = json.loads((Path(model_dir) / "config.json").read_text()).get("model", {}).get("family", "hotelmatch")
    if setting != "torch" and family == "notellm2":
        raise ValueError(
            f"serve.query_encoder={setting!r} (--query-encoder): {model_dir} is a symmetric NoteLLM-2 model, "
            "whose queries are items embedded by the LLM; it has no query tower to export. Serve it with 'torch'"
        )


def preflight(workdir: str | Path, cfg: RunConfig) -> str:
    """What would fail the service's start-up, checked before a server starts (a one-line error, not a
    server traceback): a live collection, its run's saved model, and that model with the configured
    query encoder. Returns the live collection."""
    with ItemIndex(cfg.index, workdir) as index:
        live = index.live()
        uri = index.uri
    if live is None:
        raise ValueError(f"no live collection in {uri}: nothing has been promoted yet; run `tandem run` first")
    check_query_encoder(model_dir_of(workdir, live), cfg.serve.query_encoder)
    return live


def query_encoder(model_dir: Path, model, setting: str):
    """What embeds the queries: the model itself for "torch", else an OnnxQueryEncoder of its query
    tower (serve.query_encoder "onnx-int8" or "onnx-fp32"), exported first when missing or stale."""
    if setting == "torch":
        return model
    from tandem.models.onnx_export import OnnxQueryEncoder, check_export, export_onnx

    check_query_encoder(model_dir, setting)
    precision = setting.removeprefix("onnx-")
    try:
        check_export(model_dir, precision)
    except ValueError as e:
        log.info("exporting the query tower of %s to ONNX: %s", model_dir, e)
        export_onnx(model_dir)
    return OnnxQueryEncoder(model_dir, precision)


class Router:
    """`route_key` maps a user id to what the rollout buckets (the service passes a keyed hash, see
    `tandem.serve.security.Signer.route_key`, so that no client can compute its arm); default: the id."""

    def __init__(self, workdir: str | Path, cfg: RunConfig, index: ItemIndex, route_key=None):
        self.workdir = Path(workdir)
        self.cfg, self.index = cfg, index
        self.route_key = route_key or (lambda user_id: user_id)
        self.state_file = layout.rollout_state(self.workdir)  # written by tandem.release.rollout.save_state
        self._arms: dict[str, Arm] = {}
        self._lock = threading.RLock()
        self._signature: tuple | None = None
        self._checked = float("-inf")
        self.view: View | None = None

    def _file_signature(self) -> tuple | None:
        try:
            st = self.state_file.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def refresh(self, force: bool = False) -> View:
        """Re-read the rollout state when its file changed and the live alias when it is due."""
        signature = self._file_signature()
        due = time.monotonic() - self._checked >= self.cfg.serve.refresh_seconds
        if not force and not due and signature == self._signature and self.view is not None:
            return self.view
        with self._lock:
            from tandem.release.rollout import load_state

            state = load_state(self.workdir)
            live = self.index.live()
            if live is None:
                raise ValueError(
                    f"no live collection in {self.index.uri}: nothing has been promoted yet; run `tandem run` first"
                )
            view = View(live, state)
            for collection in (view.live, view.challenger):
                if collection:
                    self.arm(collection)
            for stale in set(self._arms) - {view.live, view.challenger}:
                log.info("collection %s serves no arm any more: its model is unloaded", stale)
                del self._arms[stale]
            if self.view is None or (self.view.live, self.view.challenger) != (view.live, view.challenger):
                log.info("serving champion %s, challenger %s", view.live, view.challenger)
            self.view, self._signature, self._checked = view, signature, time.monotonic()
            return view

    def loaded(self) -> bool:
        """Whether the champion's model is loaded (what /readyz asks; no Milvus call, no loading)."""
        view = self.view
        return view is not None and view.live in self._arms

    def arm(self, collection: str) -> Arm:
        """The collection's model, loaded on first use."""
        arm = self._arms.get(collection)
        if arm is not None:
            return arm
        with self._lock:
            if collection not in self._arms:
                from tandem.models import load_model

                model_dir = model_dir_of(self.workdir, collection)
                run_id = (frozen(self.workdir, collection) or {}).get("run_id", model_dir.parent.name)
                model = load_model(model_dir)
                family = getattr(getattr(model, "cfg", None), "family", type(model).__name__)
                queries = query_encoder(model_dir, model, self.cfg.serve.query_encoder)
                self._arms[collection] = Arm(collection, run_id, model, family, self.index.count(collection), queries)
                log.info(
                    "loaded the %s model of run %s for %s (queries: %s)",
                    family,
                    run_id,
                    collection,
                    self.cfg.serve.query_encoder,
                )
            return self._arms[collection]

    def route(self, user_id: str | None) -> tuple[str, Arm, View]:
        """(arm name, arm, view) for a user; anonymous users always get the champion."""
        from tandem.release.rollout import arm as choose

        try:
            view = self.refresh()
        except (ValueError, OSError) as e:  # the workdir, not the request, is at fault
            raise Unavailable(str(e)) from e
        state = view.state if view.running else None
        name = choose(state, self.route_key(user_id)) if user_id is not None and state else "champion"
        collection = view.challenger if name == "challenger" and view.challenger else view.live
        return ("challenger" if collection != view.live else "champion"), self.arm(collection), view
