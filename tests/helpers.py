"""Helpers shared by the foundation tests.

Importable as ``tests.helpers`` from the validation subprocess too (it runs with
cwd=BASE_DIR), so the architectures below can be allowlisted through the environment
(INFERENCE_EXTRA_ARCHITECTURES) and constructed inside the child process. Keep this
module free of database access.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import signal
import time
from pathlib import Path

from torch import nn

from registry.architectures import MLP

HELPERS = "tests.helpers"


# --- Architectures for the validation subprocess --------------------------------------


class PidMLP(MLP):
    """An MLP that writes the id of the process building it to `pid_file`."""

    def __init__(self, in_features: int, hidden=(), out_features: int = 1, pid_file: str = ""):
        super().__init__(in_features, hidden, out_features)
        Path(pid_file).write_text(str(os.getpid()))


class SigkillMLP(MLP):
    """Kills its own process with SIGKILL while being built (a loader that crashes hard)."""

    def __init__(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)


class ExitMLP(MLP):
    """Ends its process with exit status 3, without a result line."""

    def __init__(self, *args, **kwargs):
        os._exit(3)


class HangingMLP(MLP):
    """Never finishes being built."""

    def __init__(self, *args, **kwargs):
        time.sleep(600)


class SlowMLP(MLP):
    """An MLP whose forward pass sleeps `delay` seconds (jobs whose progress can be watched)."""

    def __init__(self, in_features: int, hidden=(), out_features: int = 1, delay: float = 0.05):
        super().__init__(in_features, hidden, out_features)
        self.delay = delay

    def forward(self, x):
        time.sleep(self.delay)
        return super().forward(x)


class KillerMLP(MLP):
    """An MLP that SIGKILLs the process computing it when an input holds the value 666."""

    def forward(self, x):
        if bool((x == 666).any()):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


class TwoTowerNet(nn.Module):
    """inputs a (FP32 [a_features]) and b (INT64 [b_features]); outputs (score [out_features], hidden [8])."""

    def __init__(self, a_features: int = 2, b_features: int = 3, out_features: int = 2):
        import torch

        super().__init__()
        torch.manual_seed(3)
        self.a = torch.nn.Linear(a_features, 4)
        self.b = torch.nn.Linear(b_features, 4)
        self.head = torch.nn.Linear(8, out_features)

    def forward(self, a, b):
        import torch

        hidden = torch.cat([torch.relu(self.a(a)), torch.relu(self.b(b.float()))], dim=1)
        return self.head(hidden), hidden


JOB_ARCHS = [f"{HELPERS}.SlowMLP", f"{HELPERS}.KillerMLP"]


# --- Malicious pickles ---------------------------------------------------------------------


class OpenForWrite:
    """Unpickling this calls open(path, "w"): it creates the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


class ShellTouch:
    """Unpickling this runs a shell command that creates the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


EVIL_KINDS = {"open": OpenForWrite, "system": ShellTouch}


def evil_raw_pickle(marker: Path, kind: str = "open") -> bytes:
    """A plain pickle (protocol 2) whose loading creates `marker`."""
    return pickle.dumps({"0.weight": EVIL_KINDS[kind](marker)}, protocol=2)


def evil_torch_save(marker: Path, kind: str = "open") -> bytes:
    """A torch.save zip archive whose data.pkl creates `marker` when unpickled."""
    import torch

    buf = io.BytesIO()
    torch.save({"w": EVIL_KINDS[kind](marker)}, buf)
    return buf.getvalue()


def whole_model_bytes(module) -> bytes:
    """torch.save(model): the whole module pickled (refused by the platform)."""
    import torch

    buf = io.BytesIO()
    torch.save(module, buf)
    return buf.getvalue()


# --- Registry shortcuts (need the database; imported lazily) ---------------------------------


def stored_files(root) -> list[Path]:
    """Every file under `root` (MEDIA_ROOT), or [] when it does not exist."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def register(data: bytes, config: dict, *, model_name: str = "iris", **kwargs):
    """Register `data` as the next version of `model_name` through the service."""
    from registry import services

    return services.model_version_register(model_name=model_name, artifact=io.BytesIO(data), config=config, **kwargs)


def ready_version(data: bytes, config: dict, *, model_name: str = "iris", **kwargs):
    """A stored version marked ready without the validation subprocess (for alias/selector tests)."""
    from registry.models import ModelVersion

    version = register(data, config, model_name=model_name, validate=False, **kwargs)
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.READY)
    version.refresh_from_db()
    return version
