"""Does a frozen LLM put a glyph's name in other languages near its English name? A text-only check.

FLAME's multilingual claim rests on the frozen LLM: an image tower trained against English caption
states can only be found by a German or Japanese query if the LLM maps that query near the English
state. This measures that directly, without images: for the demo glyphs that no evaluation set uses
(vocabulary entries 50-99; the multilingual evaluation uses 0-49), each non-English name retrieves
among the English names of those glyphs (single prompt, states centred on their mean). A validation
figure for choosing the demo's LLM: it never touches an evaluation set.

    python benchmarks/multilingual_text_probe.py --llm smollm2-135m gemma3-270m
"""

from __future__ import annotations

import argparse
import time

import torch


def probe(llm_name: str, glyphs) -> dict:
    from flameclip.data.demo.glyphs import LANGUAGES
    from flameclip.text.facets import encode
    from flameclip.text.llm import load_llm

    llm = load_llm(llm_name, dtype="fp32")
    english = [g.names["en"] for g in glyphs]
    t0 = time.perf_counter()
    states = {"en": encode(llm, english, "single")[:, 0]}
    per_lang = {}
    for lang in LANGUAGES[1:]:
        rows = [(i, g.names[lang]) for i, g in enumerate(glyphs)
                if g.names.get(lang) and g.names[lang].casefold() != g.names["en"].casefold()]
        if not rows:
            continue
        q = encode(llm, [t for _, t in rows], "single")[:, 0]
        # One mean over every state in the probe: the offset all single-prompt states share.
        mean = torch.cat([states["en"], q]).mean(0)
        e = torch.nn.functional.normalize(states["en"] - mean, dim=-1)
        qn = torch.nn.functional.normalize(q - mean, dim=-1)
        rank1 = (qn @ e.T).argmax(1)
        per_lang[lang] = 100.0 * float((rank1 == torch.tensor([i for i, _ in rows])).float().mean())
    return {"per_language": per_lang, "mean": sum(per_lang.values()) / len(per_lang),
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llm", nargs="+", default=["smollm2-135m"])
    args = ap.parse_args(argv)
    from flameclip.data.demo.glyphs import vocabulary

    glyphs = vocabulary(100)[50:]
    chance = 100.0 / len(glyphs)
    for name in args.llm:
        r = probe(name, glyphs)
        langs = "  ".join(f"{k} {v:4.1f}" for k, v in r["per_language"].items())
        print(f"{name:14s} mean R@1 {r['mean']:5.1f} (chance {chance:.1f})  [{langs}]  {r['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
