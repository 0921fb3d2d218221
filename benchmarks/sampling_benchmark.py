"""Side-by-side sampling benchmark: the reference recipe against this bundle's default, same weights and seeds.

Reference recipe (that of the released model's bundle): DDIM 50 steps, float32, the conditional and
unconditional UNet passes run separately at batch 1, both prompts text-encoded for every image, one image
at a time.
Ours: the sampler of ``configs/inference.json`` with its scheduler, step count and speed switches
(``batched_guidance``, ``autocast_dtype``, ``channels_last``, ``use_flash_attention``, ``compile``; any
config key can be overridden on the command line), the null-prompt embedding cached, ``batch_sizes``
images per call.

Per image = text encoding + steps × (one denoising step) + decoding, each the median of ``repeats`` timed
runs after one warm-up run. By default a step is timed over ``timed_steps`` steps and multiplied by the
step count, so the full-size model finishes on a CPU in minutes; ``--full_steps True`` times complete
runs instead. Peak memory is the CUDA allocator's peak on a GPU and the peak resident set size (sampled
every 5 ms) on a CPU.

With ``--parity_model_dir`` (a small trained model, ``python -m benchmarks.parity_model``) it also
reports how close each sampler gets to DDIM-200 from the same noise and text: latent RMSE, pixel RMSE
and a DenseNet-121 feature distance (torchxrayvision; random weights unless ``--xrv_weights``).

    python -m benchmarks.sampling_benchmark --timed_steps 2 --repeats 3 --output_json benchmark.json
    python -m benchmarks.sampling_benchmark --parity_model_dir models/parity --timing False
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import threading
import time
from pathlib import Path

import torch

from scripts.common.configs import INFERENCE_CONFIGS, TINY_OVERLAYS, load_parser
from scripts.networks.compilation import resolve_compile
from scripts.networks.precision import bf16_native, choose_precision, cpu_flags, cpu_model

PROMPT = "Big right-sided pleural effusion"
REFERENCE = {
    "scheduler_name": "ddim",
    "num_inference_steps": 50,
    "batched_guidance": False,
    "autocast_dtype": None,
    "guidance_interval": None,
    "cache_interval": 1,
    "channels_last": False,
    "use_flash_attention": False,
    "compile": False,
}
#: The lever rows' guidance interval (training timesteps) and feature-reuse interval.
LEVER_GUIDANCE_INTERVAL = (200, 800)
LEVER_CACHE_INTERVAL = 2
SWITCHES = (
    "scheduler_name",
    "num_inference_steps",
    "batched_guidance",
    "autocast_dtype",
    "guidance_interval",
    "cache_interval",
    "channels_last",
    "use_flash_attention",
    "compile",
)


class PeakMemory:
    """Peak memory (bytes) while the context is open: the CUDA allocator's peak, or the resident set's.

    On Linux the kernel's resident-set high-water mark (``VmHWM``) is reset on entry (``clear_refs`` 5) and
    read on exit, so nothing runs beside the timed code. Elsewhere a thread samples the resident set every
    ``interval_s``; on a 2-core machine a sampler waking every few milliseconds slows compiled kernels
    measurably (their threads wait for each other), so the interval is not short.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.05) -> None:
        self.device, self.interval_s, self.peak = device, interval_s, 0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def _high_water_mark() -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    @staticmethod
    def _reset_high_water_mark() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval_s)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not (self._reset_high_water_mark() and self._high_water_mark() is not None):
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is None:
            self.peak = self._high_water_mark()
        else:
            self._stop.set()
            self._thread.join()


