"""OUT/report.md of a recipe's run: the paper's Table 5 shape (rows K_train, columns K_test, before and after
adaptation, top-1 with its leave-one-out std), every network at every K_test and ensemble, Fig. 5 (OUT/accuracy.png),
the activation statistics (Fig. 3, 4), the time of every stage and the paper's cost comparison. Every number is
read from the stages' outputs (stage.json, evaluate.json, activations.json), none is typed."""
from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import replacing, write_text
from ..spec import DA_NAMES


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _cell(row: dict | None) -> str:
    return f"{row['top1']:.2f} ± {row['top1_std']:.2f}" if row else "-"


def _table(header: list, rows: list) -> list[str]:
    return ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


class Results:
    """What the stages wrote: each stage's stage.json, and the evaluate rows of each network."""

    def __init__(self, out: Path, stages, networks):
        self.out, self.networks = out, networks
        self.stages = {s.name: _read(out / s.name / "stage.json") for s in stages if s.name != "report"}
        self.rows = {}  # network -> evaluate rows
        self.activations = []
        for name in networks:
            doc = _read(out / "evaluate" / name / "evaluate.json")
            self.rows[name] = doc["rows"] if doc else []
            acts = _read(out / "analyze" / name / "activations.json")
            self.activations += [(name, r) for r in (acts["rows"] if acts else [])]

    def seconds(self, stage: str) -> float | None:
        doc = self.stages.get(stage)
        return doc["seconds"] if doc else None

    def adapt_stage(self, row: dict) -> str | None:
        """The adapt stage that wrote the row's checkpoint (OUT/adapt/N-K[-NAME]/adapted.pt), None for the others."""
        stage = "/".join(Path(row["checkpoint"]).parts[-3:-1])
        return stage if stage.startswith("adapt/") and self.stages.get(stage) else None

    def variant(self, row: dict) -> str | None:
        """The [adapt.NAME] variant whose checkpoint the row measures; None: not adapted, or [adapt] has none."""
        stage = self.adapt_stage(row)
        return self.stages[stage]["config"].get("variant") if stage else None

    def row(self, net: str, res, adapted_at=None, variant=None) -> dict | None:
        return next((r for r in self.rows.get(net, []) if r["res"] == str(res) and r["adapted_at"] == adapted_at
                     and self.variant(r) == variant), None)

    def adapted_at(self, net: str, variant=None) -> list[int]:
        return sorted({r["adapted_at"] for r in self.rows.get(net, [])
                       if r["adapted_at"] is not None and self.variant(r) == variant})

    def variants(self, net: str) -> dict[str, tuple[str, str]]:
        """{[adapt.NAME] variant: (tune, aug) as its adapt stages ran it} of network ``net``, in stage order."""
        found = {}
        for name, doc in self.stages.items():
            config = doc["config"] if doc and name.startswith("adapt/") else {}
            if config.get("variant") and config.get("network") == net:
                found.setdefault(config["variant"], (doc["result"]["tune"], doc["result"]["aug"]))
        return found

    def grid(self) -> list[int]:
        return sorted({int(r["res"]) for rows in self.rows.values() for r in rows if r["res"].isdigit()})


def _schedule(res: Results, net: str) -> str | None:
    """The resolution schedule (MIN:MAX@START-END) network ``net`` was trained with, as its train stage recorded it."""
    doc = res.stages.get(f"train/{net}") or {}
    return (doc.get("result") or {}).get("res")


def _label(res: Results, net: str) -> str:
    rows = res.rows.get(net) or [{}]
    if net == "pretrained":
        return f"pretrained (K_train {rows[0].get('train_res', '?')})"
    schedule = _schedule(res, net)
    return f"{schedule} (last K_train {rows[0].get('train_res', '?')})" if schedule else net


