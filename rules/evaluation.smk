# Evaluations against the ground truth, one summary_rows.csv per stage, experiment and dataset, and
# their table results/summary.csv.
#   evaluate_sweep: the stages on the seed split, scored over a background-threshold sweep
#     (curve.csv; the best threshold recorded): seeds, seeds_crf, pseudo_masks, pseudo_masks_crf.
#     With evaluation.shards > 1, evaluate_sweep_shard jobs (one per shard of the seed split) and
#     merge_sweep (their confusion matrices summed) make the same files instead.
#   evaluate_segmentation: the segmentation network's label maps on the val split (segmentation,
#     segmentation_crf).
# Config section: evaluation.


rule evaluate_sweep:
    input:
        maps=sweep_maps,
        manifest=seed_manifest,
    output:
        curve="results/{dataset}/eval/{sweep_stage}/{classifier}/{seeds}/curve.csv",
        per_class="results/{dataset}/eval/{sweep_stage}/{classifier}/{seeds}/per_class.csv",
        rows="results/{dataset}/eval/{sweep_stage}/{classifier}/{seeds}/summary_rows.csv",
    params:
        # exactly the evaluation settings this stage's command uses (see sweep_options)
        options=sweep_options,
        split=seed_split,
    log:
        "logs/{dataset}/evaluate_{sweep_stage}_{classifier}_{seeds}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate_{sweep_stage}_{classifier}_{seeds}.tsv"
    wildcard_constraints:
        dataset=UNSHARDED_EVALUATION,
    threads: sweep_threads
    resources:
        mem_mb=RESOURCES["eval_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["eval_runtime_min"]),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.evaluate_masks --manifest {input.manifest:q} --maps {input.maps:q} {params.options} "
        "--dataset {wildcards.dataset} --stage {wildcards.sweep_stage} --method {wildcards.seeds} "
        "--classifier {wildcards.classifier} --split {params.split} --workers {threads} --curve {output.curve:q} "
        "--per-class {output.per_class:q} --summary {output.rows:q} 2> {log:q}"


rule evaluate_sweep_shard:
    input:
        maps=sweep_maps,
        manifest=seed_manifest,
    output:
        "results/{dataset}/eval/{sweep_stage}/{classifier}/{seeds}/shards/shard-{shard}-of-{n}.npz",
    params:
        # exactly the evaluation settings this stage's command uses (see sweep_options)
        options=sweep_options,
    log:
        "logs/{dataset}/evaluate_{sweep_stage}_{classifier}_{seeds}_shard-{shard}-of-{n}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate_{sweep_stage}_{classifier}_{seeds}_shard-{shard}-of-{n}.tsv"
    threads: sweep_threads
    resources:
        mem_mb=RESOURCES["eval_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["eval_runtime_min"]),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.evaluate_masks --manifest {input.manifest:q} --maps {input.maps:q} {params.options} "
        "--shard {wildcards.shard} --num-shards {wildcards.n} --workers {threads} --confusions {output:q} 2> {log:q}"


rule merge_sweep:
    input:
        shards=sweep_shard_files,
        manifest=seed_manifest,
    output:
        curve="results/{dataset}/eval/{sweep_stage}/{classifier}/{seeds}/curve.csv",
        per_class="results/{dataset}/eval/{sweep_stage}/{classifier}/{seeds}/per_class.csv",
        rows="results/{dataset}/eval/{sweep_stage}/{classifier}/{seeds}/summary_rows.csv",
    params:
        split=seed_split,
    log:
        "logs/{dataset}/merge_evaluate_{sweep_stage}_{classifier}_{seeds}.log",
    benchmark:
        "results/{dataset}/benchmarks/merge_evaluate_{sweep_stage}_{classifier}_{seeds}.tsv"
    wildcard_constraints:
        dataset=SHARDED_EVALUATION,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=opts.runtime_per_attempt(30),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.evaluate_masks --manifest {input.manifest:q} --merge {input.shards:q} "
        "--dataset {wildcards.dataset} --stage {wildcards.sweep_stage} --method {wildcards.seeds} "
        "--classifier {wildcards.classifier} --split {params.split} --curve {output.curve:q} "
        "--per-class {output.per_class:q} --summary {output.rows:q} 2> {log:q}"


rule evaluate_segmentation:
    input:
        maps="results/{dataset}/segmentation/{classifier}/{masks}/maps.h5",
        manifest=val_manifest,
    output:
        per_class="results/{dataset}/eval/{seg_stage}/{classifier}/{masks}/per_class.csv",
        rows="results/{dataset}/eval/{seg_stage}/{classifier}/{masks}/summary_rows.csv",
    params:
        map_name=lambda w: "mask_crf" if w.seg_stage == "segmentation_crf" else "mask",
        split=val_split,
    log:
        "logs/{dataset}/evaluate_{seg_stage}_{classifier}_{masks}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate_{seg_stage}_{classifier}_{masks}.tsv"
    threads: 1
    resources:
        mem_mb=RESOURCES["eval_mem_mb"],
        runtime=opts.runtime_per_attempt(60),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.evaluate_masks --manifest {input.manifest:q} --maps {input.maps:q} "
        "--map-name {params.map_name} --label-map --dataset {wildcards.dataset} --stage {wildcards.seg_stage} "
        "--method {wildcards.masks} --classifier {wildcards.classifier} --split {params.split} "
        "--per-class {output.per_class:q} --summary {output.rows:q} 2> {log:q}"


rule summary:
    input:
        targets.summary_row_files(DATASET_CONFIGS),
    output:
        "results/summary.csv",
    log:
        "logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=opts.runtime_per_attempt(10),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.summarize --out {output:q} {input:q} 2> {log:q}"
