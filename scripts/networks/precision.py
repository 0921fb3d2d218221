"""Which floating-point precision sampling runs in: chosen from what the machine does unless the user says so.

bfloat16 autocast pays where the hardware computes in bf16 quickly, and by how much depends on the processor:
with AMX bf16 tile units a guided full-size UNet step is ~4x faster than in float32; with AVX-512-BF16 (no
AMX) ~2.4x faster; with neither, bf16 is emulated and slower than float32. So ``"auto"`` is:

- bfloat16 on a CUDA GPU that supports it, and on a CPU with AMX bf16 (certain: nothing is measured);
- on any other CPU, what a short probe measures (``measure_bf16_against_float32``: a residual block and a
  self + cross-attention block at the full-size UNet's widths, batch 2, a few seconds):
  bfloat16 only when its time is at most ``BF16_MAX_TIME_RATIO`` of float32's, else float32. A ratio close to
  that margin is measured again (up to ``PROBE_ROUNDS`` rounds, the fastest call of each precision counting),
  and the decision is then cached per machine (CPU model, core count, torch threads, torch version) in
  ``$XDG_CACHE_HOME/cxr-ldm/precision_probe.json`` (``~/.cache`` without ``XDG_CACHE_HOME``; the
  environment variable ``PRECISION_PROBE_CACHE_ENV`` names another file): a machine decides once, so one
  command names the same images on every run (the precision is part of an image's identity);
- float32 on other devices.

An explicit ``float32``, ``bfloat16`` or ``float16`` is kept and never probes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from scripts.common.files import atomic_write_json, locked_file

logger = logging.getLogger(__name__)

#: The precisions, by name: the dtype the UNet computes in (float32 runs without autocast).
PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Other accepted spellings of ``autocast_dtype`` (besides a name of ``PRECISIONS`` and ``"auto"``).
PRECISION_SPELLINGS = {"none": "float32", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: "auto" picks bfloat16 on a probed CPU only when the probe's bf16 time is at most this fraction of its float32
#: time: bf16 moves images a little (docs/performance.md), so it must be clearly faster, not faster by noise.
BF16_MAX_TIME_RATIO = 0.8
#: A ratio is conclusive at most the first or at least the second value. In between, other work on the cores can
#: tip the decision (a busy machine pushes the ratio towards 1: seen here, 1.13 measured while another process
#: loaded the cores, on a CPU whose quiet ratio is 0.45; emulated bf16 is far slower), so the probe measures
#: again, up to ``PROBE_ROUNDS`` rounds in all: load only ever slows a call, so the fastest call of each
#: precision over the rounds approaches the quiet cores' time. Whatever the rounds give is cached.
CONCLUSIVE_RATIOS = (0.65, 1.5)
PROBE_ROUNDS = 4
#: Environment variable naming the probe's cache file (tests point it at a temporary folder).
PRECISION_PROBE_CACHE_ENV = "CXR_LDM_PRECISION_PROBE_CACHE"
#: The probe's work: widths of the full-size UNet's second level (configs/inference.json ``network_def``:
#: channels[1] with one attention head of num_head_channels[1], time embedding 4 x channels[0], text context
#: cross_attention_dim wide and 77 tokens long) at 16 x 16, batch 2 as batched guidance runs it.
PROBE_CHANNELS = 512
PROBE_HEAD_CHANNELS = 512
PROBE_TIME_EMBEDDING = 1024
PROBE_CONTEXT_WIDTH = 1024
PROBE_CONTEXT_TOKENS = 77
PROBE_NORM_GROUPS = 32
PROBE_SIZE = 16
PROBE_BATCH = 2
#: Timed calls per precision after one warm-up call each; the fastest counts (others may share the cores).
PROBE_REPEATS = 4
_announced: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a setting resolves to on a device, why, and the probe's record when one decided it.

    ``probe`` holds ``float32_ms`` and ``bfloat16_ms`` (fastest of the timed calls), ``ratio`` (bf16 / fp32),
    ``max_ratio``, ``cached`` (read from the cache rather than measured now), ``cache_file`` (delete it to
    measure again), the machine's key fields and ``measured`` (UTC time of the measurement).
    """

    setting: str
    precision: str
    reason: str
    probe: dict | None = None


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The processor's feature flags (``/proc/cpuinfo``, e.g. ``avx512_bf16``, ``amx_bf16``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_native(device: str | torch.device) -> bool:
    """Whether ``device`` certainly computes bfloat16 fast: CUDA bf16 support, or AMX bf16 on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx is not None and amx())
    return False


def probe_cache_path() -> Path:
    """The probe's cache file: ``$CXR_LDM_PRECISION_PROBE_CACHE``, else ``<user cache>/cxr-ldm/precision_probe.json``
    (the user cache: ``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    explicit = os.environ.get(PRECISION_PROBE_CACHE_ENV)
    if explicit:
        return Path(explicit)
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "cxr-ldm" / "precision_probe.json"


def machine_fields() -> dict:
    """What the probe's result depends on: CPU model, core count, torch threads and torch version."""
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def machine_key(fields: dict) -> str:
    """The cache key of ``machine_fields()``, e.g. ``"AMD EPYC 9R14 | 2 cores | 2 threads | torch 2.14.1"``."""
    return (
        f"{fields['cpu_model']} | {fields['cpu_cores']} cores | {fields['torch_threads']} threads | "
        f"torch {fields['torch']}"
    )


def measure_bf16_against_float32(repeats: int = PROBE_REPEATS) -> dict:
    """Milliseconds of one residual + attention block pair in float32 and under bf16 CPU autocast.

    The blocks are MONAI's own (``DiffusionUNetResnetBlock`` then ``SpatialTransformer`` with self- and
    cross-attention) at the ``PROBE_*`` widths, input (``PROBE_BATCH``, ``PROBE_CHANNELS``, ``PROBE_SIZE``,
    ``PROBE_SIZE``), random weights. Each precision gets a warm-up call, then the two are timed alternately
    ``repeats`` times (so a neighbour's load falls on both) and the fastest call of each counts.
    Returns ``{"float32_ms": float, "bfloat16_ms": float}``.
    """
    from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock, SpatialTransformer

    # building the blocks draws from the global generator: the caller's random state is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        residual = DiffusionUNetResnetBlock(
            2, PROBE_CHANNELS, PROBE_TIME_EMBEDDING, PROBE_CHANNELS, norm_num_groups=PROBE_NORM_GROUPS
        ).eval()
        attention = SpatialTransformer(
            2,
            PROBE_CHANNELS,
            num_attention_heads=PROBE_CHANNELS // PROBE_HEAD_CHANNELS,
            num_head_channels=PROBE_HEAD_CHANNELS,
            norm_num_groups=PROBE_NORM_GROUPS,
            cross_attention_dim=PROBE_CONTEXT_WIDTH,
        ).eval()
        x = torch.randn(PROBE_BATCH, PROBE_CHANNELS, PROBE_SIZE, PROBE_SIZE)
        time_embedding = torch.randn(PROBE_BATCH, PROBE_TIME_EMBEDDING)
        context = torch.randn(PROBE_BATCH, PROBE_CONTEXT_TOKENS, PROBE_CONTEXT_WIDTH)

    def call_ms(bf16: bool) -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            start = time.perf_counter()
            attention(residual(x, time_embedding), context=context)
            return (time.perf_counter() - start) * 1000

    call_ms(False), call_ms(True)  # first calls pick and pack oneDNN kernels
    timed = [(call_ms(False), call_ms(True)) for _ in range(max(1, int(repeats)))]
    return {"float32_ms": min(t[0] for t in timed), "bfloat16_ms": min(t[1] for t in timed)}


