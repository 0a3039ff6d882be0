"""Steering and monitoring at forward-pass time: what one request's passes do at the hook.

A `PassContext` belongs to one request (a generation or an embedding call). Before
every forward pass the engine asks it, on the worker lane, for its `plan()`: this
request's steering at the site hook and, when someone wants them, a capture of
the feature activations. The engine composes the plans of all rows of a batched
pass into one edit (engine.row_edits). The request's steering is fixed when it comes
from the request itself or a profile; otherwise it follows the global steering,
read again before every pass, so changes apply from the next decode step.

The attached SAE is read once per pass (`sae.active`): a pass planned before an
attach or detach swaps it completes with the SAE it started with.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from torch import Tensor

from inference_service.engine.row_edits import RowEdit
from inference_service.engine.threads import all_cores
from inference_service.monitoring.types import (
    Capture,
    Selection,
    Source,
    TokenActivations,
    select_tokens,
    validate_selection,
)
from inference_service.sae.active import ActiveSae
from inference_service.steering.compiled import CompiledSteering
from inference_service.steering.state import SteeringState
from inference_service.steering.types import (
    NO_STEERING,
    SteeringChoice,
    SteeringSet,
    validate_features,
)

# Compiled steering sets kept for reuse (global sets, profiles, per-request sets).
_COMPILED_CACHE = 16


class ActivationSink(Protocol):
    """Live monitoring, as the lane sees it (the monitoring hub)."""

    def wants_capture(self) -> bool: ...

    def publish(self, capture: Capture) -> None: ...


class SteeringRuntime:
    def __init__(
        self,
        state: SteeringState,
        resolve_profile: Callable[[str], SteeringSet],
        sink: ActivationSink | None = None,
    ) -> None:
        self.state = state
        self._resolve_profile = resolve_profile
        self.sink = sink
        self._compiled: OrderedDict[tuple[int, int], CompiledSteering] = OrderedDict()
        # The lane reads the cache while an attach or detach (the event loop) clears it.
        self._lock = threading.Lock()

    def resolve(self, choice: SteeringChoice) -> SteeringSet | None:
        """The fixed steering of a choice, validated; None means: follow the global one."""
        if choice.kind == "global":
            return None
        if choice.kind == "disabled":
            return NO_STEERING
        if choice.kind == "profile":
            return self._resolve_profile(choice.profile)
        target = self.state.require_target()
        validate_features(choice.steering.features, target.d_sae, param="steering.features")
        return choice.steering

    def context(
        self,
        request_id: str,
        source: Source,
        choice: SteeringChoice,
        selection: Selection,
        token_text: Callable[[Sequence[int]], list[str]],
    ) -> PassContext:
        """Checks the request's steering and selection now, before it is admitted."""
        fixed = self.resolve(choice)
        if not selection.empty:
            target = self.state.require_target()
            validate_selection(selection, target.d_sae)
        return PassContext(self, request_id, source, fixed, selection, token_text)

    def compiled(self, steering: SteeringSet, active: ActiveSae) -> CompiledSteering:
        key = (id(steering), id(active))
        with self._lock:
            found = self._compiled.get(key)
            if found is not None and found.steering is steering and found.sae is active.sae:
                self._compiled.move_to_end(key)
                return found
        compiled = CompiledSteering(steering, active.sae)
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > _COMPILED_CACHE:
                self._compiled.popitem(last=False)
        return compiled

    def forget(self) -> None:
        """The attached SAE changed: compiled sets hold the old SAE's tensors, which
        must not outlive a detach."""
        with self._lock:
            self._compiled.clear()


class PassContext:
    """One request's steering and capture; `plan` and `done` run on the lane."""

    def __init__(
        self,
        runtime: SteeringRuntime,
        request_id: str,
        source: Source,
        fixed: SteeringSet | None,
        selection: Selection,
        token_text: Callable[[Sequence[int]], list[str]],
    ) -> None:
        self._runtime = runtime
        self.request_id = request_id
        self._source = source
        self._fixed = fixed
        self._selection = selection
        self._token_text = token_text
        self._pending: list[TokenActivations] = []

    def update(self, choice: SteeringChoice) -> None:
        """New steering for the rest of this request (from the event loop)."""
        self._fixed = self._runtime.resolve(choice)  # one reference swap

    def plan(self, token_ids: Sequence[int], start_position: int) -> RowEdit | None:
        """What this request does at the hook in its next pass, which reads `token_ids`
        from `start_position` on; None when it does nothing there."""
        state = self._runtime.state
        active = state.target()  # once: this whole pass uses this SAE
        if active is None:
            return None
        steering = self._fixed if self._fixed is not None else state.effective_for(active)
        compiled = self._runtime.compiled(steering, active)
        sink = self._runtime.sink
        publish = sink is not None and sink.wants_capture()
        if compiled.is_identity and not (publish or not self._selection.empty):
            return None  # exactly the model without the SAE
        ids = tuple(token_ids)
        observe = None
        if publish or not self._selection.empty:
            edits = not compiled.is_identity

            def observe(before: Tensor, after: Tensor) -> None:  # [1, T, d_in] each
                unedited = before[0] if edits else None
                self._capture(active, after[0], unedited, ids, start_position, publish)

        return RowEdit(
            active.hook,
            add=compiled.add_vector,
            transform=compiled.apply_encoded if compiled.encodes else None,
            observe=observe,
        )

    def _capture(
        self,
        active: ActiveSae,
        hidden: Tensor,
        unedited: Tensor | None,
        ids: tuple[int, ...],
        start: int,
        publish: bool,
    ) -> None:
        """`hidden` is the state after this request's steering; `unedited` the state
        before it, None when the steering left it unchanged."""
        # [T, d_sae], left on the device: frames copy out only their top-k and
        # selected features (monitoring.types.select_tokens), once per frame. On a CPU
        # the encoder is one long kernel (38 MB of float32 weights at 16,384 features,
        # more than the model's output layer), long enough for every core
        # (engine/threads.py): monitoring top-10 took 16 % of decode there, 11 % so.
        with all_cores():
            acts = active.sae.encode(hidden.float())
            unedited_acts = None if unedited is None else active.sae.encode(unedited.float())
        capture = Capture(
            request_id=self.request_id,
            source=self._source,
            hook_name=active.hook_name,
            positions=tuple(range(start, start + len(ids))),
            token_ids=ids,
            tokens=tuple(self._token_text(ids)),
            activations=acts,
            unedited_activations=unedited_acts,
            captured_at_unix_ms=int(time.time() * 1000),
        )
        if not self._selection.empty:
            self._pending.extend(select_tokens(capture, self._selection))
        if publish and self._runtime.sink is not None:
            self._runtime.sink.publish(capture)

    def take_activations(self) -> tuple[TokenActivations, ...]:
        taken, self._pending = tuple(self._pending), []
        return taken

    def done(self) -> None:
        """Nothing to release: the engine clears the hooks after every pass."""
