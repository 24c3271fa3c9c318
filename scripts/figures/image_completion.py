"""Image completion by an autoregressive AFT decoder (Fig. 4): the top half of test images is given,
the bottom half is sampled sub-pixel by sub-pixel with ``Decoder.generate`` (recurrent decoding
through the layers' ``step`` caches for the causal AFT layers).

Rows of the PNG: the masked test images (bottom half gray), the completions (``--samples`` per
image) and the originals.

    python scripts/figures/image_completion.py --run runs/cifar10_aft_local256_l24_d256 --out fig4.png
    python scripts/figures/image_completion.py --random-init cifar10_aft_local256_l24_d256 \\
        model.depth=1 model.dim=16 model.seq_len=48 model.mixer.window=8 model.mixer.bias_dim=4 \\
        data=embedded_images data._target_=data.embedded_images.EmbeddedImageSequences data.image_size=4 --out demo.png
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from common import load, parser_with_model, save
from hydra.utils import instantiate
from matplotlib.figure import Figure

from aft.models import Decoder
from data.pixel_sequence import BOS_TOKEN, PixelSequenceDataModule, pixel_tokens

MASK_GRAY = 128  # fill of the hidden bottom half in the "masked" row


def complete(
    model: Decoder, images: np.ndarray, samples: int, temperature: float, generator: torch.Generator
) -> np.ndarray:
    """Sample the bottom halves of ``uint8 (N, H, W, 3)`` images: ``uint8 (N * samples, H, W, 3)``.

    The prefix is ``[BOS, top-half sub-pixels]`` in raster order (data.pixel_sequence).
    """
    n, height, width, channels = images.shape
    top = (height // 2) * width * channels
    tokens = torch.from_numpy(np.stack([pixel_tokens(image) for image in images]))
    prefix = torch.cat([torch.full((n, 1), BOS_TOKEN), tokens[:, :top]], dim=1).repeat_interleave(samples, 0)
    sampled = model.generate(prefix, tokens.shape[1] - top, temperature=temperature, generator=generator)
    return sampled[:, 1:].reshape(n * samples, height, width, channels).to(torch.uint8).numpy()


def masked(images: np.ndarray) -> np.ndarray:
    """The images with their bottom half gray."""
    shown = images.copy()
    shown[:, images.shape[1] // 2 :] = MASK_GRAY
    return shown


def completion_figure(images: np.ndarray, completions: np.ndarray, samples: int) -> Figure:
    """Masked images, then ``samples`` rows of completions, then the originals."""
    rows = [masked(images), *(completions[s::samples] for s in range(samples)), images]
    labels = ["masked", *(f"sample {s}" for s in range(samples)), "original"]
    fig = Figure(figsize=(max(len(images), 4) + 0.6, len(rows) + 0.6))
    axes = fig.subplots(len(rows), len(images), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            axes[r][c].imshow(image, interpolation="nearest")
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(labels[r], fontsize=7)
    fig.suptitle("Image completion: top half given, bottom half sampled (Fig. 4)", fontsize=9)
    return fig


def main(argv: list[str]) -> None:
    parser = parser_with_model(__doc__)
    parser.add_argument("--split", default="test", help="the data split the images come from")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--samples", type=int, default=1, help="completions per image")
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args(argv)
    model, cfg = load(args)
    if not isinstance(model, Decoder):
        raise SystemExit(f"error: image completion needs an autoregressive Decoder, not {type(model).__name__}")
    data = instantiate(cfg.data)
    if not isinstance(data, PixelSequenceDataModule):
        raise SystemExit(f"error: {type(data).__name__} holds no images: use CIFAR10-style pixel sequences")
    images = data.images[args.split][: args.num_images]
    generator = torch.Generator().manual_seed(args.seed)
    completions = complete(model, images, args.samples, args.temperature, generator)
    save(completion_figure(images, completions, args.samples), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
