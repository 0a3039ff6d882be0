"""The attached SAE as one immutable value, and the slot that holds it.

Steering and monitoring learn what is attached from here and nowhere else.
`SaeManager` builds a new `ActiveSae` on every attach and swaps it into the slot
with one assignment (None on detach); a reader takes the reference once per
forward pass, so a pass never mixes two SAEs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from inference_service.sae.architectures import Sae
from inference_service.sae.attachments import SiteHook
from inference_service.sae.hook_sites import HookSite


@dataclass(frozen=True, eq=False)
class ActiveSae:
    """The attached SAE, its hook and the served model it sits on."""

    sae_id: str
    sae_name: str
    weights_sha256: str  # what a steering profile is bound to
    model_name: str
    hook: SiteHook  # the forward hook at its site
    sae: Sae  # weights on the model's device
    # Each feature's maximum activation in training, where the SAE's folder has statistics.
    feature_max: Tensor | None = None

    @property
    def site(self) -> HookSite:
        return self.hook.site

    @property
    def hook_name(self) -> str:
        return self.hook.site.hook_name

    @property
    def d_sae(self) -> int:
        return self.sae.d_sae


class ActiveSaeSlot:
    """Where the current `ActiveSae` is kept; only `SaeManager` swaps it.

    Readers are handed `slot.get`, built before the manager that swaps it, so the
    objects that depend on the attached SAE exist before it is told about them.
    """

    def __init__(self) -> None:
        self._active: ActiveSae | None = None

    def get(self) -> ActiveSae | None:
        return self._active

    def swap(self, active: ActiveSae | None) -> None:
        self._active = active  # one reference assignment: readers see one or the other
