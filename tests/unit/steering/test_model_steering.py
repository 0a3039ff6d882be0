"""Steering and capture on the real built-in model, through the same PassContext the
service uses: every decode step is steered, zero steering is exact, monitoring reports
what a direct encode of the hidden state gives, and changes apply mid-generation."""

from __future__ import annotations

import asyncio

import pytest
import torch

from inference_service.engine.engine import Engine
from inference_service.engine.generation import SequenceState, run_generation
from inference_service.engine.prompts import render_chat
from inference_service.engine.row_edits import install
from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationRequest,
    SamplingOptions,
    TokenEvent,
)
from inference_service.errors import NoSaeAttachedError, ProfileNotFoundError
from inference_service.monitoring.hub import MonitorHub, MonitoringConfig
from inference_service.monitoring.types import Selection
from inference_service.sae.active import ActiveSaeSlot
from inference_service.sae.architectures import Sae
from inference_service.sae.attachments import SaeAttachments
from inference_service.sae.hook_sites import HookSite, find_decoder_layers
from inference_service.steering.runtime import SteeringRuntime
from inference_service.steering.state import SteeringState
from inference_service.steering.types import (
    FOLLOW_GLOBAL,
    SteeringChoice,
    SteeringFeature,
    SteeringSet,
)
from tests.fixtures.saes import active_sae, orthonormal_sae

SITE = HookSite(29, "resid_post")  # the last layer: its edits reach the logits directly
D_SAE = 64
FEATURE = 7
CLAMPED = 2
NOTHING = Selection()


def _no_profiles(name: str) -> SteeringSet:
    raise ProfileNotFoundError(f"No profile '{name}'.")


@pytest.fixture(scope="module")
def sae() -> Sae:
    b_enc = torch.zeros(D_SAE)
    b_enc[CLAMPED] = 50.0  # active at every position, so a clamp can be read back exactly
    return orthonormal_sae(d_sae=D_SAE, hook_name=SITE.hook_name, b_enc=b_enc)


@pytest.fixture
async def rig(loaded, settings, sae):
    engine = Engine(loaded, settings)
    attachments = SaeAttachments()
    attachment, _ = await attachments.attach(
        engine, find_decoder_layers(loaded.model), "sae-test", SITE, lambda device: sae
    )
    slot = ActiveSaeSlot()
    slot.swap(active_sae(sae, hook=attachment.hook))
    runtime = SteeringRuntime(SteeringState(slot.get), _no_profiles)
    yield engine, runtime, attachment
    slot.swap(None)
    await attachments.detach(engine, SITE)
    engine.shutdown()


@pytest.fixture(scope="module")
def prompt(loaded) -> list[int]:
    return render_chat(loaded.tokenizer, [ChatTurn("user", "Tell me about the sea.")])


@pytest.fixture(scope="module")
def lens_token(loaded, sae) -> int:
    """The top token of the feature's logit-lens direction, W_U @ (g * W_dec[i])."""
    model = loaded.model
    direction = model.model.norm.weight * sae.weights.W_dec[FEATURE]
    return int(torch.argmax(model.lm_head.weight @ direction))


def _strength(loaded, prompt) -> float:
    """Twice the typical residual norm at the site: a strong push. (Measured with a hook:
    the last entry of `hidden_states` has the final norm applied.)"""
    norms: list[float] = []
    layer = find_decoder_layers(loaded.model).layers[SITE.layer]
    handle = layer.register_forward_hook(
        lambda m, a, out: norms.append(float(out[0].norm(dim=-1).mean()))
    )
    try:
        with torch.inference_mode():
            loaded.model(torch.tensor([prompt]))
    finally:
        handle.remove()
    return 2 * norms[0]


def _context(runtime, choice=FOLLOW_GLOBAL, selection=NOTHING):
    return runtime.context("req", "generate", choice, selection, lambda ids: [str(i) for i in ids])


