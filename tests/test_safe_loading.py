"""Audit: nothing in the project unpickles what it reads.

Weights are safetensors; the only pickle-based reader allowed is ``torch.load(...,
weights_only=True)`` (tensors and primitive containers only, no code), and every model
``from_pretrained`` passes ``use_safetensors=True`` (diffusers and transformers would otherwise
fall back to unpickling a ``.bin``; tokenizers and schedulers hold no pickles). The scan parses every
Python source of the package, the CLI, benchmarks and scripts, so a call split over lines or
written as ``from torch import load`` is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["lightning_unlearn", "callbacks", "datamodules", "train.py", "benchmarks", "scripts"]
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Lines of ``source`` that may unpickle: described as ``file:line: what``."""
    tree = ast.parse(source, filename)
    torch_load_names = {"torch.load"}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            torch_load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in UNPICKLERS:
                    problems.append(f"{filename}:{node.lineno}: imports {module}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name in torch_load_names or name.endswith(".load_from_checkpoint"):
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{filename}:{node.lineno}: {name}(...) without weights_only=True")
        if name.split(".")[0] in UNPICKLERS:
            problems.append(f"{filename}:{node.lineno}: {name}(...)")
        if name.endswith(".from_pretrained") and "Tokenizer" not in name and "Scheduler" not in name:
            flag = keywords.get("use_safetensors")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{filename}:{node.lineno}: {name}(...) without use_safetensors=True")
        flag = keywords.get("allow_pickle")
        if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
            problems.append(f"{filename}:{node.lineno}: {name}(..., allow_pickle=...)")
    return problems


def python_sources() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = REPO / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def test_no_source_unpickles():
    sources = python_sources()
    assert any(p.name == "stream.py" for p in sources) and (REPO / "train.py") in sources
    problems = [msg for p in sources for msg in unsafe_loads(p.read_text(), str(p.relative_to(REPO)))]
    assert not problems, "unsafe loading:\n" + "\n".join(problems)


def test_the_audit_catches_every_unsafe_form():
    bad = """
import torch, pickle
from torch import load as tl
import numpy as np
a = torch.load(path)
b = torch.load(
    path, map_location="cpu", weights_only=False)
c = tl(path)
d = pickle.loads(blob)
e = np.load(path, allow_pickle=True)
f = Model.load_from_checkpoint(path)
ok = torch.load(path, weights_only=True)
g = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
h = CLIPModel.from_pretrained(path, use_safetensors=False)
ok = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
ok = CLIPTokenizer.from_pretrained(path)
"""
    problems = unsafe_loads(bad)
    assert [int(p.split(":")[1]) for p in problems] == [2, 5, 6, 8, 9, 10, 11, 13, 14], problems
