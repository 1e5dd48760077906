"""flameclip: language-image pre-training with a frozen LLM as the text encoder (FLAME).

``flameclip.load(checkpoint)`` is the front door for inference; ``flameclip.create_model_and_transforms``
mirrors open_clip's. Both are imported on first use so that ``import flameclip`` stays light.
"""

__version__ = "0.1.0"

_LAZY = {"load": "inference", "create_model_and_transforms": "inference", "FlameCLIP": "inference",
         "FlameModel": "model", "ModelConfig": "model"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'flameclip' has no attribute '{name}'")
