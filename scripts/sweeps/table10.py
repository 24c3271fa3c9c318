"""Table 10: naive vs reparameterized (Eq. 8) position bias of AFT-conv small, kernel 7 x 7 (§7)."""

from launch import main

EXPERIMENTS = ["imagenet_aft_conv_small_k7_h384_naive", "imagenet_aft_conv_small_k7_h384"]

if __name__ == "__main__":
    main("Table 10", EXPERIMENTS)
