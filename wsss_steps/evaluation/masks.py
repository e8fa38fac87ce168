"""Evaluates seed maps against ground-truth masks over a sweep of background thresholds.

At threshold t an image's label map is the argmax over [t, maps] (ties go to background), its
classes being the map's ``keys``; the confusion matrix over background + C classes sums over all
images, ignoring ground-truth 255 (docs/methods.md §7). With ``--crf`` (stage ``seeds_crf``) each
label map is refined by the dCRF of docs/methods.md §5 (IRN_CRF) before it is counted.

Every image of the manifest must have maps, a readable mask and matching sizes: anything else is an
error naming the image and file. Scores are fractions in [0, 1] (not percent).

Outputs: the curve (one row per threshold), per-class scores at the best threshold (highest mIoU,
the lowest threshold on a tie) and summary rows in the long form of results/summary.csv.

Sharded (evaluation.shards): each shard job saves its images' summed matrices
(`write_confusion_shard`); the merge sums them (`merge_confusion_shards`) and writes the same
outputs from the sum, so they equal the unsharded scoring's (the matrices are integer counts).
"""
from __future__ import annotations

import csv
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss_steps.data.images import IGNORE_LABEL, read_image, read_label_mask
from wsss_steps.data.manifest import ImageRecord, Manifest
from wsss_steps.evaluation.metrics import (
    confusion_matrix,
    mean_iou,
    segmentation_scores,
    threshold_confusion_matrices,
)
from wsss_steps.methods.crf import IRN_CRF, crf_from_label_maps, crf_from_labels
from wsss_steps.methods.labels import foreground_argmax, padded_argmax
from wsss_steps.store.maps import MapReader, MapStoreError, shard_ids

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("dataset", "stage", "method", "classifier", "split", "metric", "value")
PER_CLASS_SCORES = ("iou", "precision", "recall", "fp_rate", "fn_rate")
DEFAULT_THRESHOLDS = (0.05, 0.80, 0.05)  # P-NOC's sweep (docs/methods.md §7)


class EvaluationError(RuntimeError):
    """An image that cannot be evaluated; the message names the image id and the file."""


def threshold_list(start: float, stop: float, step: float) -> list[float]:
    """start, start + step, ..., stop (inclusive), rounded so that e.g. 0.05·k is the float 0.15."""
    if step <= 0 or stop < start:
        raise ValueError(f"thresholds need step > 0 and stop >= start; got {start} {stop} {step}")
    count = int(np.floor((stop - start) / step + 1e-9)) + 1
    return [round(start + i * step, 10) for i in range(count)]


@dataclass
class SeedImage:
    """What one image contributes: its maps, their classes and its ground truth."""

    image_id: str
    cam: np.ndarray  # (K, H, W) float32
    keys: np.ndarray  # (K,) 0-based foreground class indices
    mask: np.ndarray  # (H, W) uint8, 0..C and 255


def load_seed_image(reader: MapReader, record: ImageRecord, map_name: str, num_classes: int) -> SeedImage:
    """Reads and checks one image's maps and mask; raises EvaluationError naming id and file."""
    image_id = record.image_id
    if image_id not in reader:
        raise EvaluationError(f"image {image_id!r} has no maps in {reader.path}")
    data = reader.read(image_id)
    for name in (map_name, "keys"):
        if name not in data:
            raise EvaluationError(f"image {image_id!r} in {reader.path} has no dataset {name!r} "
                                  f"(it holds {sorted(data)})")
    cam = np.asarray(data[map_name], dtype=np.float32)
    keys = np.asarray(data["keys"]).astype(np.int64).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != keys.size:
        raise EvaluationError(f"image {image_id!r} in {reader.path}: {map_name!r} has shape {cam.shape} "
                              f"for {keys.size} keys; expected (K, H, W) with K = {keys.size}")
    if keys.size and (keys.min() < 0 or keys.max() >= num_classes or np.unique(keys).size != keys.size):
        raise EvaluationError(f"image {image_id!r} in {reader.path}: keys {keys.tolist()} are not distinct "
                              f"class indices in 0..{num_classes - 1}")
    if not np.isfinite(cam).all():
        raise EvaluationError(f"image {image_id!r} in {reader.path}: {map_name!r} holds NaN or infinite values")
    mask = read_ground_truth(record, num_classes)
    if cam.shape[1:] != mask.shape:
        raise EvaluationError(f"image {image_id!r}: maps in {reader.path} are {cam.shape[1:]}, "
                              f"mask {record.mask_path} is {mask.shape}")
    return SeedImage(image_id, cam, keys, mask)


