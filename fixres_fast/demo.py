"""``fixres-fast demo``: ``fixres-fast run demo`` (pipelines/demo.toml: the converters on real photos and bad files,
then FixRes on composites of real objects on real photos), with the demo's options turned into ``--set``s.

The recipe holds every default; an option left out keeps the recipe's value."""
from __future__ import annotations

from dataclasses import dataclass

RECIPE = "demo"


@dataclass(frozen=True)
class DemoConfig:
    """The demo's options; None: the recipe's value."""

    out: str | None = None
    k_train: int | None = None  # train resolution of the FixRes network
    k_test: int | None = None  # test resolution adapted to: the composites' size
    n_train: int | None = None  # training composites (half as many for validation)
    epochs: int | None = None
    adapt_epochs: int | None = None
    baseline: bool | None = None  # also train at K_test, the cost FixRes avoids
    workers: int | None = None
    seed: int | None = None

    def sets(self) -> list[str]:
        """The ``--set``s of ``run demo`` that these options stand for."""
        sets = []
        if (self.k_train, self.k_test, self.baseline) != (None, None, None):
            from .run import load

            doc = load(RECIPE)[1]
            a, b = self.k_train or doc["adapt"]["k_train"][0], self.k_test or doc["adapt"]["k_test"][0]
            baseline = len(doc["train"]["k_train"]) > 1 if self.baseline is None else self.baseline
            ks = sorted({a, (a + b) // 2, b})
            sets += [f"train.k_train={[a, b] if baseline else [a]}", f"adapt.k_train=[{a}]", f"adapt.k_test=[{b}]",
                     f"convert.composites.size={b}", f"evaluate.k_test={ks}", f"analyze.k_train=[{a}]",
                     f"analyze.k_test={[a // 2, *ks]}"]
        if self.n_train is not None:
            sets += [f"convert.composites.train_images={self.n_train}",
                     f"convert.composites.val_images={self.n_train // 2}"]
        for key, value in (("train.recipe.epochs", self.epochs), ("adapt.epochs", self.adapt_epochs),
                           ("common.workers", self.workers), ("common.seed", self.seed)):
            if value is not None:
                sets.append(f"{key}={value}")
        return sets


def demo(cfg: DemoConfig = DemoConfig(), log=print) -> dict:
    """Run the demo recipe; returns :func:`fixres_fast.run.run`'s summary."""
    from .run import run

    return run(RECIPE, cfg.sets(), cfg.out, log=log)
