"""Speed levers of GPU sampling, each measured alone and together, each with its parity against float32.

A lever changes how the default recipe runs, never what it computes: precision of weights or decoder, the
attention kernel, cuDNN's convolution algorithms, ``torch.compile`` modes (CUDA graphs, autotuning), float8
matrix multiplications, the batch size. ``LEVERS`` is the table; ``recipe_of`` merges levers into one recipe,
``prepare_unet`` / ``prepare_autoencoder`` / ``running`` apply a recipe, ``measure`` times it with the sampling
benchmark's ``time_recipe`` and measures its parity. The same code runs on a CPU and on a GPU: a lever that needs
what the machine lacks (``Machine``) is skipped with the reason, never faked.

Parity: every row's first ``parity_images`` images (seeds 0, 1, ...) are compared with the same sampler in float32
(eager, no autocast, TF32 off) from the same noise and text: latent RMSE, pixel RMSE and a feature distance
(``parity_distances``, as the CPU benchmark), and the speed-switch measures of the CPU tests (latent mean |Δ| over
mean |latent|, image mean |Δ|, image 99th percentile |Δ|). The yardstick is the default recipe itself (bfloat16
autocast, eager), whose rounding is at parity on the parity model: a row is at parity when its latent RMSE, pixel
RMSE and feature distance to float32 are each at most ``PARITY_MARGIN`` times the default's. The margin comes from
the parity model (docs/performance.md, the AMX table; independent errors add in quadrature): the float32 default is
0.0087 latent RMSE from DDIM-200 and DDIM-50 0.0129, room for √(0.0129² − 0.0087²) ≈ 0.0095 of rounding; bf16 uses
√(0.0096² − 0.0087²) ≈ 0.0041 of it, so up to ~2.3× bf16's rounding would stay at parity there, and 1.5× keeps a
margin. (Absolute tolerances of the CPU switch tests do not carry over: on full-size random weights, which amplify
rounding far more than trained ones, bf16 itself exceeds their 99th-percentile bound.) The best combination is
chosen among rows at parity only.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields

import torch

#: The distances to float32 a row is held to, as multiples of the default recipe's own (module docstring).
PARITY_KEYS = ("latent_rmse", "pixel_rmse", "feature_distance")
PARITY_MARGIN = 1.5
#: A yardstick distance below this counts as this (a float32 default is its own reference: distance 0).
PARITY_FLOOR = 1e-6
PARITY_CRITERION = (
    f"latent RMSE, pixel RMSE and feature distance to float32 (same noise and text) each at most {PARITY_MARGIN}x "
    "those of the default recipe (bfloat16 autocast, eager), the rounding the default already has"
)
#: A lever joins the combination only when it is at least this much faster than what it is compared with.
MIN_GAIN = 1.01
#: The images/s fraction of the bf16 bound the best recipe is measured against.
TARGET_BOUND_FRACTION = 0.5


@dataclass(frozen=True)
class Lever:
    """One way of running the default recipe faster (a row of ``LEVERS``); a merged recipe has the same fields.

    Attributes:
        name: the row's name in the JSON.
        what: what it changes, one line.
        needs: what the machine must have: "cuda", "fp8" (compute capability >= 8.9), "torchao", "triton".
        group: levers of one group exclude each other ("compile", "attention").
        batch_factor: images per sampler call, times the base batch.
        compile_mode: ``torch.compile`` mode of the UNet (None: eager).
        attention: ``torch.nn.attention.SDPBackend`` member the attention is restricted to (None: PyTorch chooses).
        bf16_weights: the UNet's weights cast to bfloat16 (autocast then casts nothing).
        fp8: torchao float8 matrix multiplications in the transformer blocks' Linear layers (``fp8_layer_names``).
        decode_bf16: the decoder under bfloat16 autocast (the default decodes in float32).
        cudnn_benchmark: cuDNN times its convolution algorithms for each shape and keeps the fastest.
    """

    name: str
    what: str
    needs: tuple[str, ...] = ()
    group: str | None = None
    batch_factor: int = 1
    compile_mode: str | None = None
    attention: str | None = None
    bf16_weights: bool = False
    fp8: bool = False
    decode_bf16: bool = False
    cudnn_benchmark: bool = False


LEVERS = (
    Lever("bf16_weights", "UNet weights cast to bfloat16 (autocast casts no weights)", bf16_weights=True),
    Lever(
        "decode_bf16",
        "decoder under bfloat16 autocast, channels-last (the default decodes in float32)",
        decode_bf16=True,
    ),
    Lever("double_batch", "twice the images per sampler call", batch_factor=2),
    Lever("cudnn_benchmark", "cuDNN autotunes convolution algorithms per shape", needs=("cuda",), cudnn_benchmark=True),
    Lever(
        "sdpa_flash",
        "attention restricted to FlashAttention",
        needs=("cuda",),
        group="attention",
        attention="FLASH_ATTENTION",
    ),
    Lever(
        "sdpa_cudnn",
        "attention restricted to cuDNN's fused attention",
        needs=("cuda",),
        group="attention",
        attention="CUDNN_ATTENTION",
    ),
    Lever(
        "sdpa_efficient",
        "attention restricted to the memory-efficient kernel",
        needs=("cuda",),
        group="attention",
        attention="EFFICIENT_ATTENTION",
    ),
    Lever("compile", "torch.compile of the UNet, inductor's default mode", group="compile", compile_mode="default"),
    Lever(
        "cuda_graphs",
        "torch.compile mode reduce-overhead: inductor kernels replayed as CUDA graphs",
        needs=("cuda",),
        group="compile",
        compile_mode="reduce-overhead",
    ),
    Lever(
        "fp8",
        "torchao float8 (e4m3, dynamic per-row scales) in the transformer blocks' Linear layers, bf16 "
        "weights, compiled (inductor default)",
        needs=("cuda", "fp8", "torchao"),
        compile_mode="default",
        bf16_weights=True,
        fp8=True,
    ),
    Lever(
        "max_autotune",
        "torch.compile mode max-autotune-no-cudagraphs: Triton autotuning of matrix multiplications and convolutions",
        needs=("cuda", "triton"),
        group="compile",
        compile_mode="max-autotune-no-cudagraphs",
    ),
)
LEVER_BY_NAME = {lever.name: lever for lever in LEVERS}
NO_LEVER = Lever("default", "the default recipe, eager")


@dataclass(frozen=True)
class Machine:
    """What decides which levers can run: device type, CUDA compute capability, optional packages."""

    device_type: str
    compute_capability: tuple[int, int] | None = None
    torchao: bool = False
    triton: bool = False

    @classmethod
    def of(cls, device: torch.device) -> Machine:
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        has = importlib.util.find_spec
        return cls(device.type, capability, has("torchao") is not None, has("triton") is not None)


def unavailable(lever: Lever, machine: Machine) -> str | None:
    """Why ``lever`` cannot run on ``machine`` ("skipped: ..." for a missing device, "unavailable: ..." for a
    missing package), or None when it can."""
    if "cuda" in lever.needs and machine.device_type != "cuda":
        return "skipped: needs CUDA"
    if "fp8" in lever.needs and (machine.compute_capability or (0, 0)) < (8, 9):
        return f"skipped: float8 needs compute capability >= 8.9, this GPU has {machine.compute_capability}"
    if "torchao" in lever.needs and not machine.torchao:
        return "unavailable: torchao is not installed (carry its wheel: docs/performance.md, GPU)"
    if "triton" in lever.needs and not machine.triton:
        return "unavailable: triton is not installed (inductor's GPU kernels need it)"
    return None


def recipe_of(names: Iterable[str]) -> Lever:
    """The levers named, merged into one recipe (named "a+b+..."); fp8 compiles in its own mode unless a
    compile lever is among them. Two levers of one group is an error."""
    levers = [LEVER_BY_NAME[name] for name in names]
    groups = [lever.group for lever in levers if lever.group]
    if len(groups) != len(set(groups)):
        raise ValueError(f"levers {[lever.name for lever in levers]} hold two of one group: {groups}")
    merged = {f.name: getattr(NO_LEVER, f.name) for f in fields(Lever)}
    for lever in sorted(levers, key=lambda item: item.group == "compile"):  # a compile lever's mode wins
        for f in fields(Lever):
            value = getattr(lever, f.name)
            if f.name == "needs":
                merged["needs"] = tuple(dict.fromkeys(merged["needs"] + value))
            elif f.name == "batch_factor":
                merged["batch_factor"] *= value
            elif f.name not in ("name", "what", "group") and value:
                merged[f.name] = value
    merged["name"] = "+".join(lever.name for lever in levers) or NO_LEVER.name
    merged["what"] = "; ".join(lever.what for lever in levers) or NO_LEVER.what
    return Lever(**merged)


# -- applying a recipe -------------------------------------------------------------------------------
def fp8_layer_names(unet: torch.nn.Module) -> list[str]:
    """The Linear layers float8 converts: those of the transformer blocks (attention projections and
    feed-forward), both sides multiples of 16 (float8 GEMM alignment). The time-embedding layers are left
    out: they multiply one row per image, where scaling costs more than it saves."""
    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear)
        and ".transformer_blocks." in f".{name}."
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    ]


def to_float8(unet: torch.nn.Module) -> torch.nn.Module:
    """``unet`` (bf16 weights) with ``fp8_layer_names`` converted by torchao (float8 e4m3 weights and
    activations, dynamic per-row scales), in place."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    chosen = set(fp8_layer_names(unet))
    # set_inductor_config=False: torchao would otherwise change inductor's settings (and float32 matmul precision)
    # for the whole process, and with them every later row
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(unet, config, filter_fn=lambda module, name: name in chosen)
    return unet


