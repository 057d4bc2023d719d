"""The ``fixres-fast`` command: a thin layer that parses options and calls library functions."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import click

from .adapt import AUGS, BN_SCOPES, METHODS, AdaptConfig
from .analysis.activations import ActivationsConfig
from .analysis.roc import RocConfig
from .analysis.scale import ScaleConfig
from .convert import FORMATS, ConvertConfig
from .convert.image import WRITE_MODES
from .demo import DemoConfig
from .errors import UserError
from .evaluate import EvalConfig
from .loaders import BACKENDS
from .loaders.common import ON_CORRUPT
from .models import TUNE
from .profile import ProfileConfig
from .runtime import AMP, parse_resolutions
from .spec import ADAPT_EPOCHS_STREAMED, FINETUNE_EPOCHS, INTERPOLATIONS, MODES, RESIZE_RATIO, SCHEDULES, Recipe, parse_res
from .train import TrainConfig


def default_of(config, name: str):
    """The default of the dataclass ``config``'s field ``name``, so that each CLI default has one source; a tuple
    of resolutions as the comma-separated text the option takes."""
    f = config.__dataclass_fields__[name]
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


ON_CORRUPT_HELP = ("A damaged record (its bytes differ from the CRC-32 the conversion recorded; without CRCs, libjpeg "
                   "fails or reports corrupt data): stop, naming it, or leave it out and count it (a warning after "
                   "each epoch).")


def user_errors(fn):
    """Show a UserError as a one-line message (exit 1), never as a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; no half-written file was left under a final name") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fixres-fast")
def main():
    """FixRes, fast: train an image classifier at a low resolution, then adapt it cheaply to a
    higher test resolution (Touvron et al., "Fixing the train-test resolution discrepancy", 2019).

    Start with `fixres-fast convert` to turn a data set into records the fast loaders read.
    """


@main.group(short_help="Convert a data set into .beton files and RecordIO shards.")
def convert():
    """Convert a data set into FFCV .beton files and DALI-readable RecordIO shards.

    Every image is stored as RGB JPEG with its long side at most --max-side, EXIF rotation applied.
    Sequential JPEGs that already qualify are stored byte for byte; progressive ones are rewritten
    as sequential JPEGs of the same coefficients (the same pixels, decoded 2-2.7x faster); others
    (PNG data, CMYK, greyscale, rotated, too large) are re-encoded once. Unreadable files are skipped and listed, with
    their reason, in OUT/manifest.json. Class indices are written to OUT/classes.json.
    """


