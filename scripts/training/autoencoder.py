"""First stage: the AutoencoderKL trained against a PatchGAN discriminator.

``AutoencoderKLTrainer`` is a MONAI ``Trainer`` (an ignite engine, so checkpoint, stats, TensorBoard,
MLflow and validation handlers attach as usual) whose iteration does one generator and one
discriminator step:

    generator loss = L1(x̂, x) + w_p·LPIPS(x̂, x) + w_kl·KL(q(z|x) ‖ N(0, I)) + w_adv·LSGAN_G(D(x̂))
    discriminator loss = w_adv · ½ (LSGAN_D(D(x), real) + LSGAN_D(D(x̂), fake))

with the adversarial terms (and discriminator updates) only from epoch ``adversarial_start_epoch`` on,
separate optimisers, gradient-norm clipping and, on CUDA, automatic mixed precision.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from monai.engines import Trainer
from monai.inferers import Inferer, SimpleInferer
from monai.losses import PatchAdversarialLoss
from monai.utils import CommonKeys as Keys

#: Loss terms of ``AutoencoderKLTrainer`` output, logged per iteration.
LOSS_TERMS = ("loss", "l1_loss", "perceptual_loss", "kl_loss", "generator_adv_loss", "discriminator_loss")

#: torchvision's SqueezeNet 1.1 ImageNet weights: the LPIPS backbone (see large_files.yml).
SQUEEZENET_URL = "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma²) ‖ N(0, 1)) summed over the latent (B, C, h, w) and averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()


class LPIPSLoss(torch.nn.Module):
    """LPIPS distance with the SqueezeNet backbone, for images (B, 1, H, W) in [0, 1]; returns the batch mean.

    The lpips package ships its linear calibration layers but downloads the torchvision backbone; here
    the backbone is read from a local file (``backbone_path``, fetched like every other large file), or
    left random (``random_backbone=True``: for tests only, the loss is then meaningless). Inputs are
    mapped from [0, 1] to [-1, 1], the range LPIPS expects (``normalize=True``).

    Raises:
        FileNotFoundError: ``backbone_path`` does not exist, naming the file and where it comes from.
    """

    def __init__(self, backbone_path: str | None, random_backbone: bool = False, normalize: bool = True) -> None:
        super().__init__()
        import lpips

        self.lpips = lpips.LPIPS(net="squeeze", pnet_rand=True, verbose=False)
        if not random_backbone:
            if not backbone_path or not os.path.isfile(backbone_path):
                raise FileNotFoundError(
                    f"LPIPS backbone weights '{backbone_path}' not found: run "
                    f"`python -m scripts.distribution.download` or save {SQUEEZENET_URL} there (or set "
                    "--perceptual_backbone_path)."
                )
            self.load_backbone(torch.load(backbone_path, map_location="cpu", weights_only=True))
        self.normalize = bool(normalize)
        self.requires_grad_(False)
        self.eval()

    def load_backbone(self, squeezenet_state: dict) -> None:
        """Copy torchvision ``squeezenet1_1`` weights (keys ``features.<i>.*``) into the LPIPS slices."""
        from torchvision.models import squeezenet1_1

        reference = squeezenet1_1(weights=None)
        reference.load_state_dict(squeezenet_state)
        net = self.lpips.net
        for slice_index in range(1, net.N_slices + 1):
            for name, module in getattr(net, f"slice{slice_index}").named_children():
                module.load_state_dict(reference.features[int(name)].state_dict())

    def train(self, mode: bool = True):
        # the loss network stays in eval mode (dropout off) whatever its parent does
        return super().train(False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lpips(prediction.float(), target.float(), normalize=self.normalize).mean()


def prepare_reconstruction_batch(batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
    """``prepare_batch`` for reconstruction: the target is the input image (B, 1, H, W)."""
    images = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    return images, images


class ReconstructionInferer(Inferer):
    """Deterministic reconstruction ``decode(mu(x))`` (B, 1, H, W) of an ``AutoencoderKL`` for validation."""

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        return _unwrap(network).reconstruct(inputs)


class AutoencoderKLTrainer(Trainer):
    """Adversarial training of an ``AutoencoderKL`` with L1, perceptual and KL losses.

    Batches are dicts with ``"image"`` (B, 1, H, W) in [0, 1]. ``engine.state.output`` holds
    ``image``, ``pred`` (the reconstruction) and the floats of ``LOSS_TERMS``.

    Args:
        device: where the networks run.
        max_epochs: epochs to train.
        train_data_loader: training batches.
        autoencoder: ``AutoencoderKL`` (possibly wrapped in DistributedDataParallel).
        discriminator: ``PatchDiscriminator`` (possibly DDP-wrapped); its last output is the patch logits.
        g_optimizer / d_optimizer: optimisers of the autoencoder / discriminator.
        perceptual_loss: callable ``(reconstruction, image) -> scalar`` (``LPIPSLoss``).
        perceptual_weight / kl_weight / adversarial_weight: loss weights.
        adversarial_start_epoch: first (1-based) epoch with the adversarial terms and discriminator updates.
        max_grad_norm: clip both networks' gradient norms to this (None or <= 0: no clipping).
        amp: mixed precision on CUDA (ignored on CPU).
        train_handlers / epoch_length / non_blocking / prepare_batch / amp_kwargs: as for MONAI trainers.
        inferer: runs the autoencoder forward pass, ``inferer(images, autoencoder)`` -> (reconstruction,
            z_mu, z_sigma); MONAI's ``SimpleInferer`` by default.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        autoencoder: torch.nn.Module,
        discriminator: torch.nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        perceptual_loss: Callable,
        perceptual_weight: float = 0.002,
        kl_weight: float = 1e-8,
        adversarial_weight: float = 0.005,
        adversarial_start_epoch: int = 5,
        max_grad_norm: float | None = 1.0,
        amp: bool = False,
        train_handlers: Sequence | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = prepare_reconstruction_batch,
        amp_kwargs: dict | None = None,
        inferer: Inferer | None = None,
    ) -> None:
        device = torch.device(device)
        amp = bool(amp) and device.type == "cuda"
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            handlers=train_handlers,
            amp=amp,
            decollate=False,
            amp_kwargs=amp_kwargs,
        )
        self.autoencoder = autoencoder
        self.discriminator = discriminator
        self.network = autoencoder  # what MONAI handlers look for
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.perceptual_loss = perceptual_loss
        self.adversarial_loss = PatchAdversarialLoss(criterion="least_squares")
        self.perceptual_weight = float(perceptual_weight)
        self.kl_weight = float(kl_weight)
        self.adversarial_weight = float(adversarial_weight)
        self.adversarial_start_epoch = int(adversarial_start_epoch)
        self.max_grad_norm = float(max_grad_norm) if max_grad_norm else 0.0
        self.g_scaler = torch.amp.GradScaler("cuda", enabled=amp)
        self.d_scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def run(self) -> None:  # type: ignore[override]
        # the grad scalers are made in __init__ (so a checkpoint can restore them), not per run
        super(Trainer, self).run()

    def _autocast(self):
        return torch.autocast("cuda", **self.amp_kwargs) if self.amp else torch.autocast("cpu", enabled=False)

    def _step(self, loss: torch.Tensor, network, optimizer, scaler) -> None:
        scaler.scale(loss).backward()
        if self.max_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), self.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()

    def _iteration(self, engine: AutoencoderKLTrainer, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[0]
        adversarial = engine.state.epoch >= engine.adversarial_start_epoch
        # the generator step needs gradients through D, not D's own; the unwrapped D keeps DDP out of it
        discriminator_g = _unwrap(engine.discriminator)

        engine.autoencoder.train()
        engine.g_optimizer.zero_grad(set_to_none=True)
        with engine._autocast():
            reconstruction, z_mu, z_sigma = engine.inferer(images, engine.autoencoder)
            l1 = torch.nn.functional.l1_loss(reconstruction.float(), images.float())
            perceptual = engine.perceptual_loss(reconstruction.float(), images.float())
            kl = kl_loss(z_mu.float(), z_sigma.float())
            loss = l1 + engine.perceptual_weight * perceptual + engine.kl_weight * kl
            generator_adv = torch.zeros((), device=images.device)
            if adversarial:
                discriminator_g.requires_grad_(False)
                logits_fake = discriminator_g(reconstruction.contiguous().float())[-1]
                discriminator_g.requires_grad_(True)
                generator_adv = engine.adversarial_loss(logits_fake, target_is_real=True, for_discriminator=False)
                loss = loss + engine.adversarial_weight * generator_adv
        engine._step(loss, engine.autoencoder, engine.g_optimizer, engine.g_scaler)

        discriminator_loss = torch.zeros((), device=images.device)
        if adversarial:
            engine.discriminator.train()
            engine.d_optimizer.zero_grad(set_to_none=True)
            with engine._autocast():
                # one forward over real and fake together: DDP allows one forward per backward
                logits = engine.discriminator(torch.cat([images, reconstruction.detach()]).contiguous().float())[-1]
                logits_real, logits_fake = logits.float().chunk(2)
                discriminator_loss = 0.5 * (
                    engine.adversarial_loss(logits_real, target_is_real=True, for_discriminator=True)
                    + engine.adversarial_loss(logits_fake, target_is_real=False, for_discriminator=True)
                )
            engine._step(
                engine.adversarial_weight * discriminator_loss,
                engine.discriminator,
                engine.d_optimizer,
                engine.d_scaler,
            )

        engine.state.output = {
            Keys.IMAGE: images,
            Keys.PRED: reconstruction.detach(),
            "loss": loss.item(),
            "l1_loss": l1.item(),
            "perceptual_loss": perceptual.item(),
            "kl_loss": kl.item(),
            "generator_adv_loss": generator_adv.item(),
            "discriminator_loss": discriminator_loss.item(),
        }
        return engine.state.output


def loss_terms(output: dict) -> dict[str, float]:
    """The ``LOSS_TERMS`` of an ``AutoencoderKLTrainer`` output (for StatsHandler / TensorBoard / MLflow)."""
    return {name: float(output[name]) for name in LOSS_TERMS}
