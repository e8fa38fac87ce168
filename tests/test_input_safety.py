"""Bad or hostile input stops before any job, by name, and never costs the user data (issue 14:
cases 1 data loss, 4 shell injection, 6–7 silently wrong or late failures)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.workflow_helpers import ENV, SNAKEMAKE, snakemake, tiny_config, write_config
from wsss_steps.workflow.config import ConfigError, check_config, duplicate_keys

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
CONFIG = yaml.safe_load((ROOT / "configs" / "all_methods.yaml").read_text())  # every section in use


def _refused(workdir: Path, *args: str) -> str:
    """Runs snakemake expecting a refusal before any job; returns its output."""
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "1", *args], capture_output=True,
                            text=True, timeout=300, env=ENV)
    assert result.returncode != 0, result.stdout[-2000:]
    assert not (workdir / "results").exists() and not (workdir / "logs").exists()
    return result.stdout + result.stderr


def test_generated_root_holding_the_users_files_is_refused_and_kept(tmp_path: Path) -> None:
    photos = tmp_path / "my_photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"not ours to delete")
    config = tiny_config(dataset={**tiny_config()["dataset"], "root": str(photos)})
    write_config(tmp_path, config)
    output = _refused(tmp_path, "--until", "generate_dataset")
    assert "dataset.root (kind: generated)" in output and "refusing to write into" in output
    assert "kind: custom" in output
    assert (photos / "holiday.jpg").read_bytes() == b"not ours to delete"


def test_a_root_with_shell_syntax_or_spaces_is_a_path_not_a_command(tmp_path: Path) -> None:
    root = "data/x $(touch PWNED); touch PWNED2"
    config = tiny_config(dataset={**tiny_config()["dataset"], "root": root})
    write_config(tmp_path, config)
    snakemake(tmp_path, "--cores", "1", "--until", "prepare_data")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    assert (tmp_path / root / "dataset.json").is_file()
    assert (tmp_path / "results" / "tiny" / "data" / "train.csv").is_file()


def test_duplicated_yaml_key_is_named_with_its_lines(tmp_path: Path) -> None:
    text = (ROOT / "config.yaml").read_text().replace("    epochs: 30\n", "    epochs: 30\n    epochs: 3\n", 1)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    [message] = duplicate_keys(path)
    line = text.splitlines().index("    epochs: 3") + 1
    assert f"key 'epochs' on line {line} repeats the one on line {line - 1}" in message
    assert str(path) in message
    with pytest.raises(ConfigError, match="repeats the one"):
        check_config(yaml.safe_load(text), SCHEMA, (path,))


def test_duplicated_yaml_key_stops_the_workflow(tmp_path: Path) -> None:
    path = write_config(tmp_path, tiny_config())
    path.write_text(path.read_text().replace("shards: 2\n", "shards: 2\nshards: 3\n"))
    assert "key 'shards'" in _refused(tmp_path, "-n")


@pytest.mark.parametrize(("where", "value"), [(("classifiers", "cam", "epochs"), 2.0), (("shards",), 2.0)])
def test_float_where_an_integer_belongs(where: tuple[str, ...], value: float) -> None:
    config = copy.deepcopy(CONFIG)
    node = config
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(ConfigError, match=rf"config key '{'.'.join(where)}' must be an integer, not 2.0"):
        check_config(config, SCHEMA)


def test_backward_threshold_sweep_is_refused() -> None:
    config = copy.deepcopy(CONFIG)
    config["evaluation"]["seeds"]["thresholds"] = [0.1, 0.5, 0]
    with pytest.raises(ConfigError, match=r"evaluation.seeds.thresholds = \[0.1, 0.5, 0\]: a sweep"):
        check_config(config, SCHEMA)
    config["evaluation"]["seeds"]["thresholds"] = [0.6, 0.5, 0.05]
    with pytest.raises(ConfigError, match="start <= stop"):
        check_config(config, SCHEMA)


def test_an_experiment_listed_twice_is_refused_and_the_summary_kept(tmp_path: Path) -> None:
    config = tiny_config()
    config["experiments"].append(dict(config["experiments"][0]))
    write_config(tmp_path, config)
    with pytest.raises(ConfigError, match=r"experiments\[2\]: classifier 'cam' with seeds 'cam' is listed twice"):
        check_config(config, SCHEMA)
    summary = tmp_path / "results" / "summary.csv"
    output = _refused_keeping(tmp_path, summary)
    assert "listed twice" in output


def _refused_keeping(workdir: Path, kept: Path) -> str:
    kept.parent.mkdir(parents=True)
    kept.write_text("an earlier run's summary\n")
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "1"], capture_output=True,
                            text=True, timeout=300, env=ENV)
    assert result.returncode != 0
    assert kept.read_text() == "an earlier run's summary\n"
    return result.stdout + result.stderr


def test_saliency_readers_name_a_saliency_entry_and_cycles_are_refused() -> None:
    config = copy.deepcopy(CONFIG)
    config["seeds"]["sal"] = {"method": "advcam_sal"}
    with pytest.raises(ConfigError, match="seeds.sal: method advcam_sal needs saliency: <saliency entry>"):
        check_config(config, SCHEMA)
    config["seeds"]["sal"] = {"method": "advcam", "saliency": "c2am_h"}
    with pytest.raises(ConfigError, match="seeds.sal.saliency: not read by method advcam"):
        check_config(config, SCHEMA)
    config["seeds"]["sal"] = {"method": "advcam_sal", "saliency": "nowhere"}
    with pytest.raises(ConfigError, match="seeds.sal.saliency = 'nowhere' is not a key of 'saliency'"):
        check_config(config, SCHEMA)
    # C²AM-H hinted by AdvCAM-Sal seeds that read this same C²AM-H: a cycle, named step by step.
    config["saliency"] = {"c2am_h": {"method": "c2am_h", "classifier": "cam", "seeds": "sal"},
                          "refined": {"method": "refined", "source": "c2am_h"}}
    config["seeds"]["sal"] = {"method": "advcam_sal", "saliency": "c2am_h"}
    with pytest.raises(ConfigError, match="depend on themselves: .*seeds.sal → saliency.c2am_h"):
        check_config(config, SCHEMA)
    config["saliency"]["c2am_h"]["seeds"] = "cam"
    config["seeds"]["sal"] = {"method": "advcam_sal", "saliency": "refined"}
    config["seeds"]["cam_sal"] = {"method": "saliency_background", "seeds": "cam", "saliency": "c2am_h"}
    check_config(config, SCHEMA)  # no cycle: accepted
    config["saliency"]["refined"]["source"] = "refined"
    with pytest.raises(ConfigError, match="saliency.refined → saliency.refined"):
        check_config(config, SCHEMA)
    config["saliency"]["refined"] = {"method": "refined", "source": "c2am_h", "classifier": "cam"}
    with pytest.raises(ConfigError, match="saliency.refined.classifier: not read by method refined"):
        check_config(config, SCHEMA)


def test_a_generated_root_written_by_the_workflow_is_accepted_again(tmp_path: Path) -> None:
    """Snakemake marks a directory() output with .snakemake_timestamp: still the generator's own."""
    write_config(tmp_path, tiny_config())
    snakemake(tmp_path, "--cores", "1", "--until", "generate_dataset")
    assert (tmp_path / "data" / "tiny" / ".snakemake_timestamp").exists()
    dry_run = snakemake(tmp_path, "-n", "--until", "prepare_data")
    assert "generate_dataset" not in dry_run.stdout.split("Job stats")[-1]