def convert_options(fn):
    options = [
        click.argument("src", type=click.Path(file_okay=False)),
        click.argument("out", type=click.Path(file_okay=False)),
        click.option("--format", "fmt", type=click.Choice([*FORMATS, "all"]), default="all",
                     show_default=True, help="Records to write: FFCV .beton, MXNet RecordIO for DALI, or both."),
        click.option("--max-side", default=default_of(ConvertConfig, "max_side"), show_default=True,
                     help="Longest side, in pixels, of stored images. Test DA needs a short side of "
                          f"K_test*{RESIZE_RATIO:.4f} (256/224) to avoid upsampling."),
        click.option("--jpeg-quality", default=default_of(ConvertConfig, "jpeg_quality"), show_default=True, help="Quality of images that must be re-encoded."),
        click.option("--sequential/--keep-progressive", default=default_of(ConvertConfig, "sequential"), show_default=True,
                     help="Rewrite progressive JPEGs as sequential ones, losslessly (same pixels, faster to decode)."),
        click.option("--write-mode", type=click.Choice(WRITE_MODES), default=default_of(ConvertConfig, "write_mode"),
                     show_default=True,
                     help="How the .beton stores pixels: JPEG, or raw RGB (faster to load, far larger)."),
        click.option("--shards", default=default_of(ConvertConfig, "shards"), show_default=True, help="RecordIO shards per split."),
        click.option("--workers", default=default_of(ConvertConfig, "workers"), show_default=False,
                     help="Encoding processes [default: all cores]."),
        click.option("--test-res", default=default_of(ConvertConfig, "test_res"), show_default=True,
                     help="Largest test resolution K_test you intend; warns when --max-side is too small for it."),
        click.option("--seed", default=default_of(ConvertConfig, "seed"), show_default=True,
                     help="Seed of the stored order of train records."),
        click.option("--overwrite", is_flag=True, help="Replace a finished conversion in OUT made with other options."),
        click.option("--verify", "then_verify", is_flag=True, help="Re-read every record through FFCV and DALI afterwards."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_convert(layout, src, out, fmt, then_verify, year=None, **opts):
    from .convert import convert as run
    from .convert import verify as check

    formats = FORMATS if fmt == "all" else (fmt,)
    run(ConvertConfig(layout=layout, src=src, out=out, formats=formats, year=year, **opts))
    if then_verify:
        check(out, workers=opts["workers"])


@convert.command(short_help="ImageNet (ILSVRC-2012), also as Kaggle ships it.")
@convert_options
@click.option("--val-labels", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Kaggle's LOC_val_solution.csv for a flat val/ [default: looked for in SRC and 3 folders above].")
@user_errors
def imagenet(src, out, **opts):
    """ImageNet (ILSVRC-2012): SRC/train/nXXXXXXXX/*.JPEG and SRC/val/.

    val/ may hold class folders, or flat files labelled by LOC_val_solution.csv (in SRC or up to 3 folders
    above it, as in Kaggle's ILSVRC/Data/CLS-LOC; or --val-labels) or the devkit's
    ILSVRC2012_validation_ground_truth.txt + meta.mat. Class index = sorted wnid order.
    """
    _run_convert("imagenet", src, out, **opts)


@convert.command(short_help="iNaturalist 2017, 2018, 2019 or 2021 (COCO-style JSON).")
@convert_options
@click.option("--year", type=click.Choice(["2017", "2018", "2019", "2021"]), required=True,
              help="Which release: picks the annotation files (train2019.json, val2019.json, ...).")
@click.option("--train-set", type=click.Choice(["train", "train_mini"]), default=None,
              help="2021 only: train.json (2.7M images) or train_mini.json (500k) [default: train.json].")
@user_errors
def inat(src, out, year, **opts):
    """iNaturalist: COCO-style train*/val* JSON annotations in SRC; file_name relative to SRC.

    A missing annotation file is named in a warning; its split is not converted."""
    _run_convert("inat", src, out, year=int(year), **opts)


@convert.command(short_help="Herbarium 2019, 2020 or 2021.")
@convert_options
@user_errors
def herbarium(src, out, **opts):
    """Herbarium 2019-2021: SRC/train/ and SRC/validation/ (stored as split val), as class folders (2019).

    2019: SRC/<split>/<category>/<image> (small-train/, a subset of train/, is not converted when train/
    is there). 2020, 2021: SRC/<split>/metadata.json (COCO-style, latin-1 or UTF-8), file_name relative
    to its folder; test/metadata.json has no labels and is not converted."""
    _run_convert("herbarium", src, out, **opts)


@convert.command(short_help="Any ImageFolder tree: SRC/<split>/<class>/<image>.")
@convert_options
@user_errors
def folder(src, out, **opts):
    """Any ImageFolder tree: SRC/<split>/<class>/<image>, or SRC/<class>/<image> as one train split.

    Splits: train, test, and val (also named validation or valid; stored as val)."""
    _run_convert("folder", src, out, **opts)


@convert.command("verify", short_help="Re-read every record of OUT and check it against its manifest.")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--workers", default=0, show_default=False, help="Decoding threads [default: all cores].")
@user_errors
def verify_cmd(out, workers):
    """Re-read every record in OUT through FFCV's Loader and DALI's readers.mxnet and check
    checksums, counts and labels against OUT/manifest.json."""
    from .convert import verify

    verify(out, workers=workers or os.cpu_count())


def _triple(text: str | None, option: str):
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise click.BadParameter(f"expected three comma-separated numbers (R,G,B as fractions of 255), got {text!r}",
                                 param_hint=option)
    return values


def weights_options(fn):
    """--weights FILE --arch NAME (plain pretrained weights) with the overrides of the model's own preprocessing."""
    options = [
        click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="Plain pretrained weights instead of a checkpoint: a state_dict (.pth/.pt, read with "
                          "weights_only=True; also nested under 'state_dict' or 'model', 'module.' prefixes) or "
                          ".safetensors. Needs --arch."),
        click.option("--arch", default=None, help="With --weights: a torchvision name (resnet50, resnet50.IMAGENET1K_V1) "
                     "or a timm name with or without its pretrained tag (timm/resnet50.a1_in1k, tf_efficientnet_lite1); "
                     "its own config gives the preprocessing."),
        click.option("--train-res", "k_train", type=int, default=None,
                     help="With --weights: the resolution the weights were trained at [default: timm's input_size, "
                          "torchvision's crop_size, else 224]."),
        click.option("--mean", default=None, help="With --weights: normalisation mean R,G,B [default: the model's own]."),
        click.option("--std", default=None, help="With --weights: normalisation std R,G,B [default: the model's own]."),
        click.option("--interpolation", type=click.Choice(INTERPOLATIONS), default=None,
                     help="With --weights: resizing filter [default: the model's own]."),
        click.option("--crop-pct", type=float, default=None,
                     help="With --weights: K_test / K_test^image, timm's crop_pct [default: the model's own]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def model_options(fn):
    """:func:`weights_options` and --classes-map, as evaluate, adapt and analyze activations take them."""
    fn = click.option("--classes-map", type=click.Path(dir_okay=False), default=None,
                      help="Map the records' classes onto the model's, e.g. a subset of ImageNet's 1000: a JSON object "
                           "or lines 'RECORD_CLASS MODEL_CLASS' (a model class name or output index).")(fn)
    return weights_options(fn)


def model_sources(checkpoints, opts: dict) -> tuple:
    """The models a job opens: each --checkpoint, then the --weights (popping the model options from ``opts``)."""
    from .pretrained import Pretrained

    weights, arch = opts.pop("weights"), opts.pop("arch")
    given = {k: opts.pop(k) for k in ("k_train", "mean", "std", "interpolation", "crop_pct")}
    given["mean"], given["std"] = _triple(given["mean"], "--mean"), _triple(given["std"], "--std")
    if weights is None:
        used = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None] + (["--arch"] * bool(arch))
        if used:
            raise UserError(f"{', '.join(used)} describe(s) plain weights: pass --weights FILE too (a checkpoint "
                            "of ours carries its own)")
        if not checkpoints:
            raise UserError("expected --checkpoint FILE (ours), or --weights FILE --arch NAME (plain pretrained weights)")
        return tuple(checkpoints)
    if not arch:
        raise UserError("--weights needs --arch NAME: the torchvision or timm model the weights are for")
    if given["k_train"] is not None and given["k_train"] <= 0:
        raise UserError(f"--train-res must be a positive number of pixels, got {given['k_train']}")
    return (*checkpoints, Pretrained(weights=weights, arch=arch, **given))


def run_options(fn):
    """--backend, --device, --amp, --workers and --on-corrupt, as every job that runs a model on records takes them."""
    options = [
        click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default=default_of(EvalConfig, "backend"),
                     help="Loader: auto is, of those that can read the data, DALI on a GPU where installed, else FFCV where "
                          "installed, else torch."),
        click.option("--device", default=default_of(EvalConfig, "device"), help="cuda, cpu or auto (cuda when torch sees a GPU)."),
        click.option("--amp", type=click.Choice(AMP), default=default_of(EvalConfig, "amp"),
                     help="Mixed precision: auto is bf16 on a GPU that supports it (fp16 uses a GradScaler), else off."),
        click.option("--workers", default=default_of(EvalConfig, "workers"), show_default=False,
                     help="Loader workers [default: all cores]."),
        click.option("--on-corrupt", type=click.Choice(ON_CORRUPT), default=default_of(EvalConfig, "on_corrupt"),
                     help=ON_CORRUPT_HELP),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


GPUS_HELP = ("Processes on this machine, one per GPU (gloo CPU processes with --device cpu); runs the same command "
             "under torchrun. On several nodes, call torchrun yourself.")


def _on_processes(gpus: int) -> None:
    """With --gpus N > 1 outside torchrun: become ``torchrun --nproc-per-node N`` running this command without it."""
    import sys

    from .distributed import relaunch_under_torchrun

    if gpus < 1:
        raise UserError(f"--gpus must be 1 or more (processes on this machine), got {gpus}")
    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        args = sys.argv[1:]
        i = next(k for k, a in enumerate(args) if a == "--gpus" or a.startswith("--gpus="))
        relaunch_under_torchrun(gpus, args[:i] + args[i + (1 if "=" in args[i] else 2):])


@main.command(context_settings={"show_default": True}, short_help="Train a classifier at K_train with the paper's recipe.")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="A conversion's OUT folder (or an ImageFolder tree).")
@click.option("--out", default=default_of(TrainConfig, "out"), type=click.Path(file_okay=False),
              help="Checkpoints (last.pt, best.pt) and metrics.jsonl.")
@click.option("--arch", default=default_of(TrainConfig, "arch"), help="Model name from torchvision, else timm.")
@click.option("--res", "k_train", type=str, default=default_of(TrainConfig, "k_train"),
              help="K_train: the train resolution (train DA's RandomResizedCrop output); or progressive resizing, "
                   "MIN:MAX@START-END, as FFCV's ImageNet example does it: e.g. 160:192@65-76 trains at 160 up to epoch "
                   "65, at 192 from epoch 76, on a linear ramp rounded to multiples of 32 between (epochs count from "
                   "0). A checkpoint records the K_train of the last epoch it trained.")
@click.option("--gpus", default=1, help=GPUS_HELP)
@run_options
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--epochs", default=default_of(Recipe, "epochs"), help="Paper: 120.")
@click.option("--batch-size", default=default_of(Recipe, "batch_size"), help="B, over all processes (paper: 512).")
@click.option("--lr", type=float, default=default_of(Recipe, "lr"), help="Learning rate [default: 0.1*B/256, the paper's rule].")
@click.option("--momentum", default=default_of(Recipe, "momentum"))
@click.option("--weight-decay", default=default_of(Recipe, "weight_decay"))
@click.option("--schedule", type=click.Choice(SCHEDULES), default=default_of(Recipe, "schedule"),
              help="After the warm-up: step (lr/10 every --step-epochs), cosine (to 0), or linear (to 0 at the "
                   "last epoch's end; with --warmup-epochs 2, FFCV's ImageNet example's triangular schedule).")
@click.option("--step-epochs", default=default_of(Recipe, "step_epochs"))
@click.option("--warmup-epochs", default=default_of(Recipe, "warmup_epochs"), help="Linear warm-up from 0.")
@click.option("--label-smoothing", default=default_of(Recipe, "label_smoothing"))
@click.option("--no-bn-weight-decay", is_flag=True, help="No weight decay on BatchNorm parameters and biases.")
@click.option("--repeats", default=default_of(Recipe, "repeats"), help="Repeated augmentation: copies of each image per epoch (paper: 3).")
@click.option("--aug", type=click.Choice(list(MODES)), default=default_of(TrainConfig, "aug"), help="Train DA (paper), test DA / DA2, or train-fixed (Appendix D: resize, then a fixed-size random crop).")
@click.option("--eval-res", default=default_of(TrainConfig, "eval_res"), show_default=False,
              help="Further test resolutions to evaluate after each epoch, e.g. 224,288 [default: none].")
@click.option("--init", type=click.Path(dir_okay=False), default=None,
              help="Start from these weights (fine-tuning, transfer): a checkpoint of ours, or plain --arch weights "
                   "(.pth/.pt/.safetensors, as evaluate --weights reads them). Where the classes differ, the "
                   "classifier is new. Their mean, std and interpolation are kept [default: random initialisation].")
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last.pt.")
@click.option("--resume-changed", is_flag=True, help="With --resume: continue although the data, --res, --aug, --seed "
              "or the recipe differ from OUT/last.pt's (refused otherwise); the checkpoint records both.")
@click.option("--tensorboard", is_flag=True, help="Also write each epoch's metrics as TensorBoard scalars in OUT/tensorboard.")
@click.option("--seed", default=default_of(TrainConfig, "seed"))
@user_errors
def train(gpus, compile_, eval_res, **opts):
    """Train a classifier at K_train with the paper's recipe (SGD, lr 0.1*B/256 divided by 10 every
    30 epochs, 120 epochs, repeated augmentation x3, train DA), channels-last and mixed precision.

    Training at a low resolution is cheaper; `fixres-fast adapt` then fixes the model for a higher
    test resolution. After each epoch the model is evaluated at the epoch's K_train (and --eval-res);
    metrics.jsonl records each epoch's K_train.
    """
    from .train import train as run

    opts["k_train"] = parse_res(opts["k_train"])  # a bad schedule is one line, before any process is started
    _on_processes(gpus)
    recipe = Recipe(**{f.name: opts.pop(f.name) for f in dataclasses.fields(Recipe)})
    if opts["init"]:
        from .pretrained import init_source

        opts["init"] = init_source(opts["init"], opts["arch"])
    result = run(TrainConfig(recipe=recipe, compile=compile_, eval_res=parse_resolutions(eval_res), **opts))
    if result.get("interrupted"):  # not finished: exit as a job killed by the signal would (SIGTERM 143, SIGINT 130)
        import signal

        raise SystemExit(128 + (result["signal"] or signal.SIGTERM))


@main.command(short_help="Run a recipe (pipelines/NAME.toml): convert, train, adapt, evaluate, analyze, report.")
@click.argument("recipe")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Repeatable: change one value of the recipe, e.g. train.recipe.epochs=2, adapt.k_test=[224,288], "
                   "train.arch=resnet18 (values read as TOML; else as text).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where every stage's folder and report.md go [default: the recipe's out, else runs/NAME].")
@click.option("--dry-run", is_flag=True, help="Print the plan (what is done, what would run and why); run nothing.")
@click.option("--gpus", default=1, show_default=True,
              help="Processes of each train and adapt stage on this machine, one per GPU (gloo CPU processes with "
                   "common.device=cpu), through torchrun; the other stages run on one. The train and adapt stages' "
                   "settings include it: another --gpus runs them again. Under torchrun (several nodes), leave it "
                   "out: the train and adapt stages run on torchrun's processes.")
@user_errors
def run(recipe, sets, out, dry_run, gpus):
    """Run RECIPE: a recipe file, or the name of one shipped in pipelines/ (e.g. demo; an unknown name lists them).

    Each stage (convert, train at each K_train, adapt at each K_test, evaluate, analyze, export, report) works in
    OUT/<stage>/ and is finished once its stage.json is written, last. A rerun skips finished stages whose settings are
    unchanged, redoes a changed stage and the stages after it that read its outputs, and continues an interrupted one
    (train from last.pt). OUT/report.md holds the results, each read from the stages' outputs.

    On several nodes, run it under torchrun on each node I, with OUT on a file system they all share:

    \b
        torchrun --nnodes M --nproc-per-node G --node-rank I --master-addr HOST --master-port PORT \\
          -m fixres_fast.cli run RECIPE

    Each train and adapt stage runs on all M x G processes (the same stage and hash as --gpus M x G on one machine);
    the other stages run on rank 0 while the rest wait; rank 0 alone prints.
    """
    from .run import run as go

    with _stage_interrupts():
        go(recipe, sets, out, dry_run, log=click.echo, gpus=gpus)


@contextlib.contextmanager
def _stage_interrupts():
    """A stage stopped by SIGTERM / SIGINT (its resumable state written): exit as a job killed by the signal would
    (SIGTERM 143, SIGINT 130)."""
    from .run import Interrupted

    try:
        yield
    except Interrupted as e:
        import signal

        raise SystemExit(128 + (e.signum or signal.SIGTERM)) from None


@main.command(short_help="Run the method end to end on small offline data sets (`run demo`).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where the sample data sets, records, checkpoints and results go [default: runs/demo].")
@click.option("--k-train", type=int, default=None, help="Train resolution of the FixRes network.")
@click.option("--k-test", type=int, default=None, help="Test resolution to adapt to: the composites' size.")
@click.option("--images", "n_train", type=int, default=None,
              help="Training images (half as many for validation).")
@click.option("--epochs", type=int, default=None, help="Training epochs of each network.")
@click.option("--adapt-epochs", type=int, default=None,
              help=f"Fine-tuning epochs of the adaptation [default: the paper's {FINETUNE_EPOCHS}].")
@click.option("--baseline/--no-baseline", default=None,
              help="Also train a network at --k-test, for comparison (and the closer pair at the midpoint).")
@click.option("--workers", type=int, default=None, help="Processes [default: all cores].")
@click.option("--seed", type=int, default=None, help="Seed of the sample data, the record order, training and adaptation.")
@click.option("--seeds", type=int, default=1, show_default=True,
              help="Run the demo for this many seeds (--seed, --seed + 1, ...), each in OUT/seed-S, and write "
                   "OUT/seeds.md: each of the paper's three effects per seed, its mean, std over seeds and mean / std.")
@user_errors
def demo(n_train, **opts):
    """Run the method end to end on small data sets that build offline (a few minutes on a CPU): the same as
    `fixres-fast run demo` (pipelines/demo.toml, which holds the defaults), each option a --set of it.

    1. Converters: an ImageNet-shaped sample of real photos plus the bad files real data sets hold is
    converted to .beton and RecordIO, and every record is read back through FFCV and DALI.

    2. FixRes: on composites of real objects pasted at varied sizes on real photos, a small CNN is
    trained at K_train, evaluated at several test resolutions, adapted at K_test (BN+fc fine-tuning,
    test DA) and evaluated again, beside a network trained at K_test and one trained at (K_train + K_test) / 2 and
    adapted at K_test too (the closer pair). Prints the tables, and writes OUT/report.md and OUT/accuracy.png (the
    paper's Fig. 5).

    With --seeds N: the demo for N seeds, each in OUT/seed-S (a rerun skips the finished stages of each), then
    OUT/seeds.md: the paper's three effects on each seed (1: the unadapted network is most accurate above K_train;
    2: adaptation at K_test raises accuracy at K_test; 3: trained at K_train and adapted beats trained at K_test, for
    less training time; for K_train and for the closer pair), with their mean, standard deviation over seeds and
    mean / std.
    """
    from .demo import demo as go

    if n_train is not None and n_train < 100:
        raise UserError(f"--images must be at least 100, got {n_train}")
    with _stage_interrupts():
        go(DemoConfig(n_train=n_train, **opts), log=click.echo)


@main.command(context_settings={"show_default": True}, short_help="Cost of training, inference and adaptation against resolution K.")
@click.option("--arch", default=default_of(ProfileConfig, "arch"),
              help="Model name from torchvision, else timm (randomly initialised).")
@click.option("--res", "resolutions", default=default_of(ProfileConfig, "resolutions"),
              help="Resolutions K to profile, comma-separated.")
@click.option("--batch-size", default=default_of(ProfileConfig, "batch_size"), help="Images per batch (Table 7 trains with 32).")
@click.option("--device", default=default_of(ProfileConfig, "device"), help="cuda, cpu, or auto (cuda when available).")
@click.option("--amp", default=default_of(ProfileConfig, "amp"), help="Mixed precision: bf16, fp16 or off.")
@click.option("--channels-last", is_flag=True, help="Model and inputs in channels-last memory.")
@click.option("--warmup", default=default_of(ProfileConfig, "warmup"), help="Untimed iterations per phase and resolution.")
@click.option("--repeats", default=default_of(ProfileConfig, "repeats"),
              help="Timed iterations per phase and resolution; the median is kept.")
@click.option("--out", default="runs/profile", type=click.Path(file_okay=False),
              help="Where profile.csv, profile.json and profile.png go.")
@user_errors
def profile(resolutions, out, **opts):
    """Cost against resolution K: train forward and backward, inference, and one adaptation step
    (last BN + classifier, the trunk frozen), per batch of random K x K inputs; peak memory on GPU.

    Prints the times beside the paper's Table 7 ratios and fits b in cost ~ K^b (about 2).
    """
    from .profile import report_lines, write_profile
    from .profile import profile as run

    result = run(ProfileConfig(resolutions=parse_resolutions(resolutions), **opts), log=click.echo)
    click.echo("\n".join(report_lines(result)))
    paths = write_profile(result, out)
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


@main.group(short_help="The paper's analyses (Sec. 3), from our own samplers.")
def analyze():
    """The paper's analyses, regenerated from our own samplers (Sec. 3)."""


@analyze.command("scale", short_help="Apparent object size at test vs train time (Eq. 1-5).")
@click.option("--k-train", default=default_of(ScaleConfig, "k_train"), show_default=True, help="K_train: the train resolution.")
@click.option("--k-test", default=default_of(ScaleConfig, "k_test"), show_default=True, help="K_test: the test crop.")
@click.option("--resize-ratio", default="256/224", show_default=True,
              help="K_test^image / K_test: test DA resizes the short side to K_test times this.")
@click.option("--scale", "area_range", nargs=2, type=float, default=None,
              help="sigma^2 range: RoC area as a fraction of the image [default: 0.08 1, the paper's].")
@click.option("--aspect", "aspect_range", nargs=2, type=float, default=None,
              help="Aspect (width/height) range of the 'as trained' draws [default: 0.75 1.3333].")
@click.option("--image-size", nargs=2, type=int, default=None,
              help="HEIGHT WIDTH of the image the Monte Carlo crops [default: 500 500].")
@click.option("--sampler", "samplers", multiple=True,
              help="geometry (FFCV; torch on GPU), torchvision (torch on CPU) or dali; repeatable [default: geometry].")
@click.option("--samples", default=default_of(ScaleConfig, "samples"), show_default=True,
              help="Monte Carlo draws per sampler and setting.")
@click.option("--seed", default=default_of(ScaleConfig, "seed"), show_default=True)
@user_errors
def scale(resize_ratio, **opts):
    """Apparent object size at test vs train time (Eq. 1-5): F, E[r_test/r_train], alpha and the
    K_test that equalises it, beside a Monte Carlo estimate from the loaders' RoC samplers."""
    from .analysis.scale import analyze_scale, parse_ratio, report_lines

    given = {k: v for k, v in opts.items() if v not in (None, ())}
    report = analyze_scale(ScaleConfig(resize_ratio=parse_ratio(resize_ratio), **given))
    click.echo("\n".join(report_lines(report)))


@analyze.command("roc", short_help="RoC area at train and test time on real image sizes (Fig. 2).")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="A conversion's OUT folder (or an ImageFolder tree).")
@click.option("--backend", default=default_of(RocConfig, "backend"), show_default=True,
              help="Whose train RoC sampler: ffcv, torch or dali.")
