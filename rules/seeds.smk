# Seeds (docs/methods.md §2): the classifier's CAMs or AdvCAM's (method cam | advcam | advcam_sal), one
# job per shard of the seed split (merged by merge_maps; evaluated by evaluate_sweep); and seeds
# with a saliency background (method saliency_background: another entry's maps + a saliency map).
# Config section: seeds.<name>.


# The WSOL images' seeds (rules/wsol.smk; the seeds entries that WSOL experiments name, cam or
# advcam) and the seed split's take one shell line. `use rule ... with:` merges params into the base
# rule's, so the base is the rule with fewer: seeds_shard adds `settings` (what its jobs record). Both
# take the base's resources.
rule wsol_seeds_shard:
    input:
        classifier="results/{dataset}/classifier/{classifier}/model.pt",
        manifest=map_stage_manifest,
    output:
        shard_output("results/{dataset}/{map_stage}/{classifier}/{entry}/shards/shard-{shard}-of-{n}.h5"),
    wildcard_constraints:
        map_stage="|".join(inputs.WSOL_PARTS),
        entry=alternatives(WSOL_SEED_NAMES),
    params:
        options=lambda w: cli_options(dataset_config(w)["seeds"][w.entry]) + opts.precision_options(config),
        device=DEVICE,
    log:
        "logs/{dataset}/{map_stage}_{classifier}_{entry}_shard-{shard}-of-{n}.log",
    benchmark:
        "results/{dataset}/benchmarks/{map_stage}_{classifier}_{entry}_shard-{shard}-of-{n}.tsv"
    threads: 1
    resources:
        mem_mb=RESOURCES["infer_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["infer_runtime_min"]),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.seeds --classifier {input.classifier:q} --manifest {input.manifest:q} "
        "--shard {wildcards.shard} --num-shards {wildcards.n} --out {output:q} {params.options} "
        "--device {params.device} --threads {threads} 2> {log:q}"


use rule wsol_seeds_shard as seeds_shard with:
    input:
        unpack(seed_inputs),
        classifier="results/{dataset}/classifier/{classifier}/model.pt",
        manifest=seed_manifest,
    output:
        shard_output("results/{dataset}/seeds/{classifier}/{seeds}/shards/shard-{shard}-of-{n}.h5"),
    wildcard_constraints:
        seeds=alternatives(COMPUTED_SEED_NAMES),
    params:
        settings=seed_settings,
        options=lambda w, input: opts.seed_options(seed_settings(w), input.get("saliency"))
        + opts.precision_options(config),
    log:
        "logs/{dataset}/seeds_{classifier}_{seeds}_shard-{shard}-of-{n}.log",
    benchmark:
        "results/{dataset}/benchmarks/seeds_{classifier}_{seeds}_shard-{shard}-of-{n}.tsv"


# Seeds with a saliency background: the maps of seeds entry `seeds` and the saliency entry's map in
# one file (merge_maps makes the computed entries' maps.h5).
ruleorder: saliency_seeds > merge_maps


rule saliency_seeds:
    input:
        unpack(saliency_background_inputs),
        manifest=seed_manifest,
    output:
        "results/{dataset}/seeds/{classifier}/{seeds}/maps.h5",
    wildcard_constraints:
        seeds=alternatives(SALIENCY_BACKGROUND_SEED_NAMES),
    params:
        saliency_map=lambda w: opts.saliency_background_map(saliency_background_seeds(w)[w.seeds], saliency_entries(w)),
    log:
        "logs/{dataset}/saliency_seeds_{classifier}_{seeds}.log",
    benchmark:
        "results/{dataset}/benchmarks/saliency_seeds_{classifier}_{seeds}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=opts.runtime_per_attempt(60),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.saliency_seeds --manifest {input.manifest:q} --seeds {input.seeds:q} "
        "--saliency {input.saliency:q} --saliency-map {params.saliency_map} --out {output:q} "
        "--method {wildcards.seeds} 2> {log:q}"
