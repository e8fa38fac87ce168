"""Figures and tables of the HTML report (``snakemake --report``); the step
`wsss_steps.report_figures` gives each a subcommand.

- `plot_precision_recall`: the seeds' precision against recall over the sweep, every seed method of
  a dataset in one figure; PNG.
- `render_table`: the stage-by-stage mIoU table (seeds, +CRF, pseudo masks, +CRF, segmentation,
  +CRF) of every experiment from results/summary.csv, as in the papers' tables, with the
  segmentation network's share of the fully supervised upper bound (method ``full``), and the
  ``wsol`` rows' scores (`wsol_table`); HTML.
- `plot_sweep`: mIoU against the background threshold of the swept stages (``curve.csv`` files); PNG.
- `plot_per_class`: per-class IoU bars of several stages (``per_class.csv`` files); PNG.
- `render_gallery`: for a few training images, overlays of the ground truth, the seeds (at their
  best threshold), the pseudo mask and the segmentation network's prediction (+dCRF); PNG.
- `render_wsol_boxes`: for a few WSOL evaluation images, each experiment's map with the
  ground-truth and predicted boxes; PNG.
"""
from __future__ import annotations

import csv
import html
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsss_steps.data.images import read_image, read_label_mask, write_image
from wsss_steps.data.manifest import read_manifest, spread_ids
from wsss_steps.methods.labels import foreground_argmax
from wsss_steps.report.overlays import colorize_labels
from wsss_steps.report.overlays import titled as titled_panel
from wsss_steps.store.maps import MapReader

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("seeds", "seeds_crf", "pseudo_masks", "pseudo_masks_crf", "segmentation",
                           "segmentation_crf")
STAGE_TITLES = {"seeds": "seeds", "seeds_crf": "+CRF", "pseudo_masks": "pseudo masks", "pseudo_masks_crf": "+CRF",
                "segmentation": "segmentation (val)", "segmentation_crf": "+CRF"}
FULL = "full"
GALLERY_PANEL = 128  # smaller images are enlarged (nearest neighbour) to at least this height


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"report_figures: file not found: {path}")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# Stage table


def stage_table(summary_rows: Sequence[dict[str, str]]) -> tuple[list[tuple[str, str]], dict[tuple[str, str], dict[str, float]]]:
    """Experiments (classifier, method) in order (``full`` last) and their mIoU per stage."""
    table: dict[tuple[str, str], dict[str, float]] = {}
    for row in summary_rows:
        if row["metric"] == "miou" and row["stage"] in STAGES:
            table.setdefault((row["classifier"], row["method"]), {})[row["stage"]] = float(row["value"])
    order = sorted(table, key=lambda key: (key[1] == FULL, key))
    return order, table