@click.option("--split", default=default_of(RocConfig, "split"), show_default=True)
@click.option("--k-train", default=default_of(RocConfig, "k_train"), show_default=True, help="K_train: the train resolution.")
@click.option("--k-test", default=default_of(RocConfig, "k_test"), show_default=True, help="K_test: the test crop.")
@click.option("--resize-ratio", default="256/224", show_default=True, help="K_test^image / K_test.")
@click.option("--scale", "area_range", nargs=2, type=float, default=None,
              help="sigma^2 range: RoC area as a fraction of the image [default: 0.08 1, the paper's].")
@click.option("--draws", default=default_of(RocConfig, "draws"), show_default=True, help="Train RoCs drawn per image.")
@click.option("--limit", default=default_of(RocConfig, "limit"), show_default=True,
              help="Read the sizes of at most this many images; 0: all.")
@click.option("--seed", default=default_of(RocConfig, "seed"), show_default=True)
@click.option("--out", default="runs/roc", show_default=True, type=click.Path(file_okay=False),
              help="Where roc.csv and roc.png go.")
@user_errors
def roc(resize_ratio, out, **opts):
    """The RoC's area as a fraction of the image at train and at test time (the paper's Fig. 2),
    from the split's real image sizes and the backend's RoC sampler."""
    from .analysis.roc import report_lines, roc_areas, write_roc
    from .analysis.scale import parse_ratio

    given = {k: v for k, v in opts.items() if v is not None}
    result = roc_areas(RocConfig(resize_ratio=parse_ratio(resize_ratio), **given))
    click.echo("\n".join(report_lines(result)))
    paths = write_roc(result, out)
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


