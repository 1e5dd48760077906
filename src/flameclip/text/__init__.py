"""The frozen-LLM text encoder: loading, prompt sets and facet-decoupled encoding."""

from .facets import CaptionError, FacetEncoder, encode
from .llm import PACKAGED_LLMS, FrozenLLM, LLMNotFoundError, load_llm
from .prompts import PromptSet, clean_caption, load_prompt_set

__all__ = [
    "PACKAGED_LLMS",
    "CaptionError",
    "FacetEncoder",
    "FrozenLLM",
    "LLMNotFoundError",
    "PromptSet",
    "clean_caption",
    "encode",
    "load_llm",
    "load_prompt_set",
]
