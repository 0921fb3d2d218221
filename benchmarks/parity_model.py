"""A small latent diffusion model trained in minutes on synthetic radiographs, for sampler parity checks.

Quality parity between samplers (``sampling_benchmark.py --parity_model_dir``) needs a model whose
probability-flow ODE has learned structure; random weights do not. This trains the tiny architecture of
``configs/tiny/inference.json`` (autoencoder (8,16,16,16), UNet (32,64,64), 64 px images, 3×8×8
latents) on images and report sentences drawn by ``scripts.data.synthetic``, with the bundle's recipe
reduced to its core: L1 + KL autoencoder, then v-prediction MSE on the model's noise schedule with the
null prompt substituted 10 % of the time. It is a benchmark fixture, not the bundle's training (which is
``configs/train_*.json``).

    python -m benchmarks.parity_model --output_dir models/parity --minutes 8
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from scripts.common.configs import TOKENIZER_DIR, tiny_parser
from scripts.networks.tiny_text_encoder import make_tiny_text_encoder


def synthetic_set(num_images: int, size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Images (N, 1, size, size) in [0, 1] and one prompt per image (1-5 of its report sentences)."""
    from scripts.data.synthetic import draw_findings, draw_radiograph, write_report

    rng = np.random.default_rng(seed)
    images, prompts = [], []
    for _ in range(num_images):
        findings = draw_findings(rng)
        _, sentences = write_report(findings, "PA AND LAT", rng)
        images.append(draw_radiograph(findings, size, size, rng, view="PA").astype(np.float32) / 255.0)
        count = int(rng.integers(1, min(5, len(sentences)) + 1))
        prompts.append(" ".join(rng.choice(sentences, size=count, replace=False)))
    return torch.from_numpy(np.stack(images))[:, None], prompts


def train(output_dir: str, minutes: float = 8.0, num_images: int = 512, batch_size: int = 16, seed: int = 0) -> dict:
    """Train the autoencoder (1/4 of ``minutes``), then the UNet (3/4).

    Writes autoencoder.pt, model.pt, text_encoder/ and parity_model.json to ``output_dir``.
    """
    from monai.networks.schedulers import DDPMScheduler

    from scripts.networks.text import encode_ids, load_tokenizer, prompt_ids

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    parser = tiny_parser()
    torch.manual_seed(seed)
    autoencoder, unet = parser.get_parsed_content("autoencoder_def"), parser.get_parsed_content("network_def")
    images, prompts = synthetic_set(num_images, int(parser["image_size"]), seed)
    generator = torch.Generator().manual_seed(seed)

    optimiser = torch.optim.Adam(autoencoder.parameters(), lr=2e-3)
    deadline, ae_steps = time.time() + 60 * minutes / 4, 0
    while time.time() < deadline:
        batch = images[torch.randint(0, num_images, (batch_size,), generator=generator)]
        reconstruction, mu, sigma = autoencoder(batch)
        kl = 0.5 * (mu**2 + sigma**2 - torch.log(sigma**2 + 1e-8) - 1).mean()
        loss = (reconstruction - batch).abs().mean() + 1e-6 * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        ae_steps += 1
    autoencoder.eval()
    with torch.no_grad():
        latents = torch.cat([autoencoder.encode_stage_2_inputs(images[i : i + 64]) for i in range(0, num_images, 64)])
        ae_l1 = float((autoencoder.reconstruct(images[:64]) - images[:64]).abs().mean())
    scale_factor = float(1.0 / latents.std())
    latents = latents * scale_factor

    text_encoder, tokenizer = make_tiny_text_encoder(seed=seed), load_tokenizer(TOKENIZER_DIR)
    with torch.no_grad():
        contexts = encode_ids(text_encoder, prompt_ids(tokenizer, prompts + [""]))
    null_context = contexts[-1]
    scheduler = DDPMScheduler(**parser.get_parsed_content("noise_schedule"))
    optimiser = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    deadline, dm_steps, losses = time.time() + 60 * minutes * 3 / 4, 0, []
    while time.time() < deadline:
        index = torch.randint(0, num_images, (batch_size,), generator=generator)
        x0, context = latents[index], contexts[index].clone()
        context[torch.rand(batch_size, generator=generator) < 0.1] = null_context
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.num_train_timesteps, (batch_size,), generator=generator)
        prediction = unet(scheduler.add_noise(x0, noise, t), timesteps=t, context=context)
        loss = torch.nn.functional.mse_loss(prediction, scheduler.get_velocity(x0, noise, t))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        dm_steps += 1

    torch.save(autoencoder.state_dict(), out / "autoencoder.pt")
    torch.save(unet.eval().state_dict(), out / "model.pt")
    text_encoder.save_pretrained(out / "text_encoder")
    summary = {
        "scale_factor": scale_factor,
        "autoencoder_steps": ae_steps,
        "autoencoder_l1": ae_l1,
        "diffusion_steps": dm_steps,
        "batch_size": batch_size,
        "num_images": num_images,
        "final_diffusion_loss": float(np.mean(losses[-100:])),
        "minutes": minutes,
        "prompts": prompts[:8],
    }
    (out / "parity_model.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    import fire

    torch.set_num_threads(1)
    print(json.dumps(fire.Fire(train), indent=2))
