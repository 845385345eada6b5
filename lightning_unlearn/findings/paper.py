"""What the paper claims, in its words and numbers (from the project's method notes,
``../shared/reference/method-notes.md`` and the paper's summary; numbers read off its plots,
about +-3 points). Facts, kept as data so the findings can print them beside ours."""

from __future__ import annotations

SETTINGS = {
    "sequential": "sequential",
    "l1": "L1-SP",
    "l2": "L2-SP",
    "topk": "SelFT (top-k)",
    "simultaneous": "simultaneous",
    "ties": "independent + TIES",
    "projection": "GradProj",
    "projection_topk": "GradProj + top-k",
}
"""The settings of the paper's regularizer table (run name suffixes) and their labels."""
BEYOND_PAPER = {
    "inverse_ewc": "inverse EWC",
    "trajectory": "trajectory",
    "replay": "replay",
    "lora": "LoRA requests",
}
"""Settings the reference code or peers have and the paper's table does not: shown in the
regularizer table, ours only, marked against sequential like the others."""
REGULARIZERS = ("l1", "l2", "topk", "ties", "projection")
"""The add-on regularizers the paper compares with sequential unlearning (simultaneous is a protocol)."""
DOMAINS = {"styles": "style", "objects": "object"}
METHODS = {"ca": "Concept Ablation", "esd": "ESD", "uce": "UCE"}
"""Run name prefixes. UCE is closed-form: only its ``sequential`` stream exists, a column of ESD's
table when run (``uce_<domain>_sequential``)."""
PAPER_REQUESTS = 12

PAPER_TABLE: dict[tuple[str, str], dict[str, float | None]] = {
    ("styles", "IRA"): {"sequential": 15, "l1": 12, "l2": 11, "topk": 16, "simultaneous": 18, "ties": 39, "projection": None},
    ("styles", "CRA"): {"sequential": 45, "l1": 83, "l2": 73, "topk": 99, "simultaneous": 98, "ties": 73, "projection": None},
    ("objects", "IRA"): {"sequential": 13, "l1": 17, "l2": 22, "topk": 24, "simultaneous": 39, "ties": 36, "projection": 60},
    ("objects", "CRA"): {"sequential": 5, "l1": 4, "l2": 39, "topk": 63, "simultaneous": 46, "ties": 77, "projection": 58},
}
"""The paper's final numbers after 12 requests, Concept Ablation base (``None``: not reported).
UA stays about 96-100 throughout."""
PAPER_UA = "about 96-100"

FINDINGS = {
    1: ("Sequential unlearning collapses retention; simultaneous unlearning retains better",
        "Sequentially removing 12 concepts severely degrades retention; restarting from the base and unlearning all "
        "requests simultaneously better preserves cross-domain knowledge.",
        "CA after 12 requests: style IRA 15 / CRA 45 sequential vs 18 / 98 simultaneous; object IRA 13 / CRA 5 vs "
        "39 / 46"),
    2: ("Simultaneous unlearning is prohibitively expensive",
        "Total training steps grow superlinearly under simultaneous unlearning and near linearly under sequential.",
        "cumulative iterations after 12 requests: about 5.3k sequential vs 19.4k simultaneous (3.7x); they cross near "
        "request 4"),
    3: ("Sequential unlearning drifts far from the pretrained weights",
        "Sequential unlearning incurs far greater cumulative parameter drift from the pretrained model than "
        "simultaneous unlearning.",
        "per-layer L2 of the cross-attention K/V update: about 3.4 sequential vs under 1.5 simultaneous (objects)"),
    4: ("Semantically similar concepts are harder to preserve",
        "Concepts with greater text-embedding cosine similarity to the unlearned concept lose more; the change of "
        "cross-attention keys and values grows with similarity.",
        "Pearson r about -0.63 between similarity and retained accuracy (+0.63 with the accuracy drop, which is what "
        "we correlate)"),
    5: ("Add-on regularizers improve retention; gradient projection retains best in-domain and combines",
        "All add-on regularizers improve retention over sequential unlearning; gradient projection achieves the "
        "strongest in-domain retention; it combines with other regularizers for further gains.",
        "objects IRA after 12: GradProj 60 vs 13-39 for the others; regularizer table below"),
}
"""Finding number -> (title, the paper's statement, the paper's number)."""