def render_table(summary_path: Path, dataset: str | None = None) -> str:
    """The HTML page of the stage table (mIoU in %; train split for seeds and pseudo masks, val for
    the segmentation network) with the ratio to the ``full`` upper bound of the same classifier;
    with ``dataset``, only that dataset's rows."""
    rows = [row for row in _read_csv(summary_path) if dataset is None or row["dataset"] == dataset]
    order, table = stage_table(rows)
    splits = {row["stage"]: row["split"] for row in rows if row["stage"] in STAGES}
    head = "".join(f"<th>{html.escape(STAGE_TITLES[s])}<br><small>{html.escape(splits.get(s, ''))}</small></th>"
                   for s in STAGES)
    head += "<th>segmentation / full</th><th>+CRF / full</th>"
    body = []
    for classifier, method in order:
        scores = table[(classifier, method)]
        full = table.get((classifier, FULL), {})
        cells = "".join(f"<td>{100 * scores[s]:.1f}</td>" if s in scores else "<td>–</td>" for s in STAGES)
        for stage in ("segmentation", "segmentation_crf"):
            if method != FULL and stage in scores and full.get(stage):
                cells += f"<td>{100 * scores[stage] / full[stage]:.0f}%</td>"
            else:
                cells += "<td>–</td>"
        label = f"{html.escape(method)} <small>(classifier {html.escape(classifier)})</small>"
        if method == FULL:
            label = f"full supervision <small>(upper bound; backbone from {html.escape(classifier)})</small>"
        body.append(f"<tr><th>{label}</th>{cells}</tr>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Stage-by-stage mIoU</title><style>"
        "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "th,td{border:1px solid #bbb;padding:4px 10px;text-align:center}th small{color:#666}"
        "tbody th{text-align:left}</style></head><body>"
        "<h3>mIoU (%) per stage</h3><table><thead><tr><th>experiment</th>" + head + "</tr></thead><tbody>"
        + "".join(body) + "</tbody></table>"
        "<p>Seeds: best background threshold of the sweep. Pseudo masks: the random walk at its threshold "
        "(sweep best) and after dCRF. Segmentation: the network trained on the pseudo masks (or the ground "
        "truth for full supervision), multi-scale + flip inference, and after DeepLab's dCRF.</p>"
        + wsol_table(rows) + "</body></html>")


# ---------------------------------------------------------------------------------------------
# Plots


WSOL_METRICS = (("gt_known_loc", "GT-known Loc"), ("top1_loc", "Top-1 Loc"), ("maxboxacc", "MaxBoxAcc"),
                ("maxboxacc_v2", "MaxBoxAccV2"), ("pxap", "PxAP"), ("best_threshold", "threshold"))


def wsol_table(summary_rows: Sequence[dict[str, str]]) -> str:
    """The HTML table of the ``wsol`` rows (scores in %), or '' without any."""
    table: dict[tuple[str, str], dict[str, float]] = {}
    for row in summary_rows:
        if row["stage"] == "wsol":
            table.setdefault((row["classifier"], row["method"]), {})[row["metric"]] = float(row["value"])
    if not table:
        return ""
    split = next(row["split"] for row in summary_rows if row["stage"] == "wsol")
    head = "".join(f"<th>{title}</th>" for _, title in WSOL_METRICS)
    body = ""
    for (classifier, method), scores in table.items():
        cells = "".join(
            "<td>–</td>" if key not in scores else
            f"<td>{scores[key]:.2f}</td>" if key == "best_threshold" else f"<td>{100 * scores[key]:.1f}</td>"
            for key, _ in WSOL_METRICS)
        body += f"<tr><td>{html.escape(classifier)} / {html.escape(method)}</td>{cells}</tr>"
    return (f"<h3>Localisation (%), {html.escape(split)} split's WSOL images</h3><table><thead><tr>"
            f"<th>classifier / maps</th>{head}</tr></thead><tbody>{body}</tbody></table>")


def render_wsol_boxes(manifest_path: Path, boxes: Sequence[tuple[str, Path]], maps: Sequence[tuple[str, Path]],
                      out: Path, count: int) -> list[str]:
    """One row per image, one panel per experiment: its map (heat overlay), ground-truth boxes
    (green) and predicted box (red) with the IoU. Returns the image ids shown."""
    manifest = read_manifest(manifest_path)
    ids = spread_ids(manifest.ids, count)
    map_files = dict(maps)
    predicted = {name: {row["image_id"]: row for row in _read_csv(path)} for name, path in boxes}
    readers = {name: MapReader(map_files[name]) for name, _ in boxes}
    rows = []
    try:
        for image_id in ids:
            record = manifest.record(image_id)
            image = read_image(record.image_path)
            zoom = max(1, -(-GALLERY_PANEL // image.shape[0]))
            panels = []
            for name, _ in boxes:
                data = readers[name].read(image_id)
                if "weight_map" in data:
                    score_map = np.asarray(data["weight_map"], np.float32)
                else:
                    keys = np.asarray(data["keys"]).reshape(-1).tolist()
                    score_map = np.asarray(data["cam"][keys.index(record.labels[0])], np.float32)
                heat = cv2.applyColorMap(np.clip(score_map / max(float(score_map.max()), 1e-8) * 255, 0, 255)
                                         .astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
                panel = (0.5 * image + 0.5 * heat).astype(np.uint8)
                panel = cv2.resize(panel, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
                for box in record.boxes:
                    if box.label == record.labels[0]:
                        cv2.rectangle(panel, (box.x_min * zoom, box.y_min * zoom),
                                      (box.x_max * zoom + zoom - 1, box.y_max * zoom + zoom - 1), (0, 255, 0), 2)
                row = predicted[name][image_id]
                x0, y0, x1, y1 = (int(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
                cv2.rectangle(panel, (x0 * zoom, y0 * zoom), (x1 * zoom + zoom - 1, y1 * zoom + zoom - 1),
                              (255, 0, 0), 2)
                panels.append(titled_panel(panel, f"{name} IoU {float(row['iou']):.2f}"))
            rows.append(_side_by_side(panels))
    finally:
        for reader in readers.values():
            reader.close()
    write_image(out, _stacked(rows))
    return ids


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_curves(plt: Any, fig: Any, ax: Any, out: Path, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_sweep(curves: Sequence[tuple[str, Path]], out: Path, title: str) -> None:
    """mIoU (%) against the background threshold, one line per stage, best point marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name, path in curves:
        rows = _read_csv(path)
        points = [(float(r["threshold"]), 100 * float(r["miou"])) for r in rows if r["threshold"] not in ("", None)]
        if not points and rows:  # no sweep (seeds with a saliency background): one level
            level = 100 * float(rows[0]["miou"])
            ax.axhline(level, linestyle="--", label=f"{name} (no sweep: {level:.1f})")
            continue
        if not points:
            raise ValueError(f"report_figures: {path} holds no threshold sweep")
        xs, ys = zip(*points, strict=True)
        best = int(np.argmax(ys))
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=f"{name} (best {ys[best]:.1f} at {xs[best]:.2f})")
        ax.plot([xs[best]], [ys[best]], marker="*", markersize=12, color=line.get_color())
    _save_curves(plt, fig, ax, out, "background threshold", "mIoU (%)", title)


def plot_precision_recall(curves: Sequence[tuple[str, Path]], out: Path, title: str) -> None:
    """Mean precision against mean recall over the threshold sweep, one line per seed method; the
    star marks each method's best-mIoU threshold. A method that finds more of each object at the
    same precision (AdvCAM's claim over CAM) lies above and to the right."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for name, path in curves:
        all_rows = _read_csv(path)
        rows = [r for r in all_rows if r.get("threshold") not in ("", None)]
        if not rows and all_rows:  # no sweep (seeds with a saliency background): one point
            point = all_rows[0]
            ax.plot([100 * float(point["mean_recall"])], [100 * float(point["mean_precision"])], marker="*",
                    markersize=12, linestyle="none",
                    label=f"{name} (mIoU {100 * float(point['miou']):.1f}, saliency background)")
            continue
        if not rows:
            raise ValueError(f"report_figures: {path} holds no threshold sweep")
        recall = [100 * float(r["mean_recall"]) for r in rows]
        precision = [100 * float(r["mean_precision"]) for r in rows]
        best = int(np.argmax([float(r["miou"]) for r in rows]))
        (line,) = ax.plot(recall, precision, marker="o", markersize=3,
                          label=f"{name} (best mIoU {100 * float(rows[best]['miou']):.1f} at "
                                f"{float(rows[best]['threshold']):.2f})")
        ax.plot([recall[best]], [precision[best]], marker="*", markersize=12, color=line.get_color())
    _save_curves(plt, fig, ax, out, "mean recall (%)", "mean precision (%)", title)


def plot_per_class(tables: Sequence[tuple[str, Path]], out: Path, title: str) -> None:
    """Grouped bars of the per-class IoU (%) of several stages."""
    plt = _pyplot()
    classes: list[str] | None = None
    values = []
    for _, path in tables:
        rows = _read_csv(path)
        names = [r["class"] for r in rows]
        if classes is None:
            classes = names
        elif names != classes:
            raise ValueError(f"report_figures: {path} lists classes {names}, the others {classes}")
        values.append([100 * float(r["iou"]) if r["iou"] not in ("", "nan") else 0.0 for r in rows])
    assert classes is not None, "no per-class table given"
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.4, 2.0 + 0.22 * len(classes) * len(tables))), 4.5), dpi=100)
    width = 0.8 / len(tables)
    positions = np.arange(len(classes))
    for i, (name, _) in enumerate(tables):
        ax.bar(positions + (i - (len(tables) - 1) / 2) * width, values[i], width, label=name)
    ax.set_xticks(positions, classes, rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(3, len(tables)))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Gallery


def label_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """VOC colours of the labels blended over the image where the label is not background."""
    colour = colorize_labels(labels).astype(np.float32)
    blended = image.astype(np.float32) * (1 - alpha) + colour * alpha
    return np.where((labels > 0)[..., None], blended, image).astype(np.uint8)


def best_threshold(rows_path: Path) -> float:
    """The seeds' best background threshold; NaN for seeds scored without a sweep (a saliency
    background), whose rows have a miou but no best_threshold."""
    rows = _read_csv(rows_path)
    for row in rows:
        if row["metric"] == "best_threshold":
            return float(row["value"])
    if any(row["metric"] == "miou" for row in rows):
        return float("nan")
    raise ValueError(f"report_figures: {rows_path} has no best_threshold row")


def _side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels resized to the tallest one's height, left to right."""
    height = max(p.shape[0] for p in panels)
    return np.concatenate([cv2.resize(p, (round(p.shape[1] * height / p.shape[0]), height))
                           if p.shape[0] != height else p for p in panels], axis=1)


def _stacked(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows top to bottom on a white sheet, 4 px apart."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                           for r in rows], axis=0)


def render_gallery(manifest_path: Path, predictions: Path, out: Path, count: int, seeds: Path | None = None,
                   seeds_rows: Path | None = None, pseudo_masks: Path | None = None,
                   crf: bool = True) -> list[str]:
    """One row per image: image, ground truth, seeds, pseudo mask, prediction (+dCRF), as overlays.

    ``predictions`` holds the segmentation network's ``mask`` (and ``mask_crf``) of the gallery's
    images (`wsss_steps.segment --gallery`). Returns the image ids shown."""
    manifest = read_manifest(manifest_path)
    ids = spread_ids(manifest.ids, count)
    threshold = best_threshold(seeds_rows) if seeds is not None and seeds_rows is not None else None
    saliency_background = threshold is not None and math.isnan(threshold)
    seed_reader = MapReader(seeds) if seeds is not None else None
    mask_reader = MapReader(pseudo_masks) if pseudo_masks is not None else None
    prediction_reader = MapReader(predictions)
    rows = []
    try:
        for image_id in ids:
            record = manifest.record(image_id)
            image = read_image(record.image_path)
            zoom = max(1, -(-GALLERY_PANEL // image.shape[0]))

            def titled(panel: np.ndarray, title: str, zoom: int = zoom) -> np.ndarray:
                return titled_panel(cv2.resize(panel, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST),
                                    title)

            panels = [titled(image, image_id)]
            if record.mask_path is not None:
                gt = read_label_mask(record.mask_path)
                panels.append(titled(label_overlay(image, np.where(gt == 255, 0, gt)), "ground truth"))
            if seed_reader is not None:
                data = seed_reader.read(image_id, ["cam", "keys", "saliency"] if saliency_background
                                        else ["cam", "keys"])
                fg_label, fg_score = foreground_argmax(np.asarray(data["cam"], np.float32),
                                                       np.asarray(data["keys"], np.int64).reshape(-1))
                background = (1.0 - np.asarray(data["saliency"], np.float32) if saliency_background
                              else threshold if threshold is not None else 0.5)
                seeds_label = np.where(fg_score > background, fg_label, 0)
                title = ("seeds (saliency bg)" if saliency_background else
                         f"seeds (t={threshold:.2f})" if threshold is not None else "seeds")
                panels.append(titled(label_overlay(image, seeds_label), title))
            if mask_reader is not None:
                pseudo = np.asarray(mask_reader.read(image_id, ["mask"])["mask"])
                panels.append(titled(label_overlay(image, np.where(pseudo == 255, 0, pseudo)), "pseudo mask"))
            prediction = prediction_reader.read(image_id, ["mask", "mask_crf"] if crf else ["mask"])
            panels.append(titled(label_overlay(image, prediction["mask"]), "prediction"))
            if crf:
                panels.append(titled(label_overlay(image, prediction["mask_crf"]), "prediction +CRF"))
            rows.append(_side_by_side(panels))
    finally:
        for reader in (seed_reader, mask_reader, prediction_reader):
            if reader is not None:
                reader.close()
    write_image(out, _stacked(rows))
    return ids