def _timed(function, device: torch.device, repeats: int) -> tuple[float, object, float]:
    """Median seconds of ``repeats`` calls of ``function`` after one warm-up call, its last result, and the
    seconds of the warm-up call (which includes compiling, when the function compiles)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first_s = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result, first_s


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    flags = cpu_flags()
    bf16 = "AMX bf16" if bf16_native("cpu") else "AVX-512-BF16, no AMX" if "avx512_bf16" in flags else "no AMX bf16"
    return f"CPU {cpu_model()} ({bf16}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def capabilities(device: torch.device) -> dict:
    """What decides the default's speed here: the processor and its bf16 instructions (AMX tiles; AVX-512-BF16
    from ``/proc/cpuinfo``; the widest vector instructions torch dispatches to), threads, torch."""
    return {
        "device": device_name(device),
        "cpu_model": cpu_model(),
        "native_bf16": bf16_native(device),
        "amx_bf16": bf16_native("cpu"),
        "avx512_bf16": "avx512_bf16" in cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def precision_report(choice) -> dict:
    """How the default's precision was chosen (``scripts.networks.precision.PrecisionChoice``) as JSON."""
    return {"setting": choice.setting, "precision": choice.precision, "reason": choice.reason, "probe": choice.probe}


def random_text_encoder(width: int):
    """A ``CLIPTextModel`` with random weights shaped like SD-2.1's (width 1024: 23 layers, 16 heads) or small."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=23 if width == 1024 else 2,
        num_attention_heads=16 if width == 1024 else 2,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=512,
    )
    return CLIPTextModel(config).eval()


def build_networks(parser, device: torch.device, seed: int = 0):
    """Autoencoder, UNet and text encoder: the config's weights when present, else random weights.

    Timing does not depend on the weights, so a machine without the released files can still run it.
    """
    from scripts.networks.text import load_text_encoder
    from scripts.networks.weights import load_weights

    torch.manual_seed(seed)
    networks, sources = {}, {}
    for name, definition, path in (
        ("autoencoder", "autoencoder_def", "autoencoder_path"),
        ("network", "network_def", "diffusion_path"),
    ):
        if os.path.isfile(parser.get_parsed_content(path)):
            networks[name] = load_weights(
                parser.get_parsed_content(definition),
                parser.get_parsed_content(path),
                load_old=parser.get_parsed_content("load_old"),
                device=device,
            )
            sources[name] = parser.get_parsed_content(path)
        else:
            networks[name] = parser.get_parsed_content(definition).to(device)
            sources[name] = "random weights"
    try:
        networks["text_encoder"] = load_text_encoder(
            parser.get_parsed_content("text_encoder_source"),
            subfolder=parser.get_parsed_content("text_encoder_subfolder"),
            device=device,
        )
        sources["text_encoder"] = parser.get_parsed_content("text_encoder_source")
    except Exception:  # no local text encoder: an SD-2.1-shaped one with random weights times the same
        networks["text_encoder"] = random_text_encoder(int(parser["network_def"]["cross_attention_dim"])).to(device)
        sources["text_encoder"] = "random weights"
    for module in networks.values():
        module.eval().requires_grad_(False)
    return networks, sources


#: the recipe settings that are keys of the inference config's sampler (``use_flash_attention`` is the networks')
SAMPLER_SETTINGS = (
    "scheduler_name",
    "guidance_scale",
    "decode_dtype",
    "batched_guidance",
    "autocast_dtype",
    "guidance_interval",
    "cache_interval",
    "channels_last",
    "compile",
)


def make_sampler(parser, networks, settings: dict, num_inference_steps: int):
    """The config's ``sampler`` with a recipe's ``settings`` and ``num_inference_steps``, built through the config.

    The recipe's keys override the config's on a copy of it (the config itself is left as it is), and the
    networks built once by ``build_networks`` stand in for their definitions, so no recipe loads weights.
    """
    from monai.bundle import ConfigParser

    recipe = ConfigParser(copy.deepcopy(parser.get()))
    for name in ("autoencoder", "text_encoder"):
        recipe[name] = networks[name]
    for key in SAMPLER_SETTINGS:
        if key in settings:
            recipe[key] = settings[key]
    recipe["num_inference_steps"] = int(num_inference_steps)
    recipe["progress"] = False
    return recipe.get_parsed_content("sampler")


def time_recipe(
    parser,
    networks,
    unet,
    settings: dict,
    batch_size: int,
    timed_steps: int | None,
    repeats: int,
    device: torch.device,
    cache_null: bool,
    outputs: dict | None = None,
) -> dict:
    """Seconds per image of one recipe and its parts (medians), with the peak memory of its timed runs.

    ``outputs``, when given, receives the last run's clean ``latents`` (B, *latent_shape) and decoded ``images``
    (B, 1, H, W) in [0, 1] (seeds 0 .. B-1), for parity measurements.
    """
    from scripts.networks.text import encode_ids, prompt_ids
    from scripts.sampling.sampler import initial_latents

    steps = int(settings["num_inference_steps"])
    run_steps = steps if timed_steps is None else min(int(timed_steps), steps)
    sampler = make_sampler(parser, networks, settings, run_steps)
    tokenizer, null_prompt = sampler.tokenizer, sampler.null_prompt
    prompts, seeds = [PROMPT] * batch_size, list(range(batch_size))

    def encode(texts):
        return encode_ids(
            networks["text_encoder"], prompt_ids(tokenizer, texts, null_prompt=null_prompt).to(device)
        ).to(device)

    with torch.inference_mode(), PeakMemory(device) as memory:
        uncond_cached = encode([""] * batch_size)
        # The reference encodes the prompt and the null prompt for every image; ours caches the null one.
        text_s, context, _ = _timed(
            lambda: encode(prompts) if cache_null else (encode(prompts), encode([""] * batch_size))[0], device, repeats
        )
        start = initial_latents(seeds, sampler.latent_shape).to(device)
        loop_s, latents, first_loop_s = _timed(
            lambda: sampler.denoise(unet, start, context, uncond_cached, seeds=seeds), device, repeats
        )
        decode_s, images, _ = _timed(lambda: sampler.decode(latents), device, repeats)
    if outputs is not None:
        outputs.update(latents=latents, images=images)
    step_s = loop_s / run_steps
    total_s = text_s + steps * step_s + decode_s
    return {
        "settings": dict(settings),
        "batch_size": batch_size,
        "steps": steps,
        "timed_steps": run_steps,
        "text_s": text_s,
        "step_s": step_s,
        "decode_s": decode_s,
        "per_batch_s": total_s,
        "warmup_loop_s": first_loop_s,
        # the warm-up run's extra time: compiling (per process, once per batch shape) when compiled
        "compile_s": max(0.0, first_loop_s - loop_s) if settings.get("compile") else 0.0,
        "per_image_s": total_s / batch_size,
        "images_per_s": batch_size / total_s,
        "peak_memory_gib": memory.peak / 2**30,
    }


def unet_flops(unet, parser, device: torch.device, batch_size: int = 1) -> float:
    """FLOPs of one UNet forward at ``batch_size`` (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    shape = (batch_size, *parser["latent_shape"])
    context = torch.zeros(batch_size, 77, int(parser["network_def"]["cross_attention_dim"]), device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(
            torch.zeros(shape, device=device),
            timesteps=torch.zeros(batch_size, dtype=torch.long, device=device),
            context=context,
        )
    return float(counter.get_total_flops())


def sampler_spec(name: str) -> tuple[str, int, dict]:
    """``"scheduler-steps[@option...]"`` -> (scheduler name, steps, settings).

    Options: ``bf16`` (bfloat16 autocast), ``compile`` (``torch.compile`` of the UNet), ``cache<N>`` (feature
    reuse every N steps), ``interval<low>:<high>`` (guidance only at timesteps in [low, high]); e.g.
    ``"unipc_karras-20@bf16@cache2"``.
    """
    base, *options = name.split("@")
    scheduler_name, steps = base.rsplit("-", 1)
    settings: dict = {}
    for option in options:
        if option == "bf16":
            settings["autocast_dtype"] = "bfloat16"
        elif option == "compile":
            settings["compile"] = True
        elif option.startswith("cache"):
            settings["cache_interval"] = int(option[len("cache") :])
        elif option.startswith("interval"):
            low, high = option[len("interval") :].split(":")
            settings["guidance_interval"] = [int(low), int(high)]
        else:
            raise ValueError(
                f"Unknown sampler option {option!r} in {name!r}: use bf16, compile, cache<N> or interval<low>:<high>."
            )
    return scheduler_name, int(steps), settings


def _parity_recipe(entry) -> tuple[str, dict]:
    """(label, full sampler settings) of a parity entry: a ``sampler_spec`` string or a (label, settings) pair."""
    if isinstance(entry, str):
        scheduler_name, steps, options = sampler_spec(entry)
        settings = {**REFERENCE, "scheduler_name": scheduler_name, "num_inference_steps": steps}
        return entry, {**settings, "batched_guidance": True, **options}
    label, settings = entry
    return str(label), {**REFERENCE, **settings}


def parity_distances(result, reference) -> dict:
    """Latent RMSE, pixel RMSE and relative feature distance of one sampler's (latents, images, features) to a
    reference's, image by image from the same noise and text (means over the images)."""
    latents, images, features = result
    ref_latents, ref_images, ref_features = reference
    return {
        "latent_rmse": float(((latents - ref_latents) ** 2).mean().sqrt()),
        "pixel_rmse": float(((images - ref_images) ** 2).mean().sqrt()),
        "feature_distance": float((features - ref_features).norm(dim=1).mean() / ref_features.norm(dim=1).mean()),
    }


def parity(
    model_dir: str,
    config_file,
    overrides: dict,
    samplers,
    references,
    num_images: int,
    seed: int,
    xrv_weights: str | None,
    device: torch.device,
) -> dict:
    """Distances of each sampler to each reference on the parity model, from the same noise and text.

    ``samplers`` and ``references`` hold ``sampler_spec`` strings ("dpmpp_2m_karras-15", "unipc_karras-20@bf16")
    or (label, settings) pairs whose settings name the scheduler, the step count and the speed switches (the
    benchmark's recipes). The first reference is the published evaluation's sampler (DDIM-200); a long DDIM
    run (e.g. DDIM-1000) approximates the exact probability-flow ODE solution, which DDIM-50 and DDIM-200
    share a first-order bias towards.
    """
    from benchmarks.parity_model import synthetic_set
    from scripts.evaluation import xrv

    info = json.loads((Path(model_dir) / "parity_model.json").read_text())
    files = [*(list(config_file) if isinstance(config_file, (list, tuple)) else [config_file]), *TINY_OVERLAYS]
    parser = load_parser(
        files,
        {
            **overrides,
            "model_dir": str(model_dir),
            "load_old": False,
            "text_encoder_source": str(Path(model_dir) / "text_encoder"),
            "scale_factor": info["scale_factor"],
        },
    )
    networks, _ = build_networks(parser, device)
    _, prompts = synthetic_set(num_images, int(parser["image_size"]), seed=seed + 1000)  # prompts not used in training
    seeds = [seed + i for i in range(num_images)]
    densenet = xrv.load_densenet(xrv_weights, device=device)
    results = parity_samples(parser, networks, [*references, *samplers], prompts, seeds, densenet, device)
    reference_labels = [_parity_recipe(entry)[0] for entry in references]
    sampler_labels = [_parity_recipe(entry)[0] for entry in samplers]
    tables = {
        reference: {
            name: parity_distances(results[name], results[reference])
            for name in [r for r in reference_labels if r != reference] + sampler_labels
        }
        for reference in reference_labels
    }
    fewest = {reference: fewest_steps_at_parity(table, samplers) for reference, table in tables.items()}
    return {
        "model": str(model_dir),
        "model_info": {k: v for k, v in info.items() if k != "prompts"},
        "num_images": num_images,
        "feature_network": densenet.weights_source,
        "distances": tables,
        "fewest_steps_as_close_as_ddim_50": fewest,
    }


def parity_samples(parser, networks, entries, prompts, seeds, densenet, device) -> dict:
    """Latents, images and DenseNet features of each entry's sampler (label -> tuple), from one noise and text."""
    from scripts.evaluation import xrv
    from scripts.sampling.sampler import initial_latents

    results = {}
    with torch.inference_mode():
        for entry in entries:
            label, settings = _parity_recipe(entry)
            if label in results:
                continue
            sampler = make_sampler(parser, networks, settings, int(settings["num_inference_steps"]))
            context = sampler.encode_prompts(prompts).to(device)
            uncond = sampler.encode_prompts([""] * len(prompts)).to(device)
            start = initial_latents(seeds, sampler.latent_shape).to(device)
            latents = sampler.denoise(networks["network"], start, context, uncond, seeds=seeds)
            images = sampler.decode(latents)
            results[label] = (latents.float(), images, xrv.image_features(densenet, images))
    return results


def fewest_steps_at_parity(table: dict, samplers) -> dict:
    """Per scheduler and set of options ("unipc_karras", "unipc_karras@bf16", ...), the fewest steps among the
    ``sampler_spec`` entries of ``samplers`` that are no further from the reference than DDIM-50 is."""
    baseline, fewest = table.get("ddim-50"), {}
    for name in [entry for entry in samplers if isinstance(entry, str)]:
        scheduler_name, steps, _ = sampler_spec(name)
        key = "@".join([scheduler_name, *name.split("@")[1:]])
        if baseline and scheduler_name != "ddim" and all(table[name][k] <= baseline[k] for k in baseline):
            previous = fewest.get(key)
            fewest[key] = int(steps) if previous is None else min(previous, int(steps))
    return fewest


def recipe_label(settings: dict) -> str:
    """What a recipe runs, e.g. "unipc_karras-20 batched bf16 ch-last compile"."""
    dtype = settings["autocast_dtype"]
    return (
        f"{settings['scheduler_name']}-{settings['num_inference_steps']} "
        f"{'batched' if settings['batched_guidance'] else 'separate'} "
        f"{'fp32' if dtype in (None, 'float32') else {'bfloat16': 'bf16', 'float16': 'fp16'}.get(dtype, dtype)}"
        f"{' ch-last' if settings['channels_last'] else ''}{' sdpa' if settings['use_flash_attention'] else ''}"
        f"{' compile' if settings['compile'] else ''}"
        f"{' cache' + str(settings['cache_interval']) if settings.get('cache_interval', 1) > 1 else ''}"
        f"{' interval' + str(list(settings['guidance_interval'])) if settings.get('guidance_interval') else ''}"
    )


def lever_recipes(default: dict) -> list[tuple[str, dict]]:
    """Each speed lever alone: (lever, settings) on the eager base (the default with compile off).

    The base is the default's scheduler, steps, batching and precision; each row changes one thing: compile
    on or off (whichever the default is not), the other precision, guidance only at t in
    ``LEVER_GUIDANCE_INTERVAL``, deep features reused every ``LEVER_CACHE_INTERVAL`` steps.
    """
    base = {**default, "compile": False}
    other_precision = "float32" if base["autocast_dtype"] == "bfloat16" else "bfloat16"
    rows = [
        ("eager (compile off)" if default["compile"] else "compile", {**base, "compile": not default["compile"]}),
        (f"precision {other_precision}", {**base, "autocast_dtype": other_precision}),
        ("guidance interval", {**base, "guidance_interval": list(LEVER_GUIDANCE_INTERVAL)}),
        ("feature reuse", {**base, "cache_interval": LEVER_CACHE_INTERVAL}),
    ]
    return rows


def print_tables(report: dict) -> None:
    print(f"device: {report['device']}")
    capability = report["capabilities"]
    print(
        f"CPU: {capability['cpu_model']}, AMX bf16 {'yes' if capability['amx_bf16'] else 'no'}, "
        f"AVX-512-BF16 {'yes' if capability['avx512_bf16'] else 'no'}, torch CPU capability "
        f"{capability['cpu_capability']}"
    )
    choice = report["precision"]
    print(f"precision: autocast_dtype {choice['setting']} -> {choice['precision']} ({choice['reason']})")
    if "timing" in report:
        t = report["timing"]
        print(
            f"weights: {t['weights']}; per image = text + steps x step + decode (median of {t['repeats']}, "
            f"step timed over {t['timed_steps'] or 'all'} steps)"
        )
        distances = report.get("parity", {}).get("distances", {})
        reference_label = next(iter(distances), None)
        columns = (("batch", 6), ("text s", 8), ("step s", 8), ("decode s", 9), ("s/image", 9), ("img/s", 8))
        columns += (("peak GiB", 9), ("speed-up", 9), ("compile s", 10))
        if reference_label:
            columns += (("latent", 8), ("pixel", 8), ("feature", 8), ("parity", 7))
        print(f"{'recipe':<66}" + "".join(f"{name:>{width}}" for name, width in columns))
        for row in t["rows"]:
            label = f"{row['lever']}: {recipe_label(row['settings'])}"[:65]
            line = (
                f"{label:<66}{row['batch_size']:>6}{row['text_s']:>8.2f}{row['step_s']:>8.2f}{row['decode_s']:>9.2f}"
                f"{row['per_image_s']:>9.2f}{row['images_per_s']:>8.3f}{row['peak_memory_gib']:>9.2f}"
                f"{row['speed_up']:>8.1f}x{row['compile_s']:>10.1f}"
            )
            if reference_label:
                d = row.get("parity")
                if d:
                    line += f"{d['latent_rmse']:>8.4f}{d['pixel_rmse']:>8.4f}{d['feature_distance']:>8.4f}"
                    line += f"{'yes' if row['at_parity'] else 'no':>7}"
            print(line)
        summary = t.get("default")
        if summary:
            print(
                f"default for a {summary['run_images']}-image run: {summary['per_image_s']:.2f} s/image "
                f"(compile {summary['compile_s']:.0f} s spread over the run), "
                f"{summary['speed_up']:.1f}x the reference"
                + (
                    f"; compiling pays after {summary['compile_pays_after_images']:.0f} images"
                    if summary.get("compile_pays_after_images")
                    else ""
                )
            )
        if t.get("bound_images_per_s"):
            print(
                f"compute bound at {t['peak_tflops']} TFLOP/s: {t['bound_images_per_s']:.2f} images/s "
                f"({t['flops_per_image'] / 1e12:.2f} TFLOP/image)"
            )
    if "parity" in report:
        p = report["parity"]
        print(
            f"parity from the same noise and text ({p['num_images']} images, {p['model']}; features: "
            f"{p['feature_network']})"
        )
        for reference, table in p["distances"].items():
            print(f"distance to {reference:<52}{'latent RMSE':>13}{'pixel RMSE':>12}{'feature dist':>14}")
            for name, row in table.items():
                print(
                    f"  {name:<62}{row['latent_rmse']:>13.4f}{row['pixel_rmse']:>12.4f}{row['feature_distance']:>14.4f}"
                )
            print(
                f"  fewest steps as close to {reference} as DDIM-50 on all three: "
                f"{p['fewest_steps_as_close_as_ddim_50'][reference] or 'none of those tried'}"
            )


def main(
    config_file=INFERENCE_CONFIGS,
    device: str | None = None,
    batch_sizes=(1,),
    timed_steps: int | None = 2,
    full_steps: bool = False,
    repeats: int = 3,
    timing: bool = True,
    levers: bool = True,
    run_images: int = 100,
    peak_tflops: float | None = None,
    parity_model_dir: str | None = None,
    parity_samplers=(),
    parity_references=("ddim-200",),
    parity_images: int = 16,
    xrv_weights: str | None = None,
    seed: int = 0,
    output_json: str = "sampling_benchmark.json",
    **overrides,
) -> dict:
    """Time the reference recipe, the default and each speed lever alone on the same weights and seeds, and
    (with ``parity_model_dir``) measure how close each one's images are to DDIM-200's.

    Args:
        config_file: inference config (or list of configs merged left to right); ``**overrides`` set its keys,
            e.g. ``--num_inference_steps 10 --channels_last True`` for the default.
        device: "cpu", "cuda", "cuda:1"; default: the config's device.
        batch_sizes: images per sampler call for the default (the reference and the levers: one at a time).
        timed_steps: denoising steps actually timed per run (per-step time × steps); ignored with ``full_steps``.
        repeats: timed runs per part (median reported), after one warm-up run.
        timing: run the timing part.
        levers: also time each speed lever alone (``lever_recipes``).
        run_images: the size of the run the default is resolved for (``compile: auto`` compiles for runs of
            ``compile_min_images`` or more) and over which the compile time is spread.
        peak_tflops: the device's peak dense TFLOP/s in the dtype used, to print the compute bound in images/s.
        parity_model_dir: folder written by ``benchmarks.parity_model``; enables the parity part, for DDIM-50,
            every timed recipe and ``parity_samplers``.
        parity_samplers: more "scheduler_name-steps[@option...]" entries to compare (options: ``sampler_spec``).
        parity_references: DDIM-200 (the published evaluation's sampler; the "parity" column compares with it),
            and optionally a long DDIM run approximating the exact ODE solution ("ddim-1000").
        parity_images: images (prompts × seeds) in the parity comparison.
        xrv_weights: torchxrayvision DenseNet weights file for the feature distance (random weights without).
        output_json: where the report goes.
    """
    parser = load_parser(config_file, overrides)
    device = torch.device(device) if device else parser.get_parsed_content("device")
    report = {"device": device_name(device), "capabilities": capabilities(device), "torch": torch.__version__}
    report["command_overrides"] = overrides
    default, report["precision"] = resolve_default(parser, device, run_images)
    recipes = [("default", default, list(batch_sizes) if isinstance(batch_sizes, (list, tuple)) else [batch_sizes])]
    if levers:
        recipes += [(lever, settings, [1]) for lever, settings in lever_recipes(default)]
    if timing:
        networks = build_networks(parser, device, seed)
        report["timing"] = timing_part(
            parser, config_file, overrides, networks, recipes, device, None if full_steps else timed_steps, repeats
        )
        report["timing"]["default"] = default_summary(report["timing"]["rows"], run_images)
        if peak_tflops:
            report["timing"].update(compute_bound(parser, networks[0]["network"], default, device, peak_tflops))
    if parity_model_dir:
        recipe_entries = [(recipe_label(settings), settings) for _, settings, _ in recipes]
        report["parity"] = parity(
            parity_model_dir,
            config_file,
            overrides,
            ["ddim-50", *recipe_entries, *list(parity_samplers)],
            list(parity_references),
            parity_images,
            seed,
            xrv_weights,
            device,
        )
        attach_parity(report)
    Path(output_json).write_text(json.dumps(report, indent=2))
    print_tables(report)
    print(f"report written to {output_json}")
    return report


def resolve_default(parser, device: torch.device, run_images: int) -> tuple[dict, dict]:
    """The config's recipe (``SWITCHES``) resolved as a sampling run of ``run_images`` images on ``device``
    resolves it ("auto" precision, the CPU probe included, and "auto" compile), and the precision's report."""
    default = {key: parser[key] for key in SWITCHES}
    precision_choice = choose_precision(default["autocast_dtype"], device)
    default["autocast_dtype"] = precision_choice.precision
    min_images = parser.get_parsed_content("compile_min_images")
    default["compile"] = resolve_compile(default["compile"], device, default["autocast_dtype"], run_images, min_images)
    return default, precision_report(precision_choice)


def timing_part(parser, config_file, overrides: dict, networks, recipes, device, steps, repeats: int) -> dict:
    """Rows of the reference (one image at a time) and of each recipe at each of its batch sizes, on the
    ``networks`` and their sources (``build_networks``; the reference's UNet without flash attention when the
    config's has it)."""
    networks, sources = networks
    reference_unet = networks["network"]
    if parser["use_flash_attention"] != REFERENCE["use_flash_attention"]:
        reference_parser = load_parser(config_file, {**overrides, "use_flash_attention": False})
        reference_unet = reference_parser.get_parsed_content("network_def").to(device).eval()
        reference_unet.load_state_dict(networks["network"].state_dict())
    reference = time_recipe(parser, networks, reference_unet, REFERENCE, 1, steps, repeats, device, cache_null=False)
    rows = [{"recipe": "reference", "lever": "reference", **reference}]
    for lever, settings, sizes in recipes:
        for batch_size in sizes:
            row = time_recipe(
                parser, networks, networks["network"], settings, int(batch_size), steps, repeats, device, True
            )
            rows.append({"recipe": "ours", "lever": lever, **row})
    for row in rows:
        row["speed_up"] = rows[0]["per_image_s"] / row["per_image_s"]
    return {"weights": sources, "repeats": repeats, "timed_steps": steps, "rows": rows}


def default_summary(rows, run_images: int) -> dict:
    """The default over a run of ``run_images`` images (its compile time spread over them), its speed-up, and
    when compiling pays (against the first row that differs from it in ``compile``)."""
    reference, ours = rows[0], rows[1]
    summary = {
        "run_images": int(run_images),
        "compile_s": ours["compile_s"],
        "per_image_s": ours["per_image_s"] + ours["compile_s"] / int(run_images),
    }
    summary["speed_up"] = reference["per_image_s"] / summary["per_image_s"]
    eager = next((r for r in rows[2:] if r["settings"]["compile"] != ours["settings"]["compile"]), None)
    if eager is not None:
        compiled, uncompiled = (ours, eager) if ours["settings"]["compile"] else (eager, ours)
        gain = uncompiled["per_image_s"] - compiled["per_image_s"]
        summary["compile_gain_s_per_image"] = gain
        summary["compile_pays_after_images"] = compiled["compile_s"] / gain if gain > 0 else None
    return summary


def compute_bound(parser, unet, default: dict, device: torch.device, peak_tflops: float) -> dict:
    """The images/s a device of ``peak_tflops`` dense TFLOP/s could reach on the default's UNet passes."""
    per_image = int(default["num_inference_steps"]) * unet_flops(unet, parser, device, batch_size=2)
    return {
        "peak_tflops": peak_tflops,
        "flops_per_image": per_image,
        "bound_images_per_s": peak_tflops * 1e12 / per_image,
    }


def attach_parity(report: dict) -> None:
    """Each timed row's distances to the first reference, and whether it is at parity (no further than DDIM-50)."""
    table = next(iter(report["parity"]["distances"].values()))
    yardstick = table["ddim-50"]
    for row in report.get("timing", {}).get("rows", []):
        label = "ddim-50" if row["recipe"] == "reference" else recipe_label(row["settings"])
        row["parity"] = table.get(label)
        row["at_parity"] = bool(row["parity"]) and all(row["parity"][k] <= yardstick[k] for k in yardstick)


if __name__ == "__main__":
    import sys

    import fire

    # main's **overrides would take --help for a config key and run the whole benchmark: ask fire for help
    arguments = ["--", "--help"] if {"--help", "-h"} & set(sys.argv[1:]) else sys.argv[1:]
    fire.Fire(main, command=arguments, serialize=lambda report: None)
