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
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import psutil
import torch

from inference_service.engine.engine import Engine
from inference_service.engine.memory import available_memory
from inference_service.errors import (
    IncompatibleSaeError,
    InvalidArgumentError,
    MillmError,
    NoModelLoadedError,
    SaeAlreadyAttachedError,
)
from inference_service.host import ModelHost, ModelState
from inference_service.sae.active import ActiveSae, ActiveSaeSlot
from inference_service.sae.architectures.base import TORCH_DTYPES
from inference_service.sae.attachment_history import AttachmentEntry, AttachmentHistory
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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttachOptions:
    dtype: str = "float32"  # of the weights on the device; steering's edits stay float32
    allow_overcommit: bool = False  # attach with a warning when the memory check fails
    replace: bool = False  # swap out what is attached, new SAE loaded first

    def __post_init__(self) -> None:
        if self.dtype not in TORCH_DTYPES:
            raise InvalidArgumentError(
                f"dtype must be one of {', '.join(TORCH_DTYPES)}; got '{self.dtype}'.",
                param="dtype",
            )

    @property
    def bytes_per_value(self) -> int:
        return TORCH_DTYPES[self.dtype].itemsize


class RestoreState(Enum):
    UNSPECIFIED = "unspecified"  # start-up has not looked yet
    NOTHING = "nothing"
    PENDING = "pending"
    RESTORED = "restored"
    FAILED = "failed"