@analyze.command("activations", context_settings={"show_default": True},
                  short_help="Pooled activations against test resolution (Fig. 3, 4).")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="Repeatable: e.g. a checkpoint and its adapted version, drawn on one plot (Fig. 4).")
@model_options
@click.option("--res", "k_test", default=default_of(ActivationsConfig, "k_test"),
              help="Test resolutions K_test, comma-separated (the paper's Fig. 3).")
@click.option("--split", default=default_of(ActivationsConfig, "split"), help="Which split's images: val or train.")
@click.option("--limit", default=default_of(ActivationsConfig, "limit"),
              help="Images per checkpoint and K_test (the first of the split).")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="A conversion's OUT folder [default: the one each checkpoint was trained or adapted on].")
@click.option("--out", default="runs/activations", type=click.Path(file_okay=False),
              help="Where activations.csv, activations.json and activations.png go.")
@click.option("--batch-size", default=default_of(ActivationsConfig, "batch_size"))
@run_options
@user_errors
def activations(checkpoints, k_test, out, **opts):
    """The distribution of the globally pooled activations (the classifier's input) at each test
    resolution (Fig. 3), and before and after adaptation (Fig. 4): CDF plot, fraction of zeros and
    fraction above 2. Resolutions the stored records are too small for are skipped with a warning."""
    from .analysis.activations import pooled_activations, report_lines, write_activations

    sources = model_sources(checkpoints, opts)
    cfg = ActivationsConfig(checkpoints=sources, k_test=parse_resolutions(k_test), **opts)
    result = pooled_activations(cfg, log=click.echo)
    click.echo("\n".join(report_lines(result)))
    paths = write_activations(result, out)
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")



