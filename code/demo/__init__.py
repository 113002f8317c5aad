"""The demo world: a simulated brain, its own "ImageNet" models, and the `make demo` pipeline.

The method (the stage scripts, `sc_mbm`, `dc_ldm`, dataset, metrics, config) never imports this package; the
demo drives the stages through their command lines, as a user would.

- `simulation/`: the simulated subjects, written in the published data layouts;
- `world_models.py`: the simulated world's label-conditioned LDM (published label2img layout) and VQ autoencoder;
- `classifier.py`: the n-way classifier over the simulated categories (a generic classifier file);
- `pipeline.py`: `make demo` (`python -m demo`, its command line in `cli.py`): the steps in order;
- `presets.py`: what a demo run does (sizes, each stage's flags, the recipe, the published Stage B, the levers);
- `steps.py`: the step cache (a recipe stamp beside every result) and the stage runner (one process per stage);
- `reports.py`: summary.md, levers.md, the SNR sweep's figure and table;
- `studies.py`: `--curve` and `--ablations`, the published method's learning curve and the paper's ablations.
"""
