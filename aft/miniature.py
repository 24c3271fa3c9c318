"""The paper's tables in miniature: every row of a table shrunk by that table's one rule.

A miniature row is ``configs/experiment/mini/<table>/<experiment>.yaml``: the paper row
``configs/experiment/<experiment>.yaml`` plus the overrides its table's rule computes from it, and
nothing else (``tests/experiments/test_miniature.py`` composes both and checks it). A rule keeps
what its tables compare (mixer, window size, factorized or dense bias, sequence length, kernel
size, heads, reparameterization, the query term, the sparsity and Gumbel terms, global
connectivity) and the recipe (optimizer, learning rate, schedule shape, regularizers,
augmentation; the ImageNet family trains unaugmented, below), and shrinks depth, width, data,
batch and training length; where the smaller input would make a compared value meaningless it
scales the value with the input:

* ``enwik8`` (Tables 4-6): Python's own help texts (``data/embedded_text.py``, pinned by md5)
  for Enwik8, at the row's T (1024, 2048, 4096: windows up to 1024 stay meaningful); L / 6,
  d / 4 (and d' / 4), batch / 16, epochs / 25, heads kept.
* ``cifar10`` (Tables 2, 3): 16 x 16 tiles of real photographs (``data/photo_tiles.py``) for the
  32 x 32 CIFAR10 images, so T = 3 * 16^2 = 768 = 3072 / 4: the AFT-local window and every
  position geometry of the baselines (Sparse Transformer stride, Image Transformer blocks) scale
  with the image side or T; L / 6, d / 4 (and d' / 4), batch / 16, epochs / 100, heads kept.
* ``imagenet`` (Tables 7, 9-12, §5.3, §8): scikit-learn's 8 x 8 digits (``data/digits.py``) with the
  same DeiT augmentation, for ImageNet at 224 with 16-pixel patches: patches of 1 pixel give an
  8 x 8 grid for the 14 x 14 one, so a kernel's half-width scales by (8 - 1) / (14 - 1)
  (3, 7, 11, 15, 25, 27 -> 3, 5, 7, 9, 13, 15; 27 still spans the whole grid from any
  position); L / 6, d / 4 (d' / 4), batch / 16, epochs / 10; AFT-conv heads scale with d (their
  head width d / h is kept: 384 heads = d stay one channel each), attention heads (DeiT, Lambda)
  keep their count. ResNet50 has no L or d: it runs whole on the digits. The one change to the
  recipe: no augmentation (crop, flip, RandAugment, erasing, Mixup, CutMix, repeats), which holds
  the 8 x 8 digits near chance for the few hundred updates of a miniature.

Table 8 has no miniature: its "ft" row starts from DeiT base 384's pretrained weights, which a
miniature cannot download.

    python -m aft.miniature   # (re)write configs/experiment/mini/ from the rules
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aft.experiments import build_on_meta, compose_experiment
from aft.resources import config_dir

Overrides = dict[str, tuple[Any, str]]  # dotted config key -> (value, why)

TEXT_MD5 = "a567cbdee0bc4bbed3e45dd499ee1bf1"  # data/embedded_text.py's corpus under Python 3.11.7
ENWIK8_TRAIN_BYTES = 90_000_000  # §5.2
CIFAR10_TRAIN_IMAGES = 50_000  # §5.1
TILE_SIDE, CIFAR10_SIDE = 16, 32
GRID, IMAGENET_GRID = 8, 14  # patch grid sides: 8 x 8 digits, 1-pixel patches; 224 / 16
DIGITS_CLASSES = 10
IMAGENET_TRAIN_IMAGES = 1_281_167  # §5.3: ImageNet-1K train
RA_ROUND = 256  # timm's RepeatAugSampler selected_round: ImageNet's epoch is a multiple of it
DIGITS_REPEATS = 1  # no repeated augmentation: the miniature trains unaugmented
UNAUGMENTED = "DeiT's augmentation holds the digits near chance (12 % top-1) in a miniature (docs/miniature.md)"
EVALUATIONS = 10  # periodic evaluations per miniature run


@dataclass(frozen=True)
class Rule:
    """How one family of tables shrinks: its data config and the overrides computed from a row."""

    name: str
    data: str  # configs/data/<data>.yaml
    depth: int  # L divisor
    width: int  # d divisor
    batch: int  # batch divisor
    epochs: int  # epochs divisor
    extra: Callable[[DictConfig, Rule], Overrides]  # the family's own overrides
    train_items: Callable[[DictConfig], tuple[int, int]]  # (paper, miniature) training items per epoch
    data_changes: tuple[str, ...] = ()  # keys the miniature's data config sets otherwise than the paper's, by design

    def overrides(self, cfg: DictConfig) -> Overrides:
        """Every override of the paper row ``cfg`` (composed), the data group aside."""
        batch, epochs = cfg.trainer.batch_size, cfg.trainer.epochs
        mini_batch, mini_epochs = batch // self.batch, max(1, epochs // self.epochs)
        paper_items, mini_items = self.train_items(cfg)
        paper_updates, mini_updates = epochs * (paper_items // batch), mini_epochs * (mini_items // mini_batch)
        out = self.extra(cfg, self)
        out["trainer.batch_size"] = (mini_batch, f"{batch} / {self.batch}")
        out["trainer.epochs"] = (mini_epochs, f"{epochs} / {self.epochs}: {mini_updates} updates")
        every = math.ceil(mini_updates / EVALUATIONS)
        out["trainer.eval_every"] = (every, f"{EVALUATIONS} evaluations for the learning curves")
        out["trainer.checkpoint_every"] = (every, "with each evaluation")
        if "warmup_epochs" in cfg.schedule:
            warmup = cfg.schedule.warmup_epochs
            out["schedule.warmup_epochs"] = (round(warmup / self.epochs, 4), f"{warmup} / {self.epochs}")
        if "warmup_steps" in cfg.schedule:
            warmup = cfg.schedule.warmup_steps
            steps = max(1, round(warmup * mini_updates / paper_updates))
            out["schedule.warmup_steps"] = (steps, f"{warmup} of {paper_updates} updates: the same share")
        return out


def _scaled(value: int, divisor: int, what: str) -> tuple[int, str]:
    if value % divisor:
        raise ValueError(f"{what} = {value} is not divisible by {divisor}")
    return value // divisor, f"{value} / {divisor}"


def _depth_width(cfg: DictConfig, rule: Rule, dim_key: str = "model.dim", depth_key: str = "model.depth") -> Overrides:
    depth, dim = OmegaConf.select(cfg, depth_key), OmegaConf.select(cfg, dim_key)
    out = {depth_key: (max(1, depth // rule.depth), f"{depth} / {rule.depth}"), dim_key: _scaled(dim, rule.width, "d")}
    bias_dim = OmegaConf.select(cfg, "model.mixer.bias_dim", default=None)
    if bias_dim is not None:
        out["model.mixer.bias_dim"] = _scaled(bias_dim, rule.width, "d'")
    return out


def _enwik8(cfg: DictConfig, rule: Rule) -> Overrides:
    return {"data.expected_md5": (TEXT_MD5, "the corpus of Python 3.11.7"), **_depth_width(cfg, rule)}


def _enwik8_items(cfg: DictConfig) -> tuple[int, int]:
    T = cfg.data.seq_len
    return ENWIK8_TRAIN_BYTES // T, train_samples("embedded_text", seq_len=T)


def _cifar10(cfg: DictConfig, rule: Rule) -> Overrides:
    side = TILE_SIDE / CIFAR10_SIDE  # image side ratio; T ratio side^2
    length = int(side * side * cfg.model.seq_len)
    mixer = cfg.model.mixer
    out: Overrides = {
        "data.image_size": (TILE_SIDE, "16 x 16 tiles for the 32 x 32 images"),
        "model.seq_len": (length, f"3 x {TILE_SIDE}^2"),
        **_depth_width(cfg, rule),
    }
    if "data_shape" in cfg.model:
        out["model.data_shape"] = ([TILE_SIDE, TILE_SIDE, 3], "the tile's rows, columns, channels")
    if "window" in mixer:
        out["model.mixer.window"] = (int(mixer.window * side * side), f"{mixer.window} x T ratio 1/4")
    if "stride" in mixer:
        out["model.mixer.stride"] = (int(mixer.stride * side), f"{mixer.stride}: one row of sub-pixels")
    if "query_shape" in mixer:
        out["model.mixer.height"] = (int(mixer.height * side), f"{mixer.height} rows")
        out["model.mixer.width_channels"] = (int(mixer.width_channels * side), f"{mixer.width_channels} per row")
        for key in ("query_shape", "memory_flange"):
            value = list(mixer[key])
            out[f"model.mixer.{key}"] = ([int(v * side) for v in value], f"{value} x 1/2 per side")
    return out


def _cifar10_items(cfg: DictConfig) -> tuple[int, int]:
    return CIFAR10_TRAIN_IMAGES, train_samples("photo_tiles")


def _imagenet_items(cfg: DictConfig) -> tuple[int, int]:
    """Images per epoch; the repeated-augmentation sampler draws a multiple of 256 (timm's RepeatAugSampler)."""
    paper = IMAGENET_TRAIN_IMAGES // RA_ROUND * RA_ROUND if cfg.data.repeated_aug >= 2 else IMAGENET_TRAIN_IMAGES
    return paper, train_samples("digits", repeated_aug=DIGITS_REPEATS)


def kernel_size(paper: int) -> int:
    """An odd kernel of the 14 x 14 grid on the 8 x 8 one: half-width x (8 - 1) / (14 - 1), rounded, >= 1."""
    half = (paper - 1) / 2 * (GRID - 1) / (IMAGENET_GRID - 1)
    return 2 * max(1, math.floor(half + 0.5)) + 1


def _imagenet(cfg: DictConfig, rule: Rule) -> Overrides:
    model = cfg.model
    out: Overrides = {
        "data.image_size": (GRID, "8 x 8 digits"),
        "data.augment": (False, f"true: {UNAUGMENTED}"),
        "data.mixup": (0.0, f"{cfg.data.mixup}: {UNAUGMENTED}"),
        "data.cutmix": (0.0, f"{cfg.data.cutmix}: {UNAUGMENTED}"),
        "data.repeated_aug": (DIGITS_REPEATS, f"{cfg.data.repeated_aug}: repeats of an unaugmented image are copies"),
        "model.num_classes": (DIGITS_CLASSES, "the digits' classes"),
    }
    if model._target_ == "timm.create_model":
        if "resnet" in model.model_name:
            return out  # no L or d: the whole ResNet50 on the digits
        net = build_on_meta(model)
        out.update(
            {
                "model.img_size": (GRID, "8 x 8 digits"),
                "model.patch_size": (1, "an 8 x 8 grid for the 14 x 14 one"),
                "model.depth": (len(net.blocks) // rule.depth, f"{len(net.blocks)} / {rule.depth}"),
                "model.embed_dim": _scaled(net.embed_dim, rule.width, "d"),
                "model.num_heads": (net.blocks[0].attn.num_heads, "kept"),
            }
        )
        return out
    out.update(
        {
            "model.img_size": (GRID, "8 x 8 digits"),
            "model.patch_size": (1, "an 8 x 8 grid for the 14 x 14 one"),
            **_depth_width(cfg, rule),
        }
    )
    mixer = model.mixer
    if "kernel_size" in mixer:
        out["model.mixer.kernel_size"] = (kernel_size(mixer.kernel_size), f"{mixer.kernel_size}: half-width x 7/13")
        out["model.mixer.heads"] = _scaled(mixer.heads, rule.width, "heads")
    if "grid_size" in mixer:
        out["model.mixer.grid_size"] = ([GRID, GRID], "the patch grid")
    if mixer._target_.endswith("AFTFull"):
        tokens = GRID * GRID + int(model.class_token)
        out["model.mixer.seq_len"] = (tokens, "1 + 8^2" if model.class_token else "8^2")
    return out


RULES = {
    "enwik8": Rule("enwik8", "embedded_text", 6, 4, 16, 25, _enwik8, _enwik8_items),
    "cifar10": Rule("cifar10", "photo_tiles", 6, 4, 16, 100, _cifar10, _cifar10_items),
    # the digits' 10 classes; eval_crop_pct 1.0: DeiT's 0.875 would resize an 8-pixel digit to 9 and crop it
    "imagenet": Rule("imagenet", "digits", 6, 4, 16, 10, _imagenet, _imagenet_items, ("num_classes", "eval_crop_pct")),
}
TABLE_RULES = {
    "table2": "cifar10",
    "table3": "cifar10",
    "table4": "enwik8",
    "table5": "enwik8",
    "table6": "enwik8",
    "table7": "imagenet",
    "table9": "imagenet",
    "table10": "imagenet",
    "table11": "imagenet",
    "table12": "imagenet",
    "sec5.3": "imagenet",
    "sec8": "imagenet",
}
NOT_IN_MINIATURE = {"table8": "its fine-tuned row needs DeiT base 384's pretrained weights"}


@functools.cache
def train_samples(data: str, **keys: Any) -> int:
    """Training samples per epoch on one rank of ``configs/data/<data>.yaml`` with ``keys`` set: what
    its training sampler draws (the updates per epoch, and so the warmup's share, follow from it)."""
    from hydra.utils import instantiate

    cfg = OmegaConf.merge(OmegaConf.load(config_dir() / "data" / f"{data}.yaml"), keys)
    return len(instantiate(cfg).train_dataloader(batch_size=1))


def mini_dir() -> Path:
    return config_dir() / "experiment" / "mini"


def miniature_names() -> list[str]:
    """``mini/<table>/<experiment>`` of every file under ``configs/experiment/mini/``, in table order."""
    order = {table: i for i, table in enumerate(TABLE_RULES)}
    paths = sorted(mini_dir().glob("*/*.yaml"), key=lambda p: (order.get(p.parent.name, len(order)), p.stem))
    return [miniature_name(path.parent.name, path.stem) for path in paths]


def miniature_name(table: str, experiment: str) -> str:
    """The Hydra experiment name of a miniature row: ``mini/<table>/<experiment>``."""
    return f"mini/{table}/{experiment}"


def canonical_miniature(table: str, experiment: str) -> str:
    """The miniature that trains ``experiment`` for ``table``: the first table of the same rule that
    has it (a row shared by two tables composes to the same config in both, and trains once)."""
    if table not in TABLE_RULES:
        known = ", ".join(TABLE_RULES)
        raise ValueError(f"{table} has no miniature ({NOT_IN_MINIATURE.get(table, 'no rule')}); tables: {known}")
    rule = TABLE_RULES[table]
    for other in (t for t, r in TABLE_RULES.items() if r == rule):
        if (mini_dir() / other / f"{experiment}.yaml").exists():
            return miniature_name(other, experiment)
    raise ValueError(f"no {mini_dir() / table / experiment}.yaml: write the miniatures with python -m aft.miniature")


def _nested(overrides: Overrides) -> dict:
    tree: dict = {}
    for key, value in overrides.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _yaml_lines(tree: dict, indent: int = 0) -> list[str]:
    lines = []
    for key, value in tree.items():
        pad = "  " * indent
        if isinstance(value, dict):
            lines += [f"{pad}{key}:", *_yaml_lines(value, indent + 1)]
        else:
            value, why = value
            text = OmegaConf.to_yaml({key: value}, sort_keys=False).strip().replace("\n", " ")
            flow = text if not isinstance(value, list) else f"{key}: {list(value)}"
            lines.append(f"{pad}{flow}  # {why}")
    return lines


def config_text(table: str, experiment: str) -> str:
    """The YAML of ``mini/<table>/<experiment>``: the paper row, the rule's data, its overrides."""
    rule = RULES[TABLE_RULES[table]]
    cfg = compose_experiment(experiment)
    header = [
        "# @package _global_",
        f"# {table} in miniature: {experiment} shrunk by the {rule.name!r} rule of aft/miniature.py",
        "# (python -m aft.miniature writes this file; each comment gives the paper row's value).",
        "defaults:",
        f"  - /experiment/{experiment}",
        f"  - override /data: {rule.data}",
        "  - _self_",
        "",
    ]
    return "\n".join(header + _yaml_lines(_nested(rule.overrides(cfg)))) + "\n"


def write_configs(tables: dict[str, list[str]]) -> list[Path]:
    """Write every miniature config of ``tables`` (table -> its experiments); the paths written."""
    paths = []
    for table, experiments in tables.items():
        if table not in TABLE_RULES:
            continue
        folder = mini_dir() / table
        folder.mkdir(parents=True, exist_ok=True)
        for experiment in experiments:
            path = folder / f"{experiment}.yaml"
            path.write_text(config_text(table, experiment))
            paths.append(path)
    return paths


def main() -> None:
    """``python -m aft.miniature``: write ``configs/experiment/mini/`` from the rules."""
    from aft.commands.sweep import expand, load_tables

    tables = {table: expand(spec["experiments"]) for table, spec in load_tables().items()}
    for path in write_configs(tables):
        print(path.relative_to(config_dir().parent))


if __name__ == "__main__":
    main()
