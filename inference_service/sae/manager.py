"""SAEs and the served model together: compatibility, attach, detach, delete.

The catalog knows files and records; the attachments know hooks; this joins
them with the model host, so an attach always runs the compatibility check
first and a model switch clears attachments that belonged to the old model.

It is also the one place where an attach or a detach has its consequences, in
the order `attach` and `detach` spell out, always on the event loop (the steps
that block are awaited off it): there is one writer of the `ActiveSae` slot,
and attach, detach and model changes already arrive on the loop. What depends
on the attached SAE (compiled steering, monitoring, the steering state, saved
profiles) is handed in as `Followers`, so this package imports none of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch

from inference_service.engine.engine import Engine
from inference_service.engine.memory import available_memory
from inference_service.host import ModelHost, ModelState
from inference_service.sae.active import ActiveSae, ActiveSaeSlot
from inference_service.sae.attachments import Attachment, SaeAttachments, release_memory
from inference_service.sae.catalog import SaeCatalog
from inference_service.sae.compatibility import Compatibility, ModelFacts, check_compatibility
from inference_service.sae.events import SaeAttached, SaeDetached
from inference_service.sae.feature_stats import read_feature_max
from inference_service.sae.hook_sites import (
    DecoderLayers,
    HookSite,
    find_decoder_layers,
    hidden_size,
    parse_hook_site,
)


@dataclass(frozen=True)
class Followers:
    """What depends on the attached SAE, as plain callables."""

    forget_compiled_steering: Callable[[], None]  # compiled sets hold the old SAE's tensors
    reset_monitor: Callable[[int | None], None]  # history and statistics of the old SAE
    forget_steering: Callable[[], None]  # live features and profile named the old SAE's features
    restore_profile: Callable[[], object]  # a saved active profile for this SAE; blocks on the DB


@dataclass(frozen=True)
class Attached:
    attachment: Attachment
    compatibility: Compatibility


@dataclass(frozen=True)
class Detached:
    attachment: Attachment
    freed_bytes: int
    rss_before_bytes: int
    rss_after_bytes: int


class SaeManager:
    def __init__(
        self,
        catalog: SaeCatalog,
        host: ModelHost,
        slot: ActiveSaeSlot,
        followers: Followers,
        publish: Callable[[SaeAttached | SaeDetached], None] = lambda event: None,
    ) -> None:
        """`publish` is told every attach and detach, once it has taken effect."""
        self.catalog = catalog
        self._publish = publish
        self.attachments = SaeAttachments()
        self._host = host
        self._slot = slot
        self._followers = followers
        # Attach and detach one at a time: each awaits the lane between its steps.
        self._lock = asyncio.Lock()

    def attached_hook(self, sae_id: str) -> str:
        attachment = self.attachments.for_sae(sae_id)
        return attachment.site.hook_name if attachment is not None else ""

    async def check(self, sae_id: str, hook_name: str) -> Compatibility:
        engine = self._host.require_engine()
        return await asyncio.to_thread(self._check, engine, sae_id, hook_name)

    def _check(self, engine: Engine, sae_id: str, hook_name: str) -> Compatibility:
        spec = self.catalog.require_ready(sae_id).spec
        assert spec is not None  # a ready SAE has one
        layers = find_decoder_layers(engine.loaded_model.model)
        site = parse_hook_site(hook_name, layers.path) if hook_name.strip() else None
        return check_compatibility(
            spec,
            site,
            _facts(engine, layers),
            available_bytes=available_memory(engine.loaded_model.device),
        )

    async def attach(self, sae_id: str, hook_name: str) -> Attached:
        """Checks, loads and hooks in the SAE, then swaps it in; on failure nothing changes."""
        async with self._lock:
            engine = self._host.require_engine()
            # 1. (worker thread) the compatibility check.
            compatibility = await asyncio.to_thread(self._check, engine, sae_id, hook_name)
            compatibility.raise_first_error()
            assert compatibility.site is not None  # no errors means a site was found
            # 2. (worker thread) the feature statistics training left in its folder.
            cached = self.catalog.get(sae_id)
            feature_max = await asyncio.to_thread(read_feature_max, cached.folder)
            # 3. (worker thread) the weights onto the model's device, then (lane) the hook
            #    goes in between two forward passes; it edits nothing yet.
            attachment = await self.attachments.attach(
                engine,
                find_decoder_layers(engine.loaded_model.model),
                sae_id,
                compatibility.site,
                lambda device: self.catalog.load(sae_id, device),
            )
            sae = attachment.sae
            assert sae is not None  # only a detach drops it
            # 4. What was built for or recorded from another SAE goes.
            self._reset_followers(sae.d_sae)
            # 5. Forward passes planned from now on steer and capture with this SAE.
            self._slot.swap(
                ActiveSae(
                    sae_id=sae_id,
                    sae_name=cached.record.name,
                    weights_sha256=cached.record.weights_sha256 or "",
                    model_name=engine.description.id,
                    hook=attachment.hook,
                    sae=sae,
                    feature_max=feature_max,
                )
            )
            self._publish(
                SaeAttached(
                    sae_id, cached.record.name, attachment.site.hook_name, engine.description.id
                )
            )
            # 6. (worker thread, it reads the database) a saved active profile for it comes back.
            await asyncio.to_thread(self._followers.restore_profile)
            return Attached(attachment, compatibility)

    async def detach(self, hook_name: str) -> Detached:
        async with self._lock:
            site: HookSite | None = None
            engine = self._host.engine
            if hook_name.strip():
                path = (
                    find_decoder_layers(engine.loaded_model.model).path
                    if engine
                    else "model.layers"
                )
                site = parse_hook_site(hook_name, path)
            attachment = self.attachments.pick(site)
            rss_before = psutil.Process().memory_info().rss
            # 1. Forward passes planned from now on do nothing at the hook.
            self._slot.swap(None)
            # 2. (lane) the hook comes out after the pass in flight, the last one that
            #    could still use the SAE.
            await self.attachments.detach(engine, attachment.site)
            # 3. Nothing may keep the old SAE's tensors or name its features.
            self._forget()
            # 4. With no reference left, the memory goes back.
            release_memory(torch.device(attachment.device))
            self._publish(
                SaeDetached(
                    attachment.sae_id,
                    attachment.site.hook_name,
                    engine.description.id if engine is not None else "",
                    with_model=False,
                )
            )
            return Detached(
                attachment, attachment.sae_bytes, rss_before, psutil.Process().memory_info().rss
            )

    def on_model_state(self, state: ModelState) -> None:
        """The model the hooks sat on is being replaced or unloaded: they go with it."""
        if state is not ModelState.READY and (attached := self.attachments.list()):
            active = self._slot.get()
            self._slot.swap(None)
            self.attachments.clear()
            self._forget()
            for attachment in attached:
                model_id = active.model_name if active is not None else ""
                self._publish(
                    SaeDetached(
                        attachment.sae_id, attachment.site.hook_name, model_id, with_model=True
                    )
                )

    def delete(self, sae_id: str) -> int:
        return self.catalog.delete(sae_id, attached=self.attachments.for_sae(sae_id) is not None)

    def _reset_followers(self, d_sae: int | None) -> None:
        self._followers.forget_compiled_steering()
        self._followers.reset_monitor(d_sae)

    def _forget(self) -> None:
        self._reset_followers(None)
        self._followers.forget_steering()


def _facts(engine: Engine, layers: DecoderLayers) -> ModelFacts:
    description = engine.description
    return ModelFacts(
        name=description.id,
        num_layers=len(layers),
        d_model=hidden_size(engine.loaded_model.model),
        layers_path=layers.path,
    )
