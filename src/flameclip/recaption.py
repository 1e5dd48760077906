"""``flameclip recaption``: a short and a long caption per image from a local vision-language model.

FLAME trains on alt-texts recaptioned by a multimodal LLM into a short and a long description. This
step writes that table: ``id, raw, short, long`` (``raw`` is the image's own alt-text), which
``flameclip embed`` reads as it is. Any Hugging Face image-text-to-text model in a local folder is
loaded through the transformers auto classes; remote code runs only if the user asks for it. The
prompts are data (``recaption_prompts/default.json``, or the user's own JSON file).

The images are cut into chunks, the unit of work and of resume: each chunk is captioned whole and
written atomically under ``<out>.parts/``, so a killed run loses at most the chunk in flight and the
same command resumes with the first missing one. Under ``torchrun`` rank r takes chunks r, r + W,
...; whichever rank finishes the last chunk writes the table, and the table is the same bytes
whatever the number of processes (greedy decoding, the same batches in every chunk). Images that
cannot be decoded are left out of the table, counted, and listed in ``<out>.failed.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .data.captions import iter_records
from .data.images import ImageRecord, open_record, read_images, sample_key
from .launch import process_device, rank_and_world
from .fileio import UNREADABLE, atomic_write_bytes, why_unreadable

PROMPTS_DIR = Path(__file__).with_name("recaption_prompts")
RESERVED = ("id", "raw")  # the table's own columns; a prompt column may not take these names


class RecaptionError(ValueError):
    """Input the recaptioner cannot use; the message names the file, key or sample and what to do."""


@dataclass
class RecaptionConfig:
    images: str  # an image manifest (jsonl/csv/tsv/parquet) or webdataset shards ("data/{000..099}.tar")
    model: str  # a local Hugging Face folder of an image-text-to-text model
    out: str  # the captions table: .parquet, .jsonl or .csv
    prompts: str = "default"  # a packaged prompt file by name, or a JSON file
    raw_column: str = "caption"  # the manifest column with the alt-text (webdataset: the sample's .txt)
    image_root: str | None = None
    batch_size: int = 8
    chunk_size: int = 256  # images per part file: the unit of resume
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 on a GPU, fp32 on a CPU
    trust_remote_code: bool = False


@dataclass
class RecaptionSummary:
    images: int = 0
    captioned: int = 0  # images captioned by this run (resumed chunks are not counted again)
    failed: int = 0  # images that could not be decoded, in the whole table
    failed_ids: list[str] = field(default_factory=list)
    empty: dict[str, int] = field(default_factory=dict)  # per column: captions the model left empty
    seconds: float = 0.0
    complete: bool = False

    @property
    def images_per_s(self) -> float:
        return self.captioned / self.seconds if self.seconds else 0.0


def load_prompts(name_or_path: str) -> dict[str, dict]:
    """{column: {"prompt": str, "max_new_tokens": int}} from a packaged name or a JSON file, checked."""
    path = PROMPTS_DIR / f"{name_or_path}.json" if "/" not in name_or_path and not name_or_path.endswith(".json") \
        else Path(name_or_path)
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.json")))
        raise RecaptionError(f"prompts '{name_or_path}' not found: give a packaged name ({known}) or a JSON file")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecaptionError(f"{path}: not valid JSON ({e})") from None
    columns = spec.get("columns") if isinstance(spec, dict) else None
    if not isinstance(columns, dict) or not columns:
        raise RecaptionError(f'{path}: needs a "columns" object, e.g. {{"long": {{"prompt": "...", "max_new_tokens": 300}}}}')
    out = {}
    for col, c in columns.items():
        where = f"{path}: column '{col}'"
        if col in RESERVED:
            raise RecaptionError(f"{where}: '{col}' is the table's own column; name the caption column otherwise")
        if not isinstance(c, dict) or set(c) - {"prompt", "max_new_tokens"}:
            extra = sorted(set(c) - {"prompt", "max_new_tokens"}) if isinstance(c, dict) else c
            raise RecaptionError(f'{where}: takes only "prompt" and "max_new_tokens" (got {extra})')
        if not isinstance(c.get("prompt"), str) or not c["prompt"].strip():
            raise RecaptionError(f'{where}: "prompt" must be a non-empty string')
        n = c.get("max_new_tokens")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise RecaptionError(f'{where}: "max_new_tokens" must be a positive integer, got {n!r}')
        out[col] = {"prompt": c["prompt"], "max_new_tokens": n}
    return out


def alt_texts(source: str, records: list[ImageRecord], raw_column: str) -> dict[str, str]:
    """Each image's own alt-text: the manifest's ``raw_column``, or the sample's .txt in a tar shard."""
    out: dict[str, str] = {}
    if ".tar" in source:
        import tarfile

        wanted = {r.id for r in records}
        for shard in dict.fromkeys(r.path for r in records):
            with tarfile.open(shard, "r:") as tar:
                for m in tar:
                    key, ext = sample_key(m.name)
                    if m.isfile() and ext.lower() == "txt" and key in wanted:
                        try:
                            out[key] = tar.extractfile(m).read().decode("utf-8").strip()
                        except UnicodeDecodeError:
                            raise RecaptionError(f"{shard}: {m.name} is not UTF-8 text") from None
        return out
    for _, rec in iter_records(Path(source)):
        value = rec.get(raw_column)
        out[str(rec.get("id"))] = "" if value is None else str(value)
    return out


