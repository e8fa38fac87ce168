# Seeds (METHODS §2): the classifier's CAMs or AdvCAM's (method cam | advcam | advcam_sal), one
# job per shard of the seed split (merged by merge_maps; evaluated by evaluate_sweep).
# Config section: seeds.<name>.


rule seeds_shard:
    input:
        unpack(seed_inputs),
        classifier="results/{dataset}/classifier/{classifier}/model.pt",
        manifest=seed_manifest,
    output:
        "results/{dataset}/seeds/{classifier}/{seeds}/shards/shard-{shard}-of-{n}.h5",
    params:
        settings=seed_settings,
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
        "python -m wsss_steps.seeds --classifier {input.classifier:q} --manifest {input.manifest:q} "
        "--shard {wildcards.shard} --num-shards {wildcards.n} --out {output:q} {params.options} "
        "--device {params.device} --threads {threads} 2> {log:q}"
