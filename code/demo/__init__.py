"""The demo world: a simulated brain, its own "ImageNet" models, and the `make demo` pipeline.

The method (the stage scripts, `sc_mbm`, `dc_ldm`, dataset, metrics, config) never imports this package; the
demo drives the stages through their command lines, as a user would.

- `simulation/`: the simulated subjects, written in the published data layouts;
- `world_models.py`: the simulated world's label-conditioned LDM (published label2img layout) and VQ autoencoder;
- `classifier.py`: the n-way classifier over the simulated categories (a generic classifier file);
- `pipeline.py`: `make demo` (`python -m demo`).
"""
