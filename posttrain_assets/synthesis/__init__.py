"""Stage `synthesis` (LLM): `evolved_instructions` (Evol-Instruct: width / depth / flatten, elimination,
judge, answers). Pure modules: evolution; model tasks: tasks + templates/."""
