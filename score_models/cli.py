"""The `score-models` command.

    score-models artifacts list                    # every cached model and its state
    score-models artifacts build [NAME ...]        # retrain (all, or the named ones)
    score-models artifacts build --stale           # retrain only missing, stale or corrupt ones
    score-models artifacts verify [NAME ...]       # exit 1 unless every artifact is up to date
    score-models sample mnist --n 64 --out x.npy [--png x.png] [--sampler annealed|pf-ode|heun] [--seed 0]
    score-models sample mnist --sampler heun --steps 18 ...   # EDM's Heun sampler, 2 * 18 - 1 evaluations
    score-models sample mnist --digit 7 --out x.npy [--guidance free|classifier] [--scale 2]

Artifacts live in `score_models.artifacts.artifact_dir()`: the checkout's `artifacts/`, or
`$SCORE_MODELS_ARTIFACT_DIR`, or the user cache. `sample` never trains anything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Group names accepted wherever artifact names are.
ALIASES = {"mnist": ["mnist_classifier", "mnist_unet"]}
# Bytes per sampled MNIST image kept in memory: the (28, 28) float32 result and its working copy.
_BYTES_PER_IMAGE = 2 * 28 * 28 * 4


def _select(args) -> list[str]:
    from . import zoo

    if args.chapter is not None and args.chapter not in zoo.chapters():
        raise ValueError(f"`--chapter` {args.chapter} has no artifacts; chapters with artifacts: {zoo.chapters()}.")
    if not args.names:
        return zoo.names(chapter=args.chapter)
    names = []
    for name in args.names:
        if name in ALIASES:  # e.g. `score-models artifacts build mnist`
            names += ALIASES[name]
        else:
            zoo.get(name)
            names.append(name)
    return [n for n in names if args.chapter is None or zoo.get(n).chapter == args.chapter]


def _artifacts_list(args) -> int:
    from . import artifacts, zoo

    directory = artifacts.artifact_dir()
    print(f"artifact directory: {directory}")
    print(f"{'name':32s} {'ch':>2s} {'state':8s} {'KiB':>7s}  description")
    for name in _select(args):
        r, found = zoo.get(name), zoo.check(name)
        path = directory / f"{name}.eqx"
        size = f"{path.stat().st_size / 1024:7.1f}" if path.exists() else f"{'-':>7s}"
        print(f"{name:32s} {r.chapter:2d} {found.state:8s} {size}  {r.description}")
        if found.state != "ok":
            print(f"{'':35s} {found.detail}")
    return 0


def _artifacts_build(args) -> int:
    from . import artifacts, zoo

    names = _select(args)
    directory = artifacts.ensure_writable()  # before anything is trained
    print(f"artifact directory: {directory}")
    total = time.perf_counter()
    for name in names:
        found = zoo.check(name)
        if args.stale and found.state == "ok":
            print(f"{name}: up to date")
            continue
        why = f" ({found.state}: {found.detail})" if found.state != "ok" else ""
        print(f"{name}: {zoo.get(name).about()}{why}", flush=True)
        t0 = time.perf_counter()
        zoo.build(name)
        print(f"{name}: built in {time.perf_counter() - t0:.1f} s -> {directory / (name + '.eqx')}", flush=True)
    print(f"total: {time.perf_counter() - total:.1f} s")
    return 0


def _artifacts_verify(args) -> int:
    from . import artifacts, zoo

    failures = 0
    for name in _select(args):
        found = zoo.check(name)
        line = f"{found.state} ({found.detail})" if found.state != "ok" else "ok"
        if found.state == "ok":
            try:
                artifacts.load(name, config=zoo.get(name).config)
            except artifacts.ArtifactError as e:
                line = f"unloadable: {e}"
        print(f"{name}: {line}")
        failures += line != "ok"
    if failures:
        print(f"{failures} artifact(s) need `score-models artifacts build --stale`.", file=sys.stderr)
    return 1 if failures else 0


def _output_path(option: str, value: str, suffix: str) -> Path:
    """`value` as a path ending in `suffix` whose folder exists and is writable."""
    from ._files import check_writable

    path = Path(value).expanduser()
    if path.suffix != suffix:
        raise ValueError(f"`{option}` must name a {suffix} file, got {value!r}.")
    if not path.parent.is_dir():
        raise ValueError(f"`{option}`: the folder {path.parent} does not exist.")
    try:
        check_writable(path.parent, f"`{option}`: the folder")
    except OSError as e:
        raise ValueError(str(e)) from e
    return path


def _check_sample_args(args) -> tuple[Path, Path | None]:
    from ._system import check_fits_in_memory

    if args.n <= 0:
        raise ValueError(f"`--n` must be a positive integer, got {args.n}.")
    check_fits_in_memory("--n", args.n * _BYTES_PER_IMAGE, f"{args.n} images")
    if args.steps is not None and args.sampler != "heun":
        raise ValueError(f"`--steps` is used by `--sampler heun` only, not {args.sampler!r}.")
    if args.steps is not None and args.steps <= 0:
        raise ValueError(f"`--steps` must be a positive integer, got {args.steps}.")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"`--seed` must be an integer in [0, 2**63), got {args.seed}.")
    if args.digit is None and (args.guidance is not None or args.scale is not None):
        raise ValueError("`--guidance` and `--scale` apply to guided sampling: give `--digit` too.")
    if args.digit is not None:
        if not 0 <= args.digit <= 9:
            raise ValueError(f"`--digit` must be an integer in [0, 9], got {args.digit}.")
        if args.sampler not in (None, "annealed"):
            raise ValueError("guided sampling (`--digit`) runs annealed Langevin dynamics; drop `--sampler`.")
        if args.scale is not None and not (args.scale == args.scale and abs(args.scale) < float("inf")):
            raise ValueError(f"`--scale` must be a finite number, got {args.scale}.")
    out = _output_path("--out", args.out, ".npy")
    png = None if args.png is None else _output_path("--png", args.png, ".png")
    return out, png


def _sample_digit(args, out: Path, png: Path | None) -> int:
    """`--digit K`: guided samples of one digit (chapter 7's settings and models)."""
    import jax
    import numpy as np

    from . import artifacts, images, zoo
    from .zoo import chapter7

    kind = args.guidance or "free"
    scale = chapter7.CLI_SCALE[kind] if args.scale is None else args.scale
    needed = ["guide_mnist_conditional"] if kind == "free" else ["mnist_unet", "guide_mnist_classifier"]
    loaded = {}
    for name in needed:  # never train as a side effect of sampling
        found = zoo.check(name)
        if found.state != "ok":
            raise ValueError(f"the artifact {name} is {found.state} ({found.detail}); build it first with "
                             f"`score-models artifacts build {name}`.")
        loaded[name] = artifacts.load(name, config=zoo.get(name).config)
    score_fn = chapter7.mnist_guided_score(kind, args.digit, scale, unet=loaded.get("mnist_unet"),
                                           classifier=loaded.get("guide_mnist_classifier"),
                                           conditional=loaded.get("guide_mnist_conditional"))
    t0 = time.perf_counter()
    pixels = images.to_pixels(chapter7.sample_mnist(score_fn, jax.random.key(args.seed), args.n))
    np.save(out, pixels)
    print(f"{args.n} samples of digit {args.digit} ({'classifier-free' if kind == 'free' else 'classifier'} "
          f"guidance, scale {scale:g}, seed {args.seed}) in {time.perf_counter() - t0:.1f} s: "
          f"{out} float32 {pixels.shape} in [0, 1]")
    if png is not None:
        images.save_png(pixels, png, ncol=min(16, args.n))
        print(f"grid: {png}")
    return 0


def _sample(args) -> int:
    out, png = _check_sample_args(args)  # every cheap check before the model is loaded
    if args.digit is not None:
        return _sample_digit(args, out, png)
    args.sampler = args.sampler or "annealed"

    import jax
    import numpy as np

    from . import artifacts, images, zoo
    from .zoo import chapter6

    found = zoo.check("mnist_unet")
    if found.state != "ok":  # never train as a side effect of sampling, whatever the mode
        raise ValueError(f"the artifact mnist_unet is {found.state} ({found.detail}); build it first with "
                         f"`score-models artifacts build mnist_unet`.")
    model = artifacts.load("mnist_unet", config=zoo.get("mnist_unet").config)
    t0 = time.perf_counter()
    if args.sampler == "heun":  # EDM's Heun sampler (chapter 8)
        from .zoo.chapter8 import sample_mnist

        levels = {} if args.steps is None else {"n_levels": args.steps}
        x = sample_mnist(model, jax.random.key(args.seed), args.n, sampler="Heun", **levels).samples
    else:
        x = chapter6.sample(model, jax.random.key(args.seed), args.n, sampler=args.sampler).samples
    pixels = images.to_pixels(x)
    np.save(out, pixels)
    print(f"{args.n} samples ({args.sampler}, seed {args.seed}) in {time.perf_counter() - t0:.1f} s: "
          f"{out} float32 {pixels.shape} in [0, 1]")
    if png is not None:
        images.save_png(pixels, png, ncol=min(16, args.n))
        print(f"grid: {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `score-models`."""
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
            p.add_argument("--stale", action="store_true", help="only missing, stale or corrupt artifacts")
        p.set_defaults(func=fn)

    smp = commands.add_parser("sample", help="draw samples from a cached model (never trains)")
    smp.add_argument("dataset", choices=["mnist"], help="which model: mnist (artifact mnist_unet)")
    smp.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    smp.add_argument("--out", required=True, help="output .npy file: float32 (N, 28, 28) in [0, 1]")
    smp.add_argument("--png", default=None, help="also write a PNG grid of the samples")
    smp.add_argument("--sampler", choices=["annealed", "pf-ode", "heun"], default=None,
                     help="annealed Langevin dynamics (default), the probability-flow ODE, or Heun's method "
                          "on EDM's noise levels")
    smp.add_argument("--steps", type=int, default=None,
                     help="heun: the number of noise levels (default 18: 35 score evaluations)")
    smp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    smp.add_argument("--digit", type=int, default=None,
                     help="sample this digit (0-9) with guidance (chapter 7; annealed Langevin)")
    smp.add_argument("--guidance", choices=["free", "classifier"], default=None,
                     help="with --digit: classifier-free guidance (default; artifact guide_mnist_conditional) or "
                          "classifier guidance (mnist_unet and guide_mnist_classifier)")
    smp.add_argument("--scale", type=float, default=None,
                     help="with --digit: the guidance scale (default: chapter 7's choice for the kind)")
    smp.set_defaults(func=_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs `score-models` with `argv` (default `sys.argv[1:]`); returns the exit status."""
    from .artifacts import ArtifactError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, ArtifactError) as e:  # bad input and unusable artifacts: a message, not a traceback
        print(f"score-models: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
