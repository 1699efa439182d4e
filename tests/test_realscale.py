"""The real path on data the tests make: a generated PNG image folder and a tiny ViT.

prune -> structured safetensors -> load without the original; clear errors before any work;
recovery on 2 processes (torchrun, gloo) = 1 process; a run stopped half-way resumes exactly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vitprune_lite import cli_real, data, folder_data, measure, realscale, structure, surgery
from vitprune_lite.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=3)
CLASSES = ("disk", "h_stripes", "square")  # sorted, as folder_data reads them
LABELS = (0, 6, 2)  # their indices in the embedded benchmark's renderer


def _write_folder(root: Path, labels, names, size: int, n_train: int, n_val: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for name, lab in zip(names, labels):
            imgs = data.render(np.full(n, lab), np.zeros(n, dtype=np.int64), rng, size=size)
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(imgs):
                Image.fromarray(im).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes, 40 train + 12 val PNG images each, 16 x 16 px."""
    return _write_folder(tmp_path_factory.mktemp("imgs") / "data", LABELS, CLASSES, 16, 40, 12)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    """A tiny random ViT for the folder, saved with its structure."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    return structure.save(VisionTransformer(**TINY), path, structure.origin("vit", TINY, classes=CLASSES))


def _prune(folder: Path, out: Path, *extra: str, latency: bool = False) -> dict:
    rc = main(["prune", "--data", str(folder), "--out", str(out), "--workers", "0", "--n-metric", "24",
               "--latency-rounds", "1" if latency else "0", *extra])
    assert rc == 0
    return json.loads((out / "report.json").read_text())


# ----------------------------------------------------------------------------- structure + prune

def test_structure_roundtrip_identical_outputs(tmp_path):
    """Heads, q/k and v/o dims, MLP channels and the embedding cut unevenly; the file alone rebuilds it."""
    from timm.models.vision_transformer import VisionTransformer

    kw = dict(img_size=16, patch_size=4, embed_dim=48, depth=3, num_heads=4, num_classes=5)
    torch.manual_seed(1)
    model = VisionTransformer(**kw).eval()
    surgery.apply_plan(model, {0: {"heads": [0, 2, 3], "qk": [[0, 5]] * 3, "mlp": list(range(0, 192, 3))},
                               2: {"vo": [list(range(7))] * 4}})
    surgery.prune_embed(model, list(range(40)))
    path = structure.save(model, tmp_path / "m.safetensors", structure.origin("vit", kw), {"note": "x"})
    st = structure.read_structure(path)[0]
    assert [b["heads"] for b in st["blocks"]] == [3, 4, 4] and st["embed_dim"] == 40
    assert (st["blocks"][0]["qk_dim"], st["blocks"][2]["v_dim"], st["blocks"][0]["mlp_hidden"]) == (2, 7, 64)
    loaded, struct, info = structure.load(path)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert info == {"note": "x"} and measure.count_params(loaded) == measure.count_params(model)


def test_method_table_is_the_cli_list():
    assert tuple(realscale.METHODS) == cli_real.METHOD_NAMES


def test_base_model_by_name_or_checkpoint():
    by_name, src = realscale.load_model("base_vit")
    by_file, src2 = realscale.load_model(None, str(ROOT / "data" / "base_vit.safetensors"))
    assert src == src2 and src["builder"] == "vit" and src["kwargs"]["img_size"] == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(by_name(x), by_file(x))


def test_budget_pair():
    assert realscale.budget_pair(0.5) == (0.429, 0.642)  # TAP-ViTs' published pair, as in the notebooks
    assert realscale.budget_pair(0.33) == (0.33, 0.33)


def test_prune_save_load_without_original(folder, tiny_file, tmp_path):
    rep = _prune(folder, tmp_path / "p", "--checkpoint", str(tiny_file), "--method", "toast", "--budget", "0.5",
                 latency=True)
    pruned, struct, info = structure.load(tmp_path / "p" / "pruned.safetensors")
    assert info["method"] == "toast" and struct["classes"] == list(CLASSES) and struct["img_size"] == 16
    assert rep["params"]["pruned"] == measure.count_params(pruned) < rep["params"]["dense"]
    assert rep["flops_per_image"]["pruned"] < rep["flops_per_image"]["dense"]
    assert set(rep["latency_ms"]) == {"batch_1", "batch_32"}
    assert rep["latency_ms"]["batch_32"]["pruned"]["batch_size"] == 32
    # ToaSt keeps block 0's attention dense and cuts dims inside the heads of the others.
    assert struct["blocks"][0]["qk_dim"] == 16 and struct["blocks"][1]["qk_dim"] < 16
    # The loaded file alone reproduces what prune measured on DIR/val.
    val = folder_data.FolderDataset(folder_data.scan(folder, "val"), 16)
    assert measure.accuracy(pruned, val) == pytest.approx(rep["val_accuracy"]["pruned"], abs=0)
    # ... and what the pipeline computes in memory on the same weights.
    from vitprune_lite import pipelines

    dense, src = realscale.load_model(None, str(tiny_file), classes=CLASSES)
    x, y = folder_data.load_tensors(folder_data.scan(folder, "train").subset([0, 50, 100]), 16)
    again = pipelines.toast(dense, pipelines.DeviceRequest("t", realscale.budget_pair(0.5)), pipelines.PublicData(x, y),
                            tcs_fc1=0.0, tcs_fc2=0.0, ft_steps=0, val_fraction=0.0).model
    from vitprune_lite import tcs

    tcs.unpatch(again)
    xv = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(xv), pruned(xv))


def test_prune_torch_pruning_and_timm_name(folder, tmp_path):
    """A timm name with random weights built for the data, pruned by torch-pruning; reloads from its name."""
    rep = _prune(folder, tmp_path / "t", "--model", "test_vit", "--image-size", "16",
                 "--method", "torch_pruning", "--budget", "0.5")
    loaded, struct, _ = structure.load(tmp_path / "t" / "pruned.safetensors")
    assert struct["builder"] == "timm" and struct["name"] == "test_vit"
    assert struct["num_classes"] == 3
    assert [b["heads"] for b in struct["blocks"]] == rep["pipeline"]["torch_pruning"]["heads_kept"]
    assert measure.count_params(loaded) == rep["params"]["pruned"]


@pytest.mark.slow
def test_prune_base_vit_on_rendered_folder(tmp_path):
    """The embedded base model through the folder path: resize and normalisation must match its training.

    Folders are named so that their sorted order is the base model's class order.
    """
    names = [f"{i:02d}_{c}" for i, c in enumerate(data.CLASSES)]
    folder = _write_folder(tmp_path / "d12", range(12), names, 32, 2, 4)
    rep = _prune(folder, tmp_path / "b", "--model", "base_vit", "--method", "magnitude_l2", "--budget", "0.9")
    assert rep["classes"] == 12 and rep["params"]["pruned"] < rep["params"]["dense"]
    assert rep["val_accuracy"]["dense"] > 0.8  # 48 clean renders; chance is 1/12


@pytest.mark.slow
def test_tap_vits_with_device_upload(folder, tiny_file, tmp_path):
    """Device: GMM of its private images in the pool's feature space; cloud: selects, prunes, lists the fine-tune set."""
    private = _write_folder(tmp_path / "priv", (0,), ("disk",), 16, 80, 0, seed=5) / "train"
    up = tmp_path / "device.json"
    assert main(["upload", "--data", str(folder), "--private", str(private), "--out", str(up),
                 "--feature-size", "16"]) == 0
    rep = _prune(folder, tmp_path / "tap", "--checkpoint", str(tiny_file), "--method", "tap_vits", "--budget", "0.5",
                 "--upload", str(up), "--feature-size", "16", "--n-finetune", "30")
    files = (tmp_path / "tap" / "finetune.txt").read_text().split()
    assert rep["scoring"]["selection"] == "upload" and len(files) == 30
    # The device holds disks only: the selection should be mostly disks (random: a third).
    assert np.mean([f.split("/")[1] == "disk" for f in files]) > 0.5
    wrong = tmp_path / "wrong.json"
    wrong.write_text(up.read_text())
    assert main(["prune", "--data", str(folder), "--out", str(tmp_path / "w"), "--checkpoint", str(tiny_file),
                 "--method", "tap_vits", "--budget", "0.5", "--upload", str(up), "--feature-size", "20",
                 "--workers", "0"]) == 2  # another feature space: refused, naming the fix


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("args, says", [
    (["--method", "nope", "--budget", "0.5"], ["'nope'", "tap_vits", "toast"]),
    (["--method", "toast", "--budget", "0"], ["budget 0.0", "(0, 1]"]),
    (["--method", "toast", "--budget", "1.5"], ["budget 1.5", "(0, 1]"]),
    (["--method", "tap_vits", "--budget", "0.5"], ["--upload"]),
    (["--method", "toast", "--budget", "0.5", "--upload", "x.json"], ["does not read", "tap_vits"]),
    (["--method", "toast", "--budget", "0.5", "--device", "tpu"], ["'tpu'", "cpu, cuda"]),
])
def test_prune_refuses_bad_arguments(args, says, folder, tiny_file, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["prune", "--data", str(folder), "--out", str(out), "--checkpoint", str(tiny_file), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and all(s in err for s in says), err
    assert not out.exists()


def test_bad_model_folder_split_and_size(folder, tiny_file, tmp_path, capsys):
    base = ["prune", "--method", "toast", "--budget", "0.5", "--out", str(tmp_path / "o")]
    assert main(base + ["--data", str(folder), "--model", "no_such_vit"]) == 2
    assert "'no_such_vit'" in capsys.readouterr().err
    assert main(base + ["--data", str(tmp_path / "missing"), "--checkpoint", str(tiny_file)]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "noval" / "train" / "a").mkdir(parents=True)
    assert main(base + ["--data", str(tmp_path / "noval"), "--checkpoint", str(tiny_file)]) == 2
    assert "no val/ split" in capsys.readouterr().err
    assert main(base + ["--data", str(folder), "--checkpoint", str(tiny_file), "--image-size", "32",
                        "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--image-size 32" in err and "16 x 16" in err
    assert not (tmp_path / "o").exists()
    rc = ["recover", "--data", str(folder), "--checkpoint", str(tiny_file), "--out", str(tmp_path / "r")]
    os.environ["WORLD_SIZE"] = "2"  # as torchrun sets it: 7 images cannot split over 2 processes
    try:
        assert main(rc + ["--batch-size", "7"]) == 2
        assert "--batch-size 7" in capsys.readouterr().err
    finally:
        del os.environ["WORLD_SIZE"]
    assert main(rc + ["--precision", "fp8"]) == 2
    assert "'fp8'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- data

def test_folder_dataset_streams_and_augments_deterministically(folder):
    split = folder_data.scan(folder, "train")
    assert len(split) == 120 and split.classes == CLASSES and split.files[0] == "train/disk/000.png"
    ds = folder_data.FolderDataset(split, 16, augment=True, seed=3)
    a, ya = ds[5]
    b, _ = ds[5]
    ds.set_epoch(1)
    c, _ = ds[5]
    assert a.shape == (3, 16, 16) and ya == 0 and torch.equal(a, b) and not torch.equal(a, c)
    plain = folder_data.FolderDataset(split, 16)[5][0]
    assert plain.min() >= -1 and plain.max() <= 1


# ----------------------------------------------------------------------------- recovery

def _recover_cmd(ckpt: Path, folder: Path, out: Path, nproc: int, *extra: str) -> list[str]:
    args = ["-m", "vitprune_lite", "recover", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(out),
            "--steps", "16", "--batch-size", "8", "--lr", "1e-3", "--eval-every", "8", "--save-every", "4",
            "--holdout", "0.1", "--label-smoothing", "0.1", "--no-progress", *extra]
    if nproc == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def _run(cmd: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


def _max_diff(a: Path, b: Path) -> float:
    sa, sb = load_file(str(a)), load_file(str(b))
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


@pytest.fixture(scope="module")
def one_process_run(folder, tiny_file, tmp_path_factory):
    """The reference: 16 steps on one process (global batch 8)."""
    pruned = tmp_path_factory.mktemp("pr") / "p"
    assert main(["prune", "--data", str(folder), "--out", str(pruned), "--checkpoint", str(tiny_file), "--method",
                 "magnitude_l2", "--budget", "0.5", "--workers", "0", "--latency-rounds", "0"]) == 0
    ckpt = pruned / "pruned.safetensors"
    out = tmp_path_factory.mktemp("one") / "run"
    _run(_recover_cmd(ckpt, folder, out, 1, "--workers", "0"))
    return ckpt, out


@pytest.mark.slow
def test_two_processes_match_one(one_process_run, folder, tmp_path):
    ckpt, one = one_process_run
    two = tmp_path / "two"
    _run(_recover_cmd(ckpt, folder, two, 2, "--workers", "0"))
    diff = _max_diff(one / "final.safetensors", two / "final.safetensors")
    moved = _max_diff(ckpt, one / "final.safetensors")
    print(f"1 vs 2 processes: max |weight difference| {diff:.2e} (training moved weights by up to {moved:.2e})")
    assert diff < 1e-4 < moved
    r1, r2 = (json.loads((d / "recover_report.json").read_text()) for d in (one, two))
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    assert r1["best"]["step"] == r2["best"]["step"] and r1["n_train"] == r2["n_train"]


@pytest.mark.slow
def test_stopped_run_resumes_exactly(one_process_run, folder, tmp_path):
    ckpt, one = one_process_run
    out = tmp_path / "resumed"
    cmd = _recover_cmd(ckpt, folder, out, 1, "--workers", "1", "--stop-after-steps", "6")
    assert "stopped after step 6" in _run(cmd)
    assert not (out / "final.safetensors").exists()
    assert torch.load(out / "state.pt", weights_only=False)["step"] == 6
    assert "resumed from" in _run(cmd)  # the same command again continues from step 6
    for name in ("final", "best"):
        assert _max_diff(one / f"{name}.safetensors", out / f"{name}.safetensors") == 0.0
    # A different run in the same folder is refused rather than mixed in.
    from vitprune_lite.recover import RecoverConfig, recover

    with pytest.raises(ValueError, match="other settings"):
        recover(RecoverConfig(data=str(folder), out=str(out), checkpoint=str(ckpt), steps=16, batch_size=8,
                              lr=5e-4, holdout=0.1, label_smoothing=0.1, workers=0, progress=False))