def _test_res(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"expected a resolution in pixels such as 224, or 'auto', got {text!r}") from None


@main.command(context_settings={"show_default": True}, short_help="Adapt a checkpoint to the test resolution K_test (Sec. 4.2).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="A checkpoint from `fixres-fast train` (or pass --weights and --arch).")
@model_options
@click.option("--test-res", "k_test", required=True, help="K_test in pixels, or 'auto': try multiples of 32 from K_train to "
              "2 K_train on a held-out slice of the training set, keep the best (Eq. 5's prediction is printed beside it).")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="A conversion's OUT folder [default: the one the checkpoint was trained on].")
@click.option("--tune", type=click.Choice(TUNE), default=default_of(AdaptConfig, "tune"),
              help="What learns: the classifier; the last BN before pooling and the classifier (paper); only that "
                   "BN's running statistics (no labels); or the layers at the final feature-map size and the classifier.")
@click.option("--bn-scope", type=click.Choice(BN_SCOPES), default=default_of(AdaptConfig, "bn_scope"), help="--tune bn-stats: the last BN, or every BN.")
@click.option("--aug", type=click.Choice(AUGS), default=default_of(AdaptConfig, "aug"),
              help="Fine-tuning DA: test DA (paper; the frozen trunk then runs once), test DA2, train DA, or train-fixed.")