def table5(res: Results) -> list[str]:
    """Rows K_train, columns K_test: before adaptation (each network at each K_test), and after (the network
    adapted at K_test, tested at K_test), as the paper's Table 5 (left, right)."""
    nets = [n for n in res.networks if res.rows.get(n)]
    grid, after = res.grid(), sorted({k for n in nets for k in res.adapted_at(n)})
    lines = ["## Top-1 (%) against the test resolution (Table 5's shape)", "",
             "Top-1 on the validation split ± the leave-one-out standard deviation (Sec. 5: 10 folds). Rows: the "
             "train resolution K_train; columns: the test resolution K_test.", "",
             "**Before adaptation** (the network as trained, test DA at K_test):", ""]
    lines += _table(["K_train \\ K_test", *grid], [[_label(res, n), *(_cell(res.row(n, k)) for k in grid)] for n in nets])
    if after:
        lines += ["", "**After adaptation at K_test** (last BN + classifier fine-tuned at K_test, tested at K_test):", ""]
        lines += _table(["K_train \\ K_test", *after],
                        [[_label(res, n), *(_cell(res.row(n, k, k)) for k in after)] for n in nets if res.adapted_at(n)])
    return lines


#: How Table 6 names what a variant fine-tunes (AdaptConfig.tune) and its data augmentation (AdaptConfig.aug).
TUNED = {"fc": "classifier", "bn+fc": "batch-norm + classifier"}


def table6(res: Results) -> list[str]:
    """Rows: each network without fine-tuning, then with each [adapt.NAME] variant (what it tunes, with which DA);
    columns: K_test, each cell the variant adapted at K_test and tested there, as the paper's Table 6."""
    nets = [n for n in res.networks if res.variants(n)]
    if not nets:
        return []
    ks = sorted({k for n in nets for v in res.variants(n) for k in res.adapted_at(n, v)})
    body = []
    for net in nets:
        body.append([_label(res, net), "no fine-tuning", "-", "n/a", *(_cell(res.row(net, k)) for k in ks)])
        for v, (tune, aug) in res.variants(net).items():
            body.append(["", v, TUNED.get(tune, tune), DA_NAMES.get(aug, aug), *(_cell(res.row(net, k, k, v)) for k in ks)])
    return ["## Ablation: what is fine-tuned, with which data augmentation (Table 6's shape)", "",
            "Each variant fine-tuned at K_test and tested at K_test (top-1 ± leave-one-out std); \"no fine-tuning\" "
            "is the network as trained, tested at K_test.", "",
            *_table(["network", "variant", "fine-tuned", "data aug.", *ks], body)]


def table8(res: Results) -> list[str]:
    """Fine-tuning batch-norm + classifier with test DA against test DA2, at each K_test both were adapted at."""
    body = []
    for net in res.networks:
        by_aug = {}
        for v, (tune, aug) in res.variants(net).items():
            if tune == "bn+fc" and aug in ("test", "test2"):
                by_aug.setdefault(aug, v)
        if len(by_aug) < 2:
            continue
        da, da2 = by_aug["test"], by_aug["test2"]
        for k in sorted(set(res.adapted_at(net, da)) & set(res.adapted_at(net, da2))):
            a, b = res.row(net, k, k, da), res.row(net, k, k, da2)
            body.append([_label(res, net), a["train_res"], k, _cell(a), _cell(b), f"{b['top1'] - a['top1']:+.2f}"])
    if not body:
        return []
    return ["## Fine-tuning with test DA against test DA2 (Table 8's shape)", "",
            "Batch-norm + classifier fine-tuned at K_test and tested there; test DA2 adds a random horizontal shift "
            "of the centre crop, flips and colour jitter to test DA.", "",
            *_table(["network", "train", "test", "top-1 test DA (%)", "top-1 test DA2 (%)", "DA2 - DA"], body)]


def table9(res: Results) -> list[str]:
    """Rows: K_test; columns: each network of each [train.NAME] variant, as trained (Table 9's shape, with the
    other variants' networks beside it); the last row: the K_test where each is most accurate."""
    nets = [n for n, net in res.networks.items() if getattr(net, "variant", None) and res.rows.get(n)]
    if not nets:
        return []
    grid = res.grid()
    body = [[k, *(_cell(res.row(n, k)) for n in nets)] for k in grid]
    best = [max(grid, key=lambda k: (res.row(n, k) or {"top1": -1})["top1"]) for n in nets]
    augs = {}
    for n in nets:
        doc = res.stages.get(f"train/{n}")
        augs.setdefault(res.networks[n].variant, doc["result"]["job"]["aug"] if doc else "?")
    return ["## Train DA against the test resolution, by training variant (Table 9's shape)", "",
            "Each network as trained (no fine-tuning), tested at K_test (top-1 ± leave-one-out std). Columns: "
            "K_train (training variant); its train DA: " + ", ".join(f"{v}: `{a}`" for v, a in augs.items()) +
            " (`train`: RandomResizedCrop; `train-fixed`: resize, then a fixed-size random crop, Appendix D).", "",
            *_table(["K_test \\ K_train", *(f"{res.networks[n].k_train} ({res.networks[n].variant})" for n in nets)],
                    body + [["best K_test", *best]])]


