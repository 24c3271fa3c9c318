"""§8 text: AFT-conv small k11 h384 with the sparsity regularizer (Eq. 9) or Gumbel-softmax biases (Eq. 10)."""

from launch import main

EXPERIMENTS = [
    "imagenet_aft_conv_small_k11_h384",
    "imagenet_aft_conv_small_k11_h384_sparsity",
    "imagenet_aft_conv_small_k11_h384_gumbel",
]

if __name__ == "__main__":
    main("§8", EXPERIMENTS)
