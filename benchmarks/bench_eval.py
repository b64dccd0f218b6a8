"""PGD-20 evaluation throughput: advlt's evaluation PGD block vs ``torchattacks.PGD``.

Both attack the same model (eval mode, frozen parameters, as ``engine.evaluate`` prepares it)
on the same random 32×32 images, batch by batch, and both end with the prediction on the
adversarial batch. advlt's block does what the evaluation does: symmetric random start, 20 sign
steps, projection/clamp, the PGD-5/PGD-10 recording forwards and the eps-ball check.

    .venv/bin/python benchmarks/bench_eval.py [--model small_cnn|wrn] [--n 128] [--repeats 5]

``--model wrn`` is WRN-16-4. Needs ``torchattacks`` (``pip install torchattacks==3.5.1 --no-deps``,
the ``bench`` extra). Prints images/s for both and the ratio advlt / torchattacks (target ≥ 1.0).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.eval_suite import SuiteParams, run_gradient_attack  # noqa: E402
from engine.evaluate import pick_device, prepare_model  # noqa: E402
from engine.network import build_network  # noqa: E402
from presets.schema import ModelConfig  # noqa: E402

MODELS = {
    "small_cnn": ModelConfig(backbone="small_cnn", backbone_opt={"width": 32}, head="fc"),
    "wrn": ModelConfig(backbone="wrn", backbone_opt={"depth": 16, "widen_factor": 4}, head="fc"),
}


def _torchattacks():
    try:
        import torchattacks
    except ImportError:
        sys.exit("bench_eval: torchattacks is not installed; run "
                 "`.venv/bin/pip install torchattacks==3.5.1 --no-deps` (the 'bench' extra)")
    return torchattacks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], float], device: torch.device) -> tuple[float, float, float]:
    """Wall seconds, process CPU seconds and the function's result."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    acc = fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu, acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="small_cnn")
    parser.add_argument("--n", type=int, default=128, help="images per timed pass")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eps", type=float, default=0.031)
    parser.add_argument("--alpha", type=float, default=0.0078)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    torchattacks = _torchattacks()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device(args.device)
    torch.manual_seed(0)
    model = build_network(MODELS[args.model], 10, 3, 32, [1] * 10)
    prepare_model(model, device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.n,), generator=gen)
    params = SuiteParams(args.eps, args.alpha, args.steps, 50.0, 1.0, args.batch_size, 0, "reference")
    noop = lambda *a: None  # noqa: E731
    atk = torchattacks.PGD(model, eps=args.eps, alpha=args.alpha, steps=args.steps, random_start=True)

    def ours() -> float:
        preds, _ = run_gradient_attack("pgd", model, x, y, params, device, noop)
        return float((preds[f"pgd{args.steps}"] == y).float().mean())

    def theirs() -> float:
        correct = 0
        for start in range(0, args.n, args.batch_size):
            xb = x[start:start + args.batch_size].to(device)
            yb = y[start:start + args.batch_size].to(device)
            x_adv = atk(xb, yb)
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == yb).sum())
        return correct / args.n

    # Warm-up (allocator, cuDNN autotuning), then alternate so drift affects both alike.
    run_gradient_attack("pgd", model, x[:args.batch_size], y[:args.batch_size], params, device, noop)
    atk(x[:args.batch_size].to(device), y[:args.batch_size].to(device))
    wall: dict[str, list[float]] = {"advlt": [], "torchattacks": []}
    cpu: dict[str, list[float]] = {"advlt": [], "torchattacks": []}
    accs: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in (("advlt", ours), ("torchattacks", theirs)):
            seconds, cpu_seconds, accs[name] = _timed(fn, device)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    # Best-of wall time is the figure least disturbed by other processes on a shared machine;
    # on the CPU, process CPU time is a second, load-independent view of the same work.
    best = {k: args.n / min(v) for k, v in wall.items()}
    median = {k: args.n / statistics.median(v) for k, v in wall.items()}
    print(f"device {device} ({torch.get_num_threads()} threads), model {args.model}, {args.n} images, "
          f"batch {args.batch_size}, PGD-{args.steps} eps {args.eps} alpha {args.alpha}, "
          f"{args.repeats} repeats")
    for name in ("advlt", "torchattacks"):
        print(f"  {name:13s} best {best[name]:9.1f} images/s  median {median[name]:9.1f} images/s"
              f"  robust acc {accs[name]:.3f}")
    print(f"  ratio advlt / torchattacks (images/s): best {best['advlt'] / best['torchattacks']:.2f}x, "
          f"median {median['advlt'] / median['torchattacks']:.2f}x (target >= 1.0x)")
    if device.type == "cpu":
        cpu_ratio = statistics.median(cpu["torchattacks"]) / statistics.median(cpu["advlt"])
        print(f"  ratio by median process CPU time: {cpu_ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
