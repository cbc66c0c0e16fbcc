"""The attribute model's `lora` backend: LoRA (peft) on `AutoModelForSequenceClassification(num_labels=9,
problem_type="regression")` over any causal LM transformers supports (the seed's train_attribute_model.py
took llm-jp-13b and only llama; here any architecture with a sequence-classification head), trained
with NeMo's masked loss: the squared error of an attribute counts only where the row has it
(target -100 = missing). The seed's knobs: learning rate, epochs, LoRA rank / alpha / dropout, max
length, batch size. The score head is trained in full (`modules_to_save`), saved with the adapter.

On a GPU this is the configured path; on the CPU it runs (a test trains a few real steps of the
embedded SmolLM2-135M) but is slow: the CPU default is the head over frozen embeddings. Loading a saved
adapter back (LoraPredictor) is the model layer's: resources/attributes/lora.py."""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np
from pydantic import BaseModel

from resources.attributes.lora import LoraPredictor, device_of, load_base, predict, resolve_base

from .attributes import IGNORE


class LoraSettings(BaseModel):
    """The seed's knobs (train_attribute_model.py): the one definition, also the fields of the
    `attribute_model` config's `lora` backend (steerlm/assets.py `LoraBackend`)."""

    base_model: str = "embedded"  # hub id or folder; "embedded" = the bundled SmolLM2-135M-Instruct
    learning_rate: float = 1e-4
    epochs: float = 1.0
    max_steps: int = 0  # > 0: stop after this many optimizer steps (a smoke run)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    max_length: int = 512
    batch_size: int = 4
    seed: int = 0
    device: str = "auto"  # auto = cuda when present; cpu, cuda, cuda:N

    def version_settings(self) -> dict:
        """The settings that shape the model (they enter its version): all but the device."""
        return {k: getattr(self, k) for k in LoraSettings.model_fields if k != "device"}


def masked_mse(pred, target):
    """NeMo's loss: mean squared error over the (row, attribute) cells whose target is not IGNORE."""
    mask = target != IGNORE
    if not bool(mask.any()):
        return (pred * 0).sum()
    diff = (pred.float() - target.float()) * mask
    return (diff ** 2).sum() / mask.sum()


def train_lora(texts: Sequence[str], labels: Sequence[Sequence[Optional[int]]], out_dir: str, s: LoraSettings,
               log: Callable[[str], None] = lambda m: None,
               predict_texts: Sequence[str] = ()) -> tuple[dict, np.ndarray]:
    """Fine-tune and save the adapter + score head into `out_dir`; returns (training stats, the trained
    model's predictions of `predict_texts`, e.g. the validation rows)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(s.seed)
    device = device_of(s.device)
    tok, model = load_base(resolve_base(s.base_model), device)
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout)
    model = get_peft_model(model, cfg).to(device)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.learning_rate)
    targets = torch.tensor([[IGNORE if v is None else v for v in row] for row in labels], dtype=torch.float32)
    n = len(texts)
    steps_per_epoch = max(1, math.ceil(n / s.batch_size))
    total = s.max_steps if s.max_steps > 0 else max(1, math.ceil(s.epochs * steps_per_epoch))
    rng = np.random.default_rng(s.seed)
    order: list[int] = []
    losses, t0 = [], time.monotonic()
    for step in range(total):
        if len(order) < s.batch_size:
            order += list(rng.permutation(n))
        idx, order = order[: s.batch_size], order[s.batch_size:]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                  max_length=s.max_length).to(device)
        pred = model(**enc).logits
        loss = masked_mse(pred, targets[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 10 == 0 or step + 1 == total:
            log(f"attribute model lora: step {step + 1}/{total}, loss {losses[-1]:.3f}, "
                f"{(step + 1) / (time.monotonic() - t0):.2f} steps/s")
    model.eval()
    predictions = predict(model, tok, predict_texts, s.max_length, device)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"steps": total, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "device": device, "seconds": round(time.monotonic() - t0, 1)}, predictions


def lora_files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(b, f), folder).replace(os.sep, "/")
                  for b, _, fs in os.walk(folder) for f in fs)


__all__ = ["LoraPredictor", "LoraSettings", "lora_files", "masked_mse", "resolve_base", "train_lora"]
