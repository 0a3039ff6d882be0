"""SAEs attached to the served model, keyed by hook site.

Attaching loads the weights off the lane (generation keeps running), then
installs the site's hook on the lane between two forward passes. The hook changes
nothing until something edits the hidden state (steering, or monitoring reading
it): with an SAE attached and no edit, the model's outputs are bit-identical to
the model without it. What forward passes see is `sae.active.ActiveSae`, which
`SaeManager` swaps in after the hook is installed.

One SAE at a time for now; the data model is keyed by site so several can follow.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from inference_service.engine.engine import Engine
from inference_service.engine.loader import trim_heap
from inference_service.errors import (
    NotFoundError,
    OutOfMemoryError,
    SaeAlreadyAttachedError,
)
from inference_service.sae.architectures import Sae
from inference_service.sae.hook_sites import DecoderLayers, HiddenEdit, HookSite, hook_hidden_state

log = logging.getLogger(__name__)


class SiteHook:
    """The edit at one site. The hook calls it once per forward pass and it reads
    `edit` once; whoever changes it swaps the reference, so a forward pass sees
    one edit or the other."""

    def __init__(self, site: HookSite) -> None:
        self.site = site
        self.edit: HiddenEdit | None = None

    def __call__(self, hidden: Tensor) -> Tensor | None:
        edit = self.edit
        return None if edit is None else edit(hidden)


@dataclass
class Attachment:
    sae_id: str
    site: HookSite
    module_name: str
    sae: Sae | None  # weights on the model's device; None once detached
    sae_bytes: int
    hook: SiteHook
    device: str
    attached_at_unix_ms: int
    dtype: str = "float32"  # of the weights on the device
    _handle: RemovableHandle | None = field(default=None, repr=False)


class SaeAttachments:
    def __init__(self) -> None:
        self._by_site: dict[HookSite, Attachment] = {}

    def list(self) -> list[Attachment]:
        return [self._by_site[site] for site in sorted(self._by_site)]

    def for_sae(self, sae_id: str) -> Attachment | None:
        return next((a for a in self._by_site.values() if a.sae_id == sae_id), None)

    async def attach(
        self,
        engine: Engine,
        layers: DecoderLayers,
        sae_id: str,
        site: HookSite,
        load: Callable[[torch.device], Sae],
        *,
        replace: bool = False,
    ) -> tuple[Attachment, Attachment | None]:
        """Loads the SAE with `load(device)` and hooks it in; on any failure nothing changes.

        With `replace`, what is attached stays until the new SAE has loaded, then its
        hook comes out and the new one goes in within one lane call; the replaced
        attachment comes back second (its weights dropped, as `detach` drops them)."""
        current = next(iter(self._by_site.values()), None)
        if current is not None and not replace:
            raise SaeAlreadyAttachedError(
                f"SAE '{current.sae_id}' is attached at {current.site.hook_name}; miLLM "
                "attaches one SAE at a time for now, so detach it first, or attach with "
                "`replace: true` to swap it in one call.",
                param="id",
            )
        device = engine.loaded_model.device
        try:
            sae = await asyncio.to_thread(load, device)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            release_memory(device)
            raise OutOfMemoryError(
                f"Not enough memory on {device} to load the SAE ({exc.__class__.__name__}); "
                "detach or unload something, or use a smaller SAE."
            ) from exc
        hook = SiteHook(site)
        attachment = Attachment(
            sae_id=sae_id,
            site=site,
            module_name=layers.module_name(site),
            sae=sae,
            sae_bytes=sae.nbytes,
            hook=hook,
            device=str(device),
            attached_at_unix_ms=int(time.time() * 1000),
            dtype=sae.spec.dtype,
        )
        module = layers.layers[site.layer]
        old_handle = current._handle if current is not None else None

        def swap_hooks() -> RemovableHandle:
            if old_handle is not None:
                old_handle.remove()
            return hook_hidden_state(module, site.end, hook)

        attachment._handle = await engine.call_on_lane(swap_hooks)
        if current is not None:
            del self._by_site[current.site]
            current.sae = None
            current._handle = None
            log.info("replaced SAE %s at %s", current.sae_id, current.site.hook_name)
        self._by_site[site] = attachment
        log.info(
            "attached SAE %s at %s (%d bytes, %s)",
            sae_id,
            site.hook_name,
            sae.nbytes,
            sae.spec.dtype,
        )
        return attachment, current

    async def detach(self, engine: Engine | None, site: HookSite | None) -> Attachment:
        """Removes the hook between forward passes and drops the record's weights.

        Memory comes back once the last other reference goes too: call
        `release_memory` after that (`SaeManager.detach` does)."""
        attachment = self.pick(site)
        handle = attachment._handle
        if handle is not None and engine is not None:
            await engine.call_on_lane(handle.remove)
        del self._by_site[attachment.site]
        # The caller keeps the record, never the tensors: drop them here.
        attachment.sae = None
        attachment._handle = None
        log.info("detached SAE %s from %s", attachment.sae_id, attachment.site.hook_name)
        return attachment

    def clear(self) -> None:
        """Forgets everything: the model the hooks sat on is being replaced or unloaded."""
        if self._by_site:
            log.info("SAE attachments cleared with the model")
        self._by_site.clear()

    def pick(self, site: HookSite | None) -> Attachment:
        """The attachment at `site`, or the only one when `site` is None."""
        if site is not None:
            if site not in self._by_site:
                raise NotFoundError(f"No SAE is attached at {site.hook_name}.", param="hook_name")
            return self._by_site[site]
        if not self._by_site:
            raise NotFoundError("No SAE is attached.")
        return next(iter(self._by_site.values()))


def release_memory(device: torch.device) -> None:
    """Hands freed tensors back: to the CUDA driver, or the C heap to the OS."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        trim_heap()