def _valid_entry(entry, fields: dict) -> bool:
    """Whether a cached ``entry`` is a whole measurement of this machine and torch version."""
    if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in fields.items()):
        return False
    timings = [entry.get("float32_ms"), entry.get("bfloat16_ms")]
    return all(isinstance(t, (int, float)) and math.isfinite(t) and t > 0 for t in timings)


def read_probe_cache(path: str | os.PathLike) -> dict:
    """The cache's ``entries`` (machine key -> record); {} when the file is missing, unreadable or not ours."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f).get("entries")
    except (OSError, ValueError, AttributeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def write_probe_entry(path: str | os.PathLike, key: str, entry: dict) -> None:
    """Add ``entry`` under ``key`` to the cache at ``path`` (other machines' entries kept), atomically."""
    entries = read_probe_cache(path)
    entries[key] = entry
    atomic_write_json(path, {"entries": entries})


@contextlib.contextmanager
def _probe_lock(path: Path):
    """Hold an exclusive lock beside the cache file while probing (POSIX; elsewhere, or when the folder cannot
    be written, nothing is held): ranks started together then measure one after another, on quiet cores,
    and all but the first read the first one's result."""
    with contextlib.ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(locked_file(f"{path}.lock"))
        except (ImportError, OSError):
            pass
        yield


def cpu_probe() -> dict:
    """The probe's record for this machine: from the cache when it holds a valid one, else measured now
    (``measure_rounds``) and cached. Keys: ``machine_fields()``'s, ``float32_ms``, ``bfloat16_ms``, ``rounds``,
    ``measured``, ``cached`` and ``cache_file``."""
    path, fields = probe_cache_path(), machine_fields()
    key = machine_key(fields)
    entry = read_probe_cache(path).get(key)
    if _valid_entry(entry, fields):
        return {**entry, "cached": True, "cache_file": str(path)}
    with _probe_lock(path):
        entry = read_probe_cache(path).get(key)  # another process may have measured while this one waited
        if _valid_entry(entry, fields):
            return {**entry, "cached": True, "cache_file": str(path)}
        entry = {**fields, **measure_rounds(), "measured": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            write_probe_entry(path, key, entry)
        except OSError as error:
            logger.warning(f"Could not cache the precision probe in {path} ({error}); the next run measures again.")
    return {**entry, "cached": False, "cache_file": str(path)}


def measure_rounds(max_rounds: int = PROBE_ROUNDS) -> dict:
    """``measure_bf16_against_float32`` once, and again while the ratio is not ``conclusive`` (at most
    ``max_rounds`` rounds): the fastest time of each precision over the rounds, and ``rounds``, how many ran."""
    timings = measure_bf16_against_float32()
    rounds = 1
    while rounds < max_rounds and not conclusive(timings["float32_ms"], timings["bfloat16_ms"]):
        again = measure_bf16_against_float32()
        timings = {name: min(timings[name], again[name]) for name in timings}
        rounds += 1
    return {**timings, "rounds": rounds}


def conclusive(float32_ms: float, bfloat16_ms: float) -> bool:
    """Whether a probe's ratio is far enough from the margin for one round to decide (``CONCLUSIVE_RATIOS``)."""
    ratio = bfloat16_ms / float32_ms
    return ratio <= CONCLUSIVE_RATIOS[0] or ratio >= CONCLUSIVE_RATIOS[1]


def bf16_pays(float32_ms: float, bfloat16_ms: float) -> bool:
    """Whether bfloat16 is clearly faster: its time at most ``BF16_MAX_TIME_RATIO`` of float32's."""
    return bfloat16_ms <= BF16_MAX_TIME_RATIO * float32_ms


def precision_name(autocast_dtype: str | None, allow_auto: bool = False) -> str:
    """The name in ``PRECISIONS`` of a spelling of ``autocast_dtype`` (None: float32), or ``"auto"`` when
    ``allow_auto``; a one-line ``ValueError`` naming the choices for anything else."""
    key = "none" if autocast_dtype is None else str(autocast_dtype).strip().lower()
    name = PRECISION_SPELLINGS.get(key, key)
    if name in PRECISIONS or (allow_auto and name == "auto"):
        return name
    choices = sorted([*PRECISIONS, *PRECISION_SPELLINGS, *(["auto"] if allow_auto else [])])
    raise ValueError(f"autocast_dtype must be one of {choices} or null, got {autocast_dtype!r}.")


def autocast_dtype_of(precision: str | None) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of a precision (a spelling of a ``PRECISIONS`` name); None for float32,
    which runs without autocast. ``"auto"`` is refused: resolve it first with ``resolve_precision``."""
    name = precision_name(precision)
    return None if name == "float32" else PRECISIONS[name]


def choose_precision(autocast_dtype: str | None, device: str | torch.device) -> PrecisionChoice:
    """The precision of the setting ``autocast_dtype`` on ``device``, with the reason (and the probe's record).

    An explicit value is kept and None means float32, without probing. ``"auto"``: bfloat16 where
    ``bf16_native(device)``; on another CPU, bfloat16 when ``cpu_probe()`` finds it clearly faster, else
    float32; float32 on other devices. The choice of ``"auto"`` is logged once per device and precision.
    """
    name = precision_name(autocast_dtype, allow_auto=True)
    if name != "auto":
        key = "none" if autocast_dtype is None else str(autocast_dtype).lower()
        return PrecisionChoice(key, name, "set explicitly")
    device = torch.device(device)
    probe = None
    if bf16_native(device):
        precision, reason = "bfloat16", "native bf16 on this device" + (": AMX" if device.type == "cpu" else "")
    elif device.type != "cpu":
        precision, reason = "float32", "no native bf16 on this device"
    else:
        record = cpu_probe()
        ratio = record["bfloat16_ms"] / record["float32_ms"]
        probe = {**record, "ratio": ratio, "max_ratio": BF16_MAX_TIME_RATIO}
        precision = "bfloat16" if bf16_pays(record["float32_ms"], record["bfloat16_ms"]) else "float32"
        source = f"{'cached in' if record['cached'] else 'measured now, cached in'} {record['cache_file']}"
        if record.get("rounds", 1) > 1:
            source += f" after {record['rounds']} rounds (close to the margin; delete the file to measure again)"
        reason = (
            f"CPU probe {source}: float32 {record['float32_ms']:.0f} ms, bfloat16 "
            f"{record['bfloat16_ms']:.0f} ms, ratio {ratio:.2f} {'<=' if precision == 'bfloat16' else '>'} "
            f"{BF16_MAX_TIME_RATIO}"
        )
    choice = PrecisionChoice("auto", precision, reason, probe)
    if (precision, str(device)) not in _announced:
        _announced.add((precision, str(device)))
        logger.info(f"autocast_dtype auto -> {precision} ({reason}); set --autocast_dtype to choose.")
    return choice


def resolve_precision(autocast_dtype: str | None, device: str | torch.device) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"`` for the setting ``autocast_dtype`` on ``device``
    (``choose_precision``'s precision)."""
    return choose_precision(autocast_dtype, device).precision


def autocast_kwargs(amp_dtype: str) -> dict:
    """``torch.autocast`` keyword arguments of a training run's mixed precision (``amp_dtype``: "float16",
    the reference recipe's, or "bfloat16", which needs no loss scaling and cannot overflow)."""
    try:
        name = precision_name(amp_dtype)
    except ValueError:
        name = None
    if name not in ("float16", "bfloat16"):
        raise ValueError(f"amp_dtype must be float16 or bfloat16, got {amp_dtype!r}.")
    return {"dtype": PRECISIONS[name]}
