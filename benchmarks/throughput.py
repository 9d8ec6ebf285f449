"""Training throughput of teachkit vs `transformers` BERT, pre-training and fine-tuning, same config.

    python benchmarks/throughput.py --out runs/bench/throughput.json   # the comparison table
    python benchmarks/throughput.py --measure-memory                   # peak RSS, one process per side
    python benchmarks/throughput.py --quick                            # seconds: a smoke test
    python benchmarks/throughput.py --variants                         # possible speed-ups of teachkit's step
    python benchmarks/throughput.py --profile                          # where one teachkit step spends its time

Both sides train on the same synthetic batch (full-length sequences, no padding, BERT's 15% masking
drawn by teachkit's own `mask_tokens`), built from the same seed, with the same model config.
teachkit's step is its loop's step, `teachkit.train.train_step` (the data loading apart):
`task.loss_sums` (MLM logits only at the masked positions), sums / target counts, backward,
gradient clipping, AdamW from `teachkit.train.make_optimizer`, with teachkit.machinery.speed's switch on
as a ManagedRun turns it on. transformers' step is what its
`Trainer` does with its defaults: the loss from the model output (labels -100 elsewhere), backward,
clipping to 1.0, `AdamW(fused=True)` (Trainer's default optimizer for torch >= 2.8).
Settings: "default" runs each side at its default precision (teachkit: `pick_precision(cpu, "auto")`,
bf16 autocast on CPUs with AMX / AVX512-BF16; Trainer: fp32); "fp32" and "bf16" put both at one.
The sides alternate in one process (warm-up, then rounds whose order flips every round); the ratio
is the median of the per-round ratios, which stays meaningful on a busy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from teachkit import model as tk_model  # noqa: E402
from teachkit.config import ModelConfig  # noqa: E402
from teachkit.machinery import speed  # noqa: E402
from teachkit.machinery.devices import autocast, pick_precision  # noqa: E402
from teachkit.machinery.pretrained import config_to_hf  # noqa: E402
from teachkit.objectives import mask_tokens  # noqa: E402
from teachkit.tasks import ClassificationTask, PretrainingTask  # noqa: E402
from teachkit.train import TrainConfig, make_optimizer, train_step  # noqa: E402

CPU = torch.device("cpu")
CLS, SEP, MASK = 2, 3, 4  # synthetic special ids 0-4; ordinary tokens are 5 .. vocab-1


def model_config(seq: int) -> ModelConfig:
    return ModelConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_len=seq)


def synthetic_batch(cfg: ModelConfig, batch: int, seq: int, *, seed: int) -> dict[str, torch.Tensor]:
    """[CLS] A [SEP] B [SEP] at full length, 15% of the ordinary tokens selected for MLM (80/10/10)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g)
    ids[:, 0], ids[:, seq // 2], ids[:, -1] = CLS, SEP, SEP
    segments = torch.zeros_like(ids)
    segments[:, seq // 2 + 1 :] = 1
    masked = mask_tokens(ids, mask_id=MASK, vocab_size=cfg.vocab_size, special_ids=range(5), generator=g)
    return {
        "input_ids": masked.input_ids,
        "token_type_ids": segments,
        "attention_mask": torch.ones_like(ids),
        "mlm_labels": masked.labels,
        "nsp_labels": torch.randint(0, 2, (batch,), generator=g),
        "labels": torch.randint(0, 2, (batch,), generator=g),
    }


# --------------------------------------------------------------------------- one training step per side


def resolve(variant: str) -> dict:
    """The changes of a VARIANTS name, or of several joined by "+"."""
    change = {"kwargs": {}, "patches": [], "cfg": {}, "drop_mask": False}
    for name in filter(None, variant.split("+")):
        v = VARIANTS[name]
        change["kwargs"].update(v.get("kwargs", {}))
        change["patches"] += v.get("patches", [])
        change["cfg"].update(v.get("cfg", {}))
        change["drop_mask"] |= v.get("drop_mask", False)
    return change


def teachkit_stepper(cfg, kind: str, batch, precision: str, *, variant: str = "", device=CPU):
    """A closure running one step of teachkit's loop on a fixed batch; `variant` applies VARIANTS."""
    change = resolve(variant)
    cfg, train_cfg = cfg.replace(**change["cfg"]), TrainConfig()
    if kind == "pretraining":  # a task holding only what counts() and loss_sums() read: no data set to load
        model, task = tk_model.BertForPreTraining(cfg), PretrainingTask.__new__(PretrainingTask)
        task.nsp = True
        keys = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "nsp_labels")
    else:
        model, task = tk_model.BertForSequenceClassification(cfg), ClassificationTask.__new__(ClassificationTask)
        keys = ("input_ids", "attention_mask", "labels")
    batch = {k: None if k == "attention_mask" and change["drop_mask"] else batch[k].to(device) for k in keys}
    model.to(device)
    opt = change["kwargs"].get("optimizer", make_optimizer)(model, train_cfg)
    model.train()

    def step():
        with contextlib.ExitStack() as patches:
            for owner, attr, fn in change["patches"]:  # active while (and only while) the step runs
                patches.enter_context(mock.patch.object(owner, attr, fn))
            if change["kwargs"].get("speedups", True):  # a ManagedRun runs the loop with speed's switch on
                patches.enter_context(speed.training_speedups(model, device=device, precision=precision))
            train_step(
                model,
                task,
                batch,
                opt,
                lr=train_cfg.lr,
                clip_norm=train_cfg.clip_norm,
                autocast=lambda: autocast(device, precision),
            )

    return step


def transformers_stepper(cfg, kind: str, batch, precision: str, *, variant: str = "", device=CPU):
    """A closure running one step the way `transformers.Trainer` does with its defaults (bf16=True: autocast)."""
    import transformers

    cfg = cfg.replace(**resolve(variant)["cfg"])  # recipe changes apply to both sides
    hf_cfg = transformers.BertConfig(**{k: v for k, v in config_to_hf(cfg).items() if k != "model_type"})
    if kind == "pretraining":
        model = transformers.BertForPreTraining(hf_cfg)
        inputs = {
            "input_ids": batch["input_ids"],
            "token_type_ids": batch["token_type_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": batch["mlm_labels"],
            "next_sentence_label": batch["nsp_labels"],
        }
    else:
        model = transformers.BertForSequenceClassification(hf_cfg)  # num_labels defaults to 2
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    inputs = {k: v.to(device) for k, v in inputs.items()}
    model.to(device)
    params = list(model.parameters())  # Trainer's default weight_decay is 0, so its two groups act as one
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.0, fused=True)
    model.train()

    def step():
        with autocast(device, precision):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# --------------------------------------------------------------------------- timing


def compare(step_a, step_b, *, tokens_per_step: int, args) -> dict:
    """Warm up both, then alternate timed rounds (order flipped each round). Tokens/s per side, ratio a/b."""
    for _ in range(args.warmup):
        step_a(), step_b()
    rates = {"a": [], "b": []}
    for r in range(args.rounds):
        for side in "ab" if r % 2 == 0 else "ba":
            step = step_a if side == "a" else step_b
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[side].append(args.steps * tokens_per_step / (time.perf_counter() - t0))
    ratios = [a / b for a, b in zip(rates["a"], rates["b"])]
    return {
        "a": statistics.median(rates["a"]),
        "b": statistics.median(rates["b"]),
        "ratio": statistics.median(ratios),
        "range": [min(ratios), max(ratios)],
    }


def settings() -> list[tuple[str, str, str]]:
    """(name, teachkit precision, transformers precision)."""
    return [("default", pick_precision(CPU, "auto"), "fp32"), ("fp32", "fp32", "fp32"), ("bf16", "bf16", "bf16")]


def run_comparison(args) -> list[dict]:
    rows, cfg = [], model_config(args.seq)
    batch = synthetic_batch(cfg, args.batch, args.seq, seed=args.seed)
    for task in ("pretraining", "classification"):
        for name, tk_prec, hf_prec in settings():
            torch.manual_seed(args.seed)
            tk = teachkit_stepper(cfg, task, batch, tk_prec, variant=args.teachkit_variant)
            torch.manual_seed(args.seed)
            hf = transformers_stepper(cfg, task, batch, hf_prec, variant=args.teachkit_variant)
            res = compare(tk, hf, tokens_per_step=args.batch * args.seq, args=args)
            rows.append(
                {
                    "task": task,
                    "setting": name,
                    "teachkit_precision": tk_prec,
                    "transformers_precision": hf_prec,
                    "teachkit_tokens_per_s": res["a"],
                    "transformers_tokens_per_s": res["b"],
                    "ratio": res["ratio"],
                    "ratio_range": res["range"],
                }
            )
            print(f"  {task:14} {name:7} teachkit/transformers = {res['ratio']:.2f}x", file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------- memory (one process per side)


def _status_mb(field: str) -> float:
    status = Path("/proc/self/status")
    if not status.exists():  # not Linux: fall back to getrusage (KiB on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    line = next(ln for ln in status.read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def child(spec: str, args) -> None:
    """Runs in its own process: build one side, train a few steps, print its peak RSS as JSON."""
    side, task, precision = spec.split(":")
    cfg = model_config(args.seq)
    batch = synthetic_batch(cfg, args.batch, args.seq, seed=args.seed)
    stepper = teachkit_stepper if side == "teachkit" else transformers_stepper
    if side == "transformers":
        import transformers  # noqa: F401  (loaded before the baseline, like teachkit's modules)
    base = _status_mb("VmRSS")
    step = stepper(cfg, task, batch, precision)
    for _ in range(args.warmup + args.steps):
        step()
    peak = _status_mb("VmHWM")  # this process's peak RSS (ru_maxrss would include the parent's, copied at fork)
    print(json.dumps({"base_rss_mb": base, "peak_rss_mb": peak, "training_mb": peak - base}))


def measure_memory(args) -> list[dict]:
    rows = []
    for task in ("pretraining", "classification"):
        for precision in ("fp32", "bf16"):
            for side in ("teachkit", "transformers"):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    f"{side}:{task}:{precision}",
                    "--seq",
                    str(args.seq),
                    "--batch",
                    str(args.batch),
                    "--threads",
                    str(torch.get_num_threads()),
                    "--steps",
                    "2",
                    "--warmup",
                    "1",
                    "--seed",
                    str(args.seed),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append({"task": task, "side": side, "precision": precision, **json.loads(out.splitlines()[-1])})
    return rows


# --------------------------------------------------------------------------- possible speed-ups of teachkit


def fused_adamw(model, cfg):
    groups = [
        {"params": g["params"], "weight_decay": g["weight_decay"]} for g in make_optimizer(model, cfg).param_groups
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-6, fused=True
    )  # (a group's fused=None would win)


_attend = tk_model.Attention.attend


def sdpa_attend(self, q, k, v, *, mask, causal, spelled_out):
    """The fused kernel (SDPA) even where teachkit.machinery.speed spells attention out."""
    return _attend(self, q, k, v, mask=mask, causal=causal, spelled_out=False)


def fp32_softmax_attend(self, q, k, v, *, mask, causal, spelled_out):
    """The spelled-out attention with its softmax in fp32 under autocast, as SDPA's math path and flash kernels do."""
    if not spelled_out:
        return _attend(self, q, k, v, mask=mask, causal=causal, spelled_out=False)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, D) @ (B, H, D, T) -> (B, H, T, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1, dtype=torch.float32)
    return self.weights_drop(weights) @ v, weights


_clip_grad_norm = torch.nn.utils.clip_grad_norm_  # train_step calls it through torch.nn.utils: a patch reaches it


def foreach_clip(parameters, max_norm, **kwargs):
    return _clip_grad_norm(parameters, max_norm, foreach=True, **kwargs)


def plain_dropout16(x, p, *, training=True):
    return F.dropout(x, p=p, training=training)


VARIANTS = {  # name -> what changes; join names with "+" to combine them
    "fused-adamw": {"kwargs": {"optimizer": fused_adamw}},
    "foreach-clip": {"patches": [(torch.nn.utils, "clip_grad_norm_", foreach_clip)]},
    "no-mask": {"drop_mask": True},  # attention_mask=None: skips the bool(mask.all()) check
    "fp32-softmax": {"patches": [(tk_model.Attention, "attend", fp32_softmax_attend)]},
    "attn-dropout-0": {"cfg": {"attn_dropout": 0.0}},  # a recipe change (both sides), not an implementation one
    # teachkit.machinery.speed's switch, off in part or in whole: what each speed-up is worth
    "sdpa-attention": {"patches": [(tk_model.Attention, "attend", sdpa_attend)]},
    "plain-dropout": {"patches": [(speed, "dropout16", plain_dropout16)]},
    "plain-mlm-loss": {"patches": [(speed.TrainingMLMHead, "forward", tk_model.MLMHead.forward)]},
    "no-speedups": {"kwargs": {"speedups": False}},
}
DEFAULT_VARIANTS = (
    "fused-adamw,foreach-clip,no-mask,fp32-softmax,attn-dropout-0,"
    "sdpa-attention,plain-dropout,plain-mlm-loss,no-speedups"
)


def run_variants(args) -> list[dict]:
    """Each variant of teachkit's pre-training step against the step as it is, at teachkit's default precision."""
    cfg, prec, rows = model_config(args.seq), pick_precision(CPU, "auto"), []
    batch = synthetic_batch(cfg, args.batch, args.seq, seed=args.seed)
    for name in args.variants.split(","):
        torch.manual_seed(args.seed)
        base = teachkit_stepper(cfg, "pretraining", batch, prec)
        torch.manual_seed(args.seed)
        variant = teachkit_stepper(cfg, "pretraining", batch, prec, variant=name)
        res = compare(variant, base, tokens_per_step=args.batch * args.seq, args=args)
        rows.append({"variant": name, "speedup": res["ratio"], "range": res["range"]})
        print(f"  {name:34} {res['ratio']:.3f}x", file=sys.stderr, flush=True)
    return rows


def profile(args) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cfg, prec = model_config(args.seq), pick_precision(CPU, "auto")
    batch = synthetic_batch(cfg, args.batch, args.seq, seed=args.seed)
    step = teachkit_stepper(cfg, "pretraining", batch, prec, variant=args.teachkit_variant)
    for _ in range(args.warmup):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    by_op = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25)
    return f"{args.steps} step(s), {prec}\n{by_op}\n{by_shape}"


