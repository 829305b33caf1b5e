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


def write(name: str, cells: list, title: str = "") -> None:
    for i, cell in enumerate(cells):
        cell["id"] = f"{name}-{i}"  # stable ids: regenerating changes nothing that did not change
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    if title:  # the HTML page's <title> (nbconvert's lab template reads it; else "Notebook")
        nb.metadata["title"] = title
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
        new_code_cell(setup("from samrep import figures, stages")),
        new_code_cell(
            "gt = stages.groundtruth(params, force=force)\n"
            "keys = ('order', 'area_fractions', 'iou_scores', 'files_sha256')\n"
            "display({k: gt.manifest[k] for k in keys})"
        ),
        new_code_cell(
            "data = figures.load_report(params.report_path, params.data_path)\n"
            "fig = figures.plot_ground_truth(data.image, data.gt, gt.manifest['point'], "
            "gt.manifest['image']['name'])\nplt.show()"
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
        new_code_cell(setup("from samrep import stages, tables")),
        new_code_cell(
            "stages.engines(params, 'export', force=force)\n"
            "display(tables.json_table(params.report_path / 'export.json', tables.STAGE_COLUMNS))"
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
        new_code_cell(setup("from samrep import stages, tables")),
        new_code_cell(
            "stages.engines(params, 'build', force=force)\n"
            "display(tables.json_table(params.report_path / 'build.json', tables.STAGE_COLUMNS))"
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
            setup("from samrep import stages, tables", "from samrep.interactive import interactive")
        ),
        new_code_cell(
            "records = stages.evaluate(params, force=force)\n"
            "display(tables.math_table(records))\ndisplay(tables.details_table(records))"
        ),
        new_markdown_cell("## Interactive use: the decoder alone on cached image embeddings"),
        new_code_cell(
            "interactive(params)\n"
            "display(tables.json_table(params.report_path / 'interactive.json', "
            "tables.INTERACTIVE_COLUMNS))"
        ),
    ],
)

METHOD = """\
## How these numbers were measured
- **p_*_core**: images / sum of core times; core = synchronize, host-to-device copy, forward,
  synchronize. **p_*_whole**: images / wall time of the whole loop (building each batch, core,
  post-processing to the original size, scoring). Warm-up batches excluded; the dataset is the
  one sample repeated `datasize` times (drop_last), `repeat` passes.
- **Latency**: per-batch core time, p50/p90/p99 over the timed batches [ms].
- **acc**: mean over the 3 masks and every image of pixel agreement `(pred == gt).sum() / numel`
  at the original size (not IoU); infer/val. **Fidelity**: relative L2 error
  `||x - ref|| / ||ref||` of the image embeddings and the low-res mask logits against fp32.
- **MFU**: p_core x analytic FLOPs per image (2 per multiply-add) / the device's dense peak at
  the precision that ran (fp32 means TF32 off); "3.1e12 conv." is the original's convention.
  A GPU with no known peak shows "not available: peak unknown".
- **mem**: GPU: NVML device memory used, peak / total GiB, with the framework's own peak;
  CPU: process RSS / host RAM. **Energy**: NVML's total-energy counter over the timed region
  (img/J); "not measured" on CPUs.
- **e2e_time**: ground truth + the val row (load, build, measure) + the engine row.
- **valid**: enough timed batches and seconds, warm-up excluded, monotonic clock, an idle GPU,
  ground truth and weights matching the manifest's sha256; a failing result is kept, marked.
"""

write(
    "99_summary",
    [
        params_cell('hw = "cpu"'),
        new_code_cell(
            "from samrep import display as report\nfrom samrep.config import load_params\n\n"
            "params = load_params(hw)\ndata = report.load(params)\nreport.header(params, data)"
        ),
        new_code_cell("report.headline(data)"),
        new_code_cell("report.metrics(data)"),
        new_code_cell("report.batch_plots(data)"),
        new_code_cell("report.masks(data)"),
        new_code_cell("report.extras(params, data)"),
        new_markdown_cell(METHOD),
    ],
    title="samrep report",
)

write(
    "explore_masks",
    [
        new_markdown_cell(
            "# Explore the masks\n"
            "Pick a hardware report and a row; see each predicted mask against the ground truth, "
            "the differing pixels coloured (red: missed, blue: extra), zoomed where they cluster."
        ),
        params_cell(
            'hw = "cpu"\nrow = ""  # a row key such as "val-torch-fp32-bs1"; empty = first ok row'
        ),
        new_code_cell(
            setup("from samrep import figures") + "\n"
            "data = figures.load_report(params.report_path, params.data_path)\n"
            "ok = [r.key for r in data.records if r.status == 'ok' and r.masks_file]\n"
            "print('rows with masks:', ok, '; compared with', data.reference)\nrow = row or ok[0]"
        ),
        new_code_cell("fig = figures.masks_figure(data, [row])\nplt.show()"),
    ],
)
