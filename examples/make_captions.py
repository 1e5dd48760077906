"""Write examples/captions.jsonl: small scenes described three ways (raw alt-text, short, long).

Deterministic (seeded), so the file can be rebuilt and compared. The long captions run to
100-200 tokens, like the detailed recaptions FLAME is built for.
"""

import json
import random
from pathlib import Path

OBJECTS = ["cat", "dog", "bicycle", "red umbrella", "teapot", "guitar", "sunflower", "lighthouse", "sailboat",
           "owl", "pineapple", "laptop", "violin", "cactus", "hot-air balloon", "fox", "bus", "kite", "lamp",
           "strawberry cake", "penguin", "tractor", "rocket", "snail"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "grey", "white", "black", "pink"]
PLACES = ["on a sandy beach", "in a snowy forest", "on a kitchen table", "in a busy city street",
          "on a mountain ridge", "in a quiet library", "beside a river", "in a sunlit meadow"]
POSITIONS = ["in the top left corner", "in the centre", "near the bottom edge", "on the right side",
             "on the left side", "in the top right corner"]
SIZES = ["tiny", "small", "medium-sized", "large"]
MOODS = ["calm and peaceful", "cheerful and lively", "mysterious", "cosy and warm", "cold and lonely"]
ACTIONS = ["resting", "waiting", "standing still", "leaning to one side", "catching the light"]


def scene(rng: random.Random, i: int) -> dict:
    n = rng.randint(2, 5)
    objs = rng.sample(OBJECTS, n)
    place, mood = rng.choice(PLACES), rng.choice(MOODS)
    raw = ", ".join(objs)
    short = f"A {objs[0]} and a {objs[1]} {place}."
    parts = [f"The picture shows a scene {place} with {n} things in it."]
    for o in objs:
        parts.append(
            f"A {rng.choice(SIZES)} {rng.choice(COLOURS)} {o} is {rng.choice(ACTIONS)} {rng.choice(POSITIONS)}, "
            f"with a {rng.choice(COLOURS)} outline and a soft shadow falling to the {rng.choice(['left', 'right'])}."
        )
    parts.append(f"The {objs[0]} is the main subject and looks larger than the {objs[-1]}.")
    parts.append(f"The background is a {rng.choice(COLOURS)} gradient, and the whole image feels {mood}.")
    return {"id": f"scene-{i:04d}", "raw": raw, "short": short, "long": " ".join(parts)}


if __name__ == "__main__":
    rng = random.Random(0)
    out = Path(__file__).with_name("captions.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for i in range(48):
            f.write(json.dumps(scene(rng, i)) + "\n")
    print(f"wrote {out}")
