"""`make report`: the notebooks run by papermill into reports/<hw>/, then rendered to HTML.

Chain: 01_ground_truth -> 02_export_onnx -> 03_build_engine -> 04_evaluate -> 99_summary. Executed copies land in reports/<hw>/
(the notebooks under notebooks/ stay without outputs); 99_summary becomes reports/<hw>/index.html
with the code hidden and the figures embedded, so the one file can be published anywhere.
reports/index.html links every hardware report.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from samrep.config import REPO_ROOT, HwParams, load_params
from samrep.env import check_device
from samrep.errors import SamrepError
from samrep.progress import log
from samrep.results import atomic_write_bytes

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
CHAIN = ("01_ground_truth", "02_export_onnx", "03_build_engine", "04_evaluate", "99_summary")


def execute_notebook(name: str, params: HwParams, parameters: dict) -> Path:
    """Run notebooks/<name>.ipynb with papermill into the report folder (atomically)."""
    import papermill

    src = NOTEBOOKS_DIR / f"{name}.ipynb"
    out = params.report_path / f"{name}.ipynb"
    tmp = out.with_name(f".{out.name}.tmp.ipynb")
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"notebook {name}: running (papermill)")
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(src),
            str(tmp),
            parameters=parameters,
            kernel_name="python3",
            progress_bar=False,
            log_output=True,  # stream the kernel's progress lines to this terminal
            cwd=str(REPO_ROOT),
        )
    except papermill.PapermillExecutionError as exc:
        failed = out.with_name(f"{name}.failed.ipynb")
        if tmp.exists():
            tmp.replace(failed)
        raise SamrepError(
            f"notebook {name} failed ({exc.ename}: {exc.evalue.splitlines()[0] if exc.evalue else ''}); "
            f"executed copy in {failed}"
        ) from None
    tmp.replace(out)
    log(f"notebook {name}: done in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


# nbconvert's "lab" template with the blocks that load scripts from a CDN emptied (require.js,
# MathJax, mermaid, the ipywidgets renderer): the report has no <script src>, so it opens offline
# with no errors. Nothing in the summary notebook needs those scripts.
_OFFLINE_TEMPLATE = "samrep_offline.html.j2"
_OFFLINE_TEMPLATE_SRC = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def _nbconvert_template_dirs() -> list[str]:
    """Where nbconvert's own templates are, when jupyter's data path lacks them.

    A venv puts them in <prefix>/share/jupyter, which jupyter_path() covers; with
    `pip install --target DIR` they land in DIR/share/jupyter, next to the nbconvert package.
    """
    import nbconvert
    from jupyter_core.paths import jupyter_path

    if any(
        (Path(d) / "lab" / "conf.json").is_file() for d in jupyter_path("nbconvert", "templates")
    ):
        return []
    beside = Path(nbconvert.__file__).resolve().parent.parent / "share/jupyter/nbconvert/templates"
    return [str(beside)] if (beside / "lab" / "conf.json").is_file() else []


def render_html(notebook: Path, target: Path, title: str = "") -> Path:
    """nbconvert to one self-contained HTML file: code hidden, images embedded as data URIs,
    no scripts loaded from anywhere."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    nb.metadata["title"] = title or nb.metadata.get("title") or notebook.stem
    extra = _nbconvert_template_dirs()
    exporter = HTMLExporter(
        # Given here, as the constructor resolves the template. [cwd] is nbconvert's default;
        # the paths let templates name each other as "base/null.j2".
        extra_template_basedirs=[os.getcwd(), *extra],
        extra_template_paths=extra,
        template_name="lab",
        template_file=_OFFLINE_TEMPLATE,
        extra_loaders=[DictLoader({_OFFLINE_TEMPLATE: _OFFLINE_TEMPLATE_SRC})],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    body, _ = exporter.from_notebook_node(nb)
    atomic_write_bytes(target, body.encode())
    log(f"report: wrote {target}")
    return target


def write_index(reports_dir: Path = REPO_ROOT / "reports") -> Path:
    """reports/index.html: every hardware report with its headline line, and the published rows."""
    from samrep.tables import headline_line, index_html, load_records

    entries = []
    for page in sorted(reports_dir.glob("*/index.html")):
        records, _ = load_records(page.parent)
        device = next((r.environment.get("device") for r in records if r.environment), "")
        line = headline_line(records)
        entries.append({"hw": page.parent.name, "href": f"{page.parent.name}/index.html"})
        entries[-1].update(device=device, line=line)
    target = reports_dir / "index.html"
    atomic_write_bytes(target, index_html(entries).encode())
    return target


def _progress_only(record) -> bool:
    """Pass samrep's progress lines (stripped of the kernel's trailing newline) and warnings."""
    message = record.getMessage()
    if "[samrep" not in message and record.levelno < 30:  # 30: logging.WARNING
        return False
    record.msg, record.args = message.rstrip("\n"), ()
    return True


def _show_papermill_log() -> None:
    """papermill reports the kernel's output through `logging`: print it as plain lines."""
    import logging

    logger = logging.getLogger("papermill")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        # Only samrep's own progress lines and warnings; not every cell's output repr.
        handler.addFilter(_progress_only)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_report(hw: str, force: bool = False):
    """The whole chain for one hardware config -> samrep.resume.ChainOutcome (.page: the HTML).

    A stage whose inputs are unchanged since it last finished is reused (samrep.resume), unless
    `force`. A stage that fails is recorded and the chain goes on; the summary renders whatever
    can be rendered (its failed copy if it fails itself). outcome.failed says whether a stage or
    a configured row failed (the CLI then exits 1).
    """
    from samrep import resume
    from samrep.faults import checkpoint

    params = load_params(hw)
    check_device(params)  # before any work: say what the config needs and what is here
    _show_papermill_log()
    outcome = resume.ChainOutcome()
    page = params.report_path / "index.html"
    for name in CHAIN:
        summary = name == CHAIN[-1]
        out = params.report_path / f"{name}.ipynb"
        done = None if force else resume.fresh_stage(params, name, page if summary else out)
        if done is not None:
            log(f"notebook {name}: reused (inputs unchanged since {done['finished']})")
            outcome.reused.append(name)
            continue
        checkpoint(f"report:{name}")  # test hook (samrep.faults)
        resume.clear_stage(params, name)  # the old record must not vouch for what is redone
        parameters = {"hw": hw} if summary else {"hw": hw, "force": force}
        t0 = time.perf_counter()
        try:
            execute_notebook(name, params, parameters)
            if summary:
                checkpoint("report:render")
                render_html(out, page, f"samrep report: {hw}")
        except Exception as exc:  # SamrepError (the notebook raised), a dead kernel, ...
            if not isinstance(exc, SamrepError):
                exc = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log(f"notebook {name}: FAILED: {exc}")
            outcome.failed_stages[name] = str(exc)
            out.unlink(missing_ok=True)  # an older executed copy is not this run's
            resume.write_stage(params, name, "failed", time.perf_counter() - t0, str(exc))
            failed_copy = out.with_name(f"{name}.failed.ipynb")
            if summary and failed_copy.is_file():  # render what can be rendered
                render_html(failed_copy, page, f"samrep report: {hw} (summary failed)")
            continue
        resume.write_stage(params, name, "ok", time.perf_counter() - t0)
        outcome.ran.append(name)
    write_index()
    outcome.page = page
    outcome.failed_rows = resume.failed_rows(params)
    log(f"report: {outcome.summary()} (FORCE=1 redoes every stage)")
    if outcome.failed:
        log(f"report: {outcome.failure_message()}")
    return outcome
