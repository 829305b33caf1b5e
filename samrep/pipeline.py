"""`make report`: the notebooks of CHAIN (stages of samrep.stages) run by papermill into
reports/<hw>/. A failed ground truth stops the chain, publishing nothing; a failed export or build
shows in its rows. The summary becomes reports/<hw>/index.html (self-contained, code hidden), and
reports/index.html lists each hw with its headline line."""

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from samrep.config import HwParams, load_params
from samrep.data import load_params_sample
from samrep.errors import SamrepError
from samrep.faults import checkpoint
from samrep.progress import log
from samrep.stages import prepare
from samrep.store import REPO_ROOT, checked, remove, temp_suffix, write_bytes
from samrep.tables import headline_line, index_html, load_records

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
CHAIN = ("01_ground_truth", "02_export_onnx", "03_build_engine", "04_evaluate", "99_summary")


@dataclass
class Outcome:
    """What run_report did: the page written, the failed notebooks (name -> why), failed rows."""

    page: Path | None = None
    failed_stages: dict = field(default_factory=dict)
    failed_rows: list = field(default_factory=list)


def execute_notebook(name: str, params: HwParams, parameters: dict) -> Path:
    """Run notebooks/<name>.ipynb with papermill into the report folder (atomically)."""
    import papermill

    out = params.report_path / f"{name}.ipynb"
    tmp = checked(out.with_name(f".{name}{temp_suffix()}.ipynb"))
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log(f"notebook {name}: running (papermill)")
    source, t0 = str(NOTEBOOKS_DIR / f"{name}.ipynb"), time.perf_counter()
    options = dict(kernel_name="python3", progress_bar=False, log_output=True, cwd=str(REPO_ROOT))
    try:
        papermill.execute_notebook(source, str(tmp), parameters=parameters, **options)
    except BaseException as exc:  # a failed cell, Ctrl-C, a dead kernel: no half-run notebook
        remove(tmp)
        if not isinstance(exc, papermill.PapermillExecutionError):
            raise
        line = exc.evalue.splitlines()[0] if exc.evalue else ""
        raise SamrepError(f"notebook {name}: {line or exc.ename}") from None
    os.replace(tmp, checked(out))
    log(f"notebook {name}: done in {time.perf_counter() - t0:.1f} s")
    return out


_OFFLINE = "samrep_offline.html.j2"  # nbconvert's lab template without its CDN scripts
_OFFLINE_SRC = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def _template_dirs() -> list[str]:
    """nbconvert's templates beside its package when jupyter's data path lacks them
    (`pip install --target DIR` puts them in DIR/share/jupyter)."""
    import nbconvert
    from jupyter_core.paths import jupyter_path

    if any((Path(d) / "lab/conf.json").is_file() for d in jupyter_path("nbconvert", "templates")):
        return []
    beside = Path(nbconvert.__file__).resolve().parent.parent / "share/jupyter/nbconvert/templates"
    return [str(beside)] if (beside / "lab/conf.json").is_file() else []


def render_html(notebook: Path, target: Path, title: str) -> Path:
    """One self-contained HTML file: code hidden, images embedded, no scripts from anywhere."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    nb.metadata["title"] = title  # the page's <title>
    extra, loader = _template_dirs(), DictLoader({_OFFLINE: _OFFLINE_SRC})
    paths = dict(extra_template_basedirs=[os.getcwd(), *extra], extra_template_paths=extra)
    template = dict(template_name="lab", template_file=_OFFLINE, extra_loaders=[loader])
    hide = dict(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = HTMLExporter(**paths, **template, **hide).from_notebook_node(nb)
    write_bytes(target, body.encode())
    log(f"report: wrote {target}")
    return target


def write_index(reports_dir: Path = REPO_ROOT / "reports") -> Path:
    """reports/index.html: every hw report with its headline line, and the published rows."""
    entries = []
    for page in sorted(reports_dir.glob("*/index.html")):
        (records, _), hw = load_records(page.parent), page.parent.name
        device = next((r.environment.get("device") for r in records if r.environment), "")
        line = headline_line(records)
        entries.append({"hw": hw, "href": f"{hw}/index.html", "device": device, "line": line})
    return write_bytes(reports_dir / "index.html", index_html(entries).encode())


def _progress_only(record: logging.LogRecord) -> bool:
    """papermill logs every cell output: pass only samrep's progress lines and warnings."""
    message = record.getMessage()
    record.msg, record.args = message.rstrip("\n"), ()
    return "[samrep" in message or record.levelno >= logging.WARNING


def run_report(hw: str, force: bool = False) -> Outcome:
    """The whole chain for one hw -> Outcome (any failed stage or row: exit 1)."""
    params = load_params(hw)
    prepare(params)  # bad input, a missing device: one line before any work; confines the writes
    load_params_sample(params)  # an undecodable image too (not after a stub page is published)
    logger = logging.getLogger("papermill")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.addFilter(_progress_only)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    outcome = Outcome()
    for name in CHAIN:
        checkpoint(f"report:{name}")  # test hook (samrep.faults)
        try:
            parameters = {"hw": hw} if name == CHAIN[-1] else {"hw": hw, "force": force}
            nb = execute_notebook(name, params, parameters)
        except Exception as exc:  # SamrepError (the notebook raised), a dead kernel, ...
            log(f"notebook {name}: FAILED: {exc}")
            outcome.failed_stages[name] = str(exc)
            if name == CHAIN[0]:  # the ground truth, which every later stage needs
                raise SamrepError(f"report {hw}: {exc}; nothing published") from None
            continue
        if name == CHAIN[-1]:
            checkpoint("report:render")
            page = params.report_path / "index.html"
            outcome.page = render_html(nb, page, f"samrep report: {hw}")
    records, _ = load_records(params.report_path, [r.key for r in params.runs])
    outcome.failed_rows = [r.key for r in records if r.status == "failed"]
    write_index()
    return outcome
