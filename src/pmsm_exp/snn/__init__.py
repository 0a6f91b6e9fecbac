"""The spiking side: neurons (AIF, IF, ST-BIF+), conversion by module replacement, the
spiking ViT's layers (registered as converters on import), simulation over T, BN folding."""
from pmsm_exp.snn.neurons import MultiStepModule, SpikingNeuron, spiking_neurons
from pmsm_exp.snn.conversion import NEURONS, allow_leaf, convert_to_snn, register_converter
from pmsm_exp.snn import spiking_vit  # noqa: F401  (registers the ViT's converters)
from pmsm_exp.snn.simulation import ENCODINGS, READOUTS, SimulationResult, simulate
from pmsm_exp.snn.folding import fold_batchnorm

__all__ = ["ENCODINGS", "NEURONS", "READOUTS", "MultiStepModule", "SimulationResult", "SpikingNeuron",
           "allow_leaf", "convert_to_snn", "fold_batchnorm", "register_converter", "simulate", "spiking_neurons"]
