# Segmentation network (docs/methods.md §6) on each experiment's pseudo masks, or on the ground truth
# (seeds name `full`: the fully supervised upper bound); multi-scale + flip inference on the val
# split with DeepLab's dCRF, one job per shard (merged by merge_maps into maps.h5; evaluations,
# stages segmentation and segmentation_crf, in evaluation.smk); VOC palette PNGs; the same
# inference on the report gallery's images of the seed split.
# Config section: segmentation (training keys rerun training; test_scales/flip/crf only inference).

rule train_segmentation:
    input:
        unpack(segmentation_train_inputs),
        manifest=train_manifest,
    output:
        model="results/{dataset}/segmentation/{classifier}/{masks}/model.pt",
        metrics="results/{dataset}/segmentation/{classifier}/{masks}/metrics.csv",
    params:
        settings=lambda w: opts.segmentation_training(segmentation_settings(w)),
        init_from_classifier=lambda w: segmentation_settings(w)["init_from_classifier"],
        sources=lambda w, input: opts.segmentation_sources(dict(input.items()))
        + opts.semi_supervised_options(semi_supervised_method(w)),
        options=lambda w: cli_options(opts.segmentation_training(segmentation_settings(w)))
        + opts.precision_options(config),
        **training_params(
            "results/{dataset}/segmentation/{classifier}/{masks}", DEVICE, segmentation_settings
        ),
    log:
        "logs/{dataset}/train_segmentation_{classifier}_{masks}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_segmentation_{classifier}_{masks}.tsv"
    threads: RESOURCES["threads"]
    resources:
        mem_mb=RESOURCES["train_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["train_runtime_min"]),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.train_segmentation --manifest {input.manifest:q} {params.sources} "
        "--out {output.model:q} --metrics {output.metrics:q} --checkpoint-dir {params.checkpoints:q} "
        "--checkpoint-every {params.checkpoint_every} --name {wildcards.masks} --dataset {wildcards.dataset} "
        "{params.options} --device {params.device} --threads {threads} 2> {log:q}"


rule segment_shard:
    input:
        model="results/{dataset}/segmentation/{classifier}/{masks}/model.pt",
        manifest=val_manifest,
    output:
        shard_output("results/{dataset}/segmentation/{classifier}/{masks}/shards/shard-{shard}-of-{n}.h5"),
    params:
        settings=lambda w: opts.segmentation_inference(segmentation_settings(w)),
        options=lambda w: opts.segmentation_inference_options(segmentation_settings(w))
        + opts.precision_options(config),
        device=DEVICE,
    log:
        "logs/{dataset}/segment_{classifier}_{masks}_shard-{shard}-of-{n}.log",
    benchmark:
        "results/{dataset}/benchmarks/segment_{classifier}_{masks}_shard-{shard}-of-{n}.tsv"
    threads: 1
    resources:
        mem_mb=RESOURCES["infer_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["infer_runtime_min"]),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.segment --model {input.model:q} --manifest {input.manifest:q} "
        "--shard {wildcards.shard} --num-shards {wildcards.n} --out {output:q} --method {wildcards.masks} "
        "{params.options} --device {params.device} --threads {threads} 2> {log:q}"


# The val predictions as VOC palette PNGs: png/ (segmentation), png_crf/ (segmentation_crf).
rule export_segmentation_png:
    input:
        maps="results/{dataset}/segmentation/{classifier}/{masks}/maps.h5",
        manifest=val_manifest,
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
        runtime=opts.runtime_per_attempt(30),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.export_png --maps {input.maps:q} --map-name {params.map_name} "
        "--manifest {input.manifest:q} --out {output:q} 2> {log:q}"


# The report gallery's images of the seed split (report.gallery_images of them), segmented as the
# val split is (report_gallery draws them).
rule segment_gallery:
    input:
        model="results/{dataset}/segmentation/{classifier}/{masks}/model.pt",
        manifest=seed_manifest,
    output:
        "results/{dataset}/segmentation/{classifier}/{masks}/gallery.h5",
    params:
        settings=lambda w: opts.segmentation_inference(segmentation_settings(w)),
        gallery_images=lambda w: dataset_config(w)["report"]["gallery_images"],
        options=lambda w: opts.segmentation_inference_options(segmentation_settings(w))
        + opts.precision_options(config),
        device=DEVICE,
    log:
        "logs/{dataset}/segment_gallery_{classifier}_{masks}.log",
    benchmark:
        "results/{dataset}/benchmarks/segment_gallery_{classifier}_{masks}.tsv"
    threads: 1
    resources:
        mem_mb=RESOURCES["infer_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["infer_runtime_min"]),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.segment --model {input.model:q} --manifest {input.manifest:q} "
        "--gallery {params.gallery_images} --out {output:q} --method {wildcards.masks} "
        "{params.options} --device {params.device} --threads {threads} 2> {log:q}"
