rule seeds_shard:
    input:
        unpack(seed_inputs),
        classifier="results/{dataset}/classifier/{classifier}/model.pt",
        manifest=f"results/{{dataset}}/data/{SEED_SPLIT}.csv",
    output:
        "results/{dataset}/seeds/{classifier}/{seeds}/shards/shard-{shard}-of-{n}.h5",
    params:
        settings=seed_settings,
        module=lambda w: SEED_MODULES[seed_settings(w)["method"]],
        options=lambda w: cli_options(seed_settings(w)),
        device=config["device"],
    log:
        "logs/{dataset}/seeds_{classifier}_{seeds}_shard-{shard}-of-{n}.log",
    benchmark:
        "results/{dataset}/benchmarks/seeds_{classifier}_{seeds}_shard-{shard}-of-{n}.tsv"
    threads: 1
    resources:
        mem_mb=RESOURCES["infer_mem_mb"],
        runtime=RESOURCES["infer_runtime_min"],
        gpu=lambda w: GPU if seed_settings(w)["method"] != "cam" else 0,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m {params.module} --classifier {input.classifier} --manifest {input.manifest} "
        "--shard {wildcards.shard} --num-shards {wildcards.n} --out {output} {params.options} "
        "--device {params.device} --threads {threads} 2> {log}"


rule merge_seeds:
    input:
        shards=shard_paths,
        manifest=f"results/{{dataset}}/data/{SEED_SPLIT}.csv",
    output:
        "results/{dataset}/seeds/{classifier}/{seeds}/maps.h5",
    log:
        "logs/{dataset}/merge_seeds_{classifier}_{seeds}.log",
    benchmark:
        "results/{dataset}/benchmarks/merge_seeds_{classifier}_{seeds}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.merge_maps --manifest {input.manifest} --out {output} {input.shards} 2> {log}"
