"""TopK and BatchTopK train through sparse products (sparse_codes); their losses and
every gradient must equal the dense expressions they replace."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from inference_service.sae.architectures.sparse_codes import topk_of_batch, topk_per_row
from inference_service.training.config import ModelFacts, resolve, with_defaults
from inference_service.training.trainable import TrainableSae
from tests.unit.training.synthetic import D_IN, sparse_mixture

D_SAE, K, ROWS = 96, 5, 64


def make_sae(architecture: str) -> TrainableSae:
    config = with_defaults(
        dict(
            hook_name="blocks.1.hook_resid_post",
            corpus_id="synthetic",
            architecture=architecture,
            d_sae=D_SAE,
            k=K,
        )
    )
    config = resolve(config, ModelFacts(D_IN, D_IN, 4096))
    sae = TrainableSae(config, D_IN, D_IN, torch.Generator().manual_seed(0))
    with torch.no_grad():  # away from the symmetric start, so every gradient is non-trivial
        for p in (sae.b_enc, sae.b_dec):
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return sae


def dense_topk(acts: torch.Tensor, k: int) -> torch.Tensor:
    values, indices = acts.topk(k, dim=-1)
    return torch.zeros_like(acts).scatter(-1, indices, values)


def dense_batch_topk(acts: torch.Tensor, k: int) -> torch.Tensor:
    values, indices = acts.flatten().topk(k * acts.shape[0])
    return torch.zeros_like(acts.flatten()).scatter(0, indices, values).view_as(acts)


def dense_loss(sae: TrainableSae, x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """The textbook dense TopK/BatchTopK loss with AuxK, written independently."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    keep = dense_topk if sae.architecture.name == "topk" else dense_batch_topk
    f = keep(torch.relu(pre), K)
    x_hat = f @ sae.W_dec + sae.b_dec
    mse = (x_hat - x).pow(2).sum(-1).mean()
    residual = x - x_hat.detach()
    k_aux = min(D_IN // 2, int(dead.sum()))
    f_aux = dense_topk(torch.relu(pre.masked_fill(~dead, -math.inf)), k_aux)
    error = (f_aux @ sae.W_dec - residual).pow(2).sum(-1).mean()
    variance = (residual - residual.mean(0)).pow(2).sum(-1).mean()
    return mse + sae.config.aux_k_coefficient * error / variance


@pytest.mark.parametrize("sparse_products", [True, False])
@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_sparse_loss_and_gradients_equal_the_dense_ones(
    architecture: str, sparse_products: bool
) -> None:
    """Either way of computing a step (sparse or dense products) against the textbook."""
    x = sparse_mixture(ROWS, seed=4)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::3] = True
    results = []
    for compute in ("ours", "textbook"):
        sae = make_sae(architecture)
        sae.sparse_products = sparse_products
        if compute == "ours":
            out = sae.forward_batch(x, x, sparsity_scale=1.0, dead=dead)
            loss = out.loss
            assert out.aux > 0  # the auxiliary term is really in the comparison
        else:
            loss = dense_loss(sae, x, dead)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (sparse_loss, sparse_grads), (dense, dense_grads) = results
    assert torch.allclose(sparse_loss, dense, rtol=1e-5)
    assert set(sparse_grads) == {"W_enc", "b_enc", "W_dec", "b_dec"} == set(dense_grads)
    for name, grad in dense_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_sparse_products_only_when_few_entries_are_kept() -> None:
    assert not make_sae("topk").sparse_products  # k 5 of 96
    config = with_defaults(
        dict(hook_name="blocks.1.hook_resid_post", corpus_id="s", architecture="topk", k=32)
    )
    config = resolve(dataclasses.replace(config, d_sae=4608), ModelFacts(D_IN, D_IN, 4096))
    assert TrainableSae(config, D_IN, D_IN, torch.Generator()).sparse_products


def test_metrics_see_the_dense_codes() -> None:
    sae = make_sae("topk")
    x = sparse_mixture(ROWS, seed=5)
    out = sae.forward_batch(x, x, sparsity_scale=1.0, dead=None)
    with torch.no_grad():
        expected = dense_topk(torch.relu(sae.pre_activations(x)), K)
    torch.testing.assert_close(out.f, expected)
    assert not out.f.requires_grad


def test_kept_entries_are_in_csr_order() -> None:
    scores = torch.randn(7, 11, generator=torch.Generator().manual_seed(6))
    for codes, per_row in ((topk_per_row(scores, 3), [3] * 7), (topk_of_batch(scores, 3), None)):
        assert torch.all(codes.flat[1:] > codes.flat[:-1])
        counts = (codes.crow[1:] - codes.crow[:-1]).tolist()
        assert sum(counts) == 21 and (per_row is None or counts == per_row)
        dense = codes.dense(scores.flatten()[codes.flat])
        assert int((dense != 0).sum()) == 21
        kept = scores.flatten()[codes.flat]
        dropped = scores.flatten()[dense.flatten() == 0]
        if per_row is None:  # the batch's 21 largest
            assert kept.min() > dropped.max()
