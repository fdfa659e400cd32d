"""Choose device, precision, torch.compile and CPU threads, once, and say why.

torch.compile: on CUDA 7.0+ with Triton when train.compile is auto; on CPU only when it is
true (bench/throughput.py measured too little gain there to pay the compile time of every
part), and only with a C++ compiler, which inductor needs (without one: eager, and the log
says so). A compilation that fails anyway falls back to eager (setup sets dynamo's
suppress_errors).

Precision by CUDA compute capability (auto):
    8.0+        bf16 autocast, TF32 matmuls
    7.x         fp16 autocast with a GradScaler
    below 7.0   fp32 (Pascal, e.g. GTX 1050); fp16 only when asked for, to save memory
torch.cuda.is_bf16_supported() is not consulted: it reports emulated bf16 on Pascal.

Before any CUDA work, the card's architecture is checked against the build's
(runtime.gpuarch): a GTX 10xx under a CUDA 12.8+ build is refused with the install
command of a build that runs it, instead of failing at the first kernel.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass

import torch

from runtime import gpuarch
from runtime.gpuarch import GpuInfo, TorchFacts
from runtime.spec import TrainConfig
from trainer.errors import BadInput

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    compile: bool
    threads: int | None  # CPU threads set, None on CUDA
    why: str

    @property
    def use_scaler(self) -> bool:
        return self.precision == "fp16"

    def autocast(self):
        dtype = _AUTOCAST[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def describe(self) -> str:
        parts = [str(self.device), self.precision, "compiled" if self.compile else "eager"]
        if self.threads:
            parts.append(f"{self.threads} threads")
        return ", ".join(parts) + f" ({self.why})"


def torch_facts() -> TorchFacts:
    """What this torch build is and which GPUs it sees (or the tests' fabricated facts)."""
    fabricated = gpuarch.fabricated_facts()
    if fabricated is not None:
        return fabricated
    facts = TorchFacts(
        torch_version=torch.__version__, cuda_build=torch.version.cuda, hip_build=getattr(torch.version, "hip", None)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        facts.cuda_available = torch.cuda.is_available()
        if facts.cuda_available:
            facts.arch_list = torch.cuda.get_arch_list()
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                facts.gpus.append(
                    GpuInfo(
                        index=i,
                        name=props.name,
                        capability=(props.major, props.minor),
                        memory_gb=round(props.total_memory / 2**30, 2),
                    )
                )
    facts.notes = [" ".join(str(w.message).split()) for w in caught]
    return facts


def check_architecture(cfg: TrainConfig, local_rank: int | None = None) -> None:
    """BadInput with runtime.gpuarch's message when the card this part would train on is
    missing from the build; nothing for a CPU part or a build that runs the card."""
    indices = gpuarch.cuda_indices(cfg, local_rank)
    if indices and (why := gpuarch.refusal(torch_facts(), indices)):
        raise BadInput(why)


def choose(cfg: TrainConfig, local_rank: int | None = None) -> Placement:
    """`local_rank`: this process's place among several on one machine (one GPU each)."""
    check_architecture(cfg, local_rank)
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return _cpu(cfg)
    if not torch.cuda.is_available():
        raise BadInput(
            f"train.device is {cfg.device!r} but torch sees no CUDA device "
            f'(torch {torch.__version__}); install a CUDA build of torch or use "cpu"'
        )
    if local_rank is not None:
        device = torch.device("cuda", local_rank)
        if local_rank >= torch.cuda.device_count():
            raise BadInput(
                f"train.gpus: {cfg.gpus} processes, but torch sees {torch.cuda.device_count()} CUDA devices; lower gpus"
            )
        torch.cuda.set_device(device)
    else:
        device = torch.device(cfg.device if cfg.device != "auto" else "cuda")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise BadInput(f"train.device: {cfg.device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return _cuda(cfg, device)


def _cpu(cfg: TrainConfig) -> Placement:
    if cfg.precision == "fp16":
        raise BadInput("train.precision: fp16 needs a CUDA device; on CPU use fp32 or bf16")
    threads = cfg.cpu_threads or len(os.sched_getaffinity(0))
    # Two torch processes that each use every core run ~25x slower; this worker takes
    # exactly `threads` and nothing else torch-heavy should run beside it.
    torch.set_num_threads(threads)
    precision = "fp32" if cfg.precision == "auto" else cfg.precision
    why = "no CUDA device" if cfg.device == "auto" else "train.device is cpu"
    use_compile = cfg.compile is True
    if use_compile and cpu_compiler() is None:
        use_compile = False
        why += f"; train.compile is true, but torch.compile on CPU needs a C++ compiler ({_cxx()} not found): eager"
    return Placement(torch.device("cpu"), precision, compile=use_compile, threads=threads, why=why)


def _cxx() -> str:
    return os.environ.get("CXX", "g++")  # what torch inductor looks for on Linux


def cpu_compiler() -> str | None:
    """The C++ compiler torch.compile (inductor) builds CPU kernels with, if there is one."""
    return shutil.which(_cxx())


def cuda_precision(requested: str, capability: tuple[int, int], name: str) -> str:
    """The precision for a card of this compute capability (the module docstring's table)."""
    major, minor = capability
    if requested == "auto":
        return "bf16" if major >= 8 else "fp16" if major == 7 else "fp32"
    if requested == "bf16" and major < 8:
        raise BadInput(
            f"train.precision: bf16 is only emulated on {name} (compute capability {major}.{minor}); "
            "use fp16 or fp32, or leave precision at auto"
        )
    return requested


def _cuda(cfg: TrainConfig, device: torch.device) -> Placement:
    major, minor = torch.cuda.get_device_capability(device)
    cc = f"{major}.{minor}"
    name = torch.cuda.get_device_name(device)
    precision = cuda_precision(cfg.precision, (major, minor), name)
    if major >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    can_compile = major >= 7 and importlib.util.find_spec("triton") is not None
    use_compile = can_compile if cfg.compile == "auto" else bool(cfg.compile)
    return Placement(device, precision, use_compile, threads=None, why=f"{name}, compute capability {cc}")


def set_interop_threads() -> None:
    """One inter-op thread: our graph is a sequential chain; must run before any torch work."""
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
