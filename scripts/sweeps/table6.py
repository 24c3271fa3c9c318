"""Table 6: AFT-local-32, L=24, d=256 on Enwik8 with T = 1024, 2048, 4096 (§5.2)."""

from launch import main

LENGTHS = (1024, 2048, 4096)  # Table 6 "T"
EXPERIMENTS = [f"enwik8_aft_local32_l24_d256{'' if T == 1024 else f'_t{T}'}" for T in LENGTHS]

if __name__ == "__main__":
    main("Table 6", EXPERIMENTS)