class Captioner:
    """A local image-text-to-text model, greedy decoding in batches, one prompt at a time."""

    def __init__(self, folder: str, device: str, dtype: str, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our bar counts images; HF's per-tensor bars are noise
        if not (Path(folder) / "config.json").exists():
            raise RecaptionError(f"{folder}: not a Hugging Face model folder (no config.json); give the local folder "
                                 "of an image-text-to-text model")
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
        self.processor = AutoProcessor.from_pretrained(folder, **kw)
        if getattr(self.processor, "chat_template", None) is None:
            raise RecaptionError(f"{folder}: its processor has no chat template, so there is no way to put the image "
                                 "and the prompt into one input; add chat_template.json to the folder")
        self.processor.tokenizer.padding_side = "left"  # generated tokens follow every prompt directly
        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch_dtype, **kw).to(device).eval()
        self.device = device

    def caption(self, images, prompt: str, max_new_tokens: int) -> list[str]:
        import torch

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(images=images, text=[text] * len(images), padding=True, return_tensors="pt")
        inputs = inputs.to(self.device, dtype=self.model.dtype)  # floating tensors only: pixels in the model's dtype
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]


def _plan(cfg: RecaptionConfig, records: list[ImageRecord], prompts: dict, dtype: str) -> dict:
    """What the parts depend on; a rerun must match it to resume."""
    from .text.llm import folder_weights_sha256

    images = hashlib.sha256("\n".join(f"{r.id}\t{r.path}\t{r.offset}" for r in records).encode()).hexdigest()
    try:
        weights = folder_weights_sha256(Path(cfg.model))
    except Exception as e:  # noqa: BLE001 - named below
        raise RecaptionError(f"{cfg.model}: cannot read the model's weights ({e})") from None
    return {"images": images, "n_images": len(records), "model_weights_sha256": weights, "prompts": prompts,
            "raw_column": cfg.raw_column, "chunk_size": cfg.chunk_size, "batch_size": cfg.batch_size, "dtype": dtype}


def _check_plan(parts: Path, plan: dict) -> None:
    path = parts / "plan.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diffs = [k for k in sorted(set(old) | set(plan)) if old.get(k) != plan.get(k)]
        if diffs:
            raise RecaptionError(f"{parts} holds captions made with other settings ({', '.join(diffs)} differ); "
                                 "give another --out, or delete that folder to start again")
        return
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(str(path), json.dumps(plan, indent=2, sort_keys=True).encode())


def _part(parts: Path, c: int) -> Path:
    return parts / f"chunk-{c:06d}.json"


