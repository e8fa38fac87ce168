# Weakly supervised semantic segmentation and localisation from image-level labels.
# Stages: data → classifier → seeds → affinity labels → relation network → random walk →
# pseudo masks; evaluations → results/summary.csv. See README.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/classifier.smk"
include: "rules/seeds.smk"
include: "rules/evaluation.smk"
include: "rules/pseudo_masks.smk"


rule all:
    input:
        "results/summary.csv",
    default_target: True