def _generate(loaded, prompt, context=None, tokens=10, on_event=None):
    events = []

    def emit(event):
        events.append(event)
        if on_event is not None:
            on_event(event, events)

    request = GenerationRequest(
        "req",
        tuple(prompt),
        SamplingOptions(0.0, max_tokens=tokens, logprobs=True, top_logprobs=5),
        observer=context,
    )
    run_generation(loaded, request, emit, lambda: False)
    assert isinstance(events[-1], FinishedEvent)
    return [e for e in events if isinstance(e, TokenEvent)]


def _ids(events) -> list[int]:
    return [i for e in events for i in e.token_ids]


async def test_every_decode_step_is_steered(rig, loaded, prompt, lens_token):
    """Teacher-forced along the unsteered greedy path, p(lens token) is higher with
    steering than without at every step, and higher than with prompt-only steering at
    every decode step: the decode passes themselves are steered."""
    _, runtime, attachment = rig
    path = _ids(_generate(loaded, prompt))
    strong = SteeringSet((SteeringFeature(FEATURE, "add", _strength(loaded, prompt)),))

    def probabilities(mode: str) -> list[float]:
        context = _context(runtime, SteeringChoice("features", steering=strong))
        request = GenerationRequest("req", tuple(prompt), SamplingOptions(0.0, max_tokens=100))
        sequence = SequenceState(loaded, request)
        out = []
        with torch.inference_mode():
            undo = install([context.plan(prompt, 0)] if mode != "none" else [])
            logits = sequence.prefill()
            undo()
            for token in path:
                out.append(float(torch.softmax(logits, -1)[lens_token]))
                sequence.accept(token, None)
                position = len(prompt) + len(sequence.generated) - 1
                undo = install([context.plan([token], position)] if mode == "full" else [])
                logits = loaded.model(
                    input_ids=torch.tensor([[token]]),
                    past_key_values=sequence.cache,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[0, -1]
                undo()
        context.done()
        assert attachment.hook.edit is None  # nothing stays behind on the hook
        return out

    none, prompt_only, full = (probabilities(m) for m in ("none", "prompt_only", "full"))
    assert full[0] > none[0]
    for step in range(1, len(path)):
        assert full[step] > prompt_only[step], (step, full, prompt_only)
        assert full[step] > none[step], (step, full, none)


async def test_zero_strength_and_the_disabled_switch_are_exact(rig, loaded, prompt):
    _, runtime, _ = rig
    baseline = _generate(loaded, prompt)
    zero = SteeringSet((SteeringFeature(FEATURE, "add", 0.0), SteeringFeature(3, "multiply", 1.0)))
    off = SteeringSet((SteeringFeature(FEATURE, "add", 500.0),), enabled=False)
    for steering in (zero, off):
        runtime.state.set_live(steering.features, steering.enabled)
        assert _generate(loaded, prompt, _context(runtime)) == baseline  # tokens and logprobs
    runtime.state.set_live((SteeringFeature(FEATURE, "add", 500.0),), True)
    assert _generate(loaded, prompt, _context(runtime)) != baseline
    runtime.state.clear()


async def test_activations_equal_a_direct_encode_of_the_hidden_state(rig, loaded, prompt, sae):
    _, runtime, _ = rig
    recorded: list[torch.Tensor] = []
    # Registered after the SAE's hook, so it sees what the rest of the model sees.
    layer = find_decoder_layers(loaded.model).layers[SITE.layer]
    handle = layer.register_forward_hook(lambda m, a, out: recorded.append(out[0].clone()))
    clamp = SteeringChoice(
        "features", steering=SteeringSet((SteeringFeature(CLAMPED, "clamp", 4.0),))
    )
    context = _context(runtime, clamp, Selection((CLAMPED, 5), top_k=3))
    try:
        events = _generate(loaded, prompt, context, tokens=6)
    finally:
        handle.remove()
    reported = [a for e in events for a in e.activations]
    positions = [a.position for a in reported]
    assert positions == list(range(len(prompt) + 5))  # the last token is never read
    direct = sae.encode(torch.cat(recorded, dim=0))  # [positions, d_sae]
    for row, activation in zip(direct, reported, strict=True):
        assert [f.index for f in activation.features] == [CLAMPED, 5]
        for value in activation.features:
            assert value.value == pytest.approx(float(row[value.index]), abs=1e-4)
        assert activation.features[0].value == pytest.approx(4.0, abs=1e-3)  # the clamp
        top = torch.topk(row, 3)
        assert [v.index for v in activation.top] == [
            i for i, x in zip(top.indices.tolist(), top.values.tolist(), strict=True) if x > 0
        ]


async def test_a_clamp_leaves_the_observed_statistics_alone(rig, loaded, prompt, sae):
    """Statistics (and the strength suggested from them) come from the unedited
    hidden state: a request clamping a feature to 1000 does not make 1000 its maximum.
    Frames report the edited value and, next to it, the unedited one. One token
    each: both requests then read the same positions, the prompt's."""
    _, runtime, _ = rig
    hub = MonitorHub(asyncio.get_running_loop())
    hub.set_config(MonitoringConfig(record_history=True, features=(CLAMPED,)))
    monitored = SteeringRuntime(runtime.state, _no_profiles, sink=hub)
    _generate(loaded, prompt, _context(monitored), tokens=1)
    (unsteered,), _ = hub.statistics([CLAMPED])
    assert 0 < unsteered.max < 1000

    clamp = SteeringSet((SteeringFeature(CLAMPED, "clamp", 1000.0),))
    _generate(loaded, prompt, _context(monitored, SteeringChoice("features", steering=clamp)), 1)
    (after,), tokens = hub.statistics([CLAMPED])
    assert tokens == 2 * len(prompt)
    assert (after.max, after.count) == (unsteered.max, 2 * unsteered.count)
    unsteered_frame, steered_frame = (frame.tokens[0] for frame in hub.history())
    assert steered_frame.features[0].value == pytest.approx(1000.0, abs=1e-2)
    assert steered_frame.unedited_features == unsteered_frame.features
    assert unsteered_frame.unedited_features == ()


async def test_steering_changes_apply_mid_generation(rig, loaded, prompt, lens_token):
    _, runtime, _ = rig
    baseline = _ids(_generate(loaded, prompt, tokens=12))
    strong = SteeringChoice(
        "features",
        steering=SteeringSet((SteeringFeature(FEATURE, "add", 4 * _strength(loaded, prompt)),)),
    )
    context = _context(runtime)  # follows the global steering: none yet

    def after_three(event, events):
        if len(events) == 3:
            context.update(strong)  # what a `steering` message on Generate does

    ids = _ids(_generate(loaded, prompt, context, tokens=12, on_event=after_three))
    assert ids[:3] == baseline[:3]
    assert ids[3:] == [lens_token] * 9


async def test_global_changes_reach_running_generations(rig, loaded, prompt, lens_token):
    _, runtime, _ = rig
    strength = 4 * _strength(loaded, prompt)
    context = _context(runtime)

    def after_two(event, events):
        if len(events) == 2:
            runtime.state.set_live((SteeringFeature(FEATURE, "add", strength),), True)

    try:
        ids = _ids(_generate(loaded, prompt, context, tokens=8, on_event=after_two))
    finally:
        runtime.state.clear()
    assert lens_token not in ids[:2] and ids[2:] == [lens_token] * 6


async def test_request_checks(rig, loaded):
    _, runtime, _ = rig
    with pytest.raises(ProfileNotFoundError):
        _context(runtime, SteeringChoice("profile", profile="nope"))
    out_of_range = SteeringSet((SteeringFeature(D_SAE, "add", 1.0),))
    with pytest.raises(Exception, match=r"has 64 features \(0 to 63\)"):
        _context(runtime, SteeringChoice("features", steering=out_of_range))
    with pytest.raises(Exception, match="top_k"):
        _context(runtime, selection=Selection(top_k=65))


def test_steering_without_an_sae_is_a_failed_precondition():
    state = SteeringState(lambda: None)
    runtime = SteeringRuntime(state, _no_profiles)
    with pytest.raises(NoSaeAttachedError, match="attach one first"):
        _context(runtime, SteeringChoice("features", steering=SteeringSet((SteeringFeature(1),))))
    with pytest.raises(NoSaeAttachedError):
        state.set_live([SteeringFeature(1, "add", 1.0)])
    assert state.effective().active is False