def run_recaption(cfg: RecaptionConfig, progress: bool = True) -> RecaptionSummary:
    rank, world = rank_and_world()
    if cfg.batch_size < 1 or cfg.chunk_size < 1:
        raise RecaptionError(f"batch_size and chunk_size must be >= 1, got {cfg.batch_size} and {cfg.chunk_size}")
    if Path(cfg.out).suffix.lower() not in (".parquet", ".jsonl", ".csv"):
        raise RecaptionError(f"{cfg.out}: the captions table must be .parquet, .jsonl or .csv")
    prompts = load_prompts(cfg.prompts)
    device = process_device(cfg.device)
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    records = read_images(cfg.images, cfg.image_root)
    raw = alt_texts(cfg.images, records, cfg.raw_column)
    parts = Path(f"{cfg.out}.parts")
    _check_plan(parts, _plan(cfg, records, prompts, dtype))

    n_chunks = -(-len(records) // cfg.chunk_size)
    mine = [c for c in range(rank, n_chunks, world) if not _part(parts, c).exists()]
    summary = RecaptionSummary(images=len(records))
    todo = sum(len(records[c * cfg.chunk_size:(c + 1) * cfg.chunk_size]) for c in mine)
    bar = tqdm(total=todo, unit="img", desc=f"recaption[rank {rank}]" if world > 1 else "recaption",
               disable=not progress)
    captioner = Captioner(cfg.model, device, dtype, cfg.trust_remote_code) if mine else None
    start = time.perf_counter()
    for c in mine:
        chunk = records[c * cfg.chunk_size:(c + 1) * cfg.chunk_size]
        rows, failed = [], []
        for b in range(0, len(chunk), cfg.batch_size):
            images, batch = [], []
            for rec in chunk[b:b + cfg.batch_size]:
                try:
                    images.append(open_record(rec))
                    batch.append(rec)
                except UNREADABLE as e:
                    failed.append({"id": rec.id, "path": rec.path, "error": why_unreadable(e)})
            if batch:
                rows += _caption_batch(captioner, prompts, images, batch, raw, failed)
            bar.update(len(chunk[b:b + cfg.batch_size]))
            bar.set_postfix(img_s=f"{bar.n / max(time.perf_counter() - start, 1e-9):.2f}", refresh=False)
        atomic_write_bytes(str(_part(parts, c)), json.dumps({"rows": rows, "failed": failed}).encode())
        summary.captioned += len(rows)
    bar.close()
    summary.seconds = time.perf_counter() - start
    summary.complete = _write_table(cfg.out, parts, n_chunks, list(prompts), summary)
    return summary


def _caption_batch(captioner: Captioner, prompts: dict, images: list, batch: list[ImageRecord], raw: dict,
                   failed: list[dict]) -> list[dict]:
    """Rows for a batch; when the model rejects the batch (an image its processor cannot take), each
    image is tried alone, and the ones it rejects are recorded in ``failed`` instead of stopping."""
    try:
        caps = {col: captioner.caption(images, p["prompt"], p["max_new_tokens"]) for col, p in prompts.items()}
        return [{"id": r.id, "raw": raw.get(r.id, ""), **{col: caps[col][i] for col in prompts}}
                for i, r in enumerate(batch)]
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
        if len(batch) == 1:
            failed.append({"id": batch[0].id, "path": batch[0].path, "error": f"the model refused it: {e}"[:500]})
            return []
    rows = []
    for image, rec in zip(images, batch):
        rows += _caption_batch(captioner, prompts, [image], [rec], raw, failed)
    return rows


def _write_table(out: str, parts: Path, n_chunks: int, columns: list[str], summary: RecaptionSummary) -> bool:
    """Join the parts in order into the table, once all exist (any rank may; all write the same bytes)."""
    if any(not _part(parts, c).exists() for c in range(n_chunks)):
        return False
    rows, failed = [], []
    for c in range(n_chunks):
        part = json.loads(_part(parts, c).read_text(encoding="utf-8"))
        rows += part["rows"]
        failed += part["failed"]
    summary.failed, summary.failed_ids = len(failed), [f["id"] for f in failed]
    summary.empty = {col: sum(not r[col] for r in rows) for col in columns}
    suffix = Path(out).suffix.lower()
    if suffix == ".parquet":
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(name, pa.string()) for name in ("id", "raw", *columns)])
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
        data = buf.getvalue()
    elif suffix == ".jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    else:
        import csv
        import io

        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=["id", "raw", *columns])
        w.writeheader()
        w.writerows(rows)
        data = text.getvalue().encode()
    if Path(out).parent != Path(""):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    atomic_write_bytes(f"{out}.failed.jsonl", "".join(json.dumps(f) + "\n" for f in failed).encode())
    return True
