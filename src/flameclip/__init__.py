"""flameclip: language-image pre-training with a frozen LLM as the text encoder (FLAME)."""

__version__ = "0.1.0"
