"""Checkpoint I/O: read released and trained weights safely, rename their keys, write safetensors.

Reading never executes code from a checkpoint: ``.safetensors`` files hold only tensors, and pickle
files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are read with ``torch.load(weights_only=True)``, which
refuses any global outside PyTorch's allow-list plus ``SAFE_GLOBALS`` -- the inert metadata that real
training scripts store next to the weights: ``pathlib`` paths (Lightning hyper-parameters), NumPy scalars,
dtypes and arrays (mmengine's ``meta``), ``argparse.Namespace`` (MAE / VideoMAE / ConvMAE's ``args``) and
mmengine's ``HistoryBuffer`` (its ``message_hub``), read as a ``CheckpointRecord`` that holds the pickled
state without running any of that class's code. A pickle that needs more is refused with an
``UnsafeCheckpointError`` explaining how to convert it once, in a trusted environment.

Converters (``packages/*/convert.py``) combine the pieces::

    state = load_state_dict("mae_pretrain_vit_base.pth")            # unwraps {"model": {...}}
    state = rename_keys(state, [(r"^blocks\\.", "encoder.blocks."), (r"^decoder_.*", None)])
    report = load_into(model, state, strict=True, allowed_missing=[r"head\\..*"])
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = [
    "SAFE_GLOBALS",
    "CheckpointError",
    "CheckpointRecord",
    "LoadReport",
    "StateDictMismatchError",
    "UnsafeCheckpointError",
    "load_into",
    "load_checkpoint",
    "load_state_dict",
    "load_weights",
    "rename_keys",
    "save_state_dict",
    "strip_prefix",
    "unwrap_state_dict",
]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
WRAPPER_KEYS = ("state_dict", "model", "module")
"""Keys under which training scripts nest the weights: Lightning (``state_dict``), DeiT/MAE/CMAE
(``model``), DeepSpeed and some DDP savers (``module``). Searched in this order, at any depth."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read (unknown format, corrupt, or no tensors in it)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint needs globals that ``torch.load(weights_only=True)`` does not allow.

    Loading it would let the file run arbitrary code, so it is refused; convert it once, in an
    environment where you trust the file, with the command in the message.
    """


class StateDictMismatchError(RuntimeError):
    """``load_into(strict=True)`` found keys or shapes outside the allowed patterns.

    Attributes:
        report: The full ``LoadReport``.
    """

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


def _conversion_hint(path: Path) -> str:
    target = path.with_suffix(".safetensors")
    return (
        'if you trust the file, convert it once with: python -c "import torch; '
        "from vislang.shared.checkpoint import save_state_dict, unwrap_state_dict; "
        f"save_state_dict(unwrap_state_dict(torch.load('{path}', map_location='cpu', weights_only=False)), "
        f"'{target}')\" and load the .safetensors file"
    )


class CheckpointRecord:
    """Stand-in for an object of a training framework's class found in a checkpoint's metadata.

    Unpickling sets ``state`` to what the file stored (e.g. mmengine's ``HistoryBuffer``: its
    ``_log_history`` / ``_count_history`` arrays and ``max_length``); no code of the original class runs,
    and the framework need not be installed.
    """

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"CheckpointRecord({self.state!r})"


def _numpy_globals() -> list[Callable[..., object] | tuple[Callable[..., object], str]]:
    """NumPy's scalar / dtype / array rebuilders, under NumPy 2's and NumPy 1's module names.

    They only rebuild values from bytes: ``scalar(dtype, bytes)``, ``dtype(str, ...)`` and
    ``_reconstruct(ndarray, shape, ...)`` + ``__setstate__``; object arrays still need every element to be
    allowed.
    """
    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # NumPy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    out: list[Callable[..., object] | tuple[Callable[..., object], str]] = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(multiarray.scalar, f"{module}.scalar"), (multiarray._reconstruct, f"{module}._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # NumPy >= 1.25: dtype classes (Float64DType, StrDType, ...) in dtype pickles
        out += [getattr(dtypes, name) for name in dtypes.__all__ if isinstance(getattr(dtypes, name), type)]
    return out


INERT_GLOBALS: tuple[type, ...] = (
    pathlib.PosixPath,
    pathlib.WindowsPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
    argparse.Namespace,
)
"""Classes allowed on top of ``weights_only``'s list: rebuilding them runs no user code. Lightning
checkpoints store ``Path``-typed hyper-parameters; MAE-style scripts store their ``argparse`` namespace."""

FRAMEWORK_RECORDS: tuple[str, ...] = ("mmengine.logging.history_buffer.HistoryBuffer",)
"""Framework classes read as a ``CheckpointRecord`` (mmengine runner checkpoints' ``message_hub``)."""

SAFE_GLOBALS: list[Callable[..., object] | tuple[Callable[..., object], str]] = [
    *INERT_GLOBALS,
    *_numpy_globals(),
    *((CheckpointRecord, name) for name in FRAMEWORK_RECORDS),
]
"""Everything ``load_checkpoint`` / ``load_state_dict`` allow beyond ``torch.load(weights_only=True)``'s list."""


def load_checkpoint(path: str | os.PathLike[str], mmap: bool = False) -> object:
    """The whole object a ``torch.save`` file holds (e.g. a Lightning checkpoint dict), loaded safely.

    ``mmap=True`` maps the tensors instead of reading them (to look at a large checkpoint's metadata).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        UnsafeCheckpointError: If the pickle needs globals outside ``weights_only``'s allow-list.
        CheckpointError: If the file is corrupt or not a ``torch.save`` file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return _load_pickle(path, mmap=mmap)


def _load_pickle(path: Path, mmap: bool = False) -> object:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            # A plain pickle.dump file triggers a protocol warning before the refusal explains it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap or None)
    except pickle.UnpicklingError as err:
        message = str(err)
        wanted = re.search(r"GLOBAL ([\w.]+)", message)
        if wanted:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it is a pickle that needs the global {wanted.group(1)}, which "
                f"torch.load(weights_only=True) does not allow (loading it could run code); " + _conversion_hint(path)
            ) from None
        reason = re.search(r"WeightsUnpickler error: \s*(.+?)\n", message)
        raise CheckpointError(
            f"cannot read {path}: not a torch.save checkpoint loadable with weights_only=True "
            f"({reason.group(1).strip() if reason else 'unpickling failed'}); the file is corrupt or was not written by torch.save"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read {path}: corrupt or truncated checkpoint ({first_line})") from None


def unwrap_state_dict(obj: object, key: str | None = None) -> dict[str, Tensor]:
    """Find the tensor dictionary inside a loaded checkpoint object.

    Descends through ``WRAPPER_KEYS`` (``state_dict``, ``model``, ``module``; nested too, e.g.
    ``{"model": {"module": {...}}}``) until it reaches a mapping of tensors. Non-tensor entries next
    to the weights (``epoch``, ``optimizer``, ``hyper_parameters``) are dropped.

    Args:
        obj: What ``torch.load`` returned.
        key: Take this top-level entry instead of searching, e.g. ``"teacher"`` (DINO) or ``"ema"``;
            dots descend, e.g. ``"model.ema"``.

    Returns:
        ``{name: tensor}`` in the file's order.

    Raises:
        CheckpointError: If there is no such key or no tensor is found.
    """
    if key is not None:
        for part in key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
                raise CheckpointError(f"checkpoint has no entry {key!r} (found {keys})")
            obj = obj[part]
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a dictionary of tensors")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"no tensors found in checkpoint (top-level keys: {list(obj)[:10]})")
    return state


def load_state_dict(path: str | os.PathLike[str], key: str | None = None) -> dict[str, Tensor]:
    """Read weights from ``.safetensors`` or a pickle checkpoint, on the CPU, without running its code.

    Args:
        path: A ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin``/``.ckpt`` file written by
            ``torch.save`` (Lightning checkpoints, Hugging Face ``pytorch_model.bin``, official releases).
        key: Entry to take instead of the automatic unwrapping, see ``unwrap_state_dict``.

    Returns:
        ``{name: tensor}``; for pickle files the nested ``state_dict``/``model``/``module`` is unwrapped.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        UnsafeCheckpointError: If the pickle needs globals outside ``weights_only``'s allow-list.
        CheckpointError: If the extension is unknown or the file is corrupt.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        try:
            state = load_file(path, device="cpu")
        except SafetensorError as err:
            raise CheckpointError(f"cannot read {path}: corrupt safetensors file ({err})") from None
        return unwrap_state_dict(state, key) if key else state
    if suffix in PICKLE_SUFFIXES:
        return unwrap_state_dict(_load_pickle(path), key)
    known = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
    raise CheckpointError(f"cannot read {path}: unknown checkpoint extension {suffix!r} (expected one of {known})")


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------


def save_state_dict(
    state: Mapping[str, Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write weights as a ``.safetensors`` file, the format vislang releases weights in.

    safetensors refuses tensors that share memory (tied embeddings, views) and non-contiguous ones, so
    such tensors are copied first. The file is written to a temporary name and renamed, so an
    interrupted save never leaves a truncated file behind.

    Args:
        state: ``{name: tensor}``, e.g. ``model.state_dict()``.
        path: Destination; ``.safetensors`` is the expected extension.
        metadata: Strings stored in the header (e.g. ``{"source": "official CMAE ViT-B"}``).

    Returns:
        The written path.
    """
    path = Path(path).expanduser()
    if metadata is not None and not all(isinstance(v, str) for v in metadata.values()):
        raise TypeError("safetensors metadata values must be strings")
    seen: set[int] = set()
    tensors: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage()
        # Copy tied weights (second user of a storage), views into a larger storage and strided tensors;
        # the first tensor of a storage that covers it exactly is written without a copy.
        owns_storage = storage.nbytes() == tensor.numel() * tensor.element_size()
        if storage.data_ptr() in seen or not owns_storage or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --------------------------------------------------------------------------------------------------------
# Renaming
# --------------------------------------------------------------------------------------------------------


def strip_prefix(state: Mapping[str, Tensor], prefix: str, *, drop_others: bool = False) -> dict[str, Tensor]:
    """Remove ``prefix`` from the keys that start with it.

    Typical prefixes: ``module.`` (DDP), ``model.`` (a LightningModule's attribute), ``encoder_q.``
    (MoCo's query encoder, with ``drop_others=True`` to leave the key encoder and queue behind).

    Args:
        state: ``{name: tensor}``.
        prefix: Literal prefix, including its trailing dot.
        drop_others: Drop keys without the prefix instead of keeping them unchanged.

    Returns:
        A new dictionary in the original order.
    """
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name.startswith(prefix):
            out[name[len(prefix) :]] = tensor
        elif not drop_others:
            out[name] = tensor
    return out


def rename_keys(state: Mapping[str, Tensor], rules: Sequence[tuple[str, str | None]]) -> dict[str, Tensor]:
    """Rename keys with an ordered list of regular-expression rules.

    Every rule is applied in order to the result of the previous ones (``re.sub``, so a rule may use
    groups, e.g. ``(r"^blocks\\.(\\d+)\\.attn\\.qkv", r"encoder.layers.\\1.qkv")``). A rule whose replacement
    is ``None`` drops every key it matches (``re.search``), e.g. the decoder of an MAE checkpoint.

    Args:
        state: ``{name: tensor}``.
        rules: ``(pattern, replacement)`` pairs.

    Returns:
        A new dictionary in the original order.

    Raises:
        ValueError: If two keys are renamed to the same name (a wrong rule would silently lose weights).
    """
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for name, tensor in state.items():
        new: str | None = name
        for pattern, replacement in compiled:
            if replacement is None:
                if pattern.search(new):
                    new = None
                    break
            else:
                new = pattern.sub(replacement, new)
        if new is None:
            continue
        if new in out:
            raise ValueError(f"rename rules map both {origin[new]!r} and {name!r} to {new!r}")
        out[new], origin[new] = tensor, name
    return out


# --------------------------------------------------------------------------------------------------------
# Loading into a module
# --------------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What ``load_into`` did not load.

    Attributes:
        missing: Module keys absent from the state dict (left at their initial values).
        unexpected: State-dict keys the module does not have (ignored).
        mismatched: ``(name, checkpoint_shape, module_shape)`` of keys present on both sides with
            different shapes (not loaded).
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every key matched in name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [
            f"{len(self.missing)} missing",
            f"{len(self.unexpected)} unexpected",
            f"{len(self.mismatched)} shape-mismatched",
        ]
        lines = [", ".join(parts)]
        lines += [f"  missing: {k}" for k in self.missing]
        lines += [f"  unexpected: {k}" for k in self.unexpected]
        lines += [f"  shape: {k} checkpoint {tuple(a)} vs module {tuple(b)}" for k, a, b in self.mismatched]
        return "\n".join(lines)


def _disallowed(keys: Iterable[str], allowed: Sequence[str]) -> list[str]:
    patterns = [re.compile(p) for p in allowed]
    return [k for k in keys if not any(p.fullmatch(k) for p in patterns)]


def load_into(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    strict: bool = False,
    allowed_missing: Sequence[str] = (),
    allowed_unexpected: Sequence[str] = (),
) -> LoadReport:
    """Load a (renamed) state dict into ``module`` and report what did not fit.

    Unlike ``nn.Module.load_state_dict(strict=False)``, a shape mismatch does not abort the load: the
    key is skipped and reported, so a converter can load a backbone whose classifier has another number
    of classes and see exactly which keys were left out.

    Args:
        module: Target module; its parameters and buffers are copied into in place.
        state: ``{name: tensor}`` with the module's key names.
        strict: Raise ``StateDictMismatchError`` if any missing, unexpected or shape-mismatched key is
            not covered by the allowed patterns.
        allowed_missing: Regular expressions (``re.fullmatch``) of module keys that may be missing,
            e.g. a new head ``r"head\\..*"``. Also used for shape mismatches.
        allowed_unexpected: Regular expressions of checkpoint keys that may be left over, e.g.
            ``r"decoder\\..*"``.

    Returns:
        The ``LoadReport``.
    """
    own = module.state_dict()
    mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape
    ]
    bad = {k for k, _, _ in mismatched}
    result = module.load_state_dict({k: v for k, v in state.items() if k not in bad}, strict=False)
    report = LoadReport(
        missing=[k for k in result.missing_keys if k not in bad],
        unexpected=list(result.unexpected_keys),
        mismatched=mismatched,
    )
    if strict:
        problems = (
            _disallowed(report.missing, allowed_missing)
            + _disallowed(report.unexpected, allowed_unexpected)
            + _disallowed(bad, allowed_missing)
        )
        if problems:
            raise StateDictMismatchError(
                f"{type(module).__name__}: {len(problems)} key(s) not covered by the allowed patterns: "
                f"{', '.join(problems[:20])}{' ...' if len(problems) > 20 else ''}\n{report}",
                report,
            )
    return report


def load_weights(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    key: str | None = None,
    prefix: str | None = None,
    rules: Sequence[tuple[str, str | None]] = (),
    strict: bool = False,
    allowed_missing: Sequence[str] = (),
    allowed_unexpected: Sequence[str] = (),
) -> LoadReport:
    """``load_state_dict`` + ``strip_prefix`` + ``rename_keys`` + ``load_into`` in one call.

    This is what an ``init_weights: path`` model argument does: fine-tuning from weights without
    Lightning's ``--ckpt_path`` (which would restore the old run's hyper-parameters and optimizer).

    Args:
        module: Target module.
        path: Checkpoint file, see ``load_state_dict``.
        key: Entry to take from the checkpoint, see ``unwrap_state_dict``.
        prefix: Prefix to strip first (keys without it are dropped), e.g. ``"model."`` for a
            checkpoint of a LightningModule whose network is ``self.model``.
        rules: Renaming rules applied after the prefix, see ``rename_keys``.
        strict: See ``load_into``.
        allowed_missing: See ``load_into``.
        allowed_unexpected: See ``load_into``.

    Returns:
        The ``LoadReport``.
    """
    state = load_state_dict(path, key=key)
    if prefix:
        state = strip_prefix(state, prefix, drop_others=True)
    if rules:
        state = rename_keys(state, rules)
    return load_into(
        module, state, strict=strict, allowed_missing=allowed_missing, allowed_unexpected=allowed_unexpected
    )
