"""teachkit BERT pre-training on a CUDA GPU: tokens/s, model FLOPs utilisation (MFU), peak memory.

    python benchmarks/gpu.py                          # default cases, ~1 minute on an H100
    python benchmarks/gpu.py --also-transformers      # + transformers.BertForPreTraining, same batches, bf16
    python benchmarks/gpu.py --device cpu --quick     # smoke test without a GPU
    python benchmarks/gpu.py --cases base:512:32 --peak-tflops 362 --out runs/bench/gpu.json

Each step is teachkit's training-loop step (the same closure as benchmarks/throughput.py: MLM logits
only at the masked positions, clipping, AdamW) under bf16 autocast, on a fixed synthetic batch with
15% of the tokens masked. Without a CUDA GPU (and without --device cpu) it says so and exits 0.

Model FLOPs per step (the usual convention: matmuls only, training = 3 x forward, i.e. forward 2
FLOPs per multiply-add, backward twice that; embedding lookups, LayerNorm, GELU, softmax not counted):

    tokens      x 6 * L * (4 d^2 + 2 d d_ff)        the encoder's non-embedding matmuls (QKV, out, FFN)
  + tokens      x 12 * L * T * d                    attention: Q K^T and weights @ V, T keys per query
  + masked      x 6 * (d^2 + d V)                   MLM head (transform + tied decoder), masked rows only
  + sequences   x 6 * (d^2 + 2 d)                   pooler + NSP classifier, on [CLS] only

MFU = model FLOPs per second / the GPU's dense bf16 peak. transformers is credited with the same
model FLOPs, although it computes the MLM head at every position: its MFU counts useful work only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import synthetic_batch, teachkit_stepper, transformers_stepper  # noqa: E402

from teachkit.config import ModelConfig  # noqa: E402

SIZES = {  # name -> (layers, d_model, heads, d_ff, vocab)
    "mini": (4, 256, 4, 1024, 8192),  # teachkit's "mini" preset (BERT-Mini width)
    "base": (12, 768, 12, 3072, 30522),  # BERT-Base
}
DEFAULT_CASES = "mini:128:512,mini:512:128,base:128:256,base:512:64"  # size:seq:batch, 64k / 32k tokens a step
QUICK_CASES = "mini:64:8"
PEAK_BF16_TFLOPS = [  # dense (no sparsity) bf16 tensor-core peak, matched against the device name in order
    ("H100 PCIe", 756),
    ("H100 NVL", 835),
    ("H100", 989),
    ("GH200", 989),
    ("H200", 989),
    ("H800", 989),
    ("A100", 312),
    ("A800", 312),
    ("L40S", 362),
    ("L40", 181),
    ("L4", 121),
    ("A10G", 70),
    ("A10", 125),
]


def model_flops_per_step(cfg: ModelConfig, *, batch: int, seq: int, masked: int) -> float:
    L, d, f, V = cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.vocab_size
    tokens = batch * seq
    return (
        tokens * 6 * L * (4 * d * d + 2 * d * f)
        + tokens * 12 * L * seq * d
        + masked * 6 * (d * d + d * V)
        + batch * 6 * (d * d + 2 * d)
    )


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key.lower() in name.lower()), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(stepper, cfg, batch, device, args) -> dict:
    """Build one side, warm up, time `steps` steps; tokens/s and peak memory (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        step = stepper(cfg, "pretraining", batch, "bf16", device=device)
        for _ in range(args.warmup):
            step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        seconds = (time.perf_counter() - t0) / args.steps
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    finally:
        step = None  # free the model and optimizer before the next case
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"seconds_per_step": seconds, "peak_gib": peak}


def run_case(case: str, device: torch.device, peak: float | None, args) -> list[dict]:
    size, seq, batch_size = case.split(":")
    seq, batch_size = int(seq), int(batch_size)
    L, d, h, f, V = SIZES[size]
    cfg = ModelConfig(vocab_size=V, d_model=d, n_layers=L, n_heads=h, d_ff=f, max_len=max(seq, 128))
    batch = synthetic_batch(cfg, batch_size, seq, seed=0)
    flops = model_flops_per_step(cfg, batch=batch_size, seq=seq, masked=int((batch["mlm_labels"] != -100).sum()))
    sides = [("teachkit", teachkit_stepper)] + (
        [("transformers", transformers_stepper)] if args.also_transformers else []
    )
    rows = []
    for side, stepper in sides:
        torch.manual_seed(0)
        res = measure(stepper, cfg, batch, device, args)
        row = {"case": f"{size} {L}L/{d}H", "seq": seq, "batch": batch_size, "side": side, **res}
        if "error" not in res:
            achieved = flops / res["seconds_per_step"] / 1e12
            row.update(
                tokens_per_s=batch_size * seq / res["seconds_per_step"],
                model_tflops=achieved,
                mfu=achieved / peak if peak else None,
            )
        rows.append(row)
        print(
            f"  {row['case']} seq {seq} batch {batch_size} {side}: "
            + (row.get("error") or f"{row['tokens_per_s']:,.0f} tok/s"),
            file=sys.stderr,
            flush=True,
        )
    return rows


def markdown(rows: list[dict], info: dict) -> str:
    peak = (
        f"{info['peak_tflops']:g} TFLOPs bf16 dense peak" if info["peak_tflops"] else "peak unknown: pass --peak-tflops"
    )
    lines = [
        f"{info['device_name']} ({peak}), torch {info['torch']}, CUDA {info['cuda']}, bf16 autocast, "
        f"{info['steps']} timed steps after {info['warmup']} warm-up",
        "",
        "| model | seq | batch | side | tokens/s | model TFLOP/s | MFU | peak memory GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['seq']} | {r['batch']} | {r['side']} | {r['error']} | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
        lines.append(
            f"| {r['case']} | {r['seq']} | {r['batch']} | {r['side']} | {r['tokens_per_s']:,.0f} | "
            f"{r['model_tflops']:.3g} | {mfu} | {mem} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cuda, cuda:N or cpu (smoke test)")
    p.add_argument("--cases", help=f"size:seq:batch, comma-separated; sizes {list(SIZES)} (default {DEFAULT_CASES})")
    p.add_argument("--steps", type=int, default=20, help="timed steps per case and side")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if it is not in the table")
    p.add_argument("--also-transformers", action="store_true", help="also time transformers.BertForPreTraining")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_CASES}, 2 steps: a smoke test")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.device == "auto" and not torch.cuda.is_available():
        print(
            f"No CUDA GPU is available to PyTorch {torch.__version__}: nothing to measure. "
            "Run it on a GPU machine, or pass --device cpu --quick for a smoke test."
        )
        return 0
    device = torch.device("cuda" if args.device == "auto" else args.device)
    if args.quick or (device.type == "cpu" and not args.cases):
        args.cases, args.steps, args.warmup = args.cases or QUICK_CASES, 2, 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    info = {
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_tflops": peak_tflops(name, args.peak_tflops) if device.type == "cuda" or args.peak_tflops else None,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    rows = [
        row
        for case in (args.cases or DEFAULT_CASES).split(",")
        for row in run_case(case, device, info["peak_tflops"], args)
    ]
    print(markdown(rows, info))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
