import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2():
    """The real packaged SmolLM2-135M, fp32, CPU, read at the default layer (-2)."""
    from flameclip.text.llm import load_llm

    return load_llm("smollm2-135m", dtype="fp32")


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    return smollm2.tokenizer


# Captions of very different lengths, batched together on purpose.
CAPTIONS = [
    "A cat",
    "Two red apples and a green pear on a wooden table, lit from the left by a low evening sun.",
    "dog.",
    (
        "A detailed scene: a yellow taxi waits at a crossing while a cyclist in a blue jacket passes "
        "in front of it; behind them a bakery window shows loaves of bread, a chalkboard menu and a "
        "sleeping tabby cat. The sky is overcast and the street is wet after the rain, with puddles "
        "reflecting the neon sign of a pharmacy on the corner. A woman with an umbrella stands near "
        "a lamp post, looking at her phone, while two pigeons peck at crumbs on the pavement."
    ),
    'He said "hello" to the robot',
]
