"""SAEs and the served model together: compatibility, attach, detach, delete.

The catalog knows files and records; the attachments know hooks; this joins
them with the model host, so an attach always runs the compatibility check
first and a model switch clears attachments that belonged to the old model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from inference_service.engine.engine import Engine
from inference_service.engine.memory import available_memory
from inference_service.host import ModelHost, ModelState
from inference_service.sae.attachments import Attachment, Detached, SaeAttachments
from inference_service.sae.catalog import SaeCatalog
from inference_service.sae.compatibility import Compatibility, ModelFacts, check_compatibility
from inference_service.sae.hook_sites import (
    DecoderLayers,
    HookSite,
    find_decoder_layers,
    hidden_size,
    parse_hook_site,
)
from inference_service.steering.state import SteeringTarget


@dataclass(frozen=True)
class Attached:
    attachment: Attachment
    compatibility: Compatibility


class SaeManager:
    def __init__(self, catalog: SaeCatalog, host: ModelHost) -> None:
        self.catalog = catalog
        self.attachments = SaeAttachments()
        self._host = host
        # Attach and detach one at a time: each awaits the lane between its steps.
        self._lock = asyncio.Lock()
        # Read before every forward pass, so computed once per attach, not per read.
        self._target: SteeringTarget | None = None
        self._listeners: list[Callable[[SteeringTarget | None], None]] = []

    def on_attachment_change(self, listener: Callable[[SteeringTarget | None], None]) -> None:
        """`listener(target)` after every attach, detach and model change (None: nothing)."""
        self._listeners.append(listener)

    def steering_target(self) -> SteeringTarget | None:
        return self._target

    def _changed(self, target: SteeringTarget | None) -> None:
        self._target = target
        for listener in self._listeners:
            listener(target)

    def on_model_state(self, state: ModelState) -> None:
        if state is not ModelState.READY:
            self.attachments.clear()
            if self._target is not None:
                self._changed(None)

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
        async with self._lock:
            engine = self._host.require_engine()
            compatibility = await asyncio.to_thread(self._check, engine, sae_id, hook_name)
            compatibility.raise_first_error()
            assert compatibility.site is not None  # no errors means a site was found
            layers = find_decoder_layers(engine.loaded_model.model)
            attachment = await self.attachments.attach(
                engine,
                layers,
                sae_id,
                compatibility.site,
                lambda device: self.catalog.load(sae_id, device),
            )
            cached = self.catalog.get(sae_id)
            assert cached.spec is not None and attachment.sae is not None
            # Listeners may read the database (a saved active profile comes back).
            await asyncio.to_thread(
                self._changed,
                SteeringTarget(
                    sae_id=sae_id,
                    sae_name=cached.record.name,
                    weights_sha256=cached.record.weights_sha256 or "",
                    hook_name=attachment.site.hook_name,
                    d_sae=attachment.sae.d_sae,
                    model_name=engine.description.id,
                ),
            )
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
            detached = await self.attachments.detach(engine, site)
            self._changed(None)
            return detached

    def delete(self, sae_id: str) -> int:
        return self.catalog.delete(sae_id, attached=self.attachments.for_sae(sae_id) is not None)


def _facts(engine: Engine, layers: DecoderLayers) -> ModelFacts:
    description = engine.description
    return ModelFacts(
        name=description.id,
        num_layers=len(layers),
        d_model=hidden_size(engine.loaded_model.model),
        layers_path=layers.path,
    )
