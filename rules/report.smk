# Figures and tables of the HTML report: `snakemake --report results/report.html` (make run does it).
# Every file here is marked with report(...) and gets a caption from report/*.rst.


rule report_table:
    input:
        "results/summary.csv",
    output:
        report(
            "results/{dataset}/report/stages.html",
            caption="../report/stages.rst",
            category="1. Stage-by-stage mIoU",
            labels={"dataset": "{dataset}", "figure": "stage table"},
        ),
    log:
        "logs/{dataset}/report_table.log",
    benchmark:
        "results/{dataset}/benchmarks/report_table.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=opts.runtime_per_attempt(10),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.report_figures table --summary {input:q} --dataset {wildcards.dataset} "
        "--out {output:q} 2> {log:q}"


rule report_sweep:
    input:
        unpack(lambda w: experiment_files(w, "curve.csv", targets.SWEPT_STAGES)),
    output:
        report(
            "results/{dataset}/report/{classifier}/{masks}/sweep.png",
            caption="../report/sweep.rst",
            category="2. Experiments",
            subcategory="{dataset}: {classifier} / {masks}",
            labels={"dataset": "{dataset}", "experiment": "{classifier} / {masks}", "figure": "threshold sweep"},
        ),
    params:
        curves=lambda w, input: pairs(dict(input.items())),
    log:
        "logs/{dataset}/report_sweep_{classifier}_{masks}.log",
    benchmark:
        "results/{dataset}/benchmarks/report_sweep_{classifier}_{masks}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=opts.runtime_per_attempt(10),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.report_figures sweep --curve {params.curves} "
        "--title 'mIoU against the background threshold: {wildcards.classifier} / {wildcards.masks}' "
        "--out {output:q} 2> {log:q}"


rule report_seeds_precision_recall:
    input:
        unpack(lambda w: targets.seeds_curves(w.dataset, dataset_config(w))),
    output:
        report(
            "results/{dataset}/report/seeds_precision_recall.png",
            caption="../report/precision_recall.rst",
            category="1. Stage-by-stage mIoU",
            labels={"dataset": "{dataset}", "figure": "seeds: precision against recall"},
        ),
    params:
        curves=lambda w, input: pairs(dict(input.items())),
    log:
        "logs/{dataset}/report_seeds_precision_recall.log",
    benchmark:
        "results/{dataset}/benchmarks/report_seeds_precision_recall.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=opts.runtime_per_attempt(10),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.report_figures precision-recall --curve {params.curves} "
        "--title 'Seeds: precision against recall over the background threshold ({wildcards.dataset})' "
        "--out {output:q} 2> {log:q}"


rule report_per_class:
    input:
        unpack(lambda w: experiment_files(w, "per_class.csv")),
    output:
        report(
            "results/{dataset}/report/{classifier}/{masks}/per_class.png",
            caption="../report/per_class.rst",
            category="2. Experiments",
            subcategory="{dataset}: {classifier} / {masks}",
            labels={"dataset": "{dataset}", "experiment": "{classifier} / {masks}", "figure": "per-class IoU"},
        ),
    params:
        tables=lambda w, input: pairs(dict(input.items())),
    log:
        "logs/{dataset}/report_per_class_{classifier}_{masks}.log",
    benchmark:
        "results/{dataset}/benchmarks/report_per_class_{classifier}_{masks}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=opts.runtime_per_attempt(10),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.report_figures per-class --per-class {params.tables} "
        "--title 'Per-class IoU: {wildcards.classifier} / {wildcards.masks}' --out {output:q} 2> {log:q}"


rule report_gallery:
    input:
        unpack(lambda w: targets.gallery_inputs(w.dataset, dataset_config(w), w.classifier, w.masks)),
    output:
        report(
            "results/{dataset}/report/{classifier}/{masks}/gallery.png",
            caption="../report/gallery.rst",
            category="2. Experiments",
            subcategory="{dataset}: {classifier} / {masks}",
            labels={"dataset": "{dataset}", "experiment": "{classifier} / {masks}", "figure": "gallery"},
        ),
    params:
        gallery_images=lambda w: dataset_config(w)["report"]["gallery_images"],
        stages=lambda w, input: " ".join(
            path_option(name.replace("_", "-"), path)
            for name, path in input.items()
            if name not in ("manifest", "predictions")
        ),
        crf=lambda w: cli_options({"crf": segmentation_settings(w)["crf"]}),
    log:
        "logs/{dataset}/report_gallery_{classifier}_{masks}.log",
    benchmark:
        "results/{dataset}/benchmarks/report_gallery_{classifier}_{masks}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=opts.runtime_per_attempt(10),
        **CPU_RULE_PARTITION,
    conda:
        "../envs/wsss.yaml"
    shell:
        "python -m wsss_steps.report_figures gallery --manifest {input.manifest:q} "
        "--predictions {input.predictions:q} {params.stages} --count {params.gallery_images} {params.crf} "
        "--out {output:q} 2> {log:q}"
