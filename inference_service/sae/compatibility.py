"""Does this SAE fit the loaded model at this hook site? The check every attach runs.

Errors stop an attach; warnings (a different model name, another site than the
one the SAE was trained on) are reported and the attach goes ahead. Each error
names what is wrong and what to do, and carries the domain error that an
attach raises for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inference_service.errors import (
    IncompatibleSaeError,
    InvalidArgumentError,
    MillmError,
    OutOfMemoryError,
    UnsupportedError,
)
from inference_service.sae.hook_sites import (
    HookSite,
    layer_out_of_range,
    module_name,
    trained_site,
)
from inference_service.sae.spec import SaeSpec

# Float32 unless the attach asks for float16 or bfloat16 (2 bytes).
_BYTES_PER_VALUE = 4


@dataclass(frozen=True)
class ModelFacts:
    """What the check needs to know about the served model."""

    name: str
    num_layers: int
    d_model: int
    layers_path: str


@dataclass(frozen=True)
class Issue:
    error: MillmError

    @property
    def reason(self) -> str:
        return self.error.reason

    @property
    def message(self) -> str:
        return self.error.message


@dataclass(frozen=True)
class Compatibility:
    errors: tuple[Issue, ...]
    warnings: tuple[Issue, ...]
    site: HookSite | None
    module_name: str
    model: ModelFacts
    sae_bytes: int
    available_bytes: int

    @property
    def compatible(self) -> bool:
        return not self.errors

    def raise_first_error(self) -> None:
        if self.errors:
            raise self.errors[0].error


def sae_memory_bytes(spec: SaeSpec, bytes_per_value: int = _BYTES_PER_VALUE) -> int:
    """W_enc and W_dec, plus the per-feature and per-input vectors."""
    d_in, d_sae = spec.d_in or 0, spec.d_sae or 0
    return (2 * d_in * d_sae + 2 * d_sae + d_in) * bytes_per_value


def check_compatibility(
    spec: SaeSpec,
    site: HookSite | None,
    model: ModelFacts,
    *,
    available_bytes: int,
    bytes_per_value: int = _BYTES_PER_VALUE,
    allow_overcommit: bool = False,
) -> Compatibility:
    """`site` is where the caller wants the SAE (None: where it was trained).

    Not enough free memory is an error, or with `allow_overcommit` a warning (as a
    model load's overcommit is)."""
    errors: list[MillmError] = []
    warnings: list[MillmError] = []
    trained = trained_site(spec.hook_name)
    if site is None:
        site = trained
        if site is None and spec.hook_name:
            errors.append(
                UnsupportedError(
                    f"The SAE was trained at '{spec.hook_name}'; miLLM attaches SAEs to the "
                    "residual stream only (blocks.L.hook_resid_post or blocks.L.hook_resid_pre).",
                    param="hook_name",
                )
            )
        elif site is None:
            errors.append(
                InvalidArgumentError(
                    "The SAE does not say which hook site it was trained on; pass hook_name, "
                    "for example blocks.9.hook_resid_post.",
                    param="hook_name",
                )
            )
    elif trained is not None and site != trained:
        warnings.append(
            IncompatibleSaeError(
                f"The SAE was trained at {trained.hook_name}, not at {site.hook_name}; "
                "its features may mean little there."
            )
        )
    if site is not None and (out := layer_out_of_range(site.layer, model.num_layers, "hook_name")):
        errors.append(out)
    if spec.d_in is not None and spec.d_in != model.d_model:
        where = site.hook_name if site is not None else "the residual stream"
        errors.append(
            IncompatibleSaeError(
                f"The SAE reads vectors of width {spec.d_in}, but the model's hidden size at "
                f"{where} is {model.d_model}. Use an SAE trained on {model.name} (or on a model "
                f"with hidden size {model.d_model}).",
                param="id",
            )
        )
    if spec.model_name and not _same_model(spec.model_name, model.name):
        warnings.append(
            IncompatibleSaeError(
                f"The SAE was trained on '{spec.model_name}' and the loaded model is "
                f"'{model.name}'; its features may not mean anything here."
            )
        )
    needed = sae_memory_bytes(spec, bytes_per_value)
    if needed > available_bytes:
        message = (
            f"The SAE needs {_gib(needed)} and {_gib(available_bytes)} is free; unload "
            "something, attach it as float16 or bfloat16, or use a smaller SAE."
        )
        if allow_overcommit:
            warnings.append(OutOfMemoryError(f"{message} Attaching anyway (allow_overcommit)."))
        else:
            errors.append(OutOfMemoryError(f"{message} Or pass allow_overcommit to attach anyway."))
    return Compatibility(
        errors=tuple(Issue(e) for e in errors),
        warnings=tuple(Issue(w) for w in warnings),
        site=site,
        module_name=module_name(model.layers_path, site) if site is not None else "",
        model=model,
        sae_bytes=needed,
        available_bytes=available_bytes,
    )


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.rsplit("/", 1)[-1].lower())


def _same_model(a: str, b: str) -> bool:
    """Loose: 'HuggingFaceTB/SmolLM2-135M-Instruct' matches 'smollm2-135m-instruct'."""
    x, y = _normalise(a), _normalise(b)
    return bool(x) and bool(y) and (x in y or y in x)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"
