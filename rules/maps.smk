# The merge of every sharded inference stage (seeds, affinity labels, random walk, segmentation, and
# the WSOL maps): a stage's shard files (rules seeds_shard, affinity_labels_shard, random_walk_shard,
# segment_shard, wsol_seeds_shard, weight_maps_shard)
# into one map file over the stage's split. Entries: seeds names, and `full` for segmentation.


rule merge_maps:
    input:
        shards=shard_files,
        manifest=map_stage_manifest,
    output:
        "results/{dataset}/{map_stage}/{classifier}/{entry}/maps.h5",
    wildcard_constraints:
        map_stage="|".join([*inputs.MAP_STAGE_SPLITS, *inputs.WSOL_PARTS]),
    log:
        "logs/{dataset}/merge_{map_stage}_{classifier}_{entry}.log",
    benchmark:
        "results/{dataset}/benchmarks/merge_{map_stage}_{classifier}_{entry}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=opts.runtime_per_attempt(60),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.merge_maps --manifest {input.manifest:q} --out {output:q} {input.shards:q} 2> {log:q}"
