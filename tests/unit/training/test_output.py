"""Saved runs: the SAELens v6 files mean what the trained module computed, for raw
activations, and SAELens itself reads them (SAEs and transcoders alike)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from inference_service.sae.formats import load_sae
from inference_service.training.metrics import FeatureStatistics
from inference_service.training.output import saved_architecture, write_output
from inference_service.training.trainer import TrainerHooks
from tests.unit.training.synthetic import MemorySource, make_trainer
from tests.unit.training.test_trainer import CASES, HELD_OUT, TRAIN, config, mlp, train

HOOK = "blocks.1.hook_resid_post"


def save(case: str, tmp_path, **changes):
    cfg = config(**CASES[case], **changes)
    trainer, outcome, _ = train(cfg, 25, tmp_path / "ckpt", transcoder=cfg.is_transcoder)
    folder = tmp_path / "out"
    write_output(
        folder,
        config=cfg,
        sae=trainer.sae,
        scale_in=outcome.scale_in,
        scale_out=outcome.scale_out,
        statistics=outcome.statistics,
        model_name="tiny",
        hook_name=HOOK,
        hook_name_out="blocks.1.hook_mlp_out",
        run={"run_id": "r1"},
    )
    return cfg, trainer, outcome, folder


@pytest.mark.parametrize("case", ["standard", "jumprelu", "topk", "batchtopk"])
def test_saved_sae_encodes_raw_activations_as_training_did(case, tmp_path):
    cfg, trainer, outcome, folder = save(case, tmp_path, normalize_activations="constant_norm")
    assert outcome.scale_in != 1.0  # the fold is really exercised
    ours = load_sae(folder)
    assert ours.spec.architecture == saved_architecture(cfg)
    x = HELD_OUT[:200]
    with torch.no_grad():
        expected_f = trainer.sae.encode(x * outcome.scale_in)
        expected_x = trainer.sae.decode(expected_f, x * outcome.scale_in) / outcome.scale_out
    torch.testing.assert_close(ours.encode(x), expected_f, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.decode(ours.encode(x)), expected_x, atol=1e-4, rtol=1e-4)


def test_batchtopk_is_saved_as_jumprelu_with_its_learned_threshold(tmp_path):
    _, trainer, _, folder = save("batchtopk", tmp_path)
    saved = load_file(str(folder / "sae_weights.safetensors"))
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "jumprelu"
    threshold = float(trainer.sae.batch_threshold)
    assert threshold > 0
    assert torch.equal(saved["threshold"], torch.full((128,), threshold))


def test_statistics_files_describe_the_held_out_activations(tmp_path):
    _, trainer, _outcome, folder = save("topk", tmp_path)
    stats = load_file(str(folder / "feature_stats.safetensors"))
    with torch.no_grad():
        f = trainer.sae.encode(HELD_OUT)
    direct = FeatureStatistics(128)
    direct.add(f)
    torch.testing.assert_close(stats["frequency"], (f > 0).float().mean(0))
    torch.testing.assert_close(stats["max_activation"], f.max(0).values)
    sparsity = load_file(str(folder / "sparsity.safetensors"))["sparsity"]
    torch.testing.assert_close(sparsity, torch.log10(direct.frequency + 1e-10))
    run = json.loads((folder / "training_run.json").read_text())
    assert run == {"run_id": "r1"}


@pytest.mark.parametrize("case", ["topk", "jumprelu", "transcoder", "skip-transcoder"])
def test_sae_lens_loads_the_output_and_computes_the_same(case, tmp_path):
    from sae_lens import SAE

    cfg, trainer, _outcome, folder = save(case, tmp_path)
    theirs = SAE.load_from_disk(str(folder), device="cpu")
    x = HELD_OUT[:200]
    with torch.no_grad():
        f = trainer.sae.encode(x)
        torch.testing.assert_close(theirs.encode(x), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), trainer.sae.decode(f, x), atol=1e-4, rtol=1e-4)
    if cfg.is_transcoder:
        assert theirs.cfg.d_out == mlp(x).shape[1]
        assert theirs.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"


def test_a_stop_ends_the_run_at_a_step_boundary_with_a_checkpoint(tmp_path):
    cfg = config(**CASES["topk"])
    trainer = make_trainer(cfg, MemorySource(TRAIN), (HELD_OUT, HELD_OUT), 25, tmp_path)
    metrics: list[dict] = []
    checkpoints: list[int] = []
    outcome = trainer.run(
        TrainerHooks(
            should_stop=lambda: trainer.step >= 3,
            on_metrics=metrics.extend,
            on_checkpoint=checkpoints.append,
        )
    )
    assert outcome.stopped and outcome.step == 3 and checkpoints == [3]
    assert (tmp_path / "step_000000003.pt").is_file()
    assert [m["step"] for m in metrics] == [1, 2, 3]