def every_network(res: Results) -> list[str]:
    """Each checkpoint at each K_test of the grid, and its ensemble."""
    lines, body = ["", "## Every network at every K_test", ""], []
    names = sorted({r["res"] for rows in res.rows.values() for r in rows}, key=lambda s: (not s.isdigit(), len(s), s))
    for net, rows in res.rows.items():
        for ckpt in dict.fromkeys(r["checkpoint"] for r in rows):
            by_res = {r["res"]: r for r in rows if r["checkpoint"] == ckpt}
            first = next(iter(by_res.values()))
            variant = res.variant(first)
            adapted = f"{first['adapted_at']} ({variant})" if variant else first["adapted_at"] or "-"
            body.append([_label(res, net), adapted, *(_cell(by_res.get(k)) for k in names)])
    return lines + _table(["K_train", "adapted at", *names], body) + [
        "", "Columns with a '+' average the softmax over those resolutions (Sec. 5.1, \"Multiple resolutions\"). "
        "Fig. 5: [accuracy.png](accuracy.png) (each network: " + ", ".join(
            f"[evaluate/{n}/accuracy.png](evaluate/{n}/accuracy.png)" for n in res.rows if res.rows[n]) + ")."]


def activation_lines(res: Results) -> list[str]:
    if not res.activations:
        return []
    body = [[_label(res, net), r["adapted_at"] or "-", r["res"], r["n_images"], f"{100 * r['frac_zero']:.2f}",
             f"{100 * r['frac_above_2']:.2f}", f"{r['mean']:.3f}", f"{r['median']:.3f}", f"{r['p99']:.3f}"]
            for net, r in res.activations]
    pngs = ", ".join(f"[analyze/{n}/activations.png](analyze/{n}/activations.png)" for n in dict.fromkeys(
        n for n, _ in res.activations))
    return ["", "## Pooled activations (Fig. 3, 4)", "",
            "The classifier's input after global pooling: the fraction of zeros and of values above 2 (Sec. 3.2).", "",
            *_table(["K_train", "adapted at", "K_test", "images", "zeros %", "> 2 %", "mean", "median", "p99"], body),
            "", f"CDFs: {pngs}."]


def cost_pairs(res: Results) -> list[tuple[str, int]]:
    """(network trained at K1, K2) where K1's network was adapted at K2 and a network was trained at K2 too."""
    return [(n, k) for n in res.networks if n.isdigit() for k in res.adapted_at(n) if str(k) in res.networks
            and k != int(n)]


def summary_lines(res: Results) -> list[str]:
    """What a run prints at its end: the demo's table for each adapted network (and the cost comparison where the
    recipe trained at K_test), then the ablation tables (Tables 6, 8, 9) where the recipe has variants."""
    return pair_lines(res) + [line for part in (table6(res), table8(res), table9(res)) if part for line in ["", *part]]


def pair_lines(res: Results) -> list[str]:
    """The demo's table for each network adapted by a plain [adapt] (not its variants)."""
    lines = []
    for net in res.networks:
        k1 = net if net.isdigit() else (res.rows[net][0]["train_res"] if res.rows.get(net) else None)
        for k2 in res.adapted_at(net):
            name = f"pretrained ({k1})" if net == "pretrained" else f"train {_schedule(res, net) or net}"
            lines += ["", f"== FixRes: {name}, adapted at {k2} (val top-1)", *_aligned(_pair(res, net, name, k1, k2))]
    return lines


