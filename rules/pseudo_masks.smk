# Pseudo masks (docs/methods.md §5): affinity labels → relation network → random walk → pseudo masks.
# Affinity labels and the random walk run one job per shard of the seed split (merged by
# merge_maps); their evaluations (stages pseudo_masks, pseudo_masks_crf) are in evaluation.smk.
# The pseudo masks are one job (pseudo_masks), or with pseudo_masks.shards > 1 pseudo_masks_shard
# jobs (one per shard of the seed split) and merge_pseudo_masks, which make the same files.
# Config sections: affinity, relation, random_walk, pseudo_masks.


rule affinity_labels_shard:
    input:
        seeds="results/{dataset}/seeds/{classifier}/{seeds}/maps.h5",
        manifest=seed_manifest,
    output:
        shard_output("results/{dataset}/affinity_labels/{classifier}/{seeds}/shards/shard-{shard}-of-{n}.h5"),
    params:
        settings=affinity_settings,
        options=lambda w: cli_options(affinity_settings(w)),
        # Seeds with a saliency background carry the saliency in their own file.
        saliency=lambda w, input: (
            path_option("saliency", input.seeds) if w.seeds in saliency_background_seeds(w) else ""
        ),
    log:
        "logs/{dataset}/affinity_labels_{classifier}_{seeds}_shard-{shard}-of-{n}.log",
    benchmark:
        "results/{dataset}/benchmarks/affinity_labels_{classifier}_{seeds}_shard-{shard}-of-{n}.tsv"
    threads: 1
    resources:
        mem_mb=RESOURCES["infer_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["infer_runtime_min"]),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.affinity_labels --seeds {input.seeds:q} --manifest {input.manifest:q} "
        "--shard {wildcards.shard} --num-shards {wildcards.n} --out {output:q} {params.options} "
        "{params.saliency} 2> {log:q}"


rule train_relation:
    input:
        classifier="results/{dataset}/classifier/{classifier}/model.pt",
        labels="results/{dataset}/affinity_labels/{classifier}/{seeds}/maps.h5",
        manifest=seed_manifest,
    output:
        model="results/{dataset}/relation/{classifier}/{seeds}/model.pt",
        metrics="results/{dataset}/relation/{classifier}/{seeds}/metrics.csv",
    params:
        settings=lambda w: dataset_config(w)["relation"],
        options=lambda w: cli_options(dataset_config(w)["relation"], skip=("checkpoint_every",))
        + opts.precision_options(config),
        **training_params(
            "results/{dataset}/relation/{classifier}/{seeds}", DEVICE, lambda w: dataset_config(w)["relation"]
        ),
    log:
        "logs/{dataset}/train_relation_{classifier}_{seeds}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_relation_{classifier}_{seeds}.tsv"
    threads: RESOURCES["threads"]
    resources:
        mem_mb=RESOURCES["train_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["train_runtime_min"]),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.train_relation --classifier {input.classifier:q} --labels {input.labels:q} "
        "--manifest {input.manifest:q} --out {output.model:q} --metrics {output.metrics:q} "
        "--checkpoint-dir {params.checkpoints:q} --checkpoint-every {params.checkpoint_every} "
        "--dataset {wildcards.dataset} {params.options} --device {params.device} --threads {threads} 2> {log:q}"


rule random_walk_shard:
    input:
        relation="results/{dataset}/relation/{classifier}/{seeds}/model.pt",
        seeds="results/{dataset}/seeds/{classifier}/{seeds}/maps.h5",
        manifest=seed_manifest,
    output:
        shard_output("results/{dataset}/random_walk/{classifier}/{seeds}/shards/shard-{shard}-of-{n}.h5"),
    params:
        settings=lambda w: seeds_stage_settings("random_walk", w),
        options=lambda w: cli_options(seeds_stage_settings("random_walk", w)),
        device=DEVICE,
    log:
        "logs/{dataset}/random_walk_{classifier}_{seeds}_shard-{shard}-of-{n}.log",
    benchmark:
        "results/{dataset}/benchmarks/random_walk_{classifier}_{seeds}_shard-{shard}-of-{n}.tsv"
    threads: 1
    resources:
        mem_mb=RESOURCES["infer_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["infer_runtime_min"]),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.random_walk --relation {input.relation:q} --seeds {input.seeds:q} "
        "--manifest {input.manifest:q} --shard {wildcards.shard} --num-shards {wildcards.n} --out {output:q} "
        "--method {wildcards.seeds} {params.options} --device {params.device} --threads {threads} 2> {log:q}"


rule pseudo_masks:
    input:
        maps="results/{dataset}/random_walk/{classifier}/{seeds}/maps.h5",
        manifest=seed_manifest,
    output:
        masks="results/{dataset}/pseudo_masks/{classifier}/{seeds}/masks.h5",
        png=directory("results/{dataset}/pseudo_masks/{classifier}/{seeds}/png"),
    params:
        settings=lambda w: opts.pseudo_mask_settings(dataset_config(w)["pseudo_masks"]),
        options=lambda w: cli_options(opts.pseudo_mask_settings(dataset_config(w)["pseudo_masks"])),
    log:
        "logs/{dataset}/pseudo_masks_{classifier}_{seeds}.log",
    benchmark:
        "results/{dataset}/benchmarks/pseudo_masks_{classifier}_{seeds}.tsv"
    wildcard_constraints:
        dataset=UNSHARDED_PSEUDO_MASKS,
    threads: 1
    resources:
        mem_mb=RESOURCES["infer_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["infer_runtime_min"]),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.pseudo_masks --maps {input.maps:q} --manifest {input.manifest:q} "
        "--out {output.masks:q} --export-png {output.png:q} {params.options} 2> {log:q}"


rule pseudo_masks_shard:
    input:
        maps="results/{dataset}/random_walk/{classifier}/{seeds}/maps.h5",
        manifest=seed_manifest,
    output:
        shard_output("results/{dataset}/pseudo_masks/{classifier}/{seeds}/shards/shard-{shard}-of-{n}.h5"),
    params:
        settings=pseudo_mask_settings,
        options=lambda w: cli_options(pseudo_mask_settings(w)),
    log:
        "logs/{dataset}/pseudo_masks_{classifier}_{seeds}_shard-{shard}-of-{n}.log",
    benchmark:
        "results/{dataset}/benchmarks/pseudo_masks_{classifier}_{seeds}_shard-{shard}-of-{n}.tsv"
    threads: 1
    resources:
        mem_mb=RESOURCES["infer_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["infer_runtime_min"]),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.pseudo_masks --maps {input.maps:q} --manifest {input.manifest:q} "
        "--shard {wildcards.shard} --num-shards {wildcards.n} --out {output:q} {params.options} 2> {log:q}"


# The shards' masks merged into the files pseudo_masks makes (merge_maps' masks.h5, then export_png's
# png/ of its `mask`: the same arrays and PNGs).
rule merge_pseudo_masks:
    input:
        shards=pseudo_mask_shard_files,
        manifest=seed_manifest,
    output:
        masks="results/{dataset}/pseudo_masks/{classifier}/{seeds}/masks.h5",
        png=directory("results/{dataset}/pseudo_masks/{classifier}/{seeds}/png"),
    log:
        "logs/{dataset}/merge_pseudo_masks_{classifier}_{seeds}.log",
    benchmark:
        "results/{dataset}/benchmarks/merge_pseudo_masks_{classifier}_{seeds}.tsv"
    wildcard_constraints:
        dataset=SHARDED_PSEUDO_MASKS,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=opts.runtime_per_attempt(60),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.merge_maps --manifest {input.manifest:q} --out {output.masks:q} {input.shards:q} "
        "2> {log:q} && python -m wsss_steps.export_png --maps {output.masks:q} --map-name mask "
        "--manifest {input.manifest:q} --out {output.png:q} 2>> {log:q}"