@click.option("--method", type=click.Choice(METHODS), default=default_of(AdaptConfig, "method"),
              help="frechet: the supplement's equalisation of the pooled activations (Fréchet fit, xi = 0.3).")
@click.option("--epochs", type=int, default=default_of(AdaptConfig, "epochs"),
              help=f"Fine-tuning epochs [default: the paper's {FINETUNE_EPOCHS} where the frozen trunk is cached "
                   f"(test DA: each epoch then costs only the tuned layers), else {ADAPT_EPOCHS_STREAMED}].")
@click.option("--batch-size", default=default_of(AdaptConfig, "batch_size"), help="B (paper: 512).")
@click.option("--lr", type=float, default=default_of(AdaptConfig, "lr"),
              help="Learning rate [default: 0.008*B/512, the paper's]; x0.1 at half the epochs.")
@click.option("--out", type=click.Path(dir_okay=False), default=default_of(AdaptConfig, "out"),
              help="Adapted checkpoint [default: CHECKPOINT-adaptedK.pt].")
@click.option("--gpus", default=1, help=GPUS_HELP + " Each process runs the frozen trunk over its share of the images; "
              "--batch-size is over all of them.")
@run_options
@click.option("--seed", default=default_of(AdaptConfig, "seed"))
@click.option("--cache/--no-cache", default=default_of(AdaptConfig, "cache"),
              help="With test DA, compute the frozen trunk once and cache its output.")