def read_ground_truth(record: ImageRecord, num_classes: int) -> np.ndarray:
    """The image's ground-truth mask, checked (values 0..C and 255); EvaluationError naming it."""
    image_id = record.image_id
    if record.mask_path is None:
        raise EvaluationError(f"image {image_id!r} has no ground-truth mask in the manifest")
    try:
        mask = read_label_mask(record.mask_path)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"image {image_id!r}: cannot read mask {record.mask_path}: {error}") from error
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(num_classes + 1), IGNORE_LABEL])
    if bad.size:
        raise EvaluationError(f"image {image_id!r}: mask {record.mask_path} holds values {bad.tolist()} "
                              f"outside 0..{num_classes} and {IGNORE_LABEL}")
    return mask




def sweep_confusions(seed: SeedImage, thresholds: Sequence[float], num_labels: int) -> np.ndarray:
    """(T, L, L) confusion matrices of one image at every threshold, without CRF."""
    fg_label, fg_score = foreground_argmax(seed.cam, seed.keys)
    return threshold_confusion_matrices(seed.mask, fg_label, fg_score, thresholds, num_labels)


def crf_confusions(seed: SeedImage, image: np.ndarray, thresholds: Sequence[float],
                   num_labels: int) -> np.ndarray:
    """(T, L, L) confusion matrices of one image at every threshold, each label map refined by dCRF."""
    # Compact labels 0..K keep the CRF small (as IRN); `lut` maps them back to mask numbering.
    lut = np.r_[0, seed.keys + 1]
    compact = [padded_argmax(seed.cam, threshold) for threshold in thresholds]
    refined = crf_from_label_maps(image, compact, lut.size, IRN_CRF)
    return np.stack([confusion_matrix(seed.mask, lut[labels], num_labels) for labels in refined]) \
        if refined else np.empty((0, num_labels, num_labels), dtype=np.int64)


class _CrfJob:
    """Evaluates one image with CRF; opens the map file lazily so it can live in a worker process."""

    def __init__(self, map_path: Path, map_name: str, num_classes: int, thresholds: Sequence[float]):
        self.map_path = map_path
        self.map_name = map_name
        self.num_classes = num_classes
        self.thresholds = list(thresholds)
        self._reader: MapReader | None = None

    def __call__(self, record: ImageRecord) -> np.ndarray:
        if self._reader is None:
            self._reader = MapReader(self.map_path)
        seed = load_seed_image(self._reader, record, self.map_name, self.num_classes)
        try:
            image = read_image(record.image_path)
        except (OSError, ValueError) as error:
            raise EvaluationError(f"image {record.image_id!r}: cannot read {record.image_path}: {error}") from error
        if image.shape[:2] != seed.mask.shape:
            raise EvaluationError(f"image {record.image_id!r}: {record.image_path} is {image.shape[:2]}, "
                                  f"mask {record.mask_path} is {seed.mask.shape}")
        return crf_confusions(seed, image, self.thresholds, self.num_classes + 1)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


_WORKER_JOB: _CrfJob | None = None


def _init_worker(map_path: Path, map_name: str, num_classes: int, thresholds: Sequence[float]) -> None:
    global _WORKER_JOB
    _WORKER_JOB = _CrfJob(map_path, map_name, num_classes, thresholds)


