"""Does this torch build run this GPU, and if not, which build does? One verdict, one message.

A CUDA build of torch carries compiled kernels (cubins, `sm_XY` in
torch.cuda.get_arch_list()) for some GPU architectures and sometimes PTX (`compute_XY`)
that the driver can compile for newer ones. A card outside that list initialises without
complaint and fails at its first kernel with "no kernel image is available for execution
on the device", deep inside a worker. The worker (trainer.device), the daemon (through
`python -m trainer.probe`) and `orchestrator doctor` all ask `refusal()` and say the same
paragraph. Pure functions of the facts: tests feed them fabricated ones.

What runs where (NVIDIA's compatibility rules, as torch.cuda encodes them):
    cubin sm_XY   runs on cards of the same major version X with minor >= Y, except
                  that Jetson (integrated) parts 5.3, 6.2, 7.2, 8.7 run only their own code
                  and their code runs only on them; an arch-specific `sm_90a` only on 9.0
    PTX compute_XY  JIT-compiles onto any card of compute capability >= X.Y, never older

Which build carries which card (PyTorch release notes and RFCs #157517, #172352, #190385):
    Maxwell, Pascal, Volta (5.x, 6.x, 7.0)  only the CUDA 12.6 wheels (sm_50, sm_60, sm_70);
                  PyTorch 2.14 is the last release with CUDA 12.6 wheels, and CUDA 13
                  cannot build code for these cards, so torch 2.15 and newer will not run them
    Turing and newer (7.5+)                 the default wheel (CUDA 13)
"""

from __future__ import annotations

import json
import os
import re
from glob import glob

from pydantic import BaseModel, ConfigDict, Field

from runtime.spec import TrainConfig

# Test hook (like runtime.faults): a JSON TorchFacts that stands for what torch reports,
# read only by trainer.device.torch_facts. Never set it in production.
FAKE_FACTS_ENV = "ORCHESTRATOR_FAULT_GPU_FACTS"

LEGACY_INSTALL = 'pip install "torch==2.14.*" --index-url https://download.pytorch.org/whl/cu126'
DEFAULT_INSTALL = "pip install --upgrade torch"
NO_KERNEL = '"no kernel image is available for execution on the device"'

_JETSON = {(5, 3), (6, 2), (7, 2), (8, 7)}


class GpuInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int
    """The CUDA index (cuda:N) as the worker sees it."""
    name: str
    capability: tuple[int, int]
    memory_gb: float | None = None


class TorchFacts(BaseModel):
    """What `python -m trainer.probe` found out about torch and the GPUs it sees."""

    model_config = ConfigDict(extra="forbid")
    torch_version: str | None = None
    cuda_build: str | None = None
    """torch.version.cuda: the CUDA version of the build; None for a CPU (or ROCm) build."""
    hip_build: str | None = None
    """torch.version.hip: a ROCm build (its arch list names gfx targets; not checked here)."""
    arch_list: list[str] = []
    """torch.cuda.get_arch_list(): 'sm_XY' cubins and 'compute_XY' PTX of the build."""
    cuda_available: bool = False
    gpus: list[GpuInfo] = []
    notes: list[str] = Field(default_factory=list)
    """Warnings torch gave while looking (a driver too old for the build, say)."""
    fabricated: bool = False
    """True when the facts came from ORCHESTRATOR_FAULT_GPU_FACTS (tests)."""


def fabricated_facts() -> TorchFacts | None:
    """The test hook's facts, or None when it is unset."""
    raw = os.environ.get(FAKE_FACTS_ENV)
    if not raw:
        return None
    return TorchFacts.model_validate({**json.loads(raw), "fabricated": True})


def generation(capability: tuple[int, int]) -> str:
    """The architecture's name (Pascal for 6.x, ...)."""
    major, minor = capability
    if major >= 10:
        return "Blackwell" if major <= 12 else "newer than Blackwell"
    return (
        {3: "Kepler", 5: "Maxwell", 6: "Pascal", 9: "Hopper"}.get(major)
        or {
            (7, 0): "Volta",
            (7, 2): "Volta",
            (7, 5): "Turing",
            (8, 9): "Ada Lovelace",
        }.get((major, minor))
        or ("Ampere" if major == 8 else "older than Kepler" if major < 3 else f"sm_{major}{minor}")
    )


def _parse(entry: str) -> tuple[str, int, int, bool] | None:
    """'sm_61' -> ('sm', 6, 1, False); 'compute_90' -> PTX; 'sm_90a' -> arch-specific. None if unknown."""
    m = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", entry.strip())
    if not m:
        return None
    return m[1], int(m[2]), int(m[3]), bool(m[4])


