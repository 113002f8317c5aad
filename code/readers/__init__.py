"""Readers of the published HCP, GOD (Kamitani) and BOLD5000 data: one module per data set, the checks and array
operations they share in `files` and `arrays`.

The on-disk layouts are those of the MinD-Vis data release (`data/README.md` shows them and says where to get them
or how to simulate them; `docs/formats.md` is the specification). Readers return datasets (`dataset.py`) of dicts
with `fmri` (1, V) float32, and for GOD/BOLD5000 the `image` seen, `label` and `naive_label`. Bad input raises
`readers.files.DataFormatError` naming the file and key.
"""
