"""pmsm-exp: lossless ANN-to-SNN conversion at the first timestep (PMSM), with QCFS and
SpikeZIP-TF baselines, in Lightning + Hydra.

Layers, each importing only from those before it (tests/test_architecture.py holds this):
errors -> quant -> data, models -> snn -> analysis -> config -> engine -> runs -> jobs.
The method (quant, models, snn) needs torch (and timm for the ViT) alone.
"""
