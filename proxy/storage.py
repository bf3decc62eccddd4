"""Wire the object store (``[recorder.store]``) into a running gateway: start the uploader,
refuse new sessions while its spool is full, end running ones when it fills up."""

from __future__ import annotations

from typing import Any

import structlog

from breakglass.proxy.config import ConfigError
from breakglass.proxy.sessions import Termination
from breakglass.recorder.store import StoreError

log = structlog.get_logger(__name__)

SPOOL_FULL_MESSAGE = (
    "the recording store is not keeping up (spool full), so access ends: nothing is forwarded "
    "that could not be kept"
)


async def start_store(gw: Any) -> Any:
    """Start streaming recordings and audit segments to the store; None without a store."""
    cfg = gw.cfg
    if cfg.store is None:
        return None
    from breakglass.recorder.uploader import Uploader

    async def spool_full() -> None:
        await gw.registry.terminate_all(Termination("spool-full", SPOOL_FULL_MESSAGE))

    uploader = Uploader(
        cfg.store,
        [(cfg.recordings_dir, ".rec"), (cfg.audit_dir, ".audit")],
        on_event=gw.audit.append,
        on_spool_full=spool_full,
    )
    await uploader.start()
    try:
        await uploader.probe(cfg.gateway_name)
    except StoreError as e:
        await uploader.close(timeout=1)
        raise ConfigError([f"recorder.store: {e}"], cfg.path) from None
    gw.registry.make_recorder = uploader.guard(gw.registry.make_recorder)
    if getattr(gw, "metrics", None) is not None:
        gw.metrics.watch_store(uploader)  # breakglass_store_* on [gateway] metrics_listen
    log.info("store.started", url=cfg.store.url, upload_lag=cfg.store.upload_lag)
    return uploader
