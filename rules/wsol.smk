# Weakly supervised object localisation (docs/methods.md §8): the WSOL images of a split → maps of the
# calibration and evaluation images (seeds entries cam/advcam of the experiment's classifier: rule
# wsol_seeds_shard in rules/seeds.smk; or its weight-map generator) → merge (rules/maps.smk) → boxes
# and scores. Config: wsol, weight_maps.


rule wsol_images:
    input:
        lambda w: inputs.manifest(w.dataset, w.split),
    output:
        "results/{dataset}/wsol_data/{split}.csv",
    params:
        images=lambda w: wsol_settings(w).get("images", "single_label"),
    log:
        "logs/{dataset}/wsol_images_{split}.log",
    benchmark:
        "results/{dataset}/benchmarks/wsol_images_{split}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=opts.runtime_per_attempt(10),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.wsol_images --manifest {input:q} --out {output:q} --images {params.images} 2> {log:q}"


# The generator trains on the calibration split's WSOL images; S (label-free) is scored on the
# evaluation images, whose GT-known per epoch the metrics file shows beside it (never used to choose).
rule train_weight_map:
    input:
        classifier="results/{dataset}/classifier/{classifier}/model.pt",
        train=lambda w: inputs.wsol_manifest(w.dataset, wsol_settings(w)["calibration_split"]),
        val=lambda w: inputs.wsol_manifest(w.dataset, wsol_settings(w)["evaluation_split"]),
    output:
        model="results/{dataset}/weight_map/{classifier}/{entry}/model.pt",
        metrics="results/{dataset}/weight_map/{classifier}/{entry}/metrics.csv",
    wildcard_constraints:
        entry=alternatives(WEIGHT_MAP_NAMES),
    params:
        options=lambda w: opts.weight_map_options(weight_maps(w)[w.entry]) + opts.precision_options(config),
        **training_params("results/{dataset}/weight_map/{classifier}/{entry}", DEVICE),
    log:
        "logs/{dataset}/train_weight_map_{classifier}_{entry}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_weight_map_{classifier}_{entry}.tsv"
    threads: RESOURCES["threads"]
    resources:
        mem_mb=RESOURCES["train_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["train_runtime_min"]),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.train_weight_map --classifier {input.classifier:q} --manifest {input.train:q} "
        "--val-manifest {input.val:q} --out {output.model:q} --metrics {output.metrics:q} "
        "--checkpoint-dir {params.checkpoints:q} --name {wildcards.entry} --dataset {wildcards.dataset} "
        "{params.options} --device {params.device} --threads {threads} 2> {log:q}"


rule weight_maps_shard:
    input:
        model="results/{dataset}/weight_map/{classifier}/{entry}/model.pt",
        manifest=map_stage_manifest,
    output:
        shard_output("results/{dataset}/{map_stage}/{classifier}/{entry}/shards/shard-{shard}-of-{n}.h5"),
    wildcard_constraints:
        map_stage="|".join(inputs.WSOL_PARTS),
        entry=alternatives(WEIGHT_MAP_NAMES),
    params:
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
        "python -m wsss_steps.weight_maps --model {input.model:q} --manifest {input.manifest:q} "
        "--shard {wildcards.shard} --num-shards {wildcards.n} --out {output:q} --method {wildcards.entry} "
        "--device {params.device} --threads {threads} 2> {log:q}"


rule evaluate_wsol:
    input:
        unpack(wsol_eval_inputs),
    output:
        rows="results/{dataset}/eval/wsol/{classifier}/{entry}/summary_rows.csv",
        curve="results/{dataset}/eval/wsol/{classifier}/{entry}/curve.csv",
        boxes="results/{dataset}/eval/wsol/{classifier}/{entry}/boxes.csv",
    params:
        threshold=wsol_threshold,
        calibration=lambda w, input: opts.wsol_calibration_options(dict(input.items())),
        device=DEVICE,
    log:
        "logs/{dataset}/evaluate_wsol_{classifier}_{entry}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate_wsol_{classifier}_{entry}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=opts.runtime_per_attempt(60),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.evaluate_wsol --maps {input.maps:q} --manifest {input.manifest:q} "
        "{params.calibration} --threshold {params.threshold} --classifier {input.classifier:q} "
        "--summary {output.rows:q} --curve {output.curve:q} --boxes {output.boxes:q} "
        "--method {wildcards.entry} --classifier-name {wildcards.classifier} --dataset {wildcards.dataset} "
        "--device {params.device} --threads {threads} 2> {log:q}"


rule report_wsol_boxes:
    input:
        unpack(lambda w: targets.wsol_box_files(w.dataset, dataset_config(w))),
    output:
        report(
            "results/{dataset}/report/wsol_boxes.png",
            caption="../report/wsol_boxes.rst",
            category="3. Localisation (WSOL)",
            labels={"dataset": "{dataset}", "figure": "boxes"},
        ),
    params:
        boxes=lambda w, input: pairs({k.split(" ", 1)[1]: v for k, v in input.items() if k.startswith("boxes ")}),
        maps=lambda w, input: pairs({k.split(" ", 1)[1]: v for k, v in input.items() if k.startswith("maps ")}),
        gallery_images=lambda w: dataset_config(w)["report"]["gallery_images"],
    log:
        "logs/{dataset}/report_wsol_boxes.log",
    benchmark:
        "results/{dataset}/benchmarks/report_wsol_boxes.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=opts.runtime_per_attempt(10),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.report_figures wsol-boxes --manifest {input.manifest:q} --boxes {params.boxes} "
        "--maps {params.maps} --count {params.gallery_images} --out {output:q} 2> {log:q}"
