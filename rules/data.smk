rule generate_dataset:
    output:
        directory(config["dataset"]["root"]),
    params:
        options=cli_options(config["dataset"].get("generator", {})),
    log:
        f"logs/{DATASET}/generate_dataset.log",
    benchmark:
        f"results/{DATASET}/benchmarks/generate_dataset.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.generate_dataset --out {output} {params.options} 2> {log}"


rule prepare_data:
    input:
        dataset_root_input,
    output:
        "results/{dataset}/data/{split}.csv",
    params:
        dataset={k: v for k, v in config["dataset"].items() if k != "generator"},
        options=lambda w: cli_options(
            {
                "kind": config["dataset"]["kind"],
                "root": config["dataset"]["root"],
                "name": w.dataset,
                "label_source": config["dataset"]["label_source"],
                "labels_csv": config["dataset"].get("labels_csv"),
            }
        ),
        require_masks=lambda w: "--require-masks" if w.split == SEED_SPLIT else "",
    log:
        "logs/{dataset}/prepare_data_{split}.log",
    benchmark:
        "results/{dataset}/benchmarks/prepare_data_{split}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.prepare_data {params.options} --split {wildcards.split} "
        "{params.require_masks} --out-dir results/{wildcards.dataset}/data 2> {log}"