def test_ground_truth_subset_of_a_generated_dataset_is_checked_before_any_job(tmp_path: Path) -> None:
    """Issue 29 item 8: its ids follow from the generator settings; no need to wait for the data."""
    (tmp_path / "gt.txt").write_text("train_000001\ntrain_000024\nval_000000\n")  # num_train 24: 0..23
    config = tiny_config()
    config["experiments"].append({"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.txt"}})
    write_config(tmp_path, config)
    output = _refused(tmp_path, "-n")
    assert ("dataset tiny, experiment cam+gt: 2 id(s) of the ground-truth subset gt.txt are not images of split "
            "'train' (e.g. 'train_000024', 'val_000000')") in output
    (tmp_path / "gt.txt").write_text("train_000001\ntrain_000023\n")
    snakemake(tmp_path, "-n")


def _cub_wsol_config(root: Path, **wsol: str) -> dict:
    """WSOL only, on CUB: a softmax classifier's CAMs, calibrated on train, scored on test."""
    soft = {**tiny_config()["classifiers"]["cam"], "loss": "softmax"}
    return tiny_config(dataset={"name": "birds", "kind": "cub", "root": str(root), "val_split": "test"},
                       classifiers={"soft": soft}, seeds={"cam": {"method": "cam", "scales": [1.0]}}, experiments=[],
                       wsol={"experiments": [{"classifier": "soft", "maps": "cam"}], "evaluation_split": "test", **wsol})


