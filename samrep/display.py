"""Thin notebook helpers for 99_summary, a section each (the only module using IPython): tables
as plain HTML with footnotes, plots as PNG, images as JPEG: one small self-contained page."""

import io

import matplotlib.pyplot as plt
from IPython.display import HTML, Image, Markdown, display

from samrep import figures, tables
from samrep.faults import checkpoint
from samrep.figures import ReportData

CSS = """<style>.jp-Notebook, body { max-width: 1280px; } img { max-width: 100%; height: auto; }
.jp-RenderedHTMLCommon table { font-size: 12px; table-layout: auto; margin: 0 0 1em 0; }
.jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th { padding: 2px 6px; text-align: left; }</style>"""
SYNTHETIC = """**Synthetic weights** (seeded, the exact architecture): speed and memory are the real
model's, but `acc` is agreement with the fp32 reference of the same weights, not segmentation
quality; the relative L2 errors are the weight-independent fidelity."""


def load(params) -> ReportData:
    """The records of the rows `params` configures (in its order), ground truth and image."""
    return figures.load_report(params.report_path, params.data_path, [r.key for r in params.runs])


def md(*parts: str) -> None:
    display(Markdown("\n\n".join(parts)))


def table(title: str, df, notes: list[str] = ()) -> None:
    """A table under its title, with numbered footnotes under it."""
    items = "".join(f"<li>{n}</li>" for n in notes)
    html = df.to_html(index=False, escape=False, border=0, na_rep="–")
    html += f"<ol style='font-size: 11px'>{items}</ol>" if items else ""
    display(Markdown(title), HTML(html))


def figure(fig, jpeg: bool = False, dpi: int = 72) -> None:
    """Embed a figure: PNG for plots, JPEG for images (a fraction of the size), then close it."""
    buf, fmt = io.BytesIO(), "jpeg" if jpeg else "png"
    fig.savefig(buf, format=fmt, dpi=dpi, pil_kwargs={"quality": 80} if jpeg else None)
    plt.close(fig)
    display(Image(buf.getvalue(), format=fmt))


def header(params, data: ReportData) -> None:
    """Title, what it ran on (the commit once), the weights' meaning, what could not be read."""
    recs = data.records
    first = next((r for r in recs if r.environment and r.inputs), None)
    env, inputs = (first.environment, first.inputs) if first else ({}, {})
    image, weights = inputs.get("image") or {}, inputs.get("weights") or {}
    v, d = env.get("versions") or {}, params.data
    lines = [
        CSS,
        f"# samrep report: {params.hw}\n{params.description}\n",
        f"**{env.get('device', '?')}**, driver {env.get('driver', '–')}, CUDA {env.get('cuda', '–')}"
        f"; CPU {env.get('cpu', '?')}; torch {v.get('torch')}, transformers {v.get('transformers')}"
        f"; commit **{tables.commits(recs)}**; params `{params.path}`.",
        f"Image {image.get('name', '?')}, point {image.get('point')}; weights "
        f"{weights.get('name', '?')}; dataset {d.datasize} copies x {d.repeat} passes, "
        f"{d.warmup} warm-up batches (published: 1000 x 5).",
    ]
    lines += [SYNTHETIC] * bool(weights.get("synthetic"))
    for kind in ("failed", "not_run"):
        keys = [r.key for r in recs if r.status == kind]
        lines += [f"**{kind.replace('_', ' ').capitalize()} rows**: {', '.join(keys)}"] * bool(keys)
    md(*lines, *(f"- could not read {p}" for p in data.problems))


def headline(data: ReportData) -> None:
    """Fastest row per precision against HF eager and the published A100 TensorRT row."""
    table("## Headline: the fastest engine per precision", tables.headline(data.records))
    if any(r.status == "ok" for r in data.records):
        figure(figures.headline_figure(data.records, tables.frame(data.records)))


def metrics(data: ReportData) -> None:
    """The case's table, the published rows, then the details and what ran."""
    spec, notes = tables.spec_table(data.records, data.manifest.get("seconds"))
    table("## Metrics in the case's columns (img/s, s, GiB; acc infer/val)", spec, notes)
    title = "### Published reference rows (not measured by samrep)"
    table(title, tables.PUBLISHED_A100, [tables.PUBLISHED_NOTE])
    title = "### Details: latency per batch, fidelity against fp32, energy, validity"
    table(title, tables.details_table(data.records))
    table("### What ran: math mode, status, stage times", tables.math_table(data.records))


def batch_plots(data: ReportData) -> None:
    """Metrics against batch size, latency against throughput (if any engine ran at several)."""
    df = tables.frame(data.records)
    ok = df[df["status"] == "ok"] if len(df) else df
    if not len(ok) or ok.groupby("engine")["bs"].nunique().max() < 2:
        return md("*Every engine ran at one batch size here: no plot against it.*")
    md("## Against batch size")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    figures.plot_metric(df, "p_core", ax=axes[0])
    figures.plot_metric(df, "latency_p50_ms", x="p_core", ax=axes[1], upper="latency_p99_ms")
    figures.plot_metric(df, "mem_peak_gib", ax=axes[2])
    fig.tight_layout()
    figure(fig)


def masks(data: ReportData) -> None:
    """Per engine and precision its best row's masks against the reference, differences shown."""
    checkpoint("summary:masks")  # test hook (samrep.faults): a summary that fails half-way
    title = f"## Masks against {data.reference} (best row per engine and precision)"
    md(title, "Red: in the reference only; blue: in the prediction only.")
    if data.gt is None:
        return md("*No reference masks on this machine: nothing to compare.*")
    if fig := figures.masks_figure(data):
        figure(fig, jpeg=True, dpi=80)


def extras(params, data: ReportData) -> None:
    """Interactive use, export/build stages, scale-out, the fast backend's steps, NOTES.md."""
    folder = params.report_path
    inter = tables.json_table(folder / "interactive.json", tables.INTERACTIVE_COLUMNS)
    title = "## Interactive use: prompt encoder + mask decoder on cached embeddings"
    table(title, inter) if inter is not None else md(title, "*not measured*")
    for name, title in (("export", "## ONNX exports"), ("build", "## Engine builds")):
        t = tables.json_table(folder / f"{name}.json", tables.STAGE_COLUMNS)
        if t is not None and len(t):
            table(title, t)
    if len(scaling := tables.scaling_table(data.records)):
        table("## Scale-out (torchrun, one process per GPU)", scaling)
    steps = tables.json_table(folder / "steps.json", tables.STEP_COLUMNS, key="steps")
    if steps is not None:
        table("## Optimisation steps of the `fast` backend (cumulative, one run)", steps)
    if (folder / "NOTES.md").is_file():
        md((folder / "NOTES.md").read_text())
