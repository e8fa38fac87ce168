# Saliency (docs/methods.md §4): C²AM, C²AM-H (hints from a seeds entry) and the refinement network (on
# another entry's pseudo-saliency masks), trained on the seed split; maps and pseudo-saliency
# masks one job per shard, merged; scored against the ground truth's foreground (stage saliency),
# with each C²AM-H's hint seeds' own foreground beside it. Seeds entries read them through
# advcam_sal and saliency_background (rules/seeds.smk). Config section: saliency.<name>.


rule train_saliency:
    input:
        unpack(saliency_train_inputs),
    output:
        model="results/{dataset}/saliency/{saliency}/model.pt",
        metrics="results/{dataset}/saliency/{saliency}/metrics.csv",
    params:
        settings=lambda w: opts.saliency_training(saliency_settings(w)),
        options=lambda w, input: opts.saliency_train_options(saliency_settings(w), dict(input.items()))
        + opts.precision_options(config),
        **training_params("results/{dataset}/saliency/{saliency}", DEVICE, saliency_settings),
    log:
        "logs/{dataset}/train_saliency_{saliency}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_saliency_{saliency}.tsv"
    threads: RESOURCES["threads"]
    resources:
        mem_mb=RESOURCES["train_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["train_runtime_min"]),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.train_saliency --manifest {input.manifest:q} --out {output.model:q} "
        "--metrics {output.metrics:q} --checkpoint-dir {params.checkpoints:q} "
        "--checkpoint-every {params.checkpoint_every} --name {wildcards.saliency} --dataset {wildcards.dataset} "
        "{params.options} --device {params.device} --threads {threads} 2> {log:q}"


rule saliency_shard:
    input:
        model="results/{dataset}/saliency/{saliency}/model.pt",
        manifest=seed_manifest,
    output:
        shard_output("results/{dataset}/saliency/{saliency}/shards/shard-{shard}-of-{n}.h5"),
    params:
        settings=lambda w: opts.saliency_inference(saliency_settings(w)),
        options=lambda w: cli_options(opts.saliency_inference(saliency_settings(w))) + opts.precision_options(config),
        device=DEVICE,
    log:
        "logs/{dataset}/saliency_{saliency}_shard-{shard}-of-{n}.log",
    benchmark:
        "results/{dataset}/benchmarks/saliency_{saliency}_shard-{shard}-of-{n}.tsv"
    threads: 1
    resources:
        mem_mb=RESOURCES["infer_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["infer_runtime_min"]),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.saliency_maps --model {input.model:q} --manifest {input.manifest:q} "
        "--shard {wildcards.shard} --num-shards {wildcards.n} --out {output:q} --method {wildcards.saliency} "
        "{params.options} --device {params.device} --threads {threads} 2> {log:q}"


rule merge_saliency:
    input:
        shards=saliency_shard_files,
        manifest=seed_manifest,
    output:
        "results/{dataset}/saliency/{saliency}/maps.h5",
    log:
        "logs/{dataset}/merge_saliency_{saliency}.log",
    benchmark:
        "results/{dataset}/benchmarks/merge_saliency_{saliency}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=opts.runtime_per_attempt(60),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.merge_maps --manifest {input.manifest:q} --out {output:q} {input.shards:q} 2> {log:q}"


rule evaluate_saliency:
    input:
        maps="results/{dataset}/saliency/{saliency}/maps.h5",
        manifest=seed_manifest,
    output:
        curve="results/{dataset}/eval/saliency/{saliency}/curve.csv",
        rows="results/{dataset}/eval/saliency/{saliency}/summary_rows.csv",
    params:
        split=seed_split,
        classifier=lambda w: saliency_settings(w).get("classifier", ""),
    log:
        "logs/{dataset}/evaluate_saliency_{saliency}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate_saliency_{saliency}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=opts.runtime_per_attempt(60),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.evaluate_saliency --manifest {input.manifest:q} --maps {input.maps:q} "
        "--dataset {wildcards.dataset} --method {wildcards.saliency} --classifier={params.classifier:q} "
        "--split {params.split} --curve {output.curve:q} --summary {output.rows:q} 2> {log:q}"


# The hint seeds' own foreground (their highest class map per pixel), scored as saliency: what
# C²AM-H must improve on.
rule evaluate_hint_foreground:
    input:
        maps="results/{dataset}/seeds/{classifier}/{seeds}/maps.h5",
        manifest=seed_manifest,
    output:
        curve="results/{dataset}/eval/saliency_hints/{classifier}/{seeds}/curve.csv",
        rows="results/{dataset}/eval/saliency_hints/{classifier}/{seeds}/summary_rows.csv",
    params:
        split=seed_split,
    log:
        "logs/{dataset}/evaluate_hint_foreground_{classifier}_{seeds}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate_hint_foreground_{classifier}_{seeds}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=opts.runtime_per_attempt(60),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.evaluate_saliency --manifest {input.manifest:q} --maps {input.maps:q} "
        "--map-name cam --dataset {wildcards.dataset} --method {wildcards.seeds}_foreground "
        "--classifier {wildcards.classifier} --split {params.split} --curve {output.curve:q} "
        "--summary {output.rows:q} 2> {log:q}"
