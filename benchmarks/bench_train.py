"""Training-step cost: flameclip against open_clip, and against a bare timm loop, in one run.

Every side trains the same ViT size at the same batch size on tensors already in memory (no data
loading: this measures the model and the step, not the input pipeline):

    flameclip         FlameModel (text_tower="llm") + ``train_step`` + ``build_optimizer`` + the
                      multi-positive sigmoid loss, P stored LLM embeddings [B, P, D] per image
    flameclip-noproj  the same, with the per-token projector replaced by nn.Identity (D = tower
                      width): the step without the method's own compute (the projector MLP)
    flame-head        the projector + mean pooling + loss alone, forward, backward and AdamW on
                      fixed patch tokens: a direct measurement of the method compute
    bare-timm         the same timm ViT trunk: forward_features -> mean of the patch tokens ->
                      ``.pow(2).mean()`` -> backward -> AdamW. The floor any ViT trainer pays
    open_clip         ``open_clip.CLIP`` from scratch: its own ViT of the same width/depth/heads/
                      patch/image size, a CLIP text transformer (ViT-B/32's by default: context 77,
                      width 512, 12 layers, 8 heads) on random token ids, ``ClipLoss``, AdamW

The sides are timed interleaved over several rounds: in each round the four small sides take
steps in turn (so a slow spell of the machine hits them alike), and open_clip runs its own block
before or after them, alternately. Medians are reported, and ratios taken between steps run back
to back: machines here are noisy, so absolute times mean little. Peak memory is measured per side
in a fresh subprocess of this script (``--only SIDE``): on CUDA ``torch.cuda.max_memory_allocated``,
on CPU the growth of the peak RSS from before the model is built to after a few steps.

What is matched against open_clip: ViT width, depth, heads (head width), MLP ratio 4, patch and
image size, GELU, pre-norm blocks, batch size, AdamW settings, precision. What is not: open_clip's
native ViT has an extra pre-norm (ln_pre), no conv bias, nn.MultiheadAttention instead of timm's
Attention, and a CLS token + linear projection instead of the mean of projected patch tokens;
``--openclip-vision timm`` (vit-b16 preset) uses open_clip's timm adapter around the very same timm
ViT instead. And the text sides differ by design: that is the point of FLAME.

    python benchmarks/bench_train.py                       # small ViT, CPU-sized, fp32
    python benchmarks/bench_train.py --preset vit-b16 --precision bf16 --device cuda [--openclip-vision timm]
    python benchmarks/bench_train.py --text-layers 4 --text-width 256 --text-heads 4   # smaller CLIP text tower
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download anything

import torch  # noqa: E402

import open_clip  # noqa: E402, F401  (imported up front: every memory child pays the same imports)

from train_sides import build_side  # noqa: E402  (this folder is on the path when run as a script)

PRESETS = {
    # CPU-sized: a couple of minutes on 2 cores with the full ViT-B/32 text tower on the open_clip side
    "small": dict(image_size=64, patch_size=8, width=192, depth=6, heads=3, batch_size=32, timm_name=None),
    # for GPUs; the same architecture as timm's vit_base_patch16_224
    "vit-b16": dict(image_size=224, patch_size=16, width=768, depth=12, heads=12, batch_size=128,
                    timm_name="vit_base_patch16_224"),
}
SIDES = ("flameclip", "flameclip-noproj", "flame-head", "bare-timm", "open_clip")
SMALL_SIDES = ("flameclip", "flameclip-noproj", "flame-head", "bare-timm")
MEMORY_SIDES = ("flameclip", "flameclip-noproj", "bare-timm", "open_clip")
MEM_TAG = "BENCH_TRAIN_MEMORY "


# ----------------------------------------------------------------------------------------------
# Timing and memory


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def _peak_rss_bytes() -> int:
    import resource  # Unix only, and only needed for a CPU memory measurement

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux


def measure_memory(name: str, args, device) -> dict:
    """Run in a fresh process: peak memory of building ``name`` and running ``args.mem_steps`` steps."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _peak_rss_bytes()
    step, info = build_side(name, args, device)
    for _ in range(args.mem_steps):
        step()
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        kind = "cuda max_memory_allocated"
    else:
        peak = _peak_rss_bytes()
        kind = "peak RSS growth"
    return {"side": name, "peak_mib": (peak - before) / 2**20, "kind": kind, "params": info["params"],
            "process_peak_mib": peak / 2**20}


