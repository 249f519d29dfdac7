"""Build a server from a spec or run directory, and run it: ``serve`` (blocking, the CLI) or
``ServerThread`` (in-process, on a free loopback port: tests, benchmarks, ``leanlm evolve --serve``)."""
from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from pathlib import Path

from .app import ServerContext, create_app
from .backends import backend_loader
from .config import ServeConfig
from .follow import Follower, is_run
from .metrics import Metrics
from .scheduler import Scheduler
from .versions import Ledger, Registry, Version

log = logging.getLogger(__name__)


def model_name(spec: str, cfg: ServeConfig) -> str:
    return cfg.name or Path(spec.rstrip("/")).name.removesuffix(".gguf")


def build(spec: str, cfg: ServeConfig) -> ServerContext:
    """Registry (with the first version live, unless a followed run has none yet), scheduler, follower."""
    loader = functools.partial(backend_loader(cfg.backend), dtype=cfg.dtype, max_batch=cfg.max_batch,
                               threads=cfg.threads, prefix_cache=cfg.prefix_cache, skinny=cfg.skinny)
    name = model_name(spec, cfg)
    run = is_run(spec)
    ledger_path = cfg.ledger or (str(Path(spec) / "serve-ledger.jsonl") if run else None)
    registry = Registry(name, loader, canary=cfg.canary, max_loaded=cfg.max_loaded, ledger=Ledger(ledger_path),
                        load_nice=cfg.load_nice)
    scheduler = Scheduler(cfg.max_batch, cfg.max_queue, on_release=registry.release, threads=cfg.threads,
                          max_prefill_tokens=cfg.max_prefill_tokens)
    follower = None
    if run:
        follower = Follower(spec, registry, cfg.poll_s)
        follower.poll(reason="startup: latest accepted generation")
        if registry.current is None and not cfg.follow:
            raise ValueError(f"{spec} has no accepted generation to serve yet (use --follow to wait for one)")
    else:
        registry.install(Version(id=f"{name}@base", tag="base", source=spec), "startup: the spec as given")
    return ServerContext(cfg, registry, scheduler, Metrics(), follower if cfg.follow else None)


def _start(ctx: ServerContext) -> None:
    ctx.scheduler.start()
    if ctx.follower is not None:
        ctx.follower.start()


def _stop(ctx: ServerContext) -> None:
    if ctx.follower is not None:
        ctx.follower.stop()
    ctx.scheduler.stop()


def serve(spec: str, cfg: ServeConfig) -> int:
    """Run until interrupted (Ctrl-C)."""
    import uvicorn

    ctx = build(spec, cfg)
    _start(ctx)
    try:
        uvicorn.run(create_app(ctx), host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    finally:
        _stop(ctx)
    return 0


class ServerThread:
    """``with ServerThread(spec, cfg) as s: s.url`` - a real uvicorn server on a free 127.0.0.1 port."""

    def __init__(self, spec: str | None = None, cfg: ServeConfig | None = None, ctx: ServerContext | None = None):
        import uvicorn

        self.cfg = cfg or ServeConfig(port=0)
        self.ctx = ctx or build(spec, self.cfg)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.cfg.host, self.cfg.port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{self.cfg.host}:{self.port}"
        config = uvicorn.Config(create_app(self.ctx), log_level="warning", access_log=False, timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="leanlm-uvicorn", daemon=True)

    def __enter__(self) -> ServerThread:
        _start(self.ctx)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server thread did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        _stop(self.ctx)
        self.sock.close()


def follow_in_background(run: str | Path, cfg: ServeConfig | None = None) -> ServerThread:
    """Start serving an evolve run directory (``--follow``) in this process; ``leanlm evolve --serve`` uses it.
    The run directory must exist (``run.json``); generations are served as the loop accepts them."""
    import dataclasses

    cfg = dataclasses.replace(cfg or ServeConfig(), follow=True)
    server = ServerThread(str(run), cfg)
    server.__enter__()
    log.info("serving %s at %s (follows accepted generations)", run, server.url)
    return server