class AttentionBackendUNet(torch.nn.Module):
    """A UNet whose calls run with PyTorch's fused attention restricted to ``backend`` (an ``SDPBackend`` name).

    Only the UNet's attention is restricted (the float32 text encoder has no FlashAttention kernel). Around a
    compiled UNet the restriction holds while the graph is traced, which picks the kernel it compiles.
    """

    def __init__(self, unet: torch.nn.Module, backend: str) -> None:
        super().__init__()
        self.unet, self.backend = unet, backend

    def forward(self, *args, **kwargs):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, self.backend)]):
            return self.unet(*args, **kwargs)


def prepare_unet(unet: torch.nn.Module, recipe: Lever) -> torch.nn.Module:
    """The UNet a recipe samples with: a bf16 (and float8) copy when it asks, compiled in its mode, its attention
    restricted to one kernel."""
    if recipe.bf16_weights or recipe.fp8:
        unet = copy.deepcopy(unet).to(torch.bfloat16)
    if recipe.fp8:
        unet = to_float8(unet)
    if recipe.compile_mode:
        torch._dynamo.reset()
        unet = torch.compile(
            unet, mode=None if recipe.compile_mode == "default" else recipe.compile_mode, dynamic=False
        )
    if recipe.attention:
        unet = AttentionBackendUNet(unet, recipe.attention)
    return unet


