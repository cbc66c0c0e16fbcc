"""The SteerLM attribute model in the model layer: its data contract (names.py: the 9 attributes, the
0-4 scale, the render of one example) and its artifact (artifact.py: folder, manifest, saving and
loading a predictor; lora.py: the LoRA backend loaded back). The steerlm stage trains and saves
artifacts with these; the reward resource's `attributes` backend loads them. Imports no stage."""

from .artifact import (ASSET, MANIFEST, MODEL_DIR, VERSION_RE, AttributeModelError, artifact_dir, load,
                       read_manifest, safe_relative)
from .names import ATTRIBUTES, HELPSTEER_ATTRIBUTES, IGNORE, OASST_ATTRIBUTES, SCALE_MAX, clamp_round, render

__all__ = ["ASSET", "ATTRIBUTES", "AttributeModelError", "HELPSTEER_ATTRIBUTES", "IGNORE", "MANIFEST", "MODEL_DIR",
           "OASST_ATTRIBUTES", "SCALE_MAX", "VERSION_RE", "artifact_dir", "clamp_round", "load", "read_manifest", "render",
           "safe_relative"]
