"""The layout stays true: layers import only downwards, no import circle, the method runs on torch
alone, and checkpoints written before the layout change still convert."""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "pmsm_exp"
# each may import only from the layers before it (and from itself); layers on one line are peers
# that must not import each other
LAYERS = [("errors",), ("quant",), ("data", "models"), ("snn",), ("analysis",), ("config",), ("engine",), ("runs",),
          ("jobs",)]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
METHOD = ("quant", "models", "snn")
FRAMEWORK = ("hydra", "omegaconf", "lightning", "lightning_fabric", "pytorch_lightning", "wandb")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Every module `path` imports, function-local imports included: `from a import b` counts as
    importing a.b where that is a module of ours, else a."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: resolved against this file's package
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


GRAPH = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_unit_has_a_layer_and_few_modules_stay_at_the_top():
    units = {unit(m) for m in MODULES} - {""}
    assert units == set(RANK), f"units without a layer: {units - set(RANK)}; layers without code: {set(RANK) - units}"
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= 6, top


def test_layers_import_only_downwards():
    wrong = [f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
             if unit(a) and unit(b) and unit(a) != unit(b) and not RANK[unit(b)] < RANK[unit(a)]]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    state, path, circles = {}, [], []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not circles, "\n".join(circles)


def test_the_method_names_no_framework_package():
    offenders = [f"{name} imports {m}" for name, path in MODULES.items() if unit(name) in METHOD
                 for m in imports(path) if m.split(".")[0] in FRAMEWORK]
    assert not offenders, offenders


def test_the_architecture_check_sees_a_circle_and_an_upward_import(monkeypatch):
    """The checks above would fail on a broken layout (a quantizer importing the jobs)."""
    broken = {k: set(v) for k, v in GRAPH.items()}
    broken["pmsm_exp.quant.pqa"].add("pmsm_exp.jobs.pipeline")
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", broken)
    with pytest.raises(AssertionError, match="pmsm_exp.quant.pqa imports pmsm_exp.jobs.pipeline"):
        test_layers_import_only_downwards()
    with pytest.raises(AssertionError, match="pmsm_exp.quant.pqa"):
        test_no_import_circle()


HYDRA_FREE = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked in this test: {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    import torch
    from pmsm_exp.models import create_model
    from pmsm_exp.quant import PQA, make_activation, pqa_layers
    from pmsm_exp.snn import convert_to_snn, simulate, spiking_neurons

    torch.manual_seed(0)
    qann = create_model("resnet20", 10, make_activation("pqa", 8, -0.25, 1.0)).eval()
    g = torch.Generator().manual_seed(0)
    for m in qann.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    for q in pqa_layers(qann).values():
        q.threshold.data.fill_(0.5 + 3.5 * torch.rand((), generator=g).item())
    x = torch.randn(8, 3, 32, 32, generator=g)
    # a random ResNet's pooled features barely differ between images: centre the head on their mean,
    # so that its predictions vary with the image (a constant network would pass any agreement test)
    head, seen = [m for m in qann.modules() if isinstance(m, torch.nn.Linear)][-1], {{}}
    hook = head.register_forward_hook(lambda m, args, out: seen.update(features=args[0]))
    with torch.no_grad():
        qann(x)
        hook.remove()
        head.bias.copy_(-head.weight @ seen["features"].mean(0))
        logits = qann(x)
    snn = convert_to_snn(qann)
    result = simulate(snn, x, 1)
    fired = [name for name, c in result.spike_counts.items() if c[0] > 0]
    assert torch.equal(result.outputs[0], logits), "T=1 differs from the QANN"
    assert len(spiking_neurons(snn)) == 19 and len(fired) == 19, fired
    assert not any(name.split(".")[0] in BLOCKED for name in sys.modules), sorted(sys.modules)
    print("ok", logits.argmax(1).tolist())
""")


def test_method_imports_and_converts_exactly_without_the_framework():
    """quant, models, snn with hydra, omegaconf, lightning and wandb unimportable: ResNet-20 at T=1
    equals its QANN bit for bit, every layer firing."""
    code = HYDRA_FREE.format(blocked=set(FRAMEWORK))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]
    assert len(set(eval(proc.stdout.split(" ", 1)[1]))) > 1   # the predictions vary: not a constant network


def old_checkpoint(path: Path) -> Path:
    """A checkpoint as train.py wrote it before the layout change (keys read from one written by
    commit 3e74208): Lightning's fields, callback states keyed by class name, `model.`-prefixed
    weights and the plain resolved config under pmsm_config; no module path anywhere."""
    from helpers import random_qann
    model = random_qann("resnet20", seed=3)
    config = {"task_name": "train", "experiment_name": "default", "seed": 42, "epochs": 2, "eval_checkpoint": "last",
              "resume": None, "model": {"channels_last": False, "compile": False, "name": "resnet20"},
              "data": {"name": "synthetic", "num_classes": 10, "image_size": 32, "channels": 3, "train_size": 64,
                       "test_size": 48, "batch_size": 16, "seed": 42, "val_fraction": 0.0},
              "pqa": {"method": "pmsm", "kind": "pqa", "levels": 8, "alpha": -0.25, "beta": 1.0, "threshold": 8.0,
                      "neuron": "aif"},
              "snn": {"timesteps": 4, "encoding": "auto", "readout": "auto", "chunk": "auto", "fold_bn": False,
                      "kernels": "auto", "neuron": None}}
    torch.save({"epoch": 1, "global_step": 8, "pytorch-lightning_version": "2.6.6",
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "loops": {"fit_loop": {}, "validate_loop": {}, "test_loop": {}, "predict_loop": {}},
                "callbacks": {"Resumable": {"rng": {}}, "ModelCheckpoint{'monitor': None}": {}},
                "optimizer_states": [], "lr_schedulers": [], "pmsm_config": config}, path)
    return path


def test_checkpoint_written_before_the_layout_converts(tmp_path, monkeypatch):
    from test_gpu_switches import run_script
    ckpt = old_checkpoint(tmp_path / "last.ckpt")
    metrics = run_script("convert", [f"ckpt_path={ckpt}", "snn.timesteps=2", "logger=none"], tmp_path / "logs",
                         monkeypatch)
    snn = metrics["snn"]
    assert metrics["status"] == "finished" and snn["agreement"][0] == 1.0
    assert snn["test_acc"][0] == metrics["qann"]["test_acc"]
    assert all(counts[0] > 0 for counts in snn["layer_spikes"].values()) and len(snn["layer_spikes"]) == 19
