"""The one quantizer (PQA; QCFS is alpha=0) and its eager and compiled kernels."""
from pmsm_exp.quant.kernels import use_kernels
from pmsm_exp.quant.pqa import PQA, check_pqa_params, make_activation, pqa_layers

__all__ = ["PQA", "check_pqa_params", "make_activation", "pqa_layers", "use_kernels"]
