"""Stage `records`: `sft_records`, `cot_records`, `preference_records` (the seed's three schemas). Pure module: unify."""