def _run_worker(record: ImageRecord) -> np.ndarray:
    assert _WORKER_JOB is not None
    return _WORKER_JOB(record)


def _crf_results(manifest: Manifest, map_path: Path, map_name: str, thresholds: Sequence[float],
                 workers: int) -> Iterator[np.ndarray]:
    if workers <= 1:
        job = _CrfJob(map_path, map_name, manifest.num_classes, thresholds)
        try:
            for record in manifest.records:
                yield job(record)
        finally:
            job.close()
        return
    # spawn: no worker inherits the parent's HDF5 state; imap keeps the manifest's order.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker,
                      initargs=(map_path, map_name, manifest.num_classes, list(thresholds))) as pool:
        yield from pool.imap(_run_worker, manifest.records, chunksize=1)


def open_for_manifest(map_path: Path, manifest: Manifest) -> MapReader:
    """Opens a complete map file holding every image of the manifest (all missing ids in one error)."""
    try:
        reader = MapReader(map_path)
    except MapStoreError as error:
        raise EvaluationError(str(error)) from error
    missing = [i for i in manifest.ids if i not in reader]
    if missing:
        reader.close()
        raise EvaluationError(f"{map_path} lacks {len(missing)} image(s) of the manifest: "
                              f"{missing[:20]}{' ...' if len(missing) > 20 else ''}")
    return reader


def evaluate_seeds(manifest: Manifest, map_path: str | Path, map_name: str,
                   thresholds: Sequence[float], crf: bool = False, workers: int = 1) -> np.ndarray:
    """Summed confusion matrices (T, L, L), L = C + 1, of all the manifest's images per threshold.

    Checks first that every image has maps (all missing ids in one error), then reads each image.
    """
    map_path = Path(map_path)
    num_labels = manifest.num_classes + 1
    total = np.zeros((len(thresholds), num_labels, num_labels), dtype=np.int64)
    with open_for_manifest(map_path, manifest) as reader:
        if not crf:
            for record in tqdm(manifest.records, desc="seed sweep", unit="img"):
                seed = load_seed_image(reader, record, map_name, manifest.num_classes)
                total += sweep_confusions(seed, thresholds, num_labels)
            return total
    results = _crf_results(manifest, map_path, map_name, thresholds, workers)
    for result in tqdm(results, total=len(manifest.records), desc="seed sweep + CRF", unit="img"):
        total += result
    return total


def evaluate_saliency_background(manifest: Manifest, map_path: str | Path, map_name: str,
                                 crf: bool = False) -> np.ndarray:
    """The confusion matrix (L, L) of P-NOC's "seeds with saliency as background": each pixel's
    background score is 1 − its ``saliency`` (stored beside the seeds), the label the argmax over
    [1 − saliency, maps] (ties → background), refined by dCRF (IRN_CRF) with ``crf``; no sweep."""
    map_path = Path(map_path)
    num_labels = manifest.num_classes + 1
    total = np.zeros((num_labels, num_labels), dtype=np.int64)
    with open_for_manifest(map_path, manifest) as reader:
        for record in tqdm(manifest.records, desc="seeds with saliency background", unit="img"):
            seed = load_seed_image(reader, record, map_name, manifest.num_classes)
            try:  # only the saliency: the maps were read (and checked) above
                saliency = np.asarray(reader.read(record.image_id, ["saliency"])["saliency"], dtype=np.float32)
            except KeyError as error:
                raise EvaluationError(f"image {record.image_id!r} in {map_path} has no dataset 'saliency': "
                                      "not seeds with a saliency background") from error
            if saliency.shape != seed.mask.shape:
                raise EvaluationError(f"image {record.image_id!r}: saliency in {map_path} is {saliency.shape}, "
                                      f"the mask is {seed.mask.shape}")
            lut = np.r_[0, seed.keys + 1]
            compact = padded_argmax(seed.cam, 1.0 - saliency)
            if crf:
                compact = crf_from_labels(read_image(record.image_path), compact, lut.size, IRN_CRF)
            total += confusion_matrix(seed.mask, lut[compact], num_labels)
    return total


