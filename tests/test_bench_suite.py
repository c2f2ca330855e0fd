"""benchmarks/suite.py's caching and table, and the baseline's feature path (no real training)."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


suite = _load("suite")


def test_methods_parse_to_commands(tmp_path):
    methods = suite.parse_methods("default,budget2m,lr,fastai5m")
    assert [(m.kind, m.budget) for m in methods] == [
        ("tlearn", None),
        ("tlearn", "2m"),
        ("lr", None),
        ("fastai", "5m"),
    ]
    cmd = suite.command(methods[1], Path("/d"), tmp_path / "run")
    assert cmd[1:] == [
        "-m",
        "tlearn",
        "train",
        "/d",
        "--budget",
        "2m",
        "--out",
        str(tmp_path / "run"),
    ]
    with pytest.raises(SystemExit, match="unknown method"):
        suite.parse_methods("default,budget")
    with pytest.raises(SystemExit, match="twice"):
        suite.parse_methods("lr,lr")


def _dataset(root: Path, name: str) -> Path:
    for part, n in (("train", 3), ("test", 2)):
        for cls in ("a", "b"):
            folder = root / name / part / cls
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.jpg").write_bytes(b"")
    return root / name


def test_suite_caches_cells_and_reruns_only_what_is_not_done(tmp_path):
    data = [_dataset(tmp_path, "one"), _dataset(tmp_path, "two")]
    calls: list[tuple[str, str]] = []
    outcome = {"one/default": {"status": "failed", "error": "boom | x"}}

    def fake(method, dataset, run_dir, timeout):
        calls.append((dataset.name, method.name))
        assert run_dir.is_dir()
        return outcome.get(f"{dataset.name}/{method.name}") or {
            "status": "done",
            "test_accuracy": 0.9512 if method.kind == "lr" else 0.9,
            "wall_s": 47.04,
        }

    runners = {"tlearn": fake, "lr": fake, "fastai": fake}
    methods = suite.parse_methods("lr,default")
    out, work = tmp_path / "out", tmp_path / "work"
    args = dict(runners=runners, log=lambda line: None, notes=["shared CPU"])
    suite.run_suite(data, methods, out, work, **args)
    assert len(calls) == 4
    record = json.loads((out / "suite.json").read_text())
    assert record["datasets"]["one"] == {"path": str(data[0]), "train_images": 6, "test_images": 4}
    assert record["cells"]["two/lr"]["test_accuracy"] == 0.9512
    assert set(record["cells"]["two/lr"]["load_avg_1m"]) == {"start", "mean", "max"}
    table = (out / "suite.md").read_text()
    assert "| one (6 / - / 4) | 95.12% in 47 s | failed |" in table
    assert "> shared CPU" in table and "failed: boom / x" in table

    calls.clear()
    del outcome["one/default"]
    suite.run_suite(data, methods, out, work, **args)
    assert calls == [("one", "default")]  # only the failed cell ran again
    calls.clear()
    suite.run_suite(data, suite.parse_methods("lr,budget2m"), out, work, **args)
    assert calls == [("one", "budget2m"), ("two", "budget2m")]
    table = (out / "suite.md").read_text()
    assert "| two (6 / - / 4) | 95.12% in 47 s | 90.00% in 47 s | 90.00% in 47 s |" in table
    calls.clear()
    suite.run_suite(data[:1], methods, out, work, force=True, **args)
    assert calls == [("one", "lr"), ("one", "default")]


def test_timed_kills_a_command_past_its_limit():
    step = suite.timed(
        [sys.executable, "-c", "import time; print('x', flush=True); time.sleep(30)"], timeout=1.5
    )
    assert step["timed_out"] and step["wall_s"] < 10 and step["output"].startswith("x")
    assert suite.fmt_cell({"status": "timeout", "wall_s": 1.5}) == "timed out after 2 s"


def test_baseline_feature_path_on_tiny_images(make_image_folder):
    """Real Lite0 weights, generated images: features have the backbone's width; the CV fit
    scores a test set of the training images' own colours."""
    baseline = _load("linear_baseline")
    model, transform = baseline.frozen_model(image_size=64)
    data = make_image_folder(classes=("a", "b", "c"), n=6, layout="split-test")
    train, train_y = baseline.image_folder(data / "train", transform)
    test, test_y = baseline.image_folder(data / "test", transform)
    train_x = baseline.features(model, train, batch_size=8, workers=0)
    assert train_x.shape == (18, 1280) and train_y[:6] == ["a"] * 6
    result = baseline.fit_and_score(train_x, train_y, baseline.features(model, test, 8, 0), test_y)
    assert result["folds"] == 5 and result["test_accuracy"] == 1.0 and result["C"] > 0