def _pair(res: Results, net: str, name: str, k1, k2: int) -> list[tuple[str, float, str]]:
    """(what, top-1, note) lines for the network ``net`` (trained at ``k1``) adapted at ``k2``."""
    base, wrong, fixed = res.row(net, k1), res.row(net, k2), res.row(net, k2, k2)
    stage = next((s for s, doc in res.stages.items() if s.startswith(f"adapt/{net}-") and doc
                  and doc["result"].get("k_test") == k2), None)
    t1, ta = res.seconds(f"train/{net}"), res.seconds(stage) if stage else None
    out = []
    if base:
        out.append((f"{name}, test {k1}", base["top1"], f"training {t1:.0f} s" if t1 else ""))
    if wrong:
        out.append((f"{name}, test {k2}", wrong["top1"], "the train-test discrepancy"))
    if fixed:
        share = f" = {100 * ta / t1:.1f}% of training" if ta and t1 else ""
        out.append((f"{name}, adapted at {k2}, test {k2}", fixed["top1"], f"adaptation {ta:.1f} s{share}" if ta else ""))
    other, t2 = res.row(str(k2), k2), res.seconds(f"train/{k2}")
    if net != "pretrained" and other and net != str(k2):
        run = f"K_train={net}" if net.isdigit() else name
        out.append((f"train {k2}, test {k2}", other["top1"],
                    f"training {t2:.0f} s, {t2 / t1:.1f}x the {run} run" if t1 and t2 else ""))
        if fixed and t1 and t2 and ta:
            resumed = [s for s in (f"train/{net}", stage, f"train/{k2}") if res.stages[s].get("resumed")]
            note = f" (resumed, so timed over their last attempt only: {', '.join(resumed)})" if resumed else ""
            out.append((f"{name} + adapt at {k2}: {100 * (t1 + ta) / t2:.0f}% of the time of train {k2}, "
                        f"{fixed['top1'] - other['top1']:+.2f} points{note}", None, ""))
    return out


def _aligned(items: list[tuple[str, float, str]]) -> list[str]:
    width = max((len(w) for w, top1, _ in items if top1 is not None), default=0) + 1
    return [f"  {what}" if top1 is None else f"  {what + ':':<{width}} {top1:6.2f}%" + (f"   ({note})" if note else "")
            for what, top1, note in items]


def stage_lines(res: Results) -> list[str]:
    body = [[name, f"{doc['seconds']:.1f}", "resumed: the last attempt's time only" if doc.get("resumed") else ""]
            for name, doc in res.stages.items() if doc]
    return ["", "## Time of every stage", "", *_table(["stage", "seconds", ""], body)]


def conversions(res: Results) -> list[str]:
    body = []
    for name, doc in res.stages.items():
        if name.startswith("convert/") and doc:
            r = doc["result"]
            checked = ", ".join(f"{s}: " + " ".join(k for k, v in v_.items() if v == "ok")
                                for s, v_ in r.get("verified", {}).items())
            body.append([name, ", ".join(f"{s} {n}" for s, n in r["records"].items()),
                         ", ".join(f"{s} {n}" for s, n in r["skipped"].items()), checked or "-"])
    return ["", "## Data sets", "", *_table(["stage", "records", "skipped", "verified (read back)"], body)] if body else []


def write_report(out: Path, stages, networks) -> Path:
    """Write OUT/report.md and OUT/accuracy.png (Fig. 5, every network); returns the report's path."""
    from ..evaluate import plot_accuracy

    res = Results(out, stages, networks)
    rows = [r for rs in res.rows.values() for r in rs]
    lines = [f"# {out.name}: report", "", "Written by `fixres-fast run` from the stages' outputs under this folder."]
    lines += conversions(res) + [""] + (table5(res) if rows else [])
    for part in (table6(res), table8(res), table9(res)):
        lines += ["", *part] if part else []
    lines += every_network(res) if rows else []
    summary = pair_lines(res)
    if summary:
        lines += ["", "## Summary and cost", "", "```", *summary[1:], "```"]
    lines += activation_lines(res) + stage_lines(res)
    if rows:
        with replacing(out / "accuracy.png") as f:
            plot_accuracy(rows, f)
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