def evaluate_label_maps(manifest: Manifest, map_path: str | Path, map_name: str) -> np.ndarray:
    """The confusion matrix (L, L) of fixed label maps (H, W) in mask numbering (0 = background,
    k + 1 = class k), e.g. a segmentation network's predictions; every image of the manifest must
    have one, of its mask's size, with values in 0..C (else an EvaluationError naming it)."""
    map_path = Path(map_path)
    num_labels = manifest.num_classes + 1
    total = np.zeros((num_labels, num_labels), dtype=np.int64)
    with open_for_manifest(map_path, manifest) as reader:
        for record in tqdm(manifest.records, desc="label maps", unit="img"):
            data = reader.read(record.image_id)
            if map_name not in data:
                raise EvaluationError(f"image {record.image_id!r} in {map_path} has no dataset {map_name!r} "
                                      f"(it holds {sorted(data)})")
            labels = np.asarray(data[map_name])
            mask = read_ground_truth(record, manifest.num_classes)
            if labels.shape != mask.shape:
                raise EvaluationError(f"image {record.image_id!r}: {map_name!r} in {map_path} is {labels.shape}, "
                                      f"mask {record.mask_path} is {mask.shape}")
            if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
                raise EvaluationError(f"image {record.image_id!r}: {map_name!r} in {map_path} holds values "
                                      f"outside 0..{num_labels - 1}")
            total += confusion_matrix(mask, labels, num_labels)
    return total


def shard_manifest(manifest: Manifest, shard: int, num_shards: int) -> Manifest:
    """The manifest's images of one shard (the inference stages' assignment, `shard_ids`)."""
    ids = set(shard_ids(manifest.ids, shard, num_shards))
    return replace(manifest, records=[r for r in manifest.records if r.image_id in ids])