@click.option("--cache-mib", default=default_of(AdaptConfig, "cache_mib"),
              help="Largest cache; above it, stream through the trunk every epoch.")
@click.option("--auto-images", default=default_of(AdaptConfig, "auto_images"),
              help="--test-res auto: training images tried per candidate (fewer if the split holds fewer).")
@click.option("--auto-holdout", default=default_of(AdaptConfig, "auto_holdout"), help="--test-res auto: the fraction of them held out to measure top-1 on.")
@user_errors
def adapt(k_test, gpus, **opts):
    """Adapt a checkpoint to the test resolution K_test (Sec. 4.2): fine-tune the last BatchNorm before
    global pooling and the classifier at K_test on the training set, the trunk frozen.

    The adapted checkpoint records K_test and its pre-processing, so `fixres-fast evaluate` uses them.

    With --gpus N (or under torchrun) every process reads its shard of the images: with test DA the frozen trunk's
    pass is split over them and every process fits the tuned layers on the whole cache (the weights of one process);
    a streamed fine-tuning (test DA2, train DA, --no-cache) is data-parallel, B / N images a process. Rank 0 writes
    the checkpoint.
    """
    from .adapt import adapt as run
    from .adapt import check

    given = opts.pop("checkpoint")
    sources = model_sources([given] if given else [], opts)
    if len(sources) != 1:
        raise UserError("adapt takes one model: --checkpoint FILE, or --weights FILE --arch NAME")
    cfg = AdaptConfig(checkpoint=sources[0], k_test=_test_res(k_test), **opts)
    check(cfg, max(gpus, 1))  # one line, before any process is started
    _on_processes(gpus)
    run(cfg, log=click.echo)


