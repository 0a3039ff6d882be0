"""Pure torch functions that turn one step's logits into the next token.

Order per step: penalties -> logprobs (reported) -> temperature -> top_p -> draw.
Logprobs are taken after penalties but before temperature and top_p, i.e. the
distribution the model (as penalised) assigns, which is what OpenAI reports and
what stays comparable across temperatures. Greedy (temperature 0) is an argmax
over the penalised logits.
"""

from __future__ import annotations

import secrets

import torch

# Seeds are folded into torch's accepted range (unsigned 64-bit).
_SEED_MASK = (1 << 64) - 1


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A per-request generator: the same seed always draws the same tokens."""
    generator = torch.Generator(device=device)
    generator.manual_seed((secrets.randbits(63) if seed is None else seed) & _SEED_MASK)
    return generator


def apply_penalties(
    logits: torch.Tensor,  # [V]
    counts: torch.Tensor,  # [V] how often each token occurs in the completion so far
    frequency_penalty: float,
    presence_penalty: float,
) -> torch.Tensor:  # [V]
    """OpenAI's penalties: subtract freq * count and presence * (count > 0)."""
    if frequency_penalty == 0.0 and presence_penalty == 0.0:
        return logits
    counts = counts.to(logits.dtype)
    return logits - frequency_penalty * counts - presence_penalty * (counts > 0).to(logits.dtype)


def choose_token(
    logits: torch.Tensor,  # [V], float32
    temperature: float,
    top_p: float,
    generator: torch.Generator,
) -> int:
    """One row's next token as an int (reads it back: a host sync on a GPU)."""
    return int(draw_token(logits, temperature, top_p, generator))


def draw_token(
    logits: torch.Tensor,  # [V], float32
    temperature: float,
    top_p: float,
    generator: torch.Generator,
) -> torch.Tensor:  # [] long, on the logits' device
    """The next token as a device tensor: nothing is read back to the host (on CUDA;
    the CPU nucleus reads one sum, which costs nothing there), so a batch's tokens can
    be read back together (`read_tokens`)."""
    if temperature == 0.0:
        return torch.argmax(logits)
    probs = torch.softmax(logits / temperature, dim=-1)  # [V]
    if top_p >= 1.0:
        return _draw(probs, generator)
    candidates, candidate_probs = _nucleus(probs, top_p)  # [K], [K]
    return candidates[_draw(candidate_probs, generator)]


def read_tokens(tokens: list[torch.Tensor]) -> list[int]:
    """Every row's [] token tensor read back to the host at once: one sync per step."""
    if len(tokens) == 1:
        return [int(tokens[0])]
    return torch.stack(tokens).tolist()


def greedy_tokens(logits: torch.Tensor) -> list[int]:  # [rows, V] -> rows' argmax
    """Greedy rows with nothing to adjust: one argmax and one read-back for them all."""
    return logits.argmax(dim=-1).tolist()


def _draw(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # [N] -> []
    """One draw by inverse CDF: a single random number per token, and on CPU
    about 40x cheaper than torch.multinomial over a 50k vocabulary. Zero-weight
    entries are never drawn (the first index whose cumulative mass exceeds u)."""
    cdf = torch.cumsum(weights, dim=-1)  # [N]
    u = torch.rand((), generator=generator, device=weights.device) * cdf[-1]
    index = torch.searchsorted(cdf, u.reshape(1), right=True)[0]
    return index.clamp(max=weights.shape[-1] - 1)  # guards u == cdf[-1] from rounding


# Nucleus candidates are looked for among the top K tokens first on a CPU; a full sort
# of the vocabulary (slow on CPU) is needed only when those K hold less than top_p.
# A GPU sorts the whole vocabulary at once, which needs no read-back to decide.
_NUCLEUS_FIRST_K = 256


def _nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely tokens, best first, with the mass of those beyond the smallest
    set reaching top_p zeroed: (ids [K], probs [K]). Drawing from it draws from the
    nucleus; zeroing instead of cutting keeps the size (and the host) out of it."""
    if probs.device.type == "cpu":
        k = min(_NUCLEUS_FIRST_K, probs.shape[-1])
        top_probs, top_ids = torch.topk(probs, k)  # [k], [k], descending
        if float(top_probs.sum()) < top_p and k < probs.shape[-1]:
            top_probs, top_ids = torch.sort(probs, descending=True)  # [V], [V]
    else:
        top_probs, top_ids = torch.sort(probs, descending=True)  # [V], [V]
    # A token is kept while the mass before it is below top_p, so the most likely
    # token always survives.
    mass_before = torch.cumsum(top_probs, dim=-1) - top_probs
    return top_ids, torch.where(mass_before < top_p, top_probs, 0.0)


def token_logprobs(
    logits: torch.Tensor,  # [V], after penalties
    token_id: int,
    top_k: int,
) -> tuple[float, list[tuple[int, float]]]:
    """Logprob of `token_id` and the `top_k` most likely (id, logprob), best first."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [V]
    chosen = float(logprobs[token_id])
    if top_k <= 0:
        return chosen, []
    values, ids = torch.topk(logprobs, k=min(top_k, logprobs.shape[-1]))  # [k], [k]
    return chosen, list(zip(ids.tolist(), values.tolist(), strict=True))
