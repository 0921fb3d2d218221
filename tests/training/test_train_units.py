"""Training pieces checked by hand on one batch: v-target, noising, null-prompt dropout, KL, LPIPS backbone
loading, adversarial warm-up, checkpoint files and the latent scale factor (in-process, tiny networks)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.bundle import stage_parser, tiny_parser
from helpers.data import make_prepared_synthetic
from helpers.networks import make_tiny_text_encoder
from scripts.common.errors import root_cause


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_prepared_synthetic(tmp_path_factory.mktemp("unit_data"), num_subjects=12, image_size=64)


def _hand_alphas_cumprod() -> torch.Tensor:
    # the model's noise schedule: betas = linspace(sqrt(0.0015), sqrt(0.0205), 1000)², alpha_bar = prod(1 - beta)
    betas = torch.linspace(math.sqrt(0.0015), math.sqrt(0.0205), 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def test_v_target_and_noising_match_a_hand_computation(tokenizer):
    from scripts.networks.text import encode_ids, tokenize
    from scripts.training.diffusion import LatentVPredictionPrepareBatch

    parser = stage_parser("diffusion")
    torch.manual_seed(1)
    autoencoder = parser.get_parsed_content("autoencoder_def").eval()
    text_encoder = make_tiny_text_encoder()
    scheduler = parser.get_parsed_content("train_scheduler")
    prepare = LatentVPredictionPrepareBatch(autoencoder, text_encoder, scheduler, scale_factor=0.3)
    images = torch.rand(3, 1, 64, 64)
    ids = tokenize(tokenizer, ["Big right-sided pleural effusion", "Cardiomegaly", ""])

    torch.manual_seed(7)
    latents, target, args, kwargs = prepare({"image": images, "prompt_ids": ids}, device="cpu")

    # by hand, drawing the random numbers in the same order: posterior sample, noise, timesteps
    torch.manual_seed(7)
    with torch.no_grad():
        z_mu, z_sigma = autoencoder.encode(images)
        expected_latents = 0.3 * (z_mu + z_sigma * torch.randn_like(z_sigma))
    noise = torch.randn_like(expected_latents)
    timesteps = torch.randint(0, 1000, (3,))
    alpha_bar = _hand_alphas_cumprod()[timesteps].float().view(3, 1, 1, 1)
    expected_v = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * expected_latents

    assert args == () and latents.shape == (3, 3, 8, 8)
    torch.testing.assert_close(latents, expected_latents, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kwargs["noise"], noise)
    assert torch.equal(kwargs["timesteps"], timesteps)
    torch.testing.assert_close(target, expected_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kwargs["condition"], encode_ids(text_encoder, ids))

    # the training inferer feeds the UNet x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, with the text as context
    seen = {}

    def recording_unet(x, timesteps, context):
        seen.update(x=x, timesteps=timesteps, context=context)
        return torch.zeros_like(x)

    parser.get_parsed_content("train#inferer")(latents, recording_unet, **kwargs)
    torch.testing.assert_close(
        seen["x"], alpha_bar.sqrt() * expected_latents + (1 - alpha_bar).sqrt() * noise, rtol=1e-5, atol=1e-6
    )
    assert seen["context"] is kwargs["condition"] and torch.equal(seen["timesteps"], timesteps)


def test_null_prompt_dropout_on_a_training_batch(dataset_dir, tokenizer):
    from monai.data import DataLoader, Dataset
    from monai.utils import set_determinism

    from scripts.networks.text import encode_ids, null_prompt_ids, tokenize
    from scripts.training.diffusion import LatentVPredictionPrepareBatch

    parser = stage_parser("diffusion", dataset_dir=str(dataset_dir), null_prompt_prob=0.5)
    set_determinism(seed=0)
    transforms = parser.get_parsed_content("train#preprocessing")
    data = parser.get_parsed_content("train#datalist") * 8
    batch = next(iter(DataLoader(Dataset(data, transforms), batch_size=len(data), shuffle=False)))
    null_ids = null_prompt_ids(tokenizer, parser["null_prompt"])
    dropped = [i for i, report in enumerate(batch["report"]) if report == ""]
    kept = [i for i, report in enumerate(batch["report"]) if report != ""]
    for i in dropped:
        assert torch.equal(batch["prompt_ids"][i], null_ids)
    for i in kept:
        assert torch.equal(batch["prompt_ids"][i], tokenize(tokenizer, [batch["report"][i]])[0])
    n = len(data)
    # binomial(n, 0.5): 4 standard deviations either side
    assert abs(len(dropped) - n / 2) < 4 * math.sqrt(n / 4), f"{len(dropped)} of {n} prompts dropped at p=0.5"

    # the dropped rows reach the UNet as the null-prompt embedding, the one sampling uses for guidance
    text_encoder = make_tiny_text_encoder()
    prepare = LatentVPredictionPrepareBatch(
        parser.get_parsed_content("autoencoder_def").eval(),
        text_encoder,
        parser.get_parsed_content("train_scheduler"),
        scale_factor=0.3,
    )
    small = {"image": batch["image"][:8], "prompt_ids": batch["prompt_ids"][:8]}
    context = prepare(small, device="cpu")[3]["condition"]
    null_context = encode_ids(text_encoder, null_ids[None])[0]
    for i in range(8):
        # a batch of 8 and a batch of 1 round differently: equal within float32 rounding of values of order 1
        assert torch.allclose(context[i], null_context, rtol=1e-5, atol=1e-5) == (i in dropped)


def test_kl_loss_closed_form():
    from scripts.training.autoencoder import kl_loss

    assert kl_loss(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)).item() == 0.0
    mu, sigma = torch.full((2, 3, 4, 4), 0.5), torch.full((2, 3, 4, 4), 2.0)
    per_value = 0.5 * (0.25 + 4.0 - math.log(4.0) - 1.0)
    assert kl_loss(mu, sigma).item() == pytest.approx(48 * per_value, rel=1e-6)


def test_lpips_backbone_is_read_from_a_local_file(tmp_path):
    from torchvision.models import squeezenet1_1

    from scripts.training.autoencoder import LPIPSLoss

    with pytest.raises(FileNotFoundError, match="squeezenet1_1"):
        LPIPSLoss(str(tmp_path / "squeezenet1_1-b8a52dc0.pth"))
    torch.manual_seed(3)
    reference = squeezenet1_1(weights=None)
    torch.save(reference.state_dict(), tmp_path / "squeeze.pth")
    loss = LPIPSLoss(str(tmp_path / "squeeze.pth"))
    assert torch.equal(loss.lpips.net.slice1[0].weight, reference.features[0].weight)
    assert torch.equal(getattr(loss.lpips.net.slice7, "12").expand3x3.weight, reference.features[12].expand3x3.weight)
    random_backbone = LPIPSLoss(None, random_backbone=True)
    assert not torch.equal(random_backbone.lpips.net.slice1[0].weight, reference.features[0].weight)
    images = torch.rand(2, 1, 64, 64)
    assert loss(images, images).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(images, 1 - images).item() > 0


def test_autoencoder_trainer_starts_the_discriminator_at_the_configured_epoch(dataset_dir):
    parser = stage_parser(
        "autoencoder", dataset_dir=str(dataset_dir), train_dir="/nonexistent", max_epochs=1, adversarial_start_epoch=2
    )
    parser["train#handlers"] = []
    trainer = parser.get_parsed_content("train#trainer")
    discriminator = parser.get_parsed_content("discriminator")
    autoencoder = parser.get_parsed_content("autoencoder")
    d_before = [p.detach().clone() for p in discriminator.parameters()]
    g_before = [p.detach().clone() for p in autoencoder.parameters()]
    trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(d_before, discriminator.parameters())), "D frozen in epoch 1"
    assert not all(torch.equal(a, b) for a, b in zip(g_before, autoencoder.parameters()))
    assert trainer.state.output["discriminator_loss"] == 0.0
    trainer.state.max_epochs = 2
    trainer.run()
    assert trainer.state.epoch == 2 and trainer.state.output["discriminator_loss"] > 0
    assert not all(torch.equal(a, b) for a, b in zip(d_before, discriminator.parameters())), "D trains from epoch 2"


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_amp_dtype_reaches_the_trainer_and_the_evaluator(stage, dataset_dir, tmp_path):
    """Mixed precision is float16 by default (the reference recipe) and bfloat16 with --amp_dtype bfloat16."""
    settings = {"dataset_dir": str(dataset_dir), "train_dir": "/nonexistent"}
    if stage == "diffusion":
        make_tiny_text_encoder().save_pretrained(tmp_path / "text_encoder")
        torch.save(tiny_parser().get_parsed_content("autoencoder_def").state_dict(), tmp_path / "autoencoder.pt")
        settings["text_encoder_source"] = str(tmp_path / "text_encoder")
        settings["autoencoder_path"] = str(tmp_path / "autoencoder.pt")
    for amp_dtype, expected in ((None, torch.float16), ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16)):
        overrides = {} if amp_dtype is None else {"amp_dtype": amp_dtype}
        parser = stage_parser(stage, **settings, **overrides)
        parser["train#handlers"] = []
        assert parser.get_parsed_content("train#trainer").amp_kwargs == {"dtype": expected}
        assert parser.get_parsed_content("validate#evaluator").amp_kwargs == {"dtype": expected}
    parser = stage_parser(stage, **settings, amp_dtype="int8")
    with pytest.raises(Exception) as error:
        parser.get_parsed_content("amp_kwargs")
    assert "amp_dtype must be float16 or bfloat16, got 'int8'" in str(root_cause(error.value))


def test_checkpoint_files_are_atomic_and_the_newest_is_found(tmp_path):
    from scripts.training.checkpoints import AtomicDiskSaver, latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    saver = AtomicDiskSaver(str(tmp_path))
    for epoch in (2, 10, 9):
        saver({"x": torch.tensor(epoch)}, f"checkpoint_epoch={epoch}.pt")
    (tmp_path / "checkpoint_epoch=11.pt.partial").write_text("")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=10.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_epoch=10.pt",
        "checkpoint_epoch=11.pt.partial",
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=9.pt",
    ]
    fixed = AtomicDiskSaver(str(tmp_path / "best"), filename="model.pt")
    fixed({"w": torch.ones(2)}, "ignored_name.pt")
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["model.pt"]


def _scripted_training(ckpt_dir, max_epochs: int, scores: dict, n_saved: int = 2):
    """A trainer wired like the training configs: resumable checkpoint, validation each epoch, best-model saver.

    The network's weight is set to the epoch number, so ``best.pt`` tells which epoch it came from;
    ``scores[epoch]`` is that epoch's validation score (higher is better).
    """
    from ignite.engine import Engine, Events

    from scripts.training.checkpoints import AtomicCheckpointSaver, ResumableCheckpoint

    network = torch.nn.Linear(1, 1, bias=False)

    def train_step(engine, batch):
        with torch.no_grad():
            network.weight.fill_(float(engine.state.epoch))

    def validate(engine, batch):
        engine.state.metrics["score"] = scores[trainer.state.epoch]

    trainer, evaluator = Engine(train_step), Engine(validate)
    saver = AtomicCheckpointSaver(
        save_dir=str(ckpt_dir),
        save_dict={"net": network},
        save_key_metric=True,
        key_metric_name="score",
        key_metric_filename="best.pt",
    )
    saver.attach(evaluator)
    ResumableCheckpoint(
        str(ckpt_dir), {"net": network, "best_model_saver": saver}, engine_attributes=(), n_saved=n_saved
    ).attach(trainer)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda engine: evaluator.run([0])
    )  # after the checkpoint, as in the configs
    trainer.run([0], max_epochs=max_epochs)


def test_resume_keeps_the_best_model_and_removes_old_checkpoints(tmp_path):
    """Kill/resume cycles: the best-model file is replaced only by a better score, and at most n_saved
    checkpoint files ever remain."""
    scores = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.8, 5: 0.7, 6: 0.95, 7: 0.1}
    best_epochs = []
    for stop in (3, 4, 5, 6, 7):  # each run "dies" after epoch `stop`; the next one resumes
        _scripted_training(tmp_path, stop, scores)
        best_epochs.append(torch.load(tmp_path / "best.pt", weights_only=True)["weight"].item())
        kept = sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt"))
        assert kept == [f"checkpoint_epoch={stop - 1}.pt", f"checkpoint_epoch={stop}.pt"], kept
    assert best_epochs == [2, 2, 2, 6, 6], best_epochs


def test_scale_factor_is_one_over_latent_std():
    from scripts.training.scale_factor import estimate_scale_factor

    class Scaler(torch.nn.Module):
        """Stand-in autoencoder whose latents are the images times 4."""

        def encode_stage_2_inputs(self, x):
            return 4.0 * x

    torch.manual_seed(0)
    images = [{"image": torch.randn(1, 8, 8)} for _ in range(20)]
    values = torch.stack([item["image"] for item in images]).double() * 4.0
    expected = 1.0 / values.std(unbiased=False).item()
    assert estimate_scale_factor(Scaler(), images, num_images=20, batch_size=6) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="scale#num_images"):
        estimate_scale_factor(Scaler(), images, num_images=0)


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_train_workflow_properties_are_complete(stage, dataset_dir, tmp_path):
    """MONAI's train-workflow check finds every model-zoo section (train#trainer, train#dataset, ...)."""
    from monai.bundle import ConfigWorkflow

    from helpers.bundle import BUNDLE_ROOT, stage_configs

    files = stage_configs(stage)
    overrides = {"bundle_root": str(BUNDLE_ROOT), "dataset_dir": str(dataset_dir), "train_dir": str(tmp_path)}
    if stage == "diffusion":
        text_encoder = tmp_path / "text_encoder"
        make_tiny_text_encoder().save_pretrained(text_encoder)
        torch.save(tiny_parser().get_parsed_content("autoencoder_def").state_dict(), tmp_path / "autoencoder.pt")
        overrides.update(text_encoder_source=str(text_encoder), autoencoder_path=str(tmp_path / "autoencoder.pt"))
    workflow = ConfigWorkflow(
        config_file=files,
        workflow_type="train",
        logging_file=False,
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    parser = workflow.parser
    assert parser["train"]["handlers"][1]["validator"].replace("::", "#") == "@validate#evaluator"
    assert parser.get_parsed_content("train#trainer").state.max_epochs == parser.get_parsed_content("max_epochs")


def _validated_training(ckpt_dir, max_epochs: int, losses: dict):
    """A trainer with MONAI's evaluator (lower val_loss is better, as in the configs), its best-model saver and a
    resumable checkpoint; ``losses[epoch]`` is that epoch's validation loss. Returns the evaluator."""
    from ignite.engine import Engine
    from ignite.metrics import Metric
    from monai.engines import SupervisedEvaluator
    from monai.handlers import ValidationHandler

    from scripts.training.checkpoints import AtomicCheckpointSaver, ResumableCheckpoint

    network = torch.nn.Linear(1, 1, bias=False)
    trainer = Engine(lambda engine, batch: None)

    class ScriptedLoss(Metric):
        def reset(self):
            pass

        def update(self, output):
            pass

        def compute(self):
            return losses[trainer.state.epoch]

    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=[{"image": torch.zeros(1, 1), "label": torch.zeros(1, 1)}],
        network=network,
        key_val_metric={"val_loss": ScriptedLoss(output_transform=lambda output: (None, None))},
        metric_cmp_fn=lambda current, best: current < best,
        decollate=False,
    )
    saver = AtomicCheckpointSaver(save_dir=str(ckpt_dir), save_dict={"net": network}, save_key_metric=True,
                                  key_metric_name="val_loss", key_metric_negative_sign=True,
                                  key_metric_filename="model.pt")  # fmt: skip
    saver.attach(evaluator)
    ResumableCheckpoint(
        str(ckpt_dir), {"net": network, "best_model_saver": saver}, engine_attributes=(), validator=evaluator
    ).attach(trainer)
    ValidationHandler(validator=evaluator, interval=1, epoch_level=True).attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    return evaluator


def test_resumed_validator_remembers_its_best_metric(tmp_path, caplog):
    """After a resume, a worse validation is neither announced as a new best nor reported as the best value:
    the log agrees with model.pt, which still holds the earlier epoch."""
    import logging

    losses = {1: 0.18, 2: 27.94, 3: 0.05}
    _validated_training(tmp_path, 1, losses)
    with caplog.at_level(logging.INFO):
        evaluator = _validated_training(tmp_path, 2, losses)
    assert "Got new best metric of val_loss: 27.94" not in caplog.text
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (0.18, 1)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        evaluator = _validated_training(tmp_path, 3, losses)  # and a better one after a second resume is
    assert "Got new best metric of val_loss: 0.05" in caplog.text
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (0.05, 3)
