rule evaluate_seeds:
    input:
        maps="results/{dataset}/seeds/{classifier}/{seeds}/maps.h5",
        manifest=f"results/{{dataset}}/data/{SEED_SPLIT}.csv",
    output:
        curve="results/{dataset}/eval/{seed_stage}/{classifier}/{seeds}/curve.csv",
        per_class="results/{dataset}/eval/{seed_stage}/{classifier}/{seeds}/per_class.csv",
        rows="results/{dataset}/eval/{seed_stage}/{classifier}/{seeds}/summary_rows.csv",
    params:
        settings=config["evaluation"]["seeds"],
        thresholds=lambda w: cli_value(
            config["evaluation"]["seeds"]["crf_thresholds" if w.seed_stage == "seeds_crf" else "thresholds"]
        ),
        crf=lambda w: (
            f"--crf --workers {config['evaluation']['seeds']['crf_workers']}"
            if w.seed_stage == "seeds_crf"
            else ""
        ),
        split=SEED_SPLIT,
    log:
        "logs/{dataset}/evaluate_{seed_stage}_{classifier}_{seeds}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate_{seed_stage}_{classifier}_{seeds}.tsv"
    threads: lambda w: config["evaluation"]["seeds"]["crf_workers"] if w.seed_stage == "seeds_crf" else 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.evaluate_seeds --manifest {input.manifest} --maps {input.maps} --map-name cam "
        "--thresholds {params.thresholds} {params.crf} --dataset {wildcards.dataset} "
        "--stage {wildcards.seed_stage} --method {wildcards.seeds} --classifier {wildcards.classifier} "
        "--split {params.split} --curve {output.curve} --per-class {output.per_class} "
        "--summary {output.rows} 2> {log}"


rule summary:
    input:
        summary_row_files(),
    output:
        "results/summary.csv",
    log:
        "logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.summarize --out {output} {input} 2> {log}"
