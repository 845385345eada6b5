"""RequestCallback: a Lightning Callback that also hears when a request starts and ends.

``serve_request`` (:mod:`lightning_unlearn.serving`) calls ``on_request_start`` after the module
has frozen its reference and prepared the method, and *before* ``trainer.fit`` builds the
optimizer (so a callback can freeze tensors with ``requires_grad=False`` in time);
``on_request_end`` after the request's training, before its weights are saved and evaluated. Every process of a DDP run calls both.

Every request callback says what it is in words (:attr:`RequestCallback.label`, e.g. "L2 to
previous, w=705"), from its own settings (:meth:`RequestCallback.settings`) through its class's
:meth:`RequestCallback.describe`: the one place a callback's label is made. The stream records
label, class and settings in ``run.json`` at the run's start (:meth:`RequestCallback.run_info_entry`);
reports read the label from there, and for older run folders describe the class and settings
the run's ``config.yaml`` records (:func:`label_of`).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RequestCallback(Callback):
    """Base of regularizers and recorders that act per unlearning request."""

    supports_lora: bool = False
    """Whether the callback serves ``--model.trainable=lora`` requests, whose trained parameters
    are adapter factors, not weights; a stream refuses the others at start (docs/lora.md)."""
    acts_on_training: ClassVar[str | None] = "it acts on a request's optimizer steps"
    """What the callback does to a request's training (a loss term, a gradient mask or
    projection, a statistic of the gradients), or ``None`` for one that only reads the weights
    a request starts and ends with (drift). A training-free method (UCE) takes no optimizer
    step, so the stream refuses a callback that acts on training, saying this."""

    def __init__(self, name: str | None = None) -> None:
        """
        Args:
            name: distinguishes two instances of one class in checkpoints (default: class name).
        """
        super().__init__()
        self.name = name

    @property
    def state_key(self) -> str:
        # Two instances of one class must not overwrite each other's checkpoint state.
        return self._generate_state_key(name=self.name or type(self).__qualname__)

    # -- what it is, in words -------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The constructor arguments that make this callback what it is (``name`` aside), as
        JSON values: what ``run.json`` records and :meth:`describe` reads. Default: none."""
        return {}

    @classmethod
    def describe(cls, settings: dict[str, Any]) -> str:
        """A reader's label for a callback of this class with ``settings`` (every constructor
        argument but ``name``, defaults filled in). Default: the class name."""
        return cls.__name__

    @property
    def label(self) -> str:
        """This callback in words, e.g. "L2 to previous, w=705" (its ``name`` first, if given)."""
        return _named(self.name, self.describe(self.settings()))

    def run_info_entry(self) -> dict[str, Any]:
        """How ``run.json`` lists this callback: its label, class path, name and settings."""
        return {"label": self.label, "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "name": self.name, "settings": self.settings()}

    def on_request_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The module is ready for ``pl_module.current_request``; the optimizer is not built yet."""

    def on_request_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Training for the current request is done; weights are not saved yet."""

    def request_records(self) -> dict[str, dict[str, Any]]:
        """JSON records of the request just ended, by file stem: the runner writes each to
        ``requests/NN-<concept>/<stem>.json`` (after ``on_request_end``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def carried_state(self) -> dict[str, torch.Tensor]:
        """Tensors that must outlive the request (e.g. a running average over requests), read
        after ``on_request_end``. The stream saves them with the committed request (safetensors,
        sha256 in the ledger) and gives them back through :meth:`load_carried_state` when a
        stream resumes after that request; default: nothing carried."""
        return {}

    def load_carried_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`carried_state` returned after the last committed request."""


def request_callbacks(trainer: Trainer) -> list[RequestCallback]:
    """The trainer's callbacks that take request hooks."""
    return [cb for cb in trainer.callbacks if isinstance(cb, RequestCallback)]


def _named(name: str | None, text: str) -> str:
    return f"{name}: {text}" if name else text


CALLBACK_PACKAGE = "lightning_unlearn.callbacks."
"""Only classes of this package are imported to describe a recorded callback (a config file
names a class path: importing any module it names would run that module's code)."""


def _callback_class(class_path: str) -> type[RequestCallback] | None:
    """The request callback class ``class_path`` names, if it is one of this package's."""
    if not class_path.startswith(CALLBACK_PACKAGE):
        return None
    module, _, attribute = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, RequestCallback) else None


def label_of(class_path: str, init_args: dict[str, Any] | None) -> str:
    """The label of a callback recorded as a class path and its ``init_args`` (a run's
    ``config.yaml``), made by that class's :meth:`RequestCallback.describe` with the
    constructor's defaults filled in; the class's short name for a class outside this package
    or one that takes no request hooks."""
    short = class_path.rsplit(".", 1)[-1]
    cls = _callback_class(class_path)
    if cls is None:
        return short
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if k not in ("self", "name") and p.default is not inspect.Parameter.empty}
    args = dict(init_args or {})
    name = args.pop("name", None)
    return _named(name, cls.describe({**defaults, **args}))


def configured_labels(callbacks: list[Any]) -> list[str]:
    """The labels of the request callbacks among a config's ``trainer.callbacks`` entries
    (``{class_path, init_args}``), in order; other callbacks (a progress view, a user's plain
    Lightning callback) are left out, as ``run.json`` leaves them out."""
    labels = []
    for entry in callbacks:
        if not isinstance(entry, dict) or not str(entry.get("class_path", "")).startswith(CALLBACK_PACKAGE):
            continue
        cls = _callback_class(str(entry["class_path"]))
        if cls is not None:
            labels.append(label_of(str(entry["class_path"]), entry.get("init_args")))
    return labels


def recorded_label(entry: Any) -> str:
    """A callback as ``run.json`` lists it: the label recorded at the run's start, or, in run
    folders written before labels were recorded, the short name they listed."""
    if isinstance(entry, dict):
        return str(entry.get("label") or str(entry.get("class", "?")).rsplit(".", 1)[-1])
    return str(entry)


def is_recorder(entry: Any) -> bool:
    """Whether a ``run.json`` callback entry records (drift) rather than regularizes."""
    cls = str(entry.get("class", "")) if isinstance(entry, dict) else str(entry)
    return cls.rsplit(".", 1)[-1] == "DriftRecorder"