@main.command("export", context_settings={"show_default": True},
              short_help="Write a checkpoint as a timm / Hugging Face folder (model.safetensors + config.json).")
@click.argument("paths", metavar="[CKPT] OUT_DIR", nargs=-1, type=click.Path())
@weights_options
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in OUT_DIR.")
@user_errors
def export_cmd(paths, overwrite, **opts):
    """Write CKPT's model (an adapted one: at its K_test) to OUT_DIR in a form other tools load.

    timm models: model.safetensors and config.json in timm's Hugging Face layout, whose pretrained_cfg gives K_test
    as input_size and test_input_size, with crop_pct, mean, std, interpolation and the class names, so that
    timm.create_model("local-dir:OUT_DIR", pretrained=True) builds the model offline and
    timm.data.resolve_data_config(model=model) its preprocessing. Every model: model.pth (a plain state_dict) and
    fixres.json (K_train, K_test, the test transform as torchvision's resize_size / crop_size / interpolation /
    mean / std, the adaptation). Instead of CKPT, --weights FILE --arch NAME exports plain weights."""
    from .export import ExportConfig, export

    if len(paths) not in (1, 2):
        raise click.UsageError("expected CKPT OUT_DIR, or --weights FILE --arch NAME OUT_DIR")
    *checkpoint, out = paths
    sources = model_sources(checkpoint, opts)
    if len(sources) != 1:
        raise UserError("export takes one model: CKPT, or --weights FILE --arch NAME")
    export(ExportConfig(checkpoint=sources[0], out=out, overwrite=overwrite), log=click.echo)


@main.command("evaluate", context_settings={"show_default": True},
              short_help="Top-1 and top-5 at each test resolution (test DA).")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="Repeatable: e.g. the base checkpoint and the adapted one, drawn on one plot (Fig. 5).")
@model_options
@click.option("--res", "k_test", default=default_of(EvalConfig, "k_test"), show_default=False, help="Test resolutions, e.g. 128,160,224,288,384 [default: each checkpoint's own].")
@click.option("--ensemble", default=default_of(EvalConfig, "ensemble"), show_default=False,
              help="Average the softmax over these resolutions, e.g. 384,352 [default: none].")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="A conversion's OUT folder [default: the one each checkpoint was trained or adapted on].")
@click.option("--out", default="runs/evaluate", type=click.Path(file_okay=False),
              help="Where evaluate.csv, evaluate.json and accuracy.png go.")
@click.option("--batch-size", default=default_of(EvalConfig, "batch_size"))
@run_options
@user_errors
def evaluate_cmd(checkpoints, k_test, ensemble, out, **opts):
    """Top-1 and top-5 on the validation split at each test resolution (test DA), with the paper's
    10-fold leave-one-out standard deviation of top-1; --ensemble averages the softmax over resolutions."""
    from .evaluate import evaluate, write_results

    cfg = EvalConfig(checkpoints=model_sources(checkpoints, opts), k_test=parse_resolutions(k_test), ensemble=parse_resolutions(ensemble), **opts)
    paths = write_results(evaluate(cfg, log=click.echo), cfg, out)
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