def test_fastai_compare_reads_an_image_folder(make_image_folder):
    """The fastai side's items for a folder (fastai itself is not installed here)."""
    compare = _load("fastai_compare")
    data = make_image_folder(classes=("a", "b"), n=4, layout="split")
    shutil.copytree(data / "val", data / "test")
    items = compare.load_folder(data, train_limit=None, test_limit=None, seed=0)
    assert len(items["train_items"]) == 8 + 4 and len(items["val_items"]) == 4
    assert items["classes"] == ["a", "b"] and len(items["test_items"]) == 4
    assert all(items["get_y"](p) == p.parent.name for p in items["test_items"])
    assert not set(items["test_items"]) & set(items["train_items"])


@pytest.mark.slow
def test_fusion_bench_scores_singles_fusion_and_ensembles(tmp_path, make_image_folder, monkeypatch):
    fusion = _load("fusion")
    monkeypatch.setattr(fusion, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()
    row = {"name": "a", "backbones": ["a"], "fusion": "concat", "accuracy": 0.5,
           "train_seconds": 1.0, "images_per_second": 1.0, "parameters": 1, "test_images": 2,
           "run_dir": "r"}  # fmt: skip
    old = {"command": "c", "rows": [row], "gain_over_best_single_points": 1.27,
           "options": {"head": "mlp"}, "machine": {"cpu_count": 2}}  # fmt: skip
    (tmp_path / "results" / "fusion.json").write_text(json.dumps(old))
    data = make_image_folder(classes=("cat", "dog"), n=4, layout="split-test")
    code = fusion.main(["--data", str(data), "--name", "tiny", "--backbone", "resnet18",
                        "--backbone", "tf_efficientnet_lite0", "--weights", "none",
                        "--image-size", "32", "--head", "linear", "--epochs", "1",
                        "--out", str(tmp_path / "runs")])  # fmt: skip
    assert code == 0
    records = json.loads((tmp_path / "results" / "fusion.json").read_text())
    assert set(records) == {"fashion-mnist (64px, mlp head, 10 epochs)", "tiny"}
    rows = records["tiny"]["rows"]
    assert [r["name"] for r in rows] == [
        "resnet18", "tf_efficientnet_lite0", "fusion concat",
        "ensemble, equal weights", "ensemble, weights fitted on val",
    ]  # fmt: skip
    assert all(r["test_images"] == 4 for r in rows)  # each scored on test/
    best = max(r["accuracy"] for r in rows[:2])
    gains = records["tiny"]["gain_over_best_single_points"]
    assert gains["fusion concat"] == round(100 * (rows[2]["accuracy"] - best), 2)
    assert set(gains) == {r["name"] for r in rows[2:]}
    text = (tmp_path / "results" / "fusion.md").read_text()
    assert "## tiny" in text and "| ensemble, equal weights |" in text
    assert "fusion concat +1.27 points" in text  # the older record, kept


def test_lr_bench_warms_up_then_runs_multiples_of_the_plans_rate(tmp_path):
    budget_lr = _load("budget_lr")
    seen = []

    def fake_train(method, data, run_dir, timeout):
        seen.append(method.extra)
        lr = float(method.extra[1]) if method.extra else 0.002
        plan = {"lr": 0.002, "batch_size": 64, "strategy": "freeze:4", "probe_floor": {"kept": "x"}}
        (run_dir / "plan.json").write_text(json.dumps(plan))
        (run_dir / "metrics.csv").write_text(f"epoch,val_accuracy\n1,0.5\n2,{0.9 - lr}\n")
        return {"status": suite.DONE, "test_accuracy": 0.8, "wall_s": 1.0}

    result = budget_lr.measure(Path("/d/sign"), "2m", [0.5, 1, 2], tmp_path, fake_train)
    assert seen == [(), ("--lr", "0.001"), ("--lr", "0.002"), ("--lr", "0.004")]
    rows = result["rows"]
    assert [(r["multiple"], r["lr"]) for r in rows] == [(0.5, 0.001), (1.0, 0.002), (2.0, 0.004)]
    assert rows[0]["val_accuracy"] == pytest.approx(0.899)
    assert result["strategy"] == "freeze:4" and rows[0]["kept"] == "x"
    # a rerun of one multiple on a warm cache: no warm-up, the other rows kept
    planned = {k: result[k] for k in ("lr", "batch_size", "strategy", "warm_up")}
    again = budget_lr.measure(Path("/d/sign"), "2m", [1], tmp_path, fake_train, planned)
    assert seen[4:] == [("--lr", "0.002")]
    both = budget_lr.merged(result, again)
    assert [r["multiple"] for r in both["rows"]] == [0.5, 1.0, 2.0]
    assert both["rows"][1] is again["rows"][0]
    table = budget_lr.render({"budget": "2m", "machine": "m", "datasets": {"sign": both}})
    assert "| sign (freeze:4, 64) | 80.00% / 89.90% (0.001," in table


def test_probe_accuracy_compares_the_planned_size_on_the_path_taken(tmp_path):
    probe_accuracy = _load("probe_accuracy")
    run = tmp_path / "gradual-run"
    run.mkdir()
    plan = {
        "strategy": "gradual",
        "image_size": 128,
        "batch_size": 32,
        "candidates": [
            {"image_size": 96, "train_ips": 90.0, "stored_train_ips": None},
            {"image_size": 128, "train_ips": 60.0, "stored_train_ips": 80.0},
        ],
        "run": {"input_path": "images", "phases": [{"epochs": 1}, {"epochs": 1}, {"epochs": 3}]},
    }
    (run / "plan.json").write_text(json.dumps(plan))
    speeds = [200, 90, 50, 40, 48]  # the head alone, a partial thaw, then the whole network
    rows = "".join(f"{e + 1},{ips}\n" for e, ips in enumerate(speeds))
    (run / "metrics.csv").write_text("epoch,images_per_s\n" + rows)
    row = probe_accuracy.measure(run)
    assert (row["probe_ips"], row["epoch_ips"]) == (60.0, 48.0)  # the last phase's median
    assert row["probe_over_epoch"] == 1.25
    plan["run"] = {"input_path": "stored-stages", "phases": [{"epochs": 5}]}
    (run / "plan.json").write_text(json.dumps(plan))
    row = probe_accuracy.measure(run)  # stored stages: that probe; the first epoch warms up
    assert (row["probe_ips"], row["epoch_ips"]) == (80.0, 49.0)


def _tree(root: Path) -> None:
    for part, n in (("train", 5), ("val", 1), ("test", 2)):
        for c in ("a", "b"):
            folder = root / part / c
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.png").write_bytes(b"x")


def test_subset_draws_the_same_images_for_a_seed(tmp_path):
    subset = _load("subset")
    _tree(tmp_path / "src")
    made = [
        subset.make_subset(tmp_path / "src", tmp_path / f"s{k}", 2, [], ["val", "test"], seed)
        for k, seed in enumerate((7, 7, 8))
    ]
    assert made == [(4, 6)] * 3

    def names(k: int) -> list[str]:
        return sorted(p.name for p in (tmp_path / f"s{k}" / "train" / "a").iterdir())

    assert names(0) == names(1)
    expected = random.Random(8).sample([f"{i}.png" for i in range(5)], 2)
    assert names(2) == sorted(expected)
    test_names = sorted(p.name for p in (tmp_path / "s0" / "test" / "b").iterdir())
    assert test_names == ["test-0.png", "test-1.png", "val-0.png"]
    assert (tmp_path / "s0" / "train" / "a" / names(0)[0]).resolve().parent == (
        tmp_path / "src" / "train" / "a"
    ).resolve()
    with pytest.raises(SystemExit, match="exists"):
        subset.make_subset(tmp_path / "src", tmp_path / "s0", 2, [], ["test"], 0)
