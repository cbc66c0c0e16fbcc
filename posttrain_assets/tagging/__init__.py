"""Stage `tagging`: `quality_tags` (per source) — Magpie's unitag tags and gen_dis neighbour distances
over any prompt or SFT table of the source. Pure modules: inputs (the readable tables, normalised to
id / instruction / response), tasks (the versioned en + ja templates of templates/ and their
parsers, Llama Guard 3's format), tags (running the tags over injected sessions, failures counted),
neighbors (gen_dis over faiss)."""
