"""The ViT through train.py: ImageNet folder layout, one training step, SNN evaluation."""
import json

from PIL import Image
import numpy as np

from helpers import assert_every_layer_fired
from test_framework import run


def imagenet_tree(root, classes=("n01440764", "n01443537", "n01484850"), per_class=4, size=40):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8) // (c + 1)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG")
    return root


def test_imagenet_vit_train_step_and_snn_evaluation(tmp_path):
    data = imagenet_tree(tmp_path / "imagenet")
    run("train.py", "model=vit_tiny", "data=imagenet", "pqa=pmsm_vit", f"data.data_dir={data}",
        "data.image_size=32", "data.batch_size=6", "data.num_workers=0", "model.depth=2", "model.embed_dim=64",
        "epochs=1", "trainer.limit_train_batches=1", "snn.timesteps=3", "logger=csv", log_dir=tmp_path / "logs")
    metrics = json.loads(next((tmp_path / "logs").rglob("metrics.json")).read_text())
    assert metrics["run"]["model"] == "vit_tiny" and metrics["run"]["data"] == "imagenet"
    assert metrics["run"]["snn"]["encoding"] == "first" and metrics["run"]["snn"]["readout"] == "sum"
    assert metrics["snn"]["agreement"][0] == 1.0
    assert_every_layer_fired(metrics)
    assert metrics["snn"]["test_acc"][0] == metrics["qann"]["test_acc"]
    assert metrics["run"]["pqa"]["levels"] == 16


def test_distillation_from_local_teacher_checkpoint(tmp_path):
    import timm
    import torch
    teacher = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=1)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    run("train.py", "model=vit_tiny", "data=synthetic", "pqa=pmsm_vit", "model.depth=1", "model.embed_dim=32",
        "data.train_size=64", "data.test_size=32", "data.batch_size=16", "epochs=1", "snn.timesteps=2",
        "logger=csv", "optim.distill.teacher=vit_tiny_patch16_224", f"optim.distill.checkpoint={tmp_path / 'teacher.pth'}",
        "optim.distill.kwargs={img_size: 32, patch_size: 8, depth: 1}", log_dir=tmp_path / "logs")
    logs = tmp_path / "logs"
    metrics_csv = next(logs.rglob("csv/**/metrics.csv")).read_text()
    assert "train/distill_kl" in metrics_csv
    ckpt = torch.load(next(logs.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    metrics = json.loads(next(logs.rglob("metrics.json")).read_text())
    assert metrics["snn"]["agreement"][0] == 1.0
    assert_every_layer_fired(metrics)
    # the teacher distilled from is the file's network, weight for weight (not timm's random init)
    from pmsm_exp.jobs.builders import build_teacher
    built = build_teacher(metrics["config"]["optim"] | {"distill": {**metrics["config"]["optim"]["distill"],
                          "checkpoint": str(tmp_path / "teacher.pth")}}, 10)
    saved = teacher.state_dict()
    assert built.state_dict().keys() == saved.keys()
    assert all(torch.equal(built.state_dict()[k], saved[k]) for k in saved)
