"""A forward pass reads the attached SAE once: one planned before an attach or
detach swaps the snapshot completes with the SAE it started with."""

from __future__ import annotations

import torch

from inference_service.monitoring.types import Capture, Selection
from inference_service.sae.active import ActiveSaeSlot
from inference_service.steering.runtime import SteeringRuntime
from inference_service.steering.state import SteeringState
from inference_service.steering.types import SteeringChoice, SteeringFeature, SteeringSet
from tests.fixtures.saes import active_sae

FEATURE = 1
STRENGTH = 3.0


class Sink:
    def __init__(self) -> None:
        self.captures: list[Capture] = []

    def wants_capture(self) -> bool:
        return True

    def publish(self, capture: Capture) -> None:
        self.captures.append(capture)


def _context(runtime: SteeringRuntime):
    steering = SteeringSet((SteeringFeature(FEATURE, "add", STRENGTH),))
    choice = SteeringChoice("features", steering=steering)
    return runtime.context("req", "generate", choice, Selection(), lambda ids: ["t"] * len(ids))


def test_a_pass_planned_before_a_swap_keeps_its_sae() -> None:
    first = active_sae(sae_id="first", d_sae=16, hook_name="blocks.9.hook_resid_post", seed=1)
    second = active_sae(sae_id="second", d_sae=32, hook_name="blocks.3.hook_resid_post", seed=2)
    slot = ActiveSaeSlot()
    slot.swap(first)
    sink = Sink()
    runtime = SteeringRuntime(SteeringState(slot.get), lambda name: SteeringSet(), sink)
    context = _context(runtime)

    planned = context.plan([5, 6], 0)
    slot.swap(second)  # an attach or detach lands between plan and forward pass
    assert planned is not None and planned.observe is not None
    assert planned.hook is first.hook
    assert torch.equal(planned.add, STRENGTH * first.sae.weights.W_dec[FEATURE].float())
    state = torch.randn(1, 2, 8)
    planned.observe(state, state)  # the pass runs: its capture is the first SAE's
    assert sink.captures[-1].hook_name == "blocks.9.hook_resid_post"
    assert sink.captures[-1].activations.shape == (2, 16)

    following = context.plan([7], 2)  # the next pass sees the swap, wholly
    assert following is not None and following.observe is not None
    assert following.hook is second.hook
    assert torch.equal(following.add, STRENGTH * second.sae.weights.W_dec[FEATURE].float())
    state = torch.randn(1, 1, 8)
    following.observe(state, state)
    assert sink.captures[-1].activations.shape == (1, 32)

    slot.swap(None)  # detached: the pass after does nothing at any hook
    assert context.plan([8], 3) is None
