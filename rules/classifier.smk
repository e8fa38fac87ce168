rule train_classifier:
    input:
        unpack(classifier_inputs),
    output:
        model="results/{dataset}/classifier/{classifier}/model.pt",
        metrics="results/{dataset}/classifier/{classifier}/metrics.csv",
        rows="results/{dataset}/classifier/{classifier}/summary_rows.csv",
    params:
        settings=classifier_settings,
        options=lambda w: cli_options(classifier_settings(w), skip=("checkpoint_every", "ordinary"))
        + opts.precision_options(config),
        ordinary=lambda w, input: path_option("ordinary", input.get("ordinary")),
        **training_params("results/{dataset}/classifier/{classifier}", DEVICE, classifier_settings),
    log:
        "logs/{dataset}/train_classifier_{classifier}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_classifier_{classifier}.tsv"
    threads: RESOURCES["threads"]
    resources:
        mem_mb=RESOURCES["train_mem_mb"],
        runtime=opts.runtime_per_attempt(RESOURCES["train_runtime_min"]),
        gpu=GPU,
        **GPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.train_classifier --manifest {input.train:q} --val-manifest {input.val:q} "
        "--out {output.model:q} --metrics {output.metrics:q} --summary {output.rows:q} "
        "--checkpoint-dir {params.checkpoints:q} --checkpoint-every {params.checkpoint_every} "
        "--name {wildcards.classifier} --dataset {wildcards.dataset} {params.options} {params.ordinary} "
        "--device {params.device} --threads {threads} 2> {log:q}"
