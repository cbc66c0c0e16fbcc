"""Stage `selection`: `selected_seeds`. Pure module: length."""