# --------------------------------------------------------------------------- report


def machine_info() -> dict:
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "amx_bf16": "amx_bf16" in cpuinfo,
        "teachkit_default_precision": pick_precision(CPU, "auto"),
        "load_average": os.getloadavg(),
    }


def markdown(rows: list[dict], info: dict, args) -> str:
    variant = f", teachkit variant: {args.teachkit_variant}" if args.teachkit_variant else ""
    lines = [
        f"{info['cpu']} ({info['cores']} cores, {info['threads']} torch threads), torch {info['torch']}, "
        f"transformers {info['transformers']}, load average {info['load_average'][0]:.1f} at start{variant}.",
        f"BERT 4L/256H/4 heads/d_ff 1024/vocab 8192, batch {args.batch} x seq {args.seq}; median of "
        f"{args.rounds} alternating rounds x {args.steps} steps (range of the per-round ratios).",
        "",
        "| task | setting | teachkit tok/s (precision) | transformers tok/s (precision) | teachkit / transformers |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["ratio_range"]
        lines.append(
            f"| {r['task']} | {r['setting']} | {r['teachkit_tokens_per_s']:,.0f} ({r['teachkit_precision']}) | "
            f"{r['transformers_tokens_per_s']:,.0f} ({r['transformers_precision']}) | "
            f"**{r['ratio']:.2f}x** ({lo:.2f}-{hi:.2f}) |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per round and side")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side first")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice; on a busy machine use 1)")
    p.add_argument("--quick", action="store_true", help="a tiny run for smoke testing")
    p.add_argument("--measure-memory", action="store_true", help="peak RSS per side instead, each in its own process")
    p.add_argument(
        "--variants",
        nargs="?",
        const=DEFAULT_VARIANTS,
        help=f"time variants of teachkit's step instead (comma-separated; names: {', '.join(VARIANTS)})",
    )
    p.add_argument("--teachkit-variant", default="", help="run the comparison (or --profile) with a variant applied")
    p.add_argument("--profile", action="store_true", help="profile teachkit's pre-training step instead")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.warmup, args.seq, args.batch = 1, 2, 1, 32, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args)
    if args.profile:
        return print(profile(args))
    info, result = machine_info(), {}
    if args.measure_memory:
        result["memory"] = measure_memory(args)
        print(
            f"Peak RSS per side, each in its own process; batch {args.batch} x seq {args.seq}, "
            f"{torch.get_num_threads()} threads. 'Training' = peak minus RSS after imports.\n"
        )
        print("| task | side | precision | peak RSS MB | training MB |\n|---|---|---|---|---|")
        print(
            "\n".join(
                f"| {m['task']} | {m['side']} | {m['precision']} | {m['peak_rss_mb']:.0f} | {m['training_mb']:.0f} |"
                for m in result["memory"]
            )
        )
    elif args.variants:
        result["variants"] = run_variants(args)
        print("| variant of teachkit's pre-training step | speed-up vs as-is (range) |\n|---|---|")
        print(
            "\n".join(
                f"| {v['variant']} | {v['speedup']:.3f}x ({v['range'][0]:.2f}-{v['range'][1]:.2f}) |"
                for v in result["variants"]
            )
        )
    else:
        result["rows"] = run_comparison(args)
        print(markdown(result["rows"], info, args))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, **result}, indent=2)
        )
        print(f"\nWrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
