"""Regenerate notebooks/*.ipynb (thin: a parameters cell, then calls into samrep).

Run `python tools/make_notebooks.py && ruff check --fix notebooks && ruff format notebooks` after
editing the cells below (ruff drops unused imports); commit the output without
executing it (executed copies live under reports/<hw>/).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def params_cell(src: str):
    cell = new_code_cell(src)
    cell.metadata["tags"] = ["parameters"]
    return cell


def write(name: str, cells: list) -> None:
    for i, cell in enumerate(cells):
        cell["id"] = f"{name}-{i}"  # stable ids: regenerating changes nothing that did not change
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, NOTEBOOKS / f"{name}.ipynb")


def setup(*imports: str) -> str:
    """The first code cell: imports (samrep's sorted after the rest), then the params."""
    lines = ["import matplotlib.pyplot as plt", "from IPython.display import Markdown, display", ""]
    lines += sorted(["from samrep.config import load_params", *imports])
    return "\n".join(lines) + "\n\nparams = load_params(hw)"


write(
    "01_ground_truth",
    [
        new_markdown_cell(
            "# Ground truth: the fp32 CPU reference masks\n"
            "The HF docs example (SamModel, fp32, CPU, multimask output), post-processed to the "
            "original image size; masks saved smallest first as `sam_gt_{0,1,2}.pt`."
        ),
        params_cell('hw = "cpu"\nforce = False'),
        new_code_cell(
            setup("from samrep import report", "from samrep.groundtruth import run_ground_truth")
        ),
        new_code_cell(
            "gt = run_ground_truth(params, force=force)\ndisplay(report.manifest_table(gt.manifest))"
        ),
        new_code_cell(
            "fig = report.plot_ground_truth(report.load_image(gt.manifest), gt.manifest)\nplt.show()"
        ),
    ],
)

write(
    "02_export_onnx",
    [
        new_markdown_cell(
            "# ONNX export\n"
            "Every engine row that builds from ONNX gets its graphs exported (image encoder and "
            "prompt encoder + mask decoder, opset >= 17, dynamic batch), checked with "
            "`onnx.checker`, run once in ONNX Runtime against PyTorch, and cached."
        ),
        params_cell('hw = "cpu"\nforce = False'),
        new_code_cell(setup("from samrep import engines")),
        new_code_cell(
            "entries = engines.export_stage(params, force=force)\n"
            "display(engines.stage_table(entries))"
        ),
    ],
)

write(
    "03_build_engine",
    [
        new_markdown_cell(
            "# Engine builds\n"
            "Every engine row whose build persists (TensorRT engines, ONNX Runtime sessions "
            "over the cached export) is built here; torch.compile backends (inductor, fast) "
            "compile inside the evaluation, since their code does not persist across processes."
        ),
        params_cell('hw = "cpu"\nforce = False'),
        new_code_cell(setup("from samrep import engines")),
        new_code_cell(
            "entries = engines.build_stage(params, force=force)\n"
            "display(engines.stage_table(entries))"
        ),
    ],
)

write(
    "04_evaluate",
    [
        new_markdown_cell(
            "# Evaluation: every configured row\n"
            "Each row builds its backend, then runs the repeated dataset through the core and "
            "whole timed regions (`samrep.timing`), scoring every image against the ground truth."
        ),
        params_cell('hw = "cpu"\nforce = False'),
        new_code_cell(
            setup("from samrep import report", "from samrep.evaluate import run_evaluation")
        ),
        new_code_cell(
            "records = run_evaluation(params, force=force)\ndisplay(report.rows_table(records))"
        ),
    ],
)

write(
    "99_summary",
    [
        params_cell('hw = "cpu"'),
        new_code_cell(
            setup("from samrep import report", "from samrep.results import current_records") + "\n"
            "records = current_records(params)\nmanifest = report.read_manifest(params.data_path)\n"
            "display(Markdown(report.header_markdown(params, records, manifest)))"
        ),
        new_code_cell(
            'display(Markdown("## Metrics (the case\'s columns)"))\n'
            "display(Markdown(report.table_caption(records)))\n"
            "display(report.spec_table(records, manifest.get('seconds')).style.hide(axis='index'))"
        ),
        new_code_cell(
            'display(Markdown("## Published reference rows (not measured by samrep)"))\n'
            "display(report.PUBLISHED_A100.style.hide(axis='index'))\n"
            "display(Markdown(report.PUBLISHED_NOTE))"
        ),
        new_code_cell(
            'display(Markdown("## Every row as measured"))\n'
            "display(report.rows_table(records).style.hide(axis='index').format(precision=4, na_rep='-'))"
        ),
        new_code_cell(
            'display(Markdown("## Throughput and memory against batch size"))\n'
            "fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))\n"
            "report.plot_throughput(records, axes[0])\nreport.plot_memory(records, axes[1])\n"
            "fig.suptitle(report.table_caption(records), fontsize=8)\nfig.tight_layout()\nplt.show()"
        ),
        new_code_cell(
            'display(Markdown("## Masks: prediction of the first image of each row against the '
            'ground truth"))\n'
            "report.show_row_masks(records, params, manifest)"
        ),
        new_code_cell("report.show_stage_files(params)"),
        new_code_cell("report.show_scaling(records)"),
        new_code_cell("report.show_steps(params)"),
        new_code_cell(
            "display(Markdown(report.notes_markdown(params)))\n"
            "display(Markdown(report.METHOD_MARKDOWN))"
        ),
    ],
)

write(
    "explore_masks",
    [
        new_markdown_cell(
            "# Explore the masks\n"
            "Pick a hardware report and a row; see the image with its prompt point, each predicted "
            "mask beside its ground truth, and where they differ (zoomed on the differences)."
        ),
        params_cell(
            'hw = "cpu"\nrow = ""  # a row key such as "val-torch-fp32-bs1"; empty = first ok row'
        ),
        new_code_cell(
            setup("from samrep import report", "from samrep.results import current_records") + "\n"
            "records = current_records(params)\nmanifest = report.read_manifest(params.data_path)\n"
            "ok = [r['key'] for r in records if r['status'] == 'ok']\nprint('rows with masks:', ok)\n"
            "row = row or ok[0]"
        ),
        new_code_cell(
            "image = report.load_image(manifest)\ngt = report.load_gt_masks(params.data_path, manifest)\n"
            "pred = report.load_row_masks(params.report_path, row)\n"
            "fig = report.plot_masks(image, manifest['point'], gt, pred, manifest['order'], row)\nplt.show()"
        ),
        new_code_cell(
            "fig = report.plot_differences(image, gt, pred, manifest['order'], row)\nplt.show()"
        ),
    ],
)
