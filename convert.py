"""Convert a trained checkpoint to an SNN and evaluate it; trains nothing.

    python convert.py ckpt_path=logs/train/runs/<date>/checkpoints/last.ckpt snn.timesteps=16
"""
import hydra
from omegaconf import DictConfig

from pmsm_exp.jobs import pipeline
from pmsm_exp.jobs.wrapper import job


@hydra.main(version_base="1.3", config_path="conf", config_name="convert")
@job
def main(cfg: DictConfig) -> None:
    pipeline.convert(cfg)


if __name__ == "__main__":
    main()