def entry_runs(entry: str, capability: tuple[int, int]) -> bool:
    """Can this arch-list entry execute on a card of this compute capability?"""
    parsed = _parse(entry)
    if parsed is None:
        return False
    kind, major, minor, specific = parsed
    code, card = (major, minor), tuple(capability)
    if specific:
        return code == card
    if kind == "compute":
        return card >= code
    if code in _JETSON or card in _JETSON:
        return code == card
    return card[0] == major and card[1] >= minor


def build_runs(arch_list: list[str], capability: tuple[int, int]) -> bool:
    """Does a build with this arch list run this card? A list with no entry of a form known
    here (empty, or a future spelling) counts as yes: better a late error than refusing a
    card that runs."""
    known = [e for e in arch_list if _parse(e)]
    return not known or any(entry_runs(e, capability) for e in known)


def install_fix(capability: tuple[int, int]) -> str:
    """What to install for a card of this compute capability, as a sentence with the command."""
    major, minor = capability
    name = generation(capability)
    if tuple(capability) in _JETSON:
        return (
            f"this is a Jetson (integrated {name} GPU): install NVIDIA's JetPack build of torch for it, "
            'or train on the CPU with train.device "cpu"'
        )
    if major < 5:
        return (
            f"no current PyTorch wheel carries kernels for {name} cards (every build starts at Maxwell, "
            '5.0): train on the CPU with train.device "cpu"'
        )
    if (major, minor) < (7, 5):
        return (
            f"install the CUDA 12.6 build of torch 2.14 or older, the last that carries {name}: "
            f"{LEGACY_INSTALL} (torch 2.15 and newer ship no CUDA 12.6 build and will not run this card)"
        )
    return (
        f"install a current build, which carries {name}: {DEFAULT_INSTALL} (the default wheel is a "
        "CUDA 13 build for Turing and newer; pytorch.org's selector gives the command for your driver)"
    )


def install_command(capability: tuple[int, int]) -> str | None:
    """Just the pip command of install_fix, or None where no wheel runs the card."""
    major, minor = capability
    if tuple(capability) in _JETSON or major < 5:
        return None
    return LEGACY_INSTALL if (major, minor) < (7, 5) else DEFAULT_INSTALL


def _kernels(arch_list: list[str]) -> str:
    return ", ".join(arch_list) if arch_list else "no architectures"


def gpu_message(facts: TorchFacts, gpu: GpuInfo) -> str:
    """The paragraph for a card this build cannot run."""
    cc = f"{gpu.capability[0]}.{gpu.capability[1]}"
    build = f"torch {facts.torch_version}" + (f", CUDA {facts.cuda_build}" if facts.cuda_build else "")
    return (
        f"GPU {gpu.index} ({gpu.name}, compute capability {cc}, {generation(gpu.capability)}) cannot run this "
        f"torch build ({build}): it carries kernels for {_kernels(facts.arch_list)} only, so training would "
        f"fail at its first kernel with {NO_KERNEL}. To train on this card, "
        f"{install_fix(gpu.capability)}. Then run `orchestrator doctor` to check."
    )


def unrunnable(facts: TorchFacts, indices: list[int] | None = None) -> list[GpuInfo]:
    """The GPUs among `indices` (default: all) that this build cannot run. A CPU or ROCm
    build, or no CUDA device, has none: such a chain trains on the CPU or fails elsewhere."""
    if not facts.cuda_available or facts.hip_build or not facts.cuda_build:
        return []
    wanted = None if indices is None else set(indices)
    return [
        g for g in facts.gpus if (wanted is None or g.index in wanted) and not build_runs(facts.arch_list, g.capability)
    ]


def refusal(facts: TorchFacts, indices: list[int] | None = None) -> str | None:
    """The message that refuses to train on `indices`, or None when every one of them runs."""
    bad = unrunnable(facts, indices)
    return " ".join(gpu_message(facts, g) for g in bad) or None


def cuda_indices(train: TrainConfig, local_rank: int | None = None) -> list[int]:
    """The CUDA devices a part with these settings trains on, if CUDA is available:
    none for device cpu; cuda:N -> [N]; auto or cuda -> one per rank (rank r on cuda:r)."""
    if train.device == "cpu":
        return []
    if train.device.startswith("cuda:"):
        return [int(train.device.split(":")[1])]
    if local_rank is not None:
        return [local_rank]
    return list(range(train.gpus))


def nvidia_present() -> bool:
    """Could this machine have an NVIDIA GPU torch might use? A cheap, torch-free look at the
    driver's device files (Linux, and WSL2's /dev/dxg), so the daemon spawns no probe on a
    machine that plainly has none. A fabricated test GPU counts."""
    if os.environ.get(FAKE_FACTS_ENV):
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(
        glob("/dev/nvidia[0-9]*") or os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/dxg")
    )
