# Segmentation network (METHODS §6) on each experiment's pseudo masks, or on the ground truth
# (seeds name `full`: the fully supervised upper bound); multi-scale + flip inference on the val
# split with DeepLab's dCRF; evaluations (stages segmentation, segmentation_crf); VOC palette PNGs.
# Config section: segmentation (training keys rerun training; test_scales/flip/crf only inference).

rule train_segmentation:
    input:
        unpack(segmentation_train_inputs),
        manifest=f"results/{{dataset}}/data/{TRAIN_SPLIT}.csv",
    output:
        model="results/{dataset}/segmentation/{classifier}/{masks}/model.pt",
        metrics="results/{dataset}/segmentation/{classifier}/{masks}/metrics.csv",
    params:
        settings=SEGMENTATION_TRAINING,
        init_from_classifier=SEGMENTATION["init_from_classifier"],
        sources=segmentation_sources,
        options=cli_options(SEGMENTATION_TRAINING),
        checkpoint_every=SEGMENTATION["checkpoint_every"],
        checkpoints="results/{dataset}/segmentation/{classifier}/{masks}/checkpoints",
        device=config["device"],
    log:
        "logs/{dataset}/train_segmentation_{classifier}_{masks}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_segmentation_{classifier}_{masks}.tsv"
    threads: RESOURCES["threads"]
    resources:
        mem_mb=RESOURCES["train_mem_mb"],
        runtime=RESOURCES["train_runtime_min"],
        gpu=GPU,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.train_segmentation --manifest {input.manifest} {params.sources} "
        "--out {output.model} --metrics {output.metrics} --checkpoint-dir {params.checkpoints} "
        "--checkpoint-every {params.checkpoint_every} --name {wildcards.masks} --dataset {wildcards.dataset} "
        "{params.options} --device {params.device} --threads {threads} 2> {log}"


rule segment_shard:
    input:
        model="results/{dataset}/segmentation/{classifier}/{masks}/model.pt",
        manifest=f"results/{{dataset}}/data/{VAL_SPLIT}.csv",
    output:
        "results/{dataset}/segmentation/{classifier}/{masks}/shards/shard-{shard}-of-{n}.h5",
    params:
        settings={k: SEGMENTATION[k] for k in SEGMENTATION_INFERENCE_KEYS},
        options=cli_options(
            {"scales": SEGMENTATION["test_scales"], "flip": SEGMENTATION["flip"], "crf": SEGMENTATION["crf"]}
        ),
        device=config["device"],
    log:
        "logs/{dataset}/segment_{classifier}_{masks}_shard-{shard}-of-{n}.log",
    benchmark:
        "results/{dataset}/benchmarks/segment_{classifier}_{masks}_shard-{shard}-of-{n}.tsv"
    threads: 1
    resources:
        mem_mb=RESOURCES["infer_mem_mb"],
        runtime=RESOURCES["infer_runtime_min"],
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.segment --model {input.model} --manifest {input.manifest} "
        "--shard {wildcards.shard} --num-shards {wildcards.n} --out {output} --method {wildcards.masks} "
        "{params.options} --device {params.device} --threads {threads} 2> {log}"


rule merge_segmentation:
    input:
        shards=segmentation_shard_paths,
        manifest=f"results/{{dataset}}/data/{VAL_SPLIT}.csv",
    output:
        "results/{dataset}/segmentation/{classifier}/{masks}/predictions.h5",
    log:
        "logs/{dataset}/merge_segmentation_{classifier}_{masks}.log",
    benchmark:
        "results/{dataset}/benchmarks/merge_segmentation_{classifier}_{masks}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.merge_maps --manifest {input.manifest} --out {output} {input.shards} 2> {log}"


# The val predictions as VOC palette PNGs: png/ (segmentation), png_crf/ (segmentation_crf).
rule export_segmentation_png:
    input:
        maps="results/{dataset}/segmentation/{classifier}/{masks}/predictions.h5",
        manifest=f"results/{{dataset}}/data/{VAL_SPLIT}.csv",
    output:
        directory("results/{dataset}/segmentation/{classifier}/{masks}/{png_dir}"),
    wildcard_constraints:
        png_dir="png|png_crf",
    params:
        map_name=lambda w: "mask_crf" if w.png_dir == "png_crf" else "mask",
    log:
        "logs/{dataset}/export_segmentation_{png_dir}_{classifier}_{masks}.log",
    benchmark:
        "results/{dataset}/benchmarks/export_segmentation_{png_dir}_{classifier}_{masks}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.export_png --maps {input.maps} --map-name {params.map_name} "
        "--manifest {input.manifest} --out {output} 2> {log}"


rule evaluate_segmentation:
    input:
        maps="results/{dataset}/segmentation/{classifier}/{masks}/predictions.h5",
        manifest=f"results/{{dataset}}/data/{VAL_SPLIT}.csv",
    output:
        per_class="results/{dataset}/eval/{seg_stage}/{classifier}/{masks}/per_class.csv",
        rows="results/{dataset}/eval/{seg_stage}/{classifier}/{masks}/summary_rows.csv",
    params:
        map_name=lambda w: "mask_crf" if w.seg_stage == "segmentation_crf" else "mask",
        split=VAL_SPLIT,
    log:
        "logs/{dataset}/evaluate_{seg_stage}_{classifier}_{masks}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate_{seg_stage}_{classifier}_{masks}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.evaluate_seeds --manifest {input.manifest} --maps {input.maps} "
        "--map-name {params.map_name} --label-map --dataset {wildcards.dataset} --stage {wildcards.seg_stage} "
        "--method {wildcards.masks} --classifier {wildcards.classifier} --split {params.split} "
        "--per-class {output.per_class} --summary {output.rows} 2> {log}"
