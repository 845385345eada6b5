"""``python train.py report RUN_DIR [RUN_DIR ...]``: one page that compares stream runs.

Reads run folders written by the stream runner (``lightning_unlearn.stream``) and writes

- ``report.html``: one self-contained file (figures as PNG data URIs, CSS inline, no script,
  nothing fetched), to open in any browser or attach to a message;
- ``report.md`` with the same tables, its figures as ``figures/*.png`` next to it.

The package, one job a module, each importing only those before it:

- :mod:`.runs`: reading run folders into records (:func:`load_run`, :class:`RunFolderError`);
- :mod:`.document`: the document model (sections of notes, paragraphs, tables, figures) and cell formatting;
- :mod:`.figures`: matplotlib figures as PNG bytes, from plain numbers;
- :mod:`.sections`: the nine sections, built from records into document blocks;
- :mod:`.render`: HTML and Markdown from the sections;
- :mod:`.writer`: :func:`write_report` (read, build, render, write files);
- :mod:`.cli`: ``train.py report``'s arguments and :func:`main`.
"""

from lightning_unlearn.report.cli import build_parser, main
from lightning_unlearn.report.runs import RequestRecord, RunFolderError, RunRecord, load_run
from lightning_unlearn.report.writer import ReportFiles, default_out_dir, write_report

__all__ = [
    "ReportFiles", "RequestRecord", "RunFolderError", "RunRecord", "build_parser", "default_out_dir", "load_run",
    "main", "write_report",
]
