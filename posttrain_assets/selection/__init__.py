"""Stage `selection`: `selected_seeds`, `hard_problems`, `filtered_instructions`. Pure modules: length,
tag_filter (Magpie's filter over quality_tags)."""