def memory_in_subprocesses(args) -> dict:
    """Peak memory of each side, each in a fresh process of this script (``--only SIDE``).

    On CPU the processes run side by side with one thread each (RSS is per process, so they do not
    disturb each other's number, and the imports no longer run one after the other); on CUDA one
    after the other, so none can run short of device memory because of another.
    """
    env = dict(os.environ)
    parallel = args.device == "cpu"
    if parallel:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out, procs = {}, {}
    t0 = time.perf_counter()
    for side in MEMORY_SIDES:
        cmd = [sys.executable, os.path.abspath(__file__), "--only", side, *child_argv(args)]
        procs[side] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if not parallel:
            procs[side].wait()
    for side, proc in procs.items():
        stdout, stderr = proc.communicate()
        out[side] = None
        for line in reversed(stdout.splitlines()):
            if line.startswith(MEM_TAG):
                out[side] = json.loads(line[len(MEM_TAG):])
                break
        else:
            sys.stderr.write(f"memory run for {side} failed (exit {proc.returncode}):\n{stderr[-2000:]}\n")
        print(f"  memory {side}: " + (f"{out[side]['peak_mib']:.0f} MiB" if out[side] else "failed"), flush=True)
    print(f"  ({'side by side, 1 thread each' if parallel else 'one after the other'}, "
          f"{time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def child_argv(args) -> list[str]:
    """The resolved settings, so a child builds exactly the same models."""
    out = []
    for key in ("device", "precision", "image_size", "patch_size", "width", "depth", "heads", "batch_size",
                "positives", "text_dim", "embed_dim", "context_length", "text_width", "text_layers", "text_heads",
                "openclip_vision", "timm_name", "mem_steps"):
        value = getattr(args, key)
        if value is not None:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


# ----------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast on every side")
    # ViT and batch (default: the preset's)
    p.add_argument("--image-size", type=int)
    p.add_argument("--patch-size", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--batch-size", type=int)
    # flameclip text side
    p.add_argument("--positives", type=int, default=6, help="P stored caption embeddings per image")
    p.add_argument("--text-dim", type=int, default=576, help="D of the stored LLM embeddings (SmolLM2-135M: 576)")
    # open_clip text side (default: ViT-B/32's text tower)
    p.add_argument("--embed-dim", type=int, default=512, help="open_clip's shared embedding width")
    p.add_argument("--context-length", type=int, default=77)
    p.add_argument("--text-width", type=int, default=512)
    p.add_argument("--text-layers", type=int, default=12)
    p.add_argument("--text-heads", type=int, default=8)
    p.add_argument("--openclip-vision", choices=("native", "timm"), default="native",
                   help="open_clip's own ViT (default) or its timm adapter around the preset's timm model "
                        "(only presets named after a timm model, e.g. vit-b16)")
    p.add_argument("--timm-name", help=argparse.SUPPRESS)
    # schedule
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1, help="timed steps per side per round, at least")
    p.add_argument("--min-seconds", type=float, default=2.0,
                   help="time each block for at least this many seconds per side in it "
                        "(more steps for the cheap sides)")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed steps per side before the first round (besides --rewarm)")
    p.add_argument("--rewarm", type=int, default=1, help="untimed steps per side at the start of every round")
    p.add_argument("--mem-steps", type=int, default=2, help="steps run by each memory subprocess")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--target", type=float, default=10.0, help="overhead target over the bare loop, in percent")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--only", choices=MEMORY_SIDES, help=argparse.SUPPRESS)  # internal: one memory measurement
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("image_size", "patch_size", "width", "depth", "heads", "batch_size"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.timm_name is None:
        args.timm_name = preset["timm_name"]
    if args.openclip_vision == "timm" and not args.timm_name:
        p.error(f"--openclip-vision timm needs a preset named after a timm model; {args.preset!r} is a custom size")
    if args.width % args.heads or args.image_size % args.patch_size:
        p.error("width must be divisible by heads and image size by patch size")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)

    if args.only:
        print(MEM_TAG + json.dumps(measure_memory(args.only, args, device)), flush=True)
        return 0

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {os.cpu_count()} cores"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.precision}")
    print(f"ViT: image {args.image_size}, patch {args.patch_size}, width {args.width}, depth {args.depth}, "
          f"heads {args.heads}; batch {args.batch_size}")
    print(f"flameclip: P={args.positives} stored embeddings of D={args.text_dim} per image, sigmoid loss")
    vision = (f"timm {args.timm_name} via open_clip's TimmModel" if args.openclip_vision == "timm"
              else "open_clip's native VisionTransformer")
    print(f"open_clip: {vision}; text tower context {args.context_length}, width {args.text_width}, "
          f"{args.text_layers} layers, {args.text_heads} heads; embed {args.embed_dim}; ClipLoss")

    # Memory first, each side in a fresh process, before the timing (nothing else runs meanwhile).
    memory = {} if args.no_memory else memory_in_subprocesses(args)

    steps, infos = {}, {}
    for side in SIDES:
        steps[side], infos[side] = build_side(side, args, device)
        for _ in range(args.warmup):
            steps[side]()
    _sync(device)

    # Each round times two blocks, in alternating order: the small sides step by step in turn
    # (so a slow spell of the machine hits them alike, and flameclip/bare-timm steps are paired),
    # and open_clip alone (one of its steps costs many of theirs). Each block runs at least
    # --steps cycles and at least --min-seconds per side, after --rewarm untimed steps per side.
    times = {side: [] for side in SIDES}
    cycles = []  # {side: seconds} of the small sides, one step each, back to back
    per_round = []  # median step time of each side in each round
    for r in range(args.rounds):
        blocks = [SMALL_SIDES, ("open_clip",)]
        if r % 2:
            blocks.reverse()
        this_round = {}
        for block in blocks:
            order = block[r % len(block):] + block[: r % len(block)]
            for side in order:
                for _ in range(args.rewarm):
                    steps[side]()
            ts = {side: [] for side in order}
            n, t_end = 0, time.perf_counter() + args.min_seconds * len(order)
            while n < args.steps or time.perf_counter() < t_end:
                for side in order:
                    ts[side].append(timed(steps[side], device))
                if len(order) > 1:
                    cycles.append({side: ts[side][-1] for side in order})
                n += 1
            for side in order:
                times[side] += ts[side]
                this_round[side] = statistics.median(ts[side])
        per_round.append(this_round)
        print(f"  round {r + 1}/{args.rounds}: "
              + ", ".join(f"{s} {1000 * this_round[s]:.0f} ms" for s in SIDES), flush=True)

    # Ratios, robust to a machine whose speed drifts: between the small sides, the median over
    # cycles of the ratio of their back-to-back steps; open_clip (its own block) against flameclip,
    # the median over rounds of the ratio of the round medians.
    def paired(a: str, b: str) -> float:
        return statistics.median(c[a] / c[b] for c in cycles)

    def paired_diff(a: str, b: str, base: str) -> float:
        return statistics.median((c[a] - c[b]) / c[base] for c in cycles)

    vs_flame = {side: paired(side, "flameclip") for side in SMALL_SIDES}
    round_openclip = [pr["open_clip"] / pr["flameclip"] for pr in per_round]
    vs_flame["open_clip"] = statistics.median(round_openclip)

    med = {side: median_ms(times[side]) for side in SIDES}
    rows = []
    print()
    header = (f"{'side':<18} {'params':>8} {'step ms':>9} {'images/s':>9} {'peak MiB':>9} "
              f"{'time/flame':>11} {'mem/flame':>10}")
    print(header)
    print("-" * len(header))
    flame_mem = memory.get("flameclip")
    for side in SIDES:
        mem = memory.get(side)
        mem_mib = mem["peak_mib"] if mem else None
        mem_ratio = mem_mib / flame_mem["peak_mib"] if mem_mib is not None and flame_mem else None
        row = {
            "side": side,
            "params": infos[side]["params"],
            "step_ms_median": med[side],
            "images_per_s": args.batch_size / (med[side] / 1000),
            "peak_mib": mem_mib,
            "time_vs_flameclip": vs_flame[side],
            "memory_vs_flameclip": mem_ratio,
            "step_ms_all": [1000 * t for t in times[side]],
        }
        rows.append(row)
        print(f"{side:<18} {row['params'] / 1e6:>7.2f}M {med[side]:>9.1f} {row['images_per_s']:>9.1f} "
              f"{(f'{mem_mib:.0f}' if mem_mib is not None else '-'):>9} {vs_flame[side]:>10.2f}x "
              f"{(f'{mem_ratio:.2f}x' if mem_ratio is not None else '-'):>10}")
    print(f"(step ms, images/s: median of all timed steps of the side. time/flame: median of per-step "
          f"ratios over {len(cycles)} back-to-back cycles; open_clip: median of {len(per_round)} per-round ratios.")
    mem_kind = next((m["kind"] for m in memory.values() if m), None)
    if mem_kind:
        print(f" peak MiB: {mem_kind} over build + {args.mem_steps} steps, one fresh process per side; "
              f"flame-head is not a training side.)")
    else:
        print(" memory not measured.)")

    # flameclip against open_clip
    speedup = vs_flame["open_clip"]
    print()
    print(f"flameclip vs open_clip: {speedup:.2f}x the images/s of open_clip "
          f"(per round {min(round_openclip):.2f}x to {max(round_openclip):.2f}x)")

    # flameclip against the bare timm loop, and where the difference goes
    overhead = paired("flameclip", "bare-timm") - 1
    projector = paired_diff("flameclip", "flameclip-noproj", "bare-timm")
    loop = paired_diff("flameclip-noproj", "bare-timm", "bare-timm")
    head = paired("flame-head", "bare-timm")
    round_overheads = [pr["flameclip"] / pr["bare-timm"] - 1 for pr in per_round]
    of_medians = med["flameclip"] / med["bare-timm"] - 1
    met = overhead * 100 <= args.target
    print(f"flameclip over the bare timm loop: {100 * overhead:+.1f}% (median of {len(cycles)} step pairs; "
          f"per round {100 * min(round_overheads):+.1f}% to {100 * max(round_overheads):+.1f}%; "
          f"ratio of overall medians {100 * of_medians:+.1f}%)")
    print("  split (medians of per-cycle differences, so the parts need not add up to the total):")
    print(f"  projector MLP (flameclip - flameclip-noproj):          {100 * projector:+.1f}% of the bare step")
    print(f"  pooling + loss + loop (flameclip-noproj - bare-timm):  {100 * loop:+.1f}% of the bare step")
    print(f"  cross-check, projector + pool + loss + AdamW alone (flame-head): {100 * head:.1f}% of the bare step")
    # Noise-free context: the projector's multiply-adds per token against the ViT's (qkv, proj and
    # MLP matmuls plus the two attention products), the same for forward and backward.
    n_tok = (args.image_size // args.patch_size) ** 2 + 1
    vit_macs = args.depth * (12 * args.width**2 + 2 * n_tok * args.width)
    proj_macs = args.width * args.text_dim + args.text_dim**2
    print(f"  analytic: the projector ({args.width}->{args.text_dim}->{args.text_dim} per token) is "
          f"{100 * proj_macs / vit_macs:.1f}% of the ViT's matmul FLOPs at this size")
    print(f"target <= {args.target:.0f}% overhead over the bare loop: {'MET' if met else 'NOT MET'} "
          f"({100 * overhead:+.1f}%)")
    if min(round_overheads) * 100 <= args.target < max(round_overheads) * 100:
        print(f"  within noise: the per-round overheads straddle {args.target:.0f}%")
    if not met:
        share = "the projector MLP (method compute)" if projector >= loop else "pooling, loss and loop bookkeeping"
        print(f"  most of the overhead is {share}")

    if args.json:
        result = {
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "only")},
            "device_name": name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "sides": rows,
            "memory": memory,
            "per_round_median_ms": [{s: 1000 * t for s, t in pr.items()} for pr in per_round],
            "cycles_ms": [{s: 1000 * t for s, t in c.items()} for c in cycles],
            "flameclip_vs_openclip_throughput": speedup,
            "overhead_vs_bare": overhead,
            "overhead_vs_bare_ratio_of_medians": of_medians,
            "overhead_projector": projector,
            "overhead_pool_loss_loop": loop,
            "flame_head_vs_bare": head,
            "projector_flops_vs_vit": proj_macs / vit_macs,
            "target_percent": args.target,
            "target_met": met,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