@dataclass(frozen=True)
class Restore:
    """How the start-up restore of the last attachment went."""

    state: RestoreState = RestoreState.UNSPECIFIED
    sae_id: str = ""
    hook_name: str = ""
    message: str = ""
    reason: str = ""
    steering_json: str | None = field(default=None, repr=False)  # the live steering to set


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
    replaced: Attachment | None = None


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
        history: AttachmentHistory | None = None,
        publish: Callable[[SaeAttached | SaeDetached], None] = lambda event: None,
    ) -> None:
        """`history` (None: nothing is recorded) keeps attachments across restarts;
        `publish` is told every attach and detach, once it has taken effect."""
        self.catalog = catalog
        self._publish = publish
        self.attachments = SaeAttachments()
        self._host = host
        self._slot = slot
        self._followers = followers
        self._history = history
        self._row_id: str | None = None  # the history row of what is attached
        # Steering writes come from worker threads; this keeps the newest one last.
        self._steering_write = threading.Lock()
        self.restore_status = Restore()
        # Attach and detach one at a time: each awaits the lane between its steps.
        self._lock = asyncio.Lock()

    def attached_hook(self, sae_id: str) -> str:
        attachment = self.attachments.for_sae(sae_id)
        return attachment.site.hook_name if attachment is not None else ""

    async def check(self, sae_id: str, hook_name: str) -> Compatibility:
        engine = self._host.require_engine()
        return await asyncio.to_thread(self._check, engine, sae_id, hook_name)

    def _check(
        self, engine: Engine, sae_id: str, hook_name: str, options: AttachOptions | None = None
    ) -> Compatibility:
        options = options or AttachOptions()
        spec = self.catalog.require_ready(sae_id).spec
        assert spec is not None  # a ready SAE has one
        layers = find_decoder_layers(engine.loaded_model.model)
        site = parse_hook_site(hook_name, layers.path) if hook_name.strip() else None
        return check_compatibility(
            spec,
            site,
            _facts(engine, layers),
            available_bytes=available_memory(engine.loaded_model.device),
            bytes_per_value=options.bytes_per_value,
            allow_overcommit=options.allow_overcommit,
        )

    async def attach(
        self, sae_id: str, hook_name: str, options: AttachOptions | None = None
    ) -> Attached:
        """Checks, loads and hooks in the SAE, then swaps it in; on failure nothing changes."""
        async with self._lock:
            return await self._attach(sae_id, hook_name, options or AttachOptions())

    async def _attach(
        self,
        sae_id: str,
        hook_name: str,
        options: AttachOptions,
        *,
        steering_json: str | None = None,
        closing_as: str = "replaced",
    ) -> Attached:
        engine = self._host.require_engine()
        # 1. (worker thread) the compatibility check.
        compatibility = await asyncio.to_thread(self._check, engine, sae_id, hook_name, options)
        compatibility.raise_first_error()
        assert compatibility.site is not None  # no errors means a site was found
        for warning in compatibility.warnings:
            if warning.reason == "OUT_OF_MEMORY":
                log.warning("attaching SAE %s although it may not fit: %s", sae_id, warning.message)
        # 2. (worker thread) the feature statistics training left in its folder.
        cached = self.catalog.get(sae_id)
        feature_max = await asyncio.to_thread(read_feature_max, cached.folder)
        # 3. (worker thread) the weights onto the model's device, then (lane) the hook
        #    goes in between two forward passes, replacing the old one's with
        #    `replace`; it edits nothing yet.
        dtype = TORCH_DTYPES[options.dtype]
        attachment, replaced = await self.attachments.attach(
            engine,
            find_decoder_layers(engine.loaded_model.model),
            sae_id,
            compatibility.site,
            lambda device: self.catalog.load(sae_id, device, dtype),
            replace=options.replace,
        )
        sae = attachment.sae
        assert sae is not None  # only a detach drops it
        # 4. What was built for or recorded from another SAE goes; a replaced SAE's
        #    live steering with it, as a detach forgets it.
        if replaced is not None:
            self._followers.forget_steering()
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
        if replaced is not None:
            release_memory(torch.device(replaced.device))
            self._publish(
                SaeDetached(
                    replaced.sae_id,
                    replaced.site.hook_name,
                    engine.description.id,
                    with_model=False,
                )
            )
        self._publish(
            SaeAttached(
                sae_id, cached.record.name, attachment.site.hook_name, engine.description.id
            )
        )
        # 6. (worker thread) the history: any open row closed, this one opened.
        await asyncio.to_thread(self._record_attach, attachment, steering_json, closing_as)
        # 7. (worker thread, it reads the database) a saved active profile for it comes back.
        await asyncio.to_thread(self._followers.restore_profile)
        return Attached(attachment, compatibility, replaced)

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
            await asyncio.to_thread(self._record_detach, "detached")
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
            # One short write, on the loop: model changes are rare, and it must land
            # before anything attaches to the next model.
            self._record_detach("model_changed")
            model_id = active.model_name if active is not None else ""
            for attachment in attached:
                self._publish(
                    SaeDetached(
                        attachment.sae_id, attachment.site.hook_name, model_id, with_model=True
                    )
                )

    def delete(self, sae_id: str) -> int:
        return self.catalog.delete(sae_id, attached=self.attachments.for_sae(sae_id) is not None)

    # ---- persisted state ----------------------------------------------------------------

    async def save_steering(self, steering_json: Callable[[], str]) -> None:
        """Writes the live steering onto the open history row. It waits for an attach
        or detach under way, so the row is the one of the SAE the steering names, and
        reads `steering_json()` at write time, so the newest change lands last."""
        if self._history is None:
            return
        async with self._lock:
            await asyncio.to_thread(self._write_steering, steering_json)

    def _write_steering(self, steering_json: Callable[[], str]) -> None:
        assert self._history is not None
        with self._steering_write:
            if self._row_id is not None:
                self._history.save_steering(self._row_id, steering_json())

    async def restore(self) -> Restore:
        """Attaches again what was attached when the service stopped, once the model is
        loaded; never raises. A failure is logged, kept in `restore_status`, and closes
        the old row so it is not tried again."""
        if self._history is None:
            return self.restore_status
        last = await asyncio.to_thread(self._history.last_open)
        if last is None:
            self.restore_status = Restore(RestoreState.NOTHING)
            return self.restore_status
        self.restore_status = Restore(RestoreState.PENDING, last.sae_id, last.hook_name)
        try:
            async with self._lock:
                self._restorable(last)
                await self._attach(
                    last.sae_id,
                    last.hook_name,
                    AttachOptions(dtype=last.dtype),
                    steering_json=last.steering_json,
                    closing_as="restored",
                )
        except Exception as exc:  # any failure is reported, never raised
            message = (
                exc.message if isinstance(exc, MillmError) else f"{exc.__class__.__name__}: {exc}"
            )
            reason = exc.reason if isinstance(exc, MillmError) else "INTERNAL"
            log.warning(
                "could not attach SAE %s at %s again after the restart: %s",
                last.sae_id,
                last.hook_name,
                message,
            )
            await asyncio.to_thread(self._history.closed, "restore_failed", last.id)
            self.restore_status = Restore(
                RestoreState.FAILED, last.sae_id, last.hook_name, message, reason
            )
            return self.restore_status
        log.info("SAE %s attached again at %s after the restart", last.sae_id, last.hook_name)
        self.restore_status = Restore(
            RestoreState.RESTORED,
            last.sae_id,
            last.hook_name,
            steering_json=last.steering_json,
        )
        return self.restore_status

    def _restorable(self, last: AttachmentEntry) -> None:
        engine = self._host.engine
        if engine is None:
            why = self._host.load_error or "no model is loaded"
            raise NoModelLoadedError(f"The model did not load ({why}), so nothing to attach to.")
        if engine.description.id != last.model_id:
            raise IncompatibleSaeError(
                f"It was attached to model '{last.model_id}', and the service now serves "
                f"'{engine.description.id}'; attach an SAE for this model."
            )
        if self.attachments.list():
            raise SaeAlreadyAttachedError("Another SAE was attached first.")

    def _record_attach(
        self, attachment: Attachment, steering_json: str | None, closing_as: str
    ) -> None:
        if self._history is None:
            return
        engine = self._host.engine
        with self._steering_write:
            self._row_id = None
            try:
                self._row_id = self._history.opened(
                    sae_id=attachment.sae_id,
                    hook_name=attachment.site.hook_name,
                    model_id=engine.description.id if engine is not None else "",
                    dtype=attachment.dtype,
                    sae_bytes=attachment.sae_bytes,
                    steering_json=steering_json,
                    closing_as=closing_as,
                )
            except Exception:
                # The attach itself succeeded; only a restart will not bring it back.
                log.exception("the attachment of SAE %s was not recorded", attachment.sae_id)

    def _record_detach(self, ended_by: str) -> None:
        if self._history is None:
            return
        with self._steering_write:
            row_id, self._row_id = self._row_id, None
            if row_id is None:
                return
            try:
                self._history.closed(ended_by, row_id)
            except Exception:
                log.exception("the end of attachment %s was not recorded", row_id)

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
