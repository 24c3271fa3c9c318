"""Key feature maps of an AFT-conv model on one image (Fig. 9-12): the output of the K projection
of every layer (rows) for each head (columns, the first 16), on the patch grid.

The image is number ``--index`` of the run's evaluation split (ImageNet: ``val``), preprocessed
by the data module's evaluation transform; the PNG shows it above the maps.

    python scripts/figures/key_maps.py --run runs/imagenet_aft_conv_small_k11_h384 --index 3 --out fig9.png
    python scripts/figures/key_maps.py --random-init imagenet_aft_conv_small_k11_h384 model.depth=2 model.dim=32 \\
        model.mixer.heads=4 model.mixer.kernel_size=3 model.img_size=64 data=embedded_images data.image_size=64 \\
        --out demo.png
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from common import load, map_grid, parser_with_model, save
from hydra.utils import instantiate
from matplotlib.figure import Figure
from torch import Tensor

from aft.layers import AFTConv2d
from aft.models import VisionTransformer


@torch.no_grad()
def key_maps(model: VisionTransformer, image: Tensor) -> list[Tensor]:
    """``K`` of every block for ``image`` ``(3, H, W)``: one ``(Y, X, heads)`` tensor per layer."""
    captured: list[Tensor] = []
    hooks = [
        block.mixer.to_k.register_forward_hook(lambda module, inputs, output: captured.append(output[0]))
        for block in model.blocks
    ]
    try:
        model(image[None])
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def displayable(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` normalized image -> ``(H, W, 3)`` in [0, 1], each channel min-max scaled."""
    x = image.permute(1, 2, 0).float()
    low, high = x.amin(dim=(0, 1)), x.amax(dim=(0, 1))
    return ((x - low) / (high - low).clamp_min(1e-6)).numpy()


def key_figure(image: Tensor, keys: list[Tensor], heads: int) -> Figure:
    """The image (top left) above a layers x heads grid of key maps."""
    rows = [[displayable(image)], *([k[..., h].numpy() for h in range(min(heads, k.shape[-1]))] for k in keys)]
    return map_grid(
        rows,
        ["image", *(f"layer {i}" for i in range(len(keys)))],
        "Keys of AFT-conv per layer (rows) and head (columns), Fig. 9-12",
    )


def main(argv: list[str]) -> None:
    parser = parser_with_model(__doc__)
    parser.add_argument("--index", type=int, default=0, help="which image of the evaluation split")
    parser.add_argument("--heads", type=int, default=16, help="the first N heads")
    args = parser.parse_args(argv)
    model, cfg = load(args)
    if not isinstance(model, VisionTransformer) or not isinstance(model.blocks[0].mixer, AFTConv2d):
        raise SystemExit("error: key maps need an AFT-conv VisionTransformer (imagenet_aft_conv_* experiments)")
    data = instantiate(cfg.data)
    images, _ = next(iter(data.eval_dataloader(data.eval_splits[0], args.index + 1)))
    image = images[args.index]
    save(key_figure(image, key_maps(model, image), args.heads), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
