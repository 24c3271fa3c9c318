"""Table 4: Enwik8 character-level language modeling, T = 1024 (§5.2)."""

from launch import main

EXPERIMENTS = [
    "enwik8_transformer_l12_d512",
    "enwik8_transformer_l24_d256",
    "enwik8_reformer_l12_d512",
    "enwik8_synthesizer_l12_d512",
    "enwik8_linear_transformer_l12_d512",
    "enwik8_performer_l12_d512",
    "enwik8_aft_local32_l12_d512",
    "enwik8_aft_local32_l24_d256",
    "enwik8_aft_simple_l24_d256",
]

if __name__ == "__main__":
    main("Table 4", EXPERIMENTS)
