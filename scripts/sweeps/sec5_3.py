"""§5.3 text: global connectivity (AFT-conv small k7 with and without it) and variable size inputs.

The 384-crop number evaluates the trained Table 7 row (kernel 15) without retraining it:

    python eval.py runs/multirun/experiment=imagenet_aft_conv_small_k15_h384 data.eval_image_size=384
"""

from launch import main

EXPERIMENTS = [
    "imagenet_aft_conv_small_k7_h384",
    "imagenet_aft_conv_small_k7_h384_local_only",
    "imagenet_aft_conv_small_k15_h384",
]

if __name__ == "__main__":
    main("§5.3", EXPERIMENTS)
