"""Train a quantized ANN, convert it to an SNN, evaluate both; see README.md.

    python train.py model=resnet20 data=cifar10 pqa.alpha=-0.25
    python train.py -m pqa.alpha=-0.125,-0.25,-0.5,-1
"""
import hydra
from omegaconf import DictConfig

from pmsm_exp.jobs import pipeline
from pmsm_exp.jobs.wrapper import job


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@job
def main(cfg: DictConfig) -> float:
    metrics = pipeline.train(cfg)
    return metrics["qann"]["test_acc"]


if __name__ == "__main__":
    main()
