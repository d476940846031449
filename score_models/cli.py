"""The `score-models` command.

    score-models artifacts list                    # every cached model and its state
    score-models artifacts build [NAME ...]        # retrain (all, or the named ones)
    score-models artifacts build --stale           # retrain only missing or stale ones
    score-models artifacts verify [NAME ...]       # exit 1 unless every artifact is up to date
    score-models sample mnist --n 64 --out x.npy [--png x.png] [--sampler annealed|pf-ode] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time


# Group names accepted wherever artifact names are.
ALIASES = {"mnist": ["mnist_classifier", "mnist_unet"]}


def _select(args) -> list[str]:
    from . import zoo

    if args.names:
        names = []
        for name in args.names:
            if name in ALIASES:  # e.g. `score-models artifacts build mnist`
                names += ALIASES[name]
            else:
                zoo.get(name)
                names.append(name)
        return names
    return zoo.names(chapter=args.chapter)


def _artifacts_list(args) -> int:
    from . import artifacts, zoo

    print(f"artifact directory: {artifacts.artifact_dir()}")
    print(f"{'name':32s} {'ch':>2s} {'state':8s} {'KiB':>7s}  description")
    for name in _select(args):
        r = zoo.get(name)
        state = zoo.status(name)
        path = artifacts.artifact_dir() / f"{name}.eqx"
        size = f"{path.stat().st_size / 1024:7.1f}" if path.exists() else f"{'-':>7s}"
        print(f"{name:32s} {r.chapter:2d} {state:8s} {size}  {r.description}")
    return 0


def _artifacts_build(args) -> int:
    from . import zoo

    total = time.perf_counter()
    for name in _select(args):
        if args.stale and zoo.status(name) == "ok":
            print(f"{name}: up to date")
            continue
        t0 = time.perf_counter()
        print(f"{name}: building ...", flush=True)
        zoo.build(name)
        print(f"{name}: built in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"total: {time.perf_counter() - total:.1f} s")
    return 0


def _artifacts_verify(args) -> int:
    from . import artifacts, zoo

    failures = 0
    for name in _select(args):
        state = zoo.status(name)
        if state == "ok":
            try:
                artifacts.load(name, config=zoo.get(name).config)
            except artifacts.ArtifactError as e:
                state = f"unloadable: {e}"
        print(f"{name}: {state}")
        failures += state != "ok"
    if failures:
        print(f"{failures} artifact(s) need `score-models artifacts build --stale`.", file=sys.stderr)
    return 1 if failures else 0


def _sample(args) -> int:
    import jax
    import numpy as np

    from . import mnist, zoo

    if args.dataset != "mnist":
        raise ValueError(f"`dataset` must be 'mnist', got {args.dataset!r}.")
    if args.n <= 0:
        raise ValueError(f"`--n` must be a positive integer, got {args.n}.")
    if not args.out.endswith(".npy"):
        raise ValueError(f"`--out` must name a .npy file, got {args.out!r}.")
    state = zoo.status("mnist_unet")
    if state != "ok":  # never train for an hour as a side effect of sampling
        raise ValueError(f"the artifact mnist_unet is {state}; build it first with "
                         f"`score-models artifacts build mnist_unet`.")
    model = zoo.load("mnist_unet")
    t0 = time.perf_counter()
    x = mnist.sample(model, jax.random.key(args.seed), args.n, sampler=args.sampler)
    images = mnist.to_pixels(x)
    np.save(args.out, images)
    print(f"{args.n} samples ({args.sampler}, seed {args.seed}) in {time.perf_counter() - t0:.1f} s: "
          f"{args.out} float32 {images.shape} in [0, 1]")
    if args.png:
        mnist.save_png(images, args.png, ncol=min(16, args.n))
        print(f"grid: {args.png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="score-models", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    art = commands.add_parser("artifacts", help="list, build or verify the cached models")
    art_cmds = art.add_subparsers(dest="action", required=True)
    for action, fn, help_ in [
        ("list", _artifacts_list, "show every artifact and whether it is up to date"),
        ("build", _artifacts_build, "retrain artifacts from scratch and save them"),
        ("verify", _artifacts_verify, "check every artifact exists, matches its recipe and loads"),
    ]:
        p = art_cmds.add_parser(action, help=help_)
        p.add_argument("names", nargs="*", help="artifact names (default: all)")
        p.add_argument("--chapter", type=int, default=None, help="only this chapter's artifacts")
        if action == "build":
            p.add_argument("--stale", action="store_true", help="only missing or stale artifacts")
        p.set_defaults(func=fn)

    smp = commands.add_parser("sample", help="draw samples from a cached model")
    smp.add_argument("dataset", choices=["mnist"], help="which model: mnist (artifact mnist_unet)")
    smp.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    smp.add_argument("--out", required=True, help="output .npy file: float32 (N, 28, 28) in [0, 1]")
    smp.add_argument("--png", default=None, help="also write a PNG grid of the samples")
    smp.add_argument("--sampler", choices=["annealed", "pf-ode"], default="annealed",
                     help="annealed Langevin dynamics (default) or the probability-flow ODE")
    smp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    smp.set_defaults(func=_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # unknown names and other bad input: a message, not a traceback
        print(f"score-models: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
