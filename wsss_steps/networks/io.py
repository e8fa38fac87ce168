"""Saving and loading trained CAM classifiers.

A classifier file is a plain dict readable with ``torch.load(..., weights_only=True)``:
``{"format": FORMAT, "meta": {...}, "state_dict": {...}}``. ``meta`` holds only JSON-like values
(str, int, float, bool, None, lists, dicts) and at least ``backbone``, ``output_stride``,
``num_classes``; usually also ``class_names``, ``variant`` and the training parameters. The loader
rebuilds the backbone without pretrained weights: every weight comes from the file.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wsss_steps.networks.backbones import build_backbone
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.store.digests import file_digest

FORMAT = "wsss_classifier/2"  # 2: small_resnet with hybrid dilations


def _plain(value: Any, where: str) -> Any:
    """A JSON-like copy of ``value`` (tuples become lists); raises on anything else."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as error:
        raise TypeError(f"classifier metadata {where} must hold plain values only: {error}") from error


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_classifier(path: str | Path, model: CamClassifier, meta: Mapping[str, Any]) -> None:
    """Writes the model's state dict and ``meta`` (backbone name, output stride and class count are
    filled in from the model when missing, and must agree with it when given)."""
    meta = dict(_plain(dict(meta), "meta"))
    backbone = model.backbone
    derived = {"backbone": getattr(backbone, "name", None),
               "output_stride": getattr(backbone, "output_stride", None),
               "num_classes": model.num_classes}
    for key, value in derived.items():
        if value is None:
            if key not in meta:
                raise ValueError(f"classifier metadata needs {key!r} (the backbone does not say)")
        elif meta.setdefault(key, value) != value:
            raise ValueError(f"classifier metadata {key}={meta[key]!r} disagrees with the model ({value!r})")
    class_names = meta.get("class_names")
    if class_names is not None and len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "meta": meta, "state_dict": state}, path)


def read_classifier_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a classifier file (loads the whole file; weights stay on the CPU)."""
    return _read(Path(path))["meta"]


def read_model_file(path: str | Path, fmt: str, what: str) -> dict[str, Any]:
    """The dict of a model file of format ``fmt`` (``torch.load(..., weights_only=True)``);
    ``what`` names the kind of file in errors (e.g. "classifier")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    content = load_weights_file(path, what)
    if not isinstance(content, dict) or content.get("format") != fmt:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path} is not a {what} file of format {fmt} (found {found!r})")
    return content


def load_weights_file(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)``; a file that is not a plain weights file (a pickled
    object, a truncated or foreign file) raises ValueError naming it, not torch's bare message."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{what} file {path} is not a weights-only torch file (it may hold pickled code, "
                         f"which is never loaded, or be damaged): {first_line}") from error


def model_identity(path: str | Path, meta: Mapping[str, Any]) -> str:
    """What a model file stands for in the identity of what is computed from it: its training
    identity (settings and input digests) where it records one, else the digest of its bytes."""
    return str(meta.get("settings_hash") or file_digest(path))


def _read(path: Path) -> dict[str, Any]:
    return read_model_file(path, FORMAT, "classifier")


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[CamClassifier, dict[str, Any]]:
    """The classifier stored in ``path`` on ``device``, in eval mode, and its metadata."""
    path = Path(path)
    content = _read(path)
    meta = content["meta"]
    backbone = build_backbone(meta["backbone"], None, int(meta["output_stride"]), pretrained=False)
    model = CamClassifier(backbone, int(meta["num_classes"]))
    try:
        model.load_state_dict(content["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"classifier file {path} does not fit its own metadata: {error}") from error
    return model.to(device).eval(), meta
