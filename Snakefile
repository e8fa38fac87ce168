# Weakly supervised semantic segmentation and localisation from image-level labels.
# Stages: data → classifier → seeds (→ saliency) → affinity labels → relation network → random walk →
# pseudo masks → segmentation network; evaluations → results/summary.csv → report. See README.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/classifier.smk"
include: "rules/maps.smk"
include: "rules/seeds.smk"
include: "rules/saliency.smk"
include: "rules/evaluation.smk"
include: "rules/pseudo_masks.smk"
include: "rules/segmentation.smk"
include: "rules/wsol.smk"
include: "rules/report.smk"


# Jobs of a few seconds that need no GPU (the summary, the report's tables and figures drawn from
# CSV files or a few images, the WSOL images' manifest, the sum of a sharded sweep's confusion
# matrices) run in snakemake itself: a cluster run submits no job for them.
localrules:
    summary,
    report_table,
    report_sweep,
    report_seeds_precision_recall,
    report_per_class,
    report_gallery,
    report_wsol_boxes,
    wsol_images,
    merge_sweep,


rule all:
    input:
        "results/summary.csv",
        targets.report_files(DATASET_CONFIGS),
    default_target: True
