"""Figures and tables of the HTML report (``snakemake --report``), one subcommand each.

- ``table``: the stage-by-stage mIoU table (seeds, +CRF, pseudo masks, +CRF, segmentation, +CRF)
  of every experiment from results/summary.csv, as in the papers' tables, with the segmentation
  network's share of the fully supervised upper bound (method ``full``); HTML.
- ``sweep``: mIoU against the background threshold of the swept stages (``curve.csv`` files); PNG.
- ``per-class``: per-class IoU bars of several stages (``per_class.csv`` files); PNG.
- ``gallery``: for a few training images, overlays of the ground truth, the seeds (at their best
  threshold), the pseudo mask and the segmentation network's prediction (+dCRF); PNG.

Example::

    python -m wsss_steps.report_figures table --summary results/summary.csv --out stages.html
"""

from __future__ import annotations

import argparse
import csv
import html
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from wsss_steps.datasets import read_manifest
from wsss_steps.evaluate_seeds import foreground_argmax
from wsss_steps.image_io import read_image, read_label_mask, write_image
from wsss_steps.inspect import colorize_labels
from wsss_steps.inspect import titled as titled_panel
from wsss_steps.logs import setup_logging
from wsss_steps.map_store import MapReader

log = logging.getLogger("wsss_steps.report_figures")

STAGES: tuple[str, ...] = ("seeds", "seeds_crf", "pseudo_masks", "pseudo_masks_crf", "segmentation",
                           "segmentation_crf")
STAGE_TITLES = {"seeds": "seeds", "seeds_crf": "+CRF", "pseudo_masks": "pseudo masks", "pseudo_masks_crf": "+CRF",
                "segmentation": "segmentation (val)", "segmentation_crf": "+CRF"}
FULL = "full"
GALLERY_PANEL = 128  # smaller images are enlarged (nearest neighbour) to at least this height


def _split_pairs(pairs: Sequence[str], option: str) -> list[tuple[str, Path]]:
    out = []
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"report_figures: {option} takes NAME=PATH, not {pair!r}")
        out.append((name, Path(path)))
    return out


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


