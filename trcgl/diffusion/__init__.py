"""Text-guided conditional diffusion (TRCGL-Net's tail-class synthesis): prompts, text side, the composed model.

``TextToXray`` is imported lazily: ``trcgl.diffusion.prompts`` stays cheap to import (no torch / diffusers).
"""

from __future__ import annotations

from typing import Any

from trcgl.diffusion.prompts import EMPTY_PROMPT, build_prompt, prompt_vocabulary

__all__ = ["EMPTY_PROMPT", "TextToXray", "build_prompt", "prompt_vocabulary"]


def __getattr__(name: str) -> Any:
    if name == "TextToXray":
        # lazy: diffusers and transformers take seconds to import; prompts alone need neither
        from trcgl.diffusion.model import TextToXray

        return TextToXray
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
