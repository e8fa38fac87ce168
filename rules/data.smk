# A generated dataset's root is a path from the config, not a pattern with a {dataset} wildcard:
# one rule per generated dataset (named generate_dataset while there is one).
for _name, _dataset in GENERATED_DATASETS.items():

    rule:
        name:
            "generate_dataset" if len(GENERATED_DATASETS) == 1 else f"generate_dataset_{_name}"
        output:
            directory(_dataset["root"]),
        params:
            options=cli_options(_dataset.get("generator", {})),
        log:
            f"logs/{_name}/generate_dataset.log",
        benchmark:
            f"results/{_name}/benchmarks/generate_dataset.tsv"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=opts.runtime_per_attempt(30),
            **CPU_RULE_PARTITION,
        conda:
            "../envs/wsss.yaml"
        shell:
            "python -m wsss_steps.generate_dataset --out {output:q} {params.options} 2> {log:q}"


rule prepare_data:
    input:
        dataset_source_files,
    output:
        "results/{dataset}/data/{split}.csv",
        # Each source file's stat and sha256: reruns follow content (invalidate_changed_manifests).
        "results/{dataset}/data/{split}.sources.json",
    params:
        dataset=lambda w: {k: v for k, v in dataset_settings(w).items() if k != "generator"},
        options=lambda w: cli_options(
            {
                "kind": dataset_settings(w)["kind"],
                "root": dataset_settings(w)["root"],
                "name": w.dataset,
                "label_source": dataset_settings(w)["label_source"],
                "label_mask_check": dataset_settings(w)["label_mask_check"],
                "labels_csv": dataset_settings(w).get("labels_csv"),
                "max_image_pixels": dataset_settings(w)["max_image_pixels"],
            }
        ),
        require_masks=lambda w: "--require-masks" if masks_required(w) else "",
    log:
        "logs/{dataset}/prepare_data_{split}.log",
    benchmark:
        "results/{dataset}/benchmarks/prepare_data_{split}.tsv"
    threads: 1
    resources:
        # COCO: pycocotools' index of instances_train2014.json (448 MB) takes several GB, and
        # rasterising 82,783 masks about half an hour (docs/coco.md).
        mem_mb=lambda w: 16000 if dataset_settings(w)["kind"] == "coco" else 2000,
        runtime=opts.runtime_per_attempt(lambda w: 240 if dataset_settings(w)["kind"] == "coco" else 60),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.prepare_data {params.options} --split {wildcards.split} "
        "{params.require_masks} --out-dir results/{wildcards.dataset}/data 2> {log:q}"