class AutocastDecoder(torch.nn.Module):
    """An autoencoder whose ``decode_stage_2_outputs`` runs under ``dtype`` autocast (the sampler's decoder
    otherwise runs in float32); the sampler casts its output back to float32."""

    def __init__(self, autoencoder: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.autoencoder, self.dtype = autoencoder, dtype

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, dtype=self.dtype):
            return self.autoencoder.decode_stage_2_outputs(z)


def prepare_autoencoder(autoencoder: torch.nn.Module, recipe: Lever) -> torch.nn.Module:
    return AutocastDecoder(autoencoder) if recipe.decode_bf16 else autoencoder


@contextlib.contextmanager
def running(recipe: Lever):
    """The global switches of a recipe while it runs: cuDNN's autotuning (of every network's convolutions)."""
    with contextlib.ExitStack() as stack:
        if recipe.cudnn_benchmark:
            stack.enter_context(torch.backends.cudnn.flags(enabled=True, benchmark=True))
        yield


@contextlib.contextmanager
def exact_float32():
    """float32 without TF32 (cuDNN convolutions use TF32 by default on GPUs), for the parity reference."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


# -- parity ------------------------------------------------------------------------------------------
def feature_extractor(device: torch.device, image_size: int = 224):
    """Images (B, 1, H, W) in [0, 1] -> (B, 1024) pooled DenseNet-121 features (MONAI, random weights from a fixed
    seed: a structural distance, as the CPU benchmark's DenseNet without weights), on ``device``."""
    from monai.networks.nets import DenseNet121

    from scripts.datasets.classifiers import NetworkFeatures, NetworkLabelClassifier, seeded

    network = seeded(lambda: DenseNet121(spatial_dims=2, in_channels=1, out_channels=14))
    return NetworkFeatures(NetworkLabelClassifier(network, "random", image_size=image_size, device=device))


def parity_measures(latents, images, features, reference) -> dict:
    """Distances of (latents, images, features) to the float32 reference's, image by image: the CPU benchmark's
    ``parity_distances`` and the CPU speed-switch tests' measures (relative latent, image mean and 99th
    percentile |diff|)."""
    from benchmarks.sampling_benchmark import parity_distances

    ref_latents, ref_images, _ = reference
    measures = parity_distances((latents, images, features), reference)
    difference = (images - ref_images).abs().flatten()
    rank = max(1, math.ceil(0.99 * difference.numel()))
    measures.update(
        latent_relative=float((latents - ref_latents).abs().mean() / ref_latents.abs().mean().clamp_min(1e-12)),
        image_mean_abs=float(difference.mean()),
        image_p99_abs=float(difference.kthvalue(rank).values),
        num_images=int(latents.shape[0]),
    )
    return measures


def parity_verdict(measures: Mapping, yardstick: Mapping | None) -> tuple[bool, str]:
    """Whether ``measures`` are within ``PARITY_MARGIN`` times the ``yardstick`` row's (the default's) on every
    ``PARITY_KEYS`` distance, and why not (the first that is not)."""
    if yardstick is None:
        return True, "the yardstick (the default's own rounding)"
    for key in PARITY_KEYS:
        bound = PARITY_MARGIN * max(float(yardstick[key]), PARITY_FLOOR)
        if not measures[key] <= bound:  # NaN fails too
            return False, f"{key} {measures[key]:.4g} > {PARITY_MARGIN} x the default's {yardstick[key]:.4g}"
    return True, f"within {PARITY_MARGIN} x the default's distances"


def measure_parity(bench, outputs: dict) -> dict:
    """The parity fields of a row whose ``outputs`` hold its last run's latents and images (``time_recipe``);
    without a yardstick yet, the row becomes ``bench``'s yardstick."""
    if bench.reference is None:
        return {"parity": None, "at_parity": None, "parity_note": "no float32 reference"}
    count = bench.reference[0].shape[0]
    latents = outputs["latents"][:count].float().cpu()
    images = outputs["images"][:count].float().cpu()
    measures = parity_measures(latents, images, bench.features(images), bench.reference)
    at_parity, why = parity_verdict(measures, bench.yardstick)
    if bench.yardstick is None:
        bench.yardstick = measures
    return {"parity": measures, "at_parity": at_parity, "parity_note": why}


# -- measuring ----------------------------------------------------------------------------------------
@dataclass
class Bench:
    """What every row of one sampler is measured with: the config's parser, the networks (``build_networks``),
    the sampler settings (the default's, or the student's), and the float32 reference of its parity."""

    parser: object
    networks: dict
    device: torch.device
    settings: dict
    repeats: int
    flops_per_image: float
    peak_tflops: float
    machine: Machine
    parity_images: int = 8
    features: Callable | None = None
    reference: tuple | None = None
    yardstick: dict | None = None  # the default row's parity measures, once measured
    unet: torch.nn.Module | None = None  # the UNet sampled (default: networks["network"])
    log: Callable[[str], None] = field(default=print)

    @property
    def bound_images_per_s(self) -> float:
        return self.peak_tflops * 1e12 / self.flops_per_image


def time_with_outputs(bench: Bench, unet, autoencoder, settings: dict, batch_size: int) -> tuple[dict, dict]:
    """``time_recipe`` of whole runs (median of ``repeats`` after a warm-up), and the last run's outputs."""
    from benchmarks.sampling_benchmark import time_recipe

    outputs: dict = {}
    networks = {**bench.networks, "autoencoder": autoencoder}
    row = time_recipe(
        bench.parser,
        networks,
        unet,
        settings,
        int(batch_size),
        None,
        bench.repeats,
        bench.device,
        True,
        outputs=outputs,
    )
    return row, outputs


def make_reference(bench: Bench) -> None:
    """The float32 reference of ``bench``'s settings: eager, no autocast, TF32 off, ``parity_images`` images."""
    settings = {**bench.settings, "autocast_dtype": "float32", "compile": False}
    with exact_float32():
        _, outputs = time_with_outputs(
            Bench(**{**vars(bench), "repeats": 1}),
            bench.unet or bench.networks["network"],
            bench.networks["autoencoder"],
            settings,
            bench.parity_images,
        )
    images = outputs["images"].float().cpu()
    bench.reference = (outputs["latents"].float().cpu(), images, bench.features(images))


def measure(bench: Bench, recipe: Lever, batch_size: int) -> dict:
    """One row: ``recipe`` on ``bench`` at ``batch_size`` × its batch factor, timed, with its parity, bound
    fraction and (compiled) compile seconds; ``skipped``/``error`` instead when it cannot run or fails."""
    reason = unavailable(recipe, bench.machine)
    row = {"recipe": recipe.name, "what": recipe.what, "batch_size": int(batch_size) * recipe.batch_factor}
    if reason:
        return {**row, "skipped": reason}
    base_unet = bench.unet or bench.networks["network"]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            unet = prepare_unet(base_unet, recipe)
            autoencoder = prepare_autoencoder(bench.networks["autoencoder"], recipe)
            with running(recipe):
                timing, outputs = time_with_outputs(bench, unet, autoencoder, bench.settings, row["batch_size"])
    except Exception as error:  # one lever failing (a kernel missing, out of memory) must not lose the others
        messages = list(dict.fromkeys(str(w.message).splitlines()[0][:300] for w in caught))[:4]
        return {
            **row,
            "error": f"{type(error).__name__}: {str(error)[:500]}",
            "warnings": messages,
            "traceback": traceback.format_exc()[-3000:],
        }
    finally:
        release(bench.device)
    row.update(
        {
            key: timing[key]
            for key in (
                "text_s",
                "step_s",
                "decode_s",
                "per_image_s",
                "images_per_s",
                "peak_memory_gib",
                "warmup_loop_s",
                "steps",
            )
        }
    )
    row["loop_s"] = timing["step_s"] * timing["timed_steps"]
    row["compile_s"] = max(0.0, timing["warmup_loop_s"] - row["loop_s"]) if recipe.compile_mode else 0.0
    row["bound_fraction"] = row["images_per_s"] / bench.bound_images_per_s
    if recipe.fp8:
        row["fp8_layers"] = len(fp8_layer_names(base_unet))
    row.update(measure_parity(bench, outputs))
    return row


def release(device: torch.device) -> None:
    """Free what a row left behind (compiled graphs, CUDA graphs pools, cached blocks)."""
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# -- choosing ----------------------------------------------------------------------------------------
def gain(rows: Mapping[str, dict], name: str, over: dict) -> float:
    """images/s of row ``name`` over ``over``'s (0 when either is missing)."""
    row = rows.get(name) or {}
    if not row.get("images_per_s") or not over or not over.get("images_per_s"):
        return 0.0
    return row["images_per_s"] / over["images_per_s"]


def choose_combination(rows: Mapping[str, dict], base: dict) -> tuple[list[str], dict]:
    """The levers of the best combination, from rows of each lever alone at the base batch, and why each other
    lever is left out.

    Only rows at parity count. Per group (compile modes, attention kernels) the fastest that beats ``base`` by
    ``MIN_GAIN``; every other lever that beats it; fp8 when it beats compile alone (its own compiled base).
    The batch is not chosen: the combination is measured at the base batch and at twice it.
    """
    chosen, left_out = [], {}
    passing = {name for name, row in rows.items() if name in LEVER_BY_NAME and row.get("at_parity") is True}
    for name, row in rows.items():
        if name in LEVER_BY_NAME and name not in passing:
            left_out[name] = row.get("skipped") or row.get("error") or f"not at parity: {row.get('parity_note')}"
    for group in ("compile", "attention"):
        members = [name for name in passing if LEVER_BY_NAME[name].group == group]
        fast = [name for name in members if gain(rows, name, base) >= MIN_GAIN]
        best = max(fast, key=lambda name: gain(rows, name, base)) if fast else None
        chosen += [best] if best else []
        left_out.update({name: "slower than " + (best or "the default") for name in members if name != best})
    for name in sorted(passing):
        lever = LEVER_BY_NAME[name]
        if lever.group or lever.batch_factor != 1:
            continue
        compared = rows.get("compile") if lever.fp8 and rows.get("compile", {}).get("images_per_s") else base
        if gain(rows, name, compared) >= MIN_GAIN:
            chosen.append(name)
        else:
            left_out[name] = f"no faster than {'compile' if compared is not base else 'the default'}"
    return [lever.name for lever in LEVERS if lever.name in chosen], left_out


def best_row(rows: Iterable[dict]) -> dict | None:
    """The fastest row at parity (images/s), or None."""
    passing = [row for row in rows if row.get("at_parity") is True and row.get("images_per_s")]
    return max(passing, key=lambda row: row["images_per_s"]) if passing else None


# -- the part ----------------------------------------------------------------------------------------
def measure_levers(
    bench: Bench, names, batch_size: int, check_budget: Callable[[str], str | None], report: dict, save=None
) -> None:
    """Each lever of ``names`` alone at ``batch_size`` into ``report["rows"]`` (or why it was skipped for time),
    logged, and ``save(report)`` after each row when given."""
    for name in names:
        reason = check_budget(f"lever:{name}")
        lever = LEVER_BY_NAME[name]
        row = {"recipe": name, "what": lever.what, "skipped": reason} if reason else measure(bench, lever, batch_size)
        report["rows"][name] = row
        bench.log(f"lever {name}: {summary_line(row)}")
        if save is not None:
            save(report)


def levers_part(bench: Bench, names, batch_size: int, check_budget: Callable[[str], str | None], save) -> dict:
    """The default eager at ``batch_size`` (the yardstick), each lever of ``names`` alone, then the best
    combination at ``batch_size`` and twice it; ``save(report)`` after every row (a run cut short keeps them).

    ``check_budget(key)`` returns why a row must be skipped for time ("lever:<name>", "combination"), or None.
    """
    report: dict = {"batch_size": int(batch_size), "criterion": PARITY_CRITERION, "rows": {}}
    make_reference(bench)
    report["parity_images"] = int(bench.reference[0].shape[0])
    report["default"] = measure(bench, NO_LEVER, batch_size)
    save(report)
    measure_levers(bench, names, batch_size, check_budget, report, save)
    chosen, left_out = choose_combination(report["rows"], report["default"])
    report["combination"] = {"levers": chosen, "left_out": left_out, "rows": []}
    if chosen:
        for extra in ([], ["double_batch"]):
            reason = check_budget("combination")
            recipe = recipe_of(chosen + extra)
            row = {"recipe": recipe.name, "skipped": reason} if reason else measure(bench, recipe, batch_size)
            report["combination"]["rows"].append(row)
            bench.log(f"combination {recipe.name}: {summary_line(row)}")
            save(report)
    else:
        report["combination"]["note"] = "no lever was at parity and faster than the default"
    rows = [report["default"], *report["rows"].values(), *report["combination"]["rows"]]
    report.update(best_summary(rows, bench.bound_images_per_s))
    return report


def late_levers_part(bench: Bench, names, batch_size: int, check_budget: Callable[[str], str | None]) -> dict:
    """Levers too slow to prepare for the main levers part (max-autotune: minutes of tuning), each alone at
    ``batch_size``, against the same yardstick (measured here first when the levers part has not run)."""
    report: dict = {"batch_size": int(batch_size), "criterion": PARITY_CRITERION, "rows": {}}
    if bench.reference is None or bench.yardstick is None:
        make_reference(bench)
        bench.yardstick = None
        report["default"] = measure(bench, NO_LEVER, batch_size)
    measure_levers(bench, names, batch_size, check_budget, report)
    return report


def summary_line(row: dict) -> str:
    """One log line of a row: images/s, fraction of the bound and parity, or why it did not run."""
    if "images_per_s" not in row:
        return row.get("skipped") or row.get("error", "?")
    return (
        f"{row['images_per_s']:.2f} images/s at batch {row['batch_size']}, {row['bound_fraction']:.1%} of the "
        f"bound, parity {row.get('at_parity')} ({row.get('parity_note')})"
    )


def best_summary(rows: Iterable[dict | None], bound_images_per_s: float) -> dict:
    """The fastest row at parity among ``rows``; whether it reaches ``TARGET_BOUND_FRACTION`` of the bound; what
    share of its time goes to text encoding, the UNet steps and decoding."""
    best = best_row(row for row in rows if row)
    summary = {"target_bound_fraction": TARGET_BOUND_FRACTION, "bound_images_per_s": bound_images_per_s}
    if best is None:
        return {**summary, "best": None, "target_met": False}
    steps = best["steps"]
    per_batch = best["text_s"] + steps * best["step_s"] + best["decode_s"]
    summary["best"] = {key: best[key] for key in ("recipe", "batch_size", "images_per_s", "bound_fraction")}
    summary["best"]["time_shares"] = {
        "text": best["text_s"] / per_batch,
        "unet_steps": steps * best["step_s"] / per_batch,
        "decode": best["decode_s"] / per_batch,
    }
    # the UNet steps alone against the bound, which counts only them
    summary["best"]["unet_only_bound_fraction"] = best["batch_size"] / (steps * best["step_s"]) / bound_images_per_s
    summary["target_met"] = best["bound_fraction"] >= TARGET_BOUND_FRACTION
    return summary


def flop_shares(unet: torch.nn.Module, parser, device: torch.device, batch_size: int = 2) -> dict:
    """Where a UNet call's FLOPs go (torch's FLOP counter, one call of ``batch_size``): convolutions, Linear
    layers (matrix multiplications), attention (scaled dot products and batched products), other; and the share
    in the layers float8 converts (``fp8_layer_names``), which bounds what float8 can gain."""
    from torch.utils.flop_counter import FlopCounterMode

    chosen = set(fp8_layer_names(unet))
    converted = []
    hooks = [
        module.register_forward_hook(
            lambda m, i, o: converted.append(2.0 * m.in_features * m.out_features * (i[0].numel() // m.in_features))
        )
        for name, module in unet.named_modules()
        if name in chosen
    ]
    shape = (batch_size, *parser["latent_shape"])
    context = torch.zeros(batch_size, 77, int(parser["network_def"]["cross_attention_dim"]), device=device)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            unet(
                torch.zeros(shape, device=device),
                timesteps=torch.zeros(batch_size, dtype=torch.long, device=device),
                context=context,
            )
    finally:
        for hook in hooks:
            hook.remove()
    by_kind = {"convolution": 0.0, "linear": 0.0, "attention": 0.0, "other": 0.0}
    for op, count in counter.get_flop_counts().get("Global", {}).items():
        name = str(op)
        kind = (
            "convolution"
            if "convolution" in name
            else "attention"
            if "attention" in name or "bmm" in name
            else "linear"
            if "mm" in name or "linear" in name
            else "other"
        )
        by_kind[kind] += float(count)
    total = sum(by_kind.values()) or 1.0
    return {
        "batch_size": batch_size,
        "total_flops": total,
        "shares": {kind: value / total for kind, value in by_kind.items()},
        "fp8_layers": len(chosen),
        "fp8_share": sum(converted) / total,
    }
