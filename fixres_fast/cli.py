"""The ``fixres-fast`` command: a thin layer that parses options and calls library functions."""
from __future__ import annotations

import functools
import os

import click

from .errors import UserError
from .spec import RESIZE_RATIO


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


@main.group()
def convert():
    """Convert a data set into FFCV .beton files and DALI-readable RecordIO shards.

    Every image is stored as RGB JPEG with its long side at most --max-side, EXIF rotation applied.
    Files that already qualify are stored byte for byte; others (PNG data, CMYK, greyscale,
    rotated, too large) are re-encoded once. Unreadable files are skipped and listed, with
    their reason, in OUT/manifest.json. Class indices are written to OUT/classes.json.
    """


def convert_options(fn):
    options = [
        click.argument("src", type=click.Path(file_okay=False)),
        click.argument("out", type=click.Path(file_okay=False)),
        click.option("--format", "fmt", type=click.Choice(["beton", "recordio", "all"]), default="all",
                     show_default=True, help="Records to write: FFCV .beton, MXNet RecordIO for DALI, or both."),
        click.option("--max-side", default=512, show_default=True,
                     help="Longest side, in pixels, of stored images. Test DA needs a short side of "
                          f"K_test*{RESIZE_RATIO:.4f} (256/224) to avoid upsampling."),
        click.option("--jpeg-quality", default=90, show_default=True, help="Quality of images that must be re-encoded."),
        click.option("--write-mode", type=click.Choice(["jpg", "raw"]), default="jpg", show_default=True,
                     help="How the .beton stores pixels: JPEG, or raw RGB (faster to load, far larger)."),
        click.option("--shards", default=1, show_default=True, help="RecordIO shards per split."),
        click.option("--workers", default=0, help="Encoding processes [default: all cores]."),
        click.option("--test-res", default=288, show_default=True,
                     help="Largest test resolution K_test you intend; warns when --max-side is too small for it."),
        click.option("--seed", default=0, show_default=True, help="Seed of the stored order of train records."),
        click.option("--overwrite", is_flag=True, help="Replace a finished conversion in OUT made with other options."),
        click.option("--verify", "then_verify", is_flag=True, help="Re-read every record through FFCV and DALI afterwards."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_convert(layout, src, out, fmt, then_verify, year=None, **opts):
    from .convert import FORMATS, ConvertConfig
    from .convert import convert as run
    from .convert import verify as check

    formats = FORMATS if fmt == "all" else (fmt,)
    run(ConvertConfig(layout=layout, src=src, out=out, formats=formats, year=year, **opts))
    if then_verify:
        check(out, workers=opts["workers"])


@convert.command()
@convert_options
@user_errors
def imagenet(src, out, **opts):
    """ImageNet (ILSVRC-2012): SRC/train/nXXXXXXXX/*.JPEG and SRC/val/.

    val/ may hold class folders, or flat files labelled by SRC/LOC_val_solution.csv or the devkit's
    ILSVRC2012_validation_ground_truth.txt + meta.mat. Class index = sorted wnid order.
    """
    _run_convert("imagenet", src, out, **opts)


@convert.command()
@convert_options
@click.option("--year", type=click.Choice(["2017", "2018", "2019", "2021"]), required=True,
              help="Which release: picks the annotation files (train2019.json, val2019.json, ...).")
@user_errors
def inat(src, out, year, **opts):
    """iNaturalist: COCO-style train*/val* JSON annotations in SRC; file_name relative to SRC."""
    _run_convert("inat", src, out, year=int(year), **opts)


@convert.command()
@convert_options
@user_errors
def herbarium(src, out, **opts):
    """Herbarium 2019 (FGVC6): SRC/train/metadata.json and SRC/validation/metadata.json."""
    _run_convert("herbarium", src, out, **opts)


@convert.command()
@convert_options
@user_errors
def folder(src, out, **opts):
    """Any ImageFolder tree: SRC/<split>/<class>/<image> (splits: train, val, validation, test),
    or SRC/<class>/<image> as a single train split."""
    _run_convert("folder", src, out, **opts)


@convert.command("verify")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--workers", default=0, help="Decoding threads [default: all cores].")
@user_errors
def verify_cmd(out, workers):
    """Re-read every record in OUT through FFCV's Loader and DALI's readers.mxnet and check
    checksums, counts and labels against OUT/manifest.json."""
    from .convert import verify

    verify(out, workers=workers or os.cpu_count())


@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the sample data set and its records go.")
@click.option("--workers", default=0, help="Processes [default: all cores].")
@user_errors
def demo(out, workers):
    """Run the method end to end on a small data set of real photos that builds offline.

    Today: build an ImageNet-shaped sample (real photos plus the bad files real data sets hold),
    convert it to .beton and RecordIO, and read every record back through FFCV and DALI.
    """
    from .demo import demo as run

    run(out, workers=workers)


if __name__ == "__main__":
    main()