def render_table(summary_path: Path) -> str:
    """The HTML page of the stage table (mIoU in %; train split for seeds and pseudo masks, val for
    the segmentation network) with the ratio to the ``full`` upper bound of the same classifier."""
    rows = _read_csv(summary_path)
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
        "</body></html>")


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(curves: Sequence[tuple[str, Path]], out: Path, title: str) -> None:
    """mIoU (%) against the background threshold, one line per stage, best point marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name, path in curves:
        rows = _read_csv(path)
        points = [(float(r["threshold"]), 100 * float(r["miou"])) for r in rows if r["threshold"] not in ("", None)]
        if not points:
            raise ValueError(f"report_figures: {path} holds no threshold sweep")
        xs, ys = zip(*points, strict=True)
        best = int(np.argmax(ys))
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=f"{name} (best {ys[best]:.1f} at {xs[best]:.2f})")
        ax.plot([xs[best]], [ys[best]], marker="*", markersize=12, color=line.get_color())
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


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


def gallery_ids(ids: Sequence[str], count: int) -> list[str]:
    """``count`` ids spread evenly over the split (deterministic)."""
    if not ids:
        raise ValueError("report_figures: the split has no image")
    positions = np.linspace(0, len(ids) - 1, min(count, len(ids))).round().astype(int)
    return [ids[p] for p in dict.fromkeys(positions.tolist())]


def best_threshold(rows_path: Path) -> float:
    for row in _read_csv(rows_path):
        if row["metric"] == "best_threshold":
            return float(row["value"])
    raise ValueError(f"report_figures: {rows_path} has no best_threshold row")


def render_gallery(manifest_path: Path, model_path: Path, out: Path, count: int, seeds: Path | None = None,
                   seeds_rows: Path | None = None, pseudo_masks: Path | None = None,
                   scales: Sequence[float] = (1.0,), flip: bool = True, crf: bool = True,
                   device: str = "cpu") -> list[str]:
    """One row per image: image, ground truth, seeds, pseudo mask, prediction (+dCRF), as overlays.
    Returns the image ids shown."""
    from wsss_steps.networks.segmentation import load_segmentation
    from wsss_steps.preprocess import resolve_device
    from wsss_steps.segment import predict_image

    manifest = read_manifest(manifest_path)
    torch_device = resolve_device(device)
    model, _ = load_segmentation(model_path, torch_device)
    ids = gallery_ids(manifest.ids, count)
    threshold = best_threshold(seeds_rows) if seeds is not None and seeds_rows is not None else None
    seed_reader = MapReader(seeds) if seeds is not None else None
    mask_reader = MapReader(pseudo_masks) if pseudo_masks is not None else None
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
                data = seed_reader.read(image_id, ["cam", "keys"])
                fg_label, fg_score = foreground_argmax(np.asarray(data["cam"], np.float32),
                                                       np.asarray(data["keys"], np.int64).reshape(-1))
                seeds_label = np.where(fg_score > (threshold if threshold is not None else 0.5), fg_label, 0)
                panels.append(titled(label_overlay(image, seeds_label),
                                     f"seeds (t={threshold:.2f})" if threshold is not None else "seeds"))
            if mask_reader is not None:
                pseudo = np.asarray(mask_reader.read(image_id, ["mask"])["mask"])
                panels.append(titled(label_overlay(image, np.where(pseudo == 255, 0, pseudo)), "pseudo mask"))
            prediction = predict_image(model, image, torch_device, scales, flip, crf)
            panels.append(titled(label_overlay(image, prediction["mask"]), "prediction"))
            if crf:
                panels.append(titled(label_overlay(image, prediction["mask_crf"]), "prediction +CRF"))
            height = max(p.shape[0] for p in panels)
            panels = [cv2.resize(p, (round(p.shape[1] * height / p.shape[0]), height)) if p.shape[0] != height
                      else p for p in panels]
            rows.append(np.concatenate(panels, axis=1))
    finally:
        for reader in (seed_reader, mask_reader):
            if reader is not None:
                reader.close()
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                            for r in rows], axis=0)
    write_image(out, sheet)
    return ids


# ---------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wsss_steps.report_figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="stage-by-stage mIoU table (HTML)")
    table.add_argument("--summary", required=True, type=Path, help="results/summary.csv")
    table.add_argument("--out", required=True, type=Path)
    sweep = commands.add_parser("sweep", help="mIoU against the background threshold (PNG)")
    sweep.add_argument("--curve", required=True, nargs="+", metavar="STAGE=CSV", help="curve.csv per stage")
    sweep.add_argument("--title", default="")
    sweep.add_argument("--out", required=True, type=Path)
    per_class = commands.add_parser("per-class", help="per-class IoU bars (PNG)")
    per_class.add_argument("--per-class", required=True, nargs="+", metavar="STAGE=CSV", help="per_class.csv per stage")
    per_class.add_argument("--title", default="")
    per_class.add_argument("--out", required=True, type=Path)
    gallery = commands.add_parser("gallery", help="overlays of every stage on a few images (PNG)")
    gallery.add_argument("--manifest", required=True, type=Path, help="split manifest (the seeds' split)")
    gallery.add_argument("--model", required=True, type=Path, help="segmentation network")
    gallery.add_argument("--seeds", type=Path, help="seed map file of the split")
    gallery.add_argument("--seeds-rows", type=Path, help="the seeds' summary rows (their best threshold)")
    gallery.add_argument("--pseudo-masks", type=Path, help="pseudo-mask file of the split")
    gallery.add_argument("--count", type=int, default=6, help="images shown (default: %(default)s)")
    gallery.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test scales (default: 1.0)")
    gallery.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    gallery.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True)
    gallery.add_argument("--device", default="cpu")
    gallery.add_argument("--threads", type=int, help="torch CPU threads")
    gallery.add_argument("--out", required=True, type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.command == "table":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render_table(args.summary))
    elif args.command == "sweep":
        plot_sweep(_split_pairs(args.curve, "--curve"), args.out, args.title)
    elif args.command == "per-class":
        plot_per_class(_split_pairs(args.per_class, "--per-class"), args.out, args.title)
    else:
        if args.count < 1:
            raise SystemExit(f"report_figures: --count must be ≥ 1, not {args.count}")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        render_gallery(args.manifest, args.model, args.out, args.count, args.seeds, args.seeds_rows,
                       args.pseudo_masks, args.scales, args.flip, args.crf, args.device)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
