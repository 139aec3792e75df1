"""Command line: ``python -m sidlib train ...`` and ``python -m sidlib bench ...``.

Bad input ends with one line on stderr naming the problem and the fix, exit code 2, and
nothing written.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from . import bench
from .config import (DEVICES, FF_GOODNESS, FF_NEGATIVES, FF_PREDICTIONS, HSIC_OBJECTIVES, LLS_PROJECTIONS,
                     NOPROP_VARIANTS, OPTIMIZERS, PEPITA_SIGNS, PRECISIONS, SCHEDULES, TEST_EPOCHS, ConfigError,
                     TrainConfig)
from .data import DATASETS, DataUnavailable
from .divergences import KL_DIRECTIONS
from .io import check_writable, write_json
from .methods import METHODS
from .methods.sid import EXTRACTOR_STRATEGIES, PHASE2_MODES
from .methods.sll import CODE_MAPS, FIRST_PRIORS, PREDICTION_RULES, PROJECTIONS, TOKEN_SUMMARIES
from .models import BELIEF_INPUTS, HEADS, MODELS, STACKS, size_table

EXIT_USAGE = 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see `python -m {self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sidlib", description="SID, SLL and baselines: training and benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    d = TrainConfig()

    train = commands.add_parser("train", help="train one model with one method")
    train.add_argument("--method", choices=list(METHODS), default=d.method,
                       help="; ".join(f"{name}: {m.description}" for name, m in METHODS.items()))
    train.add_argument("--model", choices=list(MODELS), default=d.model)
    train.add_argument("--head", choices=HEADS, default=None,
                       help="linear: the model's classifier; cascade: SID's L refinement modules on its features "
                            "(default: cascade for simplecnn, linear for the rest)")
    train.add_argument("--dataset", choices=list(DATASETS), default=d.dataset)
    train.add_argument("--depth", type=int, default=d.depth,
                       help="refinement modules L of a cascade head, or blocks of a deep-* model")
    train.add_argument("--width", type=int, default=None, help="hidden width of an MLP (default: the model's own)")
    train.add_argument("--belief-input", choices=BELIEF_INPUTS, default=d.belief_input,
                       help="what a cascade's module reads of the one before: its belief softmax(z), as in the SID "
                            "paper; its logits z (no softmax between modules); or z plus an update (residual)")
    train.add_argument("--epochs", type=int, default=d.epochs)
    train.add_argument("--batch-size", type=int, default=d.batch_size)
    train.add_argument("--lr", type=float, default=d.lr)
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    train.add_argument("--alpha", type=float, default=d.alpha, help="SID's target weight, in (0, 1)")
    train.add_argument("--kl", choices=KL_DIRECTIONS, default=d.kl,
                       help="forward: KL(target||q) as the authors' code; reverse: KL(q||target) as the paper")
    train.add_argument("--extractor", choices=EXTRACTOR_STRATEGIES, default=d.extractor,
                       help="which SID modules' losses train the shared extractor")
    train.add_argument("--sid-phase2", choices=PHASE2_MODES, default=d.sid_phase2,
                       help="SID's local updates as one module step after another (loop) or as one batched "
                            "computation over the modules' stacked weights (batched): the same gradients")
    train.add_argument("--sid-modules-per-batch", type=int, default=d.sid_modules_per_batch,
                       help="batched phase 2: modules per batched computation; memory grows up to this many "
                            "modules' activations and stays flat beyond (a GPU may want all of them at once)")
    sll = train.add_argument_group("SLL's open choices (--method sll; sidlib/methods/sll.py)")
    sll.add_argument("--sll-codes", type=int, default=d.sll_codes,
                     help="k, the random projection's output dimension (default: the number of classes)")
    sll.add_argument("--sll-dropout", type=float, default=d.sll_dropout, help="dropout rate on the projection's entries")
    sll.add_argument("--sll-temperature", type=float, default=d.sll_temperature)
    sll.add_argument("--sll-weight", type=float, default=d.sll_weight, help="weight of the Bhattacharyya term")
    sll.add_argument("--sll-first-prior", choices=FIRST_PRIORS, default=d.sll_first_prior,
                     help="parent categorical of the first unit: a projection of the input, uniform, or none")
    sll.add_argument("--sll-code-map", choices=CODE_MAPS, default=d.sll_code_map,
                     help="class probability from k > C codes: pooled (code j -> class j mod C) or the first C")
    sll.add_argument("--sll-predict", choices=PREDICTION_RULES, default=d.sll_predict,
                     help="head: the trained classifier; last: the last unit's projection; average: of all")
    sll.add_argument("--sll-unit", type=int, default=d.sll_unit, help="blocks per unit (1: SLL; more: SLL+)")
    sll.add_argument("--sll-tokens", choices=TOKEN_SUMMARIES, default=d.sll_tokens,
                     help="a transformer unit's projected vector: class token or token mean")
    sll.add_argument("--sll-projection", choices=PROJECTIONS, default=d.sll_projection,
                     help="distribution of the projection's entries (variance 1/d)")
    baselines = train.add_argument_group("the baselines' open choices (sidlib/methods/<method>.py)")
    baselines.add_argument("--pepita-sign", choices=PEPITA_SIGNS, default=d.pepita_sign,
                           help="PEPITA's input modulation x - F e (minus) or x + F e (plus); the update rule is the same, "
                                "so plus with F is minus with -F")
    baselines.add_argument("--pepita-feedback-scale", type=float, default=d.pepita_feedback_scale,
                           help="scale of PEPITA's fixed random projection F of the error onto the input")
    baselines.add_argument("--ff-threshold", type=float, default=d.ff_threshold, help="FF's goodness threshold")
    baselines.add_argument("--ff-goodness", choices=FF_GOODNESS, default=d.ff_goodness,
                           help="FF's goodness of a layer: sum or mean of its squared activities")
    baselines.add_argument("--ff-predict", choices=FF_PREDICTIONS, default=d.ff_predict,
                           help="FF's prediction: the label with the most summed goodness, or a linear read-out")
    baselines.add_argument("--ff-negatives", choices=FF_NEGATIVES, default=d.ff_negatives,
                           help="FF's negative labels: drawn from the other classes, or a permutation of the batch's")
    baselines.add_argument("--noprop-variant", choices=NOPROP_VARIANTS, default=d.noprop_variant,
                           help="NoProp as its paper (DT) or as the SID authors' code")
    baselines.add_argument("--noprop-eta", type=float, default=d.noprop_eta, help="NoProp's weight of the denoising loss")
    baselines.add_argument("--hsic-objective", choices=HSIC_OBJECTIVES, default=d.hsic_objective,
                           help="HSIC's unit objective: the bottleneck (nHSIC with the input minus beta times nHSIC "
                                "with the labels, Ma et al.), or the SID paper's baseline (the unbiased HSIC with the "
                                "labels alone, maximised)")
    baselines.add_argument("--hsic-beta", type=float, default=d.hsic_beta,
                           help="HSIC bottleneck's weight of the label term")
    baselines.add_argument("--hsic-sigma", type=float, default=d.hsic_sigma, help="HSIC's Gaussian kernel width")
    baselines.add_argument("--lls-projection", choices=LLS_PROJECTIONS, default=d.lls_projection,
                           help="LLS's fixed class projections: periodic functions or random")
    train.add_argument("--weight-decay", type=float, default=None,
                       help="the optimiser's weight decay (default: its own, 0.01 for AdamW and 0 for the rest)")
    train.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    train.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    train.add_argument("--label-noise", type=float, default=d.label_noise,
                       help="fraction of training labels moved uniformly to another class")
    train.add_argument("--train-subset", type=int, default=None, help="stratified subset of N training samples")
    train.add_argument("--test-subset", type=int, default=None, help="stratified subset of N test samples")
    train.add_argument("--val-split", type=int, default=d.val_split,
                       help="hold N training samples out as a validation set, evaluated every epoch (model selection)")
    train.add_argument("--patience", type=int, default=None,
                       help="stop once validation accuracy has not improved for N epochs (needs --val-split)")
    train.add_argument("--track-train-acc", action="store_true",
                       help="also measure accuracy on the training labels as given (noisy ones too), each epoch")
    train.add_argument("--test-epochs", choices=TEST_EPOCHS, default=d.test_epochs,
                       help="'reported': evaluate the test set only at each new best-validation epoch and the last "
                            "epoch, the ones a run reports (needs --val-split); the same results, less evaluation")
    train.add_argument("--data-root", default=None, help="dataset folder (default: $SIDLIB_DATA or data/)")
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--device", choices=DEVICES, default=d.device)
    train.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    train.add_argument("--out", type=Path, default=None, help="results JSON, written atomically")
    train.add_argument("--checkpoint-dir", type=Path, default=None)
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir's checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    b = commands.add_parser("bench", help="time per step and peak saved-tensor bytes of each method")
    b.add_argument("--model", choices=list(MODELS), default=d.model)
    b.add_argument("--head", choices=HEADS, default=None, help="as for train")
    b.add_argument("--dataset", choices=list(DATASETS), default=d.dataset, help="input shape and classes")
    b.add_argument("--depths", type=int, nargs="+", default=[2, 10, 32],
                   help="refinement modules of a cascade head, or blocks of a deep-* model")
    b.add_argument("--methods", choices=list(METHODS) + list(bench.VARIANTS), nargs="+", default=None,
                   help="default: sid and bp on a cascade head, bp on a linear one; sid-batched is SID with "
                        "--sid-phase2 batched")
    b.add_argument("--batch-size", type=int, default=d.batch_size)
    b.add_argument("--steps", type=int, default=10, help="timed steps per method and depth (median reported)")
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--ranks", type=int, nargs="+", default=None,
                   help="time module-parallel SID on each of these numbers of processes (torchrun, one thread "
                        "each) beside one-process BP and the speed-up projected from measured stage times")
    b.add_argument("--rounds", type=int, default=3, help="with --ranks: launches per rank count, alternating")
    b.add_argument("--device", choices=DEVICES, default=d.device)
    b.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    b.add_argument("--json", action="store_true", help="print the records as JSON")
    b.add_argument("--out", type=Path, default=None,
                   help="also write the records, the command and the environment to this JSON (atomically)")

    m = commands.add_parser("models", help="every model: its blocks and parameter counts for one dataset")
    m.add_argument("--dataset", choices=list(DATASETS), default=d.dataset, help="input shape and classes")
    m.add_argument("--depth", type=int, default=d.depth,
                   help="refinement modules of the cascade head, blocks of a deep-* model")
    return parser


def _train(args) -> int:
    from .train import NonFiniteLoss, train

    options = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    config = TrainConfig(**options).validate()
    if args.out is not None and (problem := check_writable(args.out)):
        raise ConfigError(f"cannot write --out: {problem}; choose a writable path")
    if args.resume and args.checkpoint_dir is None:
        raise ConfigError("--resume needs --checkpoint-dir, the folder of the run to continue")

    from . import parallel

    def report(record):
        if parallel.rank() > 0:  # module-parallel SID (torchrun): rank 0 speaks for all
            return
        print(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, "
              + (f"val acc {record['val_acc']:.2f}%, " if "val_acc" in record else "")
              + (f"test acc {record['test_acc']:.2f}%, " if record["test_acc"] is not None else "")
              + f"{record['epoch_seconds']:.1f} s", flush=True)

    try:
        results = train(config, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                        progress=not args.no_progress, on_epoch_end=report)
    except NonFiniteLoss as error:
        print(f"sidlib: stopped: {error}", file=sys.stderr)
        return 1
    results["config"].update(out=None if args.out is None else str(args.out), resume=args.resume,
                             checkpoint_dir=None if args.checkpoint_dir is None else str(args.checkpoint_dir),
                             no_progress=args.no_progress)
    me = parallel.rank()
    if parallel.active():
        parallel.leave()
    if me > 0:  # rank 0 writes the results and the summary line
        return 0
    if args.out is not None:
        write_json(args.out, results)
    print(f"final test accuracy {results['final_test_acc']:.2f}% "
          f"({len(results['history'])} epochs, {results['train_seconds']:.1f} s of training)")
    return 0


def _bench(args) -> int:
    base = TrainConfig(model=args.model, head=args.head, dataset=args.dataset, device=args.device,
                       precision=args.precision)
    cascade = base.resolved_head() == "cascade"
    methods = args.methods or (["sid", "bp"] if cascade else ["bp"])
    for method in methods:
        bench.variant_config(base, method).validate()
    for name in ("batch_size", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.depths) < 1:
        raise ConfigError("--depths must all be at least 1")
    if args.out is not None and (problem := check_writable(args.out)):
        raise ConfigError(f"cannot write --out: {problem}; choose a writable path")
    if args.ranks is not None:
        return _bench_ranks(args, base)
    depths = args.depths if cascade or args.model in STACKS else [None]
    device = base.resolved_device()
    records = bench.run(depths, methods, args.batch_size, args.steps, args.warmup, base, device)
    if args.out is not None:
        from .train import environment

        command = "python -m sidlib " + shlex.join(args.argv)
        write_json(args.out, {"command": command, "batch_size": args.batch_size, "steps": args.steps,
                              "precision": base.precision, "records": records, "environment": environment(device)})
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    shape = "x".join(map(str, DATASETS[base.dataset].input_shape))
    print(f"{base.model} ({base.resolved_head()} head) on {base.dataset}-shaped input ({shape}), batch "
          f"{args.batch_size}, {device}, {base.precision}; median of {args.steps} steps")
    if cascade:
        module_bytes = bench.module_saved_bytes(base, args.batch_size, device)
        print(f"one module's saved tensors: {module_bytes / 2**20:.3f} MiB")
    print(f"{'depth':>5} {'method':>11} {'parameters':>12} {'step ms':>9} {'peak saved MiB':>15} {'time / bp':>9}")
    by_key = {(r["method"], r["depth"]): r for r in records}
    for r in records:
        bp = by_key.get(("bp", r["depth"]))
        ratio = f"{r['step_seconds'] / bp['step_seconds']:.3f}" if bp else "-"
        depth = "-" if r["depth"] is None else r["depth"]
        print(f"{depth:>5} {r['method']:>11} {r['parameters']:>12,} {1000 * r['step_seconds']:>9.2f} "
              f"{r['peak_saved_bytes'] / 2**20:>15.3f} {ratio:>9}")
    if cascade and len(set(depths)) > 1:
        lo, hi = min(depths), max(depths)
        for m in methods:
            growth = by_key[(m, hi)]["peak_saved_bytes"] - by_key[(m, lo)]["peak_saved_bytes"]
            print(f"{m}: peak saved bytes grow by {growth / module_bytes:.1f} modules' worth "
                  f"from depth {lo} to {hi}")
    elif len(set(depths)) > 1:
        lo, hi = min(depths), max(depths)
        for m in methods:
            ratio = by_key[(m, hi)]["peak_saved_bytes"] / by_key[(m, lo)]["peak_saved_bytes"]
            print(f"{m}: peak saved bytes x{ratio:.2f} from depth {lo} to {hi}")
    return 0


def _bench_ranks(args, base) -> int:
    if base.resolved_head() != "cascade":
        raise ConfigError("--ranks times module-parallel SID, which needs a cascade: add --head cascade")
    if args.methods not in (None, ["sid"]):
        raise ConfigError("--ranks times SID against one-process BP; drop --methods")
    if min(args.ranks) < 1 or max(args.ranks) > min(args.depths) or args.rounds < 1:
        raise ConfigError(f"--ranks must lie between 1 and the smallest depth ({min(args.depths)}), --rounds at least 1")
    if args.out is not None and (problem := check_writable(args.out)):
        raise ConfigError(f"cannot write --out: {problem}; choose a writable path")
    records = bench.run_ranks(args.depths, args.ranks, args.batch_size, args.steps, args.warmup, args.rounds, base,
                              log=(lambda *_: None) if args.json else print)
    if args.out is not None:
        from .train import environment

        write_json(args.out, {"command": "python -m sidlib " + shlex.join(args.argv), "batch_size": args.batch_size,
                              "steps": args.steps, "rounds": args.rounds, "threads_per_process": 1, "records": records,
                              "environment": environment(base.resolved_device())})
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print(f"module-parallel SID, {base.model} cascade, batch {args.batch_size}, one thread per process; "
          f"median over {args.rounds} rounds of each launch's median of {args.steps} steps")
    print(f"{'depth':>5} {'processes':>9} {'step ms':>8} {'steps/s':>8} {'speed-up':>9} {'projected':>10} "
          f"{'(modules only)':>15} {'BP ms':>7} {'BP / SID':>9}")
    for r in records:
        measured = "-" if r["speedup_over_one_process"] is None else f"{r['speedup_over_one_process']:.2f}"
        projected = r["projected_speedup_over_one_process"]
        print(f"{r['depth']:>5} {r['processes']:>9} {1000 * r['step_seconds']:>8.2f} {r['steps_per_second']:>8.1f} "
              f"{measured:>9} {projected['extractor']:>10.2f} {projected['modules']:>15.2f} "
              f"{1000 * r['bp_step_seconds']:>7.2f} {r['speedup_over_bp']:>9.2f}")
    return 0


def _models(args) -> int:
    if args.depth < 1:
        raise ConfigError("--depth must be at least 1")
    info = DATASETS[args.dataset]
    shape = "x".join(map(str, info.input_shape))
    print(f"{args.dataset} ({shape}, {info.num_classes} classes); cascade head: {args.depth} refinement modules")
    print(f"{'model':<18} {'blocks':>6} {'linear head':>13} {'cascade head':>13}")
    for row in size_table(info.input_shape, info.num_classes, args.depth):
        if row["blocks"] is None:
            print(f"{row['model']:<18} {'(does not take this input)':>34}")
            continue
        linear, cascade = (f"{row[head]:,}" if row[head] is not None else "-" for head in ("linear", "cascade"))
        print(f"{row['model']:<18} {row['blocks']:>6} {linear:>13} {cascade:>13}")
    return 0


COMMANDS = {"train": _train, "bench": _bench, "models": _models}


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, DataUnavailable) as error:
        print(f"sidlib: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sidlib: interrupted", file=sys.stderr)
        return 130