def test_wsol_only_on_cub_without_segmentations_is_accepted(tmp_path: Path) -> None:
    """Issue 29 item 9: the official CUB download has no segmentations/, and WSOL reads no train
    mask (PxAP is left out where the evaluation images have none)."""
    from tests.test_datasets import make_cub

    root = make_cub(tmp_path / "CUB_200_2011", segmentations=False)
    write_config(tmp_path, _cub_wsol_config(root))
    dry_run = snakemake(tmp_path, "-n", "-p").stdout
    commands = [line for line in dry_run.splitlines() if "wsss_steps.prepare_data" in line]
    assert len(commands) == 2 and not any("--require-masks" in line for line in commands), commands
    # Issue 29 item 10: a WSOL split the dataset lacks is named before the four jobs ahead of it.
    write_config(tmp_path, _cub_wsol_config(root, calibration_split="val"))
    output = _refused(tmp_path, "-n")
    assert "dataset birds: wsol.calibration_split = 'val': dataset 'birds' (CUB): splits are train, test" in output


def test_a_replaced_config_yaml_is_not_checked_for_duplicate_keys(tmp_path: Path) -> None:
    """Issue 29 item 10: `--configfile mine.yaml --replace-workflow-config` does not read config.yaml."""
    path = write_config(tmp_path, tiny_config())
    path.write_text(path.read_text().replace("shards: 2\n", "shards: 2\nshards: 3\n"))
    mine = write_config(tmp_path, tiny_config(), "mine.yaml")
    snakemake(tmp_path, "-n", "--configfile", str(mine), "--replace-workflow-config")
    mine.write_text(mine.read_text().replace("shards: 2\n", "shards: 2\nshards: 1\n"))
    output = _refused(tmp_path, "-n", "--configfile", str(mine), "--replace-workflow-config")
    assert "mine.yaml: key 'shards'" in output and "config.yaml: key" not in output


def test_a_dataset_given_as_a_name_and_a_datasets_from_list_are_named(tmp_path: Path) -> None:
    """Issue 29 item 10: one line naming the key or the file, no AttributeError."""
    write_config(tmp_path, tiny_config(dataset="synth"))
    output = _refused(tmp_path, "-n")
    assert "config key 'dataset' must be a mapping (indented key: value lines), not the str 'synth'" in output
    assert "AttributeError" not in output
    (tmp_path / "other.yaml").write_text("- dataset\n- classifiers\n")
    write_config(tmp_path, tiny_config(datasets_from=["other.yaml"]))
    output = _refused(tmp_path, "-n")
    assert "datasets_from: other.yaml: the file holds a YAML list, not a config" in output


def test_wsol_scores_without_masks_leave_pxap_out_and_say_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 29 item 9: evaluation images without masks (CUB without segmentations/) give the box
    scores, no pxap row, and the log says why."""
    import logging

    import numpy as np

    from tests.test_relation import make_shapes_dataset
    from wsss_steps import evaluate_wsol, wsol_images
    from wsss_steps.data.adapters import VocLayoutDataset
    from wsss_steps.data.manifest import read_manifest, write_manifest
    from wsss_steps.data.manifest_builder import build_manifest
    from wsss_steps.store.maps import MapWriter

    root = tmp_path / "data"
    make_shapes_dataset(root, 12, size=48, half=8, val_count=4, seed=1)
    for mask in (root / "SegmentationClass").glob("*.png"):
        mask.unlink()
    manifest = write_manifest(build_manifest(VocLayoutDataset(root), "val", require_masks=False), root / "manifest")
    wsol = tmp_path / "wsol" / "val.csv"
    wsol_images.main(["--manifest", str(manifest), "--out", str(wsol)])
    records = read_manifest(wsol).records
    maps = tmp_path / "maps.h5"
    with MapWriter(maps, stage="seeds", method="cam", params={}, dataset="shapes") as writer:
        for record in records:
            cam = np.zeros((1, 48, 48), np.float32)
            cam[0, 10:30, 10:30] = 1
            writer.write(record.image_id, {"cam": cam, "keys": np.array(record.labels[:1])}, {"height": 48, "width": 48})
        writer.finish([record.image_id for record in records])
    rows = tmp_path / "rows.csv"
    with caplog.at_level(logging.INFO, logger="wsss_steps.evaluate_wsol"):
        assert evaluate_wsol.main(["--maps", str(maps), "--manifest", str(wsol), "--threshold", "0.5",
                                   "--summary", str(rows), "--method", "cam"]) == 0
    metrics = [line.split(",")[5] for line in rows.read_text().splitlines()[1:]]
    assert "gt_known_loc" in metrics and "pxap" not in metrics
    assert "PxAP not computed: no ground-truth masks among the evaluation images" in caplog.text
