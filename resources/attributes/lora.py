"""The attribute model's `lora` backend loaded back: a saved adapter + score head over its base model
(`AutoModelForSequenceClassification(num_labels=9, problem_type="regression")`), and the pieces the
training code (posttrain_assets/steerlm/lora.py) shares with it: the base model's loading, the device
choice, batched prediction."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .names import ATTRIBUTES


def resolve_base(name: str) -> str:
    """A base model name: "embedded" (or "") = the bundled SmolLM2-135M-Instruct's folder."""
    if name in ("", "embedded"):
        from resources.llm import embedded_model_dir

        return embedded_model_dir()
    return name


def device_of(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_base(base: str, device: str):
    """(tokenizer, sequence-classification model with 9 regression outputs) of a causal LM."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(ATTRIBUTES), problem_type="regression", torch_dtype=dtype)
    model.config.pad_token_id = tok.pad_token_id
    return tok, model


def predict(model, tok, texts: Sequence[str], max_length: int, device: str, batch_size: int = 8) -> np.ndarray:
    """[n, 9] raw outputs of `texts`, in batches."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length).to(device)
            out.append(model(**enc).logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(ATTRIBUTES)))


class LoraPredictor:
    """A saved adapter loaded back over its base model: predict(texts, responses) -> [n, 9]."""

    def __init__(self, manifest: dict, folder: str, device: str = "auto", cleanup: Callable[[], None] = lambda: None,
                 batch_size: int = 8):
        from peft import PeftModel

        self.manifest, self.version = manifest, manifest["version"]
        self.device = device_of(device)
        s = manifest["settings"]
        self.max_length = s["max_length"]
        self.batch_size = batch_size
        tok, base = load_base(resolve_base(s["base_model"]), self.device)
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder)
        if self.tok.pad_token is None:
            self.tok.pad_token = tok.pad_token
        self.model = PeftModel.from_pretrained(base, folder).to(self.device).eval()
        cleanup()

    def close(self) -> None:
        self.model = None

    def predict(self, texts: Sequence[str], responses: Sequence[str] = ()) -> np.ndarray:
        return predict(self.model, self.tok, texts, self.max_length, self.device, self.batch_size)
