"""A sharded, memory-mapped, resumable on-disk store of per-image visual features.

Features are extracted once (minutes to days for COCO + VG with a ResNeXt-152 detector) and read by every
training run, so the store is built for three things:

* **reading fast**: each shard is a directory of ``.npy`` arrays opened with ``np.load(mmap_mode="r")``;
  a training sample touches one row, no file is read whole;
* **resuming**: a shard is written under a temporary name and renamed when complete, then its number is
  recorded in ``store.json`` (written to a temporary file and renamed as well). A re-run skips every
  recorded shard and redoes only the unfinished one(s);
* **skipping unreadable images**: an image that cannot be decoded is stored with no boxes and recorded in
  ``store.json`` (``failed``: image id -> file and reason); reading it raises
  `vislang.shared.data.robust.SampleLoadError`, so a training loader skips and counts it once, like a bad
  image file. More than ``max_failure_fraction`` of the images failing stops the extraction;
* **refusing mismatches**: ``store.json`` records the extractor's settings (backbone, weights checksum,
  box rule, image sizes, dtype, ...) and the planned image ids; asking for a store with different settings
  stops with one line naming the first differing field, instead of silently mixing two feature kinds.

Layout::

    <store>/store.json                      format, extractor spec, image ids, shard size, completed shards,
                                            failed images
    <store>/shard_00000/features.npy        (n, max_boxes, dim) in the spec's dtype, zero-padded
    <store>/shard_00000/boxes.npy           (n, max_boxes, 4) float32, x1 y1 x2 y2 normalised to [0, 1]
    <store>/shard_00000/num_boxes.npy       (n,) int32
    <store>/shard_00000/image_ids.npy       (n,) int64
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vislang.shared.data.robust import SampleLoadError, TooManyLoadFailures

__all__ = [
    "FORMAT",
    "FeatureStore",
    "FeatureStoreMismatchError",
    "ImageFeatures",
    "check_spec",
    "write_store",
]

FORMAT = "vislang-feature-store/1"
METADATA = "store.json"
ARRAYS = ("features", "boxes", "num_boxes", "image_ids")
DTYPES = ("float32", "float16")


class FeatureStoreMismatchError(ValueError):
    """An existing store was written with settings other than the requested ones."""


@dataclass(frozen=True)
class ImageFeatures:
    """One image's features: ``features`` (n, dim), ``boxes`` (n, 4) normalised x1 y1 x2 y2.

    An image that could not be read is ``ImageFeatures.unreadable(path, reason)``: no boxes, and the
    store records the file and the reason instead of features.
    """

    features: np.ndarray
    boxes: np.ndarray
    failure: tuple[str, str] | None = None  # (file, reason) of an image that could not be read

    @classmethod
    def unreadable(cls, path: str | os.PathLike[str], reason: str) -> ImageFeatures:
        return cls(np.zeros((0, 0), np.float32), np.zeros((0, 4), np.float32), (str(path), reason))

    @property
    def num_boxes(self) -> int:
        return int(self.features.shape[0])


def _shard_name(k: int) -> str:
    return f"shard_{k:05d}"


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=1)
    os.replace(tmp, path)


def check_spec(
    stored: Mapping[str, Any],
    requested: Mapping[str, Any],
    where: str,
    wording: tuple[str, str, str] = (
        "store was written with",
        "is requested",
        "; use another output directory or delete the store",
    ),
) -> None:
    """Raise ``FeatureStoreMismatchError`` naming the first field that differs between two specs.

    ``wording`` = (how the stored value is introduced, how the requested one is, a closing hint).
    """
    for key in sorted(set(stored) | set(requested)):
        if stored.get(key) != requested.get(key):
            a, b = stored.get(key, "<absent>"), requested.get(key, "<absent>")
            if isinstance(a, list) and isinstance(b, list) and len(a) + len(b) > 8:
                a, b = f"<{len(a)} values>", f"<{len(b)} other values>"
            raise FeatureStoreMismatchError(
                f"{where}: {wording[0]} {key}={a!r} but {key}={b!r} {wording[1]}{wording[2]}"
            )


def _plan(spec: Mapping[str, Any], image_ids: Sequence[int], shard_size: int) -> dict[str, Any]:
    if spec.get("dtype") not in DTYPES:
        raise ValueError(f"spec['dtype'] must be one of {DTYPES}, got {spec.get('dtype')!r}")
    for key in ("feature_dim", "max_boxes"):
        if not isinstance(spec.get(key), int) or spec[key] < 1:
            raise ValueError(f"spec[{key!r}] must be a positive int, got {spec.get(key)!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ids = [int(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must not repeat")
    return {"format": FORMAT, "spec": dict(spec), "shard_size": shard_size, "image_ids": ids, "completed": []}


def write_store(
    root: str | os.PathLike[str],
    spec: Mapping[str, Any],
    image_ids: Sequence[int],
    extract: Callable[[Sequence[int]], Iterable[ImageFeatures]],
    shard_size: int = 1000,
    progress: bool = True,
    max_failure_fraction: float = 0.01,
) -> Path:
    """Create or resume the store at ``root``: call ``extract`` on every image of every unfinished shard.

    Args:
        root: Store directory.
        spec: Extractor settings; must include ``feature_dim``, ``max_boxes`` and ``dtype``. An existing
            store whose spec, image ids or shard size differ is refused (``FeatureStoreMismatchError``).
        image_ids: The images to store, in order (they define the shards).
        extract: Called with a shard's image ids; yields their ``ImageFeatures`` in the same order.
        shard_size: Images per shard.
        progress: Show a tqdm bar over images.
        max_failure_fraction: Unreadable images (``ImageFeatures.unreadable``) are recorded and skipped;
            more than this fraction of ``image_ids`` stops the extraction with `TooManyLoadFailures`.

    Returns:
        ``root``.
    """
    root = Path(root)
    meta_path = root / METADATA
    plan = _plan(spec, image_ids, shard_size)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise FeatureStoreMismatchError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        check_spec(meta["spec"], plan["spec"], str(meta_path))
        check_spec(
            {"shard_size": meta["shard_size"], "image_ids": meta["image_ids"]},
            {"shard_size": plan["shard_size"], "image_ids": plan["image_ids"]},
            str(meta_path),
        )
    else:
        root.mkdir(parents=True, exist_ok=True)
        meta = plan
        _atomic_json(meta, meta_path)
    ids = meta["image_ids"]
    shards = [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]
    failed: dict[str, dict[str, str]] = dict(meta.get("failed", {}))
    done = set(meta["completed"])
    todo = [k for k in range(len(shards)) if k not in done]
    dim, max_boxes, dtype = spec["feature_dim"], spec["max_boxes"], np.dtype(spec["dtype"])
    bar = tqdm(total=sum(len(shards[k]) for k in todo), desc=f"features -> {root}", unit="image", disable=not progress)
    for k in todo:
        shard_ids = shards[k]
        final = root / _shard_name(k)
        tmp = root / f".{_shard_name(k)}.tmp"
        for stale in (tmp, final):  # a directory without a completion record is unfinished work
            if stale.exists():
                shutil.rmtree(stale)
        tmp.mkdir()
        arrays = {
            "features": np.lib.format.open_memmap(tmp / "features.npy", "w+", dtype, (len(shard_ids), max_boxes, dim)),
            "boxes": np.lib.format.open_memmap(tmp / "boxes.npy", "w+", np.float32, (len(shard_ids), max_boxes, 4)),
        }
        num_boxes = np.zeros(len(shard_ids), dtype=np.int32)
        count = 0
        shard_failed: dict[str, dict[str, str]] = {}
        for row, item in enumerate(extract(shard_ids)):
            if row >= len(shard_ids):
                raise ValueError(f"extract returned more than the {len(shard_ids)} images of shard {k}")
            count += 1
            bar.update(1)
            if item.failure is not None:  # stored with no boxes; reading it raises SampleLoadError
                shard_failed[str(shard_ids[row])] = {"file": item.failure[0], "reason": item.failure[1]}
                if len(failed) + len(shard_failed) > max_failure_fraction * len(ids):
                    _too_many(failed | shard_failed, len(ids), max_failure_fraction)
                continue
            n = min(item.num_boxes, max_boxes)
            if item.features.shape[1:] != (dim,):
                raise ValueError(f"image {shard_ids[row]}: features {item.features.shape}, expected (n, {dim})")
            arrays["features"][row, :n] = item.features[:n]
            arrays["boxes"][row, :n] = item.boxes[:n]
            num_boxes[row] = n
        if count != len(shard_ids):
            raise ValueError(f"extract returned {count} images for shard {k}, expected {len(shard_ids)}")
        for array in arrays.values():
            array.flush()
        del arrays
        np.save(tmp / "num_boxes.npy", num_boxes)
        np.save(tmp / "image_ids.npy", np.asarray(shard_ids, dtype=np.int64))
        os.replace(tmp, final)  # the shard appears complete or not at all
        meta["completed"] = sorted({*meta["completed"], k})
        failed.update(shard_failed)
        if failed:
            meta["failed"] = failed
        _atomic_json(meta, meta_path)
    bar.close()
    return root


def _too_many(failed: Mapping[str, Mapping[str, str]], total: int, fraction: float) -> None:
    first = "; ".join(f"{f['file']} ({f['reason']})" for f in list(failed.values())[:5])
    raise TooManyLoadFailures(
        f"{len(failed)} of {total} images could not be read (more than {fraction:.2%}); first: {first}; "
        "fix or remove them, or raise max_failure_fraction"
    )


class FeatureStore:
    """Read-only access to a complete store: ``store[image_id] -> ImageFeatures`` (memory-mapped).

    Args:
        root: Store directory.
        expected_spec: If given, fields that must match the store's spec (e.g. the ``kind`` and
            ``feature_dim`` a model was trained on); a difference raises ``FeatureStoreMismatchError``.
    """

    def __init__(self, root: str | os.PathLike[str], expected_spec: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        meta_path = self.root / METADATA
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path}: no feature store here (run `python -m vislang.vqa_ensemble.extract` first)"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise FeatureStoreMismatchError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        n_shards = -(-len(meta["image_ids"]) // meta["shard_size"])
        missing = sorted(set(range(n_shards)) - set(meta["completed"]))
        if missing:
            raise ValueError(f"{meta_path}: incomplete store, shards {missing[:5]} not written (re-run the extraction)")
        if expected_spec:
            check_spec({k: meta["spec"].get(k) for k in expected_spec}, dict(expected_spec), str(meta_path))
        self.spec: dict[str, Any] = meta["spec"]
        self.shard_size: int = meta["shard_size"]
        self.image_ids: list[int] = meta["image_ids"]
        self._row = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self.failed: dict[int, dict[str, str]] = {int(i): f for i, f in meta.get("failed", {}).items()}
        """Images whose file could not be read at extraction: image id -> {"file", "reason"}."""
        self._shards: dict[int, dict[str, np.ndarray]] = {}

    @property
    def feature_dim(self) -> int:
        return int(self.spec["feature_dim"])

    @property
    def max_boxes(self) -> int:
        return int(self.spec["max_boxes"])

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    def _shard(self, k: int) -> dict[str, np.ndarray]:
        if k not in self._shards:  # opened lazily, per process (DataLoader workers each open their own)
            d = self.root / _shard_name(k)
            try:
                self._shards[k] = {name: np.load(d / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
            except (OSError, ValueError) as error:  # a deleted or damaged shard: its images are skipped
                raise SampleLoadError(d, f"unreadable feature shard ({error})") from None
        return self._shards[k]

    def __getitem__(self, image_id: int) -> ImageFeatures:
        try:
            row = self._row[int(image_id)]
        except KeyError:
            raise KeyError(f"{self.root}: no features for image id {image_id}") from None
        if int(image_id) in self.failed:
            failure = self.failed[int(image_id)]
            raise SampleLoadError(failure["file"], f"unreadable at feature extraction: {failure['reason']}")
        shard = self._shard(row // self.shard_size)
        r = row % self.shard_size
        n = int(shard["num_boxes"][r])
        return ImageFeatures(np.array(shard["features"][r, :n]), np.array(shard["boxes"][r, :n]))

    def __getstate__(self) -> dict[str, Any]:  # memmaps are reopened in worker processes
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state
