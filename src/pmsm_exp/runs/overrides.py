"""Which command-line overrides change what a run computes: one definition and one parser,
used by run folders (a sweep job's folder name, which run `resume=auto` continues), W&B
names, tags and groups (runs/tracking.py), and the report's rows (runs/report.py).

Each of those adds only what is its own to leave out (the report: keys shown in columns of
their own; W&B names: keys already in the name), never another copy of this list.
"""
from __future__ import annotations

from omegaconf import OmegaConf

# Overrides that do not change what a run computes: where files are, how many loader
# processes, how a run is resumed, logged or printed, and how the same arithmetic is split
# into calls (snn.chunk) or compiled (snn.kernels).
# trainer.devices and trainer.num_nodes are NOT among them: under DDP every device takes a
# batch of data.batch_size, so the world size sets the global batch and the steps per epoch,
# and with them the trained weights. A 1-GPU and a 4-GPU run are different runs (own folder,
# no resuming one from the other) and different rows of a table.
NO_EFFECT_KEYS = ("resume", "data.data_dir", "data.num_workers", "data.download", "data.pin_memory",
                  "data.persistent_workers", "trainer.strategy", "trainer.accelerator",
                  "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
                  "snn.chunk", "snn.kernels")
NO_EFFECT_GROUPS = ("paths", "logger", "hydra")   # the group and every key below it
KV_SEP, ITEM_SEP = ":", "+"   # sweep folder names (pqa.alpha:-0.25+seed:1) that can be given back as resume=...


def key_of(override: str) -> str:
    """`pqa.alpha` of `pqa.alpha=-0.25`, `+x=1`, `++x=1` or `~x`."""
    return str(override).split("=", 1)[0].lstrip("+~")


def parse(overrides) -> dict[str, str]:
    """key -> value of `overrides` (Hydra's task overrides), in order; a later value of a key wins.
    Deletions (`~key`) and items without a value are left out."""
    out = {}
    for item in overrides or []:
        item = str(item)
        key, sep, value = item.partition("=")
        if sep and not key.startswith("~"):
            out[key.lstrip("+")] = value
    return out


def under(key: str, prefixes) -> bool:
    """Whether `key` is one of `prefixes` or below one of them (`paths.log_dir` is under `paths`)."""
    return any(key == p or key.startswith(p + ".") or key.startswith(p + "/") for p in prefixes)


def has_effect(key: str) -> bool:
    return key not in NO_EFFECT_KEYS and not under(key, NO_EFFECT_GROUPS)


def effective(overrides) -> dict[str, str]:
    """The overrides that change what a run computes, as key -> value."""
    return {k: v for k, v in parse(overrides).items() if has_effect(k)}


def comparable(overrides) -> list[str]:
    """The overrides that make two runs the same run (resume=auto), in a canonical order."""
    return sorted(str(o) for o in overrides if has_effect(key_of(o)))


def job_dirname(overrides) -> str:
    """A sweep job's folder name under its experiment: its overrides that change what it computes
    (sorted, `=` written `:`, joined by `+`), so a relaunched sweep finds every job's folder."""
    lines = sorted(str(o) for o in overrides if key_of(o) != "experiment" and has_effect(key_of(o)))
    return ITEM_SEP.join(lines).replace("=", KV_SEP)


def _dirname_resolver(overrides) -> str:
    return job_dirname(list(overrides or []))


OmegaConf.register_new_resolver("pmsm_job_dirname", _dirname_resolver, replace=True)