def write_confusion_shard(path: str | Path, confusions: np.ndarray, thresholds: Sequence[float] | None,
                          part: Manifest, shard: int, num_shards: int) -> None:
    """Saves one shard's summed confusion matrices (.npz): ``confusions`` (T, L, L) int64 with its
    ``thresholds`` (T,), or the one matrix (L, L) of an unswept scoring (``thresholds`` None), and
    what `merge_confusion_shards` checks: the shard's image ids, class names, shard and count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:  # a file object: np.savez would append .npz to a name
        np.savez(handle, confusions=np.asarray(confusions, dtype=np.int64),
                 thresholds=np.asarray([] if thresholds is None else thresholds, dtype=np.float64),
                 swept=np.bool_(thresholds is not None), image_ids=np.asarray(part.ids, dtype=str),
                 class_names=np.asarray(part.class_names, dtype=str), shard=np.int64(shard),
                 num_shards=np.int64(num_shards))
    os.replace(tmp, path)


def merge_confusion_shards(paths: Sequence[str | Path], manifest: Manifest
                           ) -> tuple[np.ndarray, list[float] | None, int]:
    """The sum of the shard files of one scoring (`write_confusion_shard`): the confusion
    matrices, the thresholds (None: unswept) and the number of images.

    The files must be the shards 0..N-1 (N = len(paths)) of this manifest, each holding exactly
    its shard's images, with the same classes and thresholds; anything else is an EvaluationError
    naming the file (e.g. a shard left from an older manifest or another shard count).
    """
    num_shards = len(paths)
    if not num_shards:
        raise EvaluationError("no shard files to merge")
    total: np.ndarray | None = None
    first: tuple[bool, list[float]] | None = None
    seen: dict[int, Path] = {}
    num_images = 0
    for path in map(Path, paths):
        with np.load(path, allow_pickle=False) as data:
            shard, count = int(data["shard"]), int(data["num_shards"])
            if count != num_shards or not 0 <= shard < num_shards:
                raise EvaluationError(f"{path} is shard {shard} of {count}; {num_shards} shard files were given")
            if shard in seen:
                raise EvaluationError(f"{path} and {seen[shard]} are both shard {shard}")
            seen[shard] = path
            if tuple(data["class_names"].tolist()) != manifest.class_names:
                raise EvaluationError(f"{path} scores the classes {data['class_names'].tolist()}, the manifest "
                                      f"has {list(manifest.class_names)}")
            if data["image_ids"].tolist() != shard_ids(manifest.ids, shard, num_shards):
                raise EvaluationError(f"{path} does not hold the images of shard {shard} of {num_shards} of "
                                      f"the manifest (split {manifest.split!r}): made from another manifest?")
            sweep = (bool(data["swept"]), data["thresholds"].tolist())
            if first is None:
                first = sweep
            elif sweep != first:
                raise EvaluationError(f"{path} is scored at thresholds {sweep[1]}, the first shard at {first[1]}")
            confusions = data["confusions"]
            if total is None:
                total = np.zeros_like(confusions, dtype=np.int64)
            if confusions.shape != total.shape:
                raise EvaluationError(f"{path} holds confusion matrices {confusions.shape}, the first shard "
                                      f"{total.shape}")
            total += confusions
            num_images += len(data["image_ids"])
    assert total is not None and first is not None
    return total, first[1] if first[0] else None, num_images


def best_index(mious: np.ndarray) -> int:
    """The index of the highest mIoU; the first (lowest threshold, in sweep order) on a tie."""
    return int(np.argmax(mious))


def _format(value: float) -> str:
    return "nan" if np.isnan(value) else repr(float(value))


def write_rows_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Writes a header and rows to ``path`` through a temporary file (never a half-written CSV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def write_outputs(confusions: np.ndarray, thresholds: Sequence[float] | None, class_names: Sequence[str],
                  identity: dict[str, str], curve_path: Path | None, per_class_path: Path,
                  summary_path: Path, num_images: int) -> dict[str, float]:
    """Writes curve, per-class and summary files; returns miou and best_threshold.

    ``thresholds`` None: ``confusions`` is the one matrix (L, L) of fixed label maps; no
    ``best_threshold`` row, and the curve (if asked for) has one row with an empty threshold.
    """
    fixed = thresholds is None
    if fixed:
        confusions = np.asarray(confusions)[None]
    scores = segmentation_scores(confusions)  # each (T, L)
    mious = np.asarray(mean_iou(confusions)).reshape(-1)
    with np.errstate(all="ignore"):
        means = {name: np.nanmean(values, axis=-1) for name, values in scores.items()}
    if curve_path is not None:
        write_rows_csv(curve_path, ["threshold", "miou", "mean_precision", "mean_recall", "mean_fp_rate",
                                "mean_fn_rate"],
                   [["" if fixed else repr(t), _format(mious[i]), _format(means["precision"][i]),
                     _format(means["recall"][i]), _format(means["fp_rate"][i]), _format(means["fn_rate"][i])]
                    for i, t in enumerate([None] if fixed else thresholds)])
    best = best_index(mious)
    names = ["background", *class_names]
    write_rows_csv(per_class_path, ["class", *PER_CLASS_SCORES],
               [[name] + [_format(scores[s][best, c]) for s in PER_CLASS_SCORES] for c, name in enumerate(names)])
    key = [identity[c] for c in SUMMARY_COLUMNS[:5]]
    rows = [key + ["miou", _format(mious[best])]]
    if not fixed:
        rows.append(key + ["best_threshold", repr(thresholds[best])])
    rows += [key + ["mean_precision", _format(means["precision"][best])],
            key + ["mean_recall", _format(means["recall"][best])],
            key + ["num_images", str(num_images)]]
    for score in PER_CLASS_SCORES:
        rows += [key + [f"{score}/{name}", _format(scores[score][best, c])] for c, name in enumerate(names)]
    write_rows_csv(summary_path, SUMMARY_COLUMNS, rows)
    return {"miou": float(mious[best]), "best_threshold": float("nan") if fixed else float(thresholds[best])}
