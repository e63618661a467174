"""scripts/benchmark.py at the tiny preset: the report's structure and FLOP counts, never its timings."""

import json

import pytest

from affect_hf import benchmarking
from tests.runs import REPO_ROOT


@pytest.fixture(scope="module")
def benchmark():
    return benchmarking


def test_tiny_run_reports_every_phase(benchmark, tmp_path):
    out = tmp_path / "bench.json"
    argv = "--preset tiny --device cpu --dtype both --steps 1 --warmup 0 --inference-batch-sizes 1 2".split()
    argv += "--train-batch-size 2 --matmul-sizes 64 --matmul-time 0.01 --video-frames 3 --video-sizes 320x180".split()
    argv += "640x360 --corpus-processes 2 --corpus-videos 3 --temporal-track-frames 2500 --json".split() + [str(out)]
    report = benchmark.main(argv)

    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(report["results"]))
    assert set(report["peak"]) == {"fp32", "bf16"}
    # `--dtype auto` and `--mixed_precision auto` agree: bf16 only where this CPU computes it natively.
    auto = report["environment"]["dtype_auto"]
    assert {"fp32": "no", "bf16": "bf16"}[auto] == report["environment"]["mixed_precision_auto"]
    assert report["attention"]["vit"] == "sdpa"
    assert report["attention"]["sdpa_ops_seen"]  # the ViT really called scaled_dot_product_attention
    assert report["flops_per_image"]["training"] > report["flops_per_image"]["inference"] > 0
    phases = {(r["phase"], r["batch_size"], r["dtype"]) for r in report["results"]}
    expected = [("inference", 1), ("inference", 2), ("training", 2)]
    assert phases == {(phase, batch, dtype) for phase, batch in expected for dtype in ("fp32", "bf16")}
    for result in report["results"]:
        assert result["timed_steps"] == 1
        assert result["images_per_s"] > 0 and result["fraction_of_peak"] > 0 and result["peak_memory_gib"] > 0
    assert set(report["speedup_over_fp32"]) == {"bf16 inference_batch1", "bf16 inference_batch2",
                                                "bf16 training_batch2"}  # fmt: skip
    # End to end through `affect-hf predict` on generated two-face videos, per size: 1x and 4x long, the short one
    # through a temporal model each way, then each stage alone on the short video's frames and faces.
    end_to_end = {row["phase"]: row for row in report["end_to_end"]}
    assert list(end_to_end) == [
        name for size in ("320x180", "640x360") for name in (
            f"end-to-end, {size}", f"end-to-end, {size}, 4x longer", f"+ temporal (bidirectional), {size}",
            f"+ temporal (causal), {size}", f"decode alone, {size}", f"detect + align alone, {size}",
            f"model alone, {size}")
    ]  # fmt: skip
    assert [(row["frames"], row["faces"]) for row in report["end_to_end"]] == [(3, 6), (12, 24), *[(3, 6)] * 5] * 2
    for size in ("320x180", "640x360"):
        for kind in ("bidirectional", "causal"):
            temporal = end_to_end[f"+ temporal ({kind}), {size}"]
            assert temporal["stage_shares"]["temporal"] > 0
            assert temporal["rate_of_plain_run"] == pytest.approx(
                temporal["frames_per_s"] / end_to_end[f"end-to-end, {size}"]["frames_per_s"]
            )
    # The temporal recipe on a synthetic track: its features extracted once, then an epoch through the loop.
    track = report["temporal_track"]
    assert (track["train_frames"], track["validation_frames"]) == (2500, 250) and track["training_steps"] >= 1
    assert track["extraction_frames_per_s"] > 0 and track["epoch_seconds"] > 0 and track["features_read_back"]
    for size in ("320x180", "640x360"):
        run = end_to_end[f"end-to-end, {size}"]
        # The run's own account of its time: every stage, and together nearly all of it.
        assert set(run["stage_shares"]) == {"decode_wait", "detect", "align", "model", "pose", "track", "write"}
        assert 0.5 < sum(run["stage_shares"].values()) <= 1.0 + 1e-6
        for stage in ("decode", "detect + align", "model"):
            alone = end_to_end[f"{stage} alone, {size}"]
            assert alone["share_of_end_to_end"] == pytest.approx(run["frames_per_s"] / alone["frames_per_s"])
            assert 0 < alone["share_of_end_to_end"] < 1
        model_rate = end_to_end[f"model alone, {size}"]["frames_per_s"]
        for row in report["end_to_end"]:
            if row["size"] == size:  # each row against the model alone on the same frames
                assert row["fraction_of_model_rate"] == pytest.approx(row["frames_per_s"] / model_rate)
        assert run["peak_memory_gib"] > 0 and end_to_end[f"end-to-end, {size}, 4x longer"]["peak_memory_gib"] > 0
    # The corpus row: one process, then a launch of two sharing the cores, over the same videos (2:1:1 long).
    one, two = report["corpus"]
    assert (one["processes"], two["processes"]) == (1, 2) and one["frames"] == two["frames"] == 4 * 3
    assert one["files_per_process"] == [3] and sorted(two["files_per_process"]) == [1, 2]
    assert two["speedup_over_one_process"] == pytest.approx(two["frames_per_s"] / one["frames_per_s"])
    assert 0.3 < sum(two["stage_shares"].values()) <= 1.0 + 1e-6
    # The crowd picture of the tests, per detector: MTCNN (the default for pictures) finds every face once.
    assert set(report["crowd"]) == {"mtcnn", "blazeface"}
    assert report["crowd"]["mtcnn"]["found_once"] == report["crowd"]["mtcnn"]["faces"] == 20
    assert report["crowd"]["blazeface"]["found_once"] < 20


def test_the_device_check_runs_on_the_cpu_at_the_tiny_preset(tmp_path):
    """scripts/device_check.py as the GPU runs it, on the CPU: every dtype, parity with CPU fp32, both sizes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_check", REPO_ROOT / "scripts" / "device_check.py")
    device_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_check)
    report = device_check.main(["--device", "cpu", "--json", str(tmp_path / "check.json")])
    assert json.loads((tmp_path / "check.json").read_text())["parity"] == report["parity"]
    assert {(r["phase"], r["dtype"]) for r in report["results"]} == {
        *(("inference", dtype) for dtype in ("fp32", "bf16", "fp16")), ("training", "bf16"), ("training", "fp16")
    }  # fmt: skip
    assert {r["batch_size"] for r in report["results"] if r["phase"] == "inference"} == {1, 2}
    assert report["parity"]["fp32"] == {"expression_agreement": 1.0, "valence_arousal_max_abs_difference": 0.0,
                                        "au_agreement": 1.0}  # fmt: skip
    for dtype in ("bf16", "fp16"):  # a lower precision is close to fp32, and not identical (it really ran in it)
        assert 0 < report["parity"][dtype]["valence_arousal_max_abs_difference"] < 0.05
    assert {row["size"] for row in report["end_to_end"]} == {"320x180", "640x360"} and not report["corpus"]


@pytest.mark.parametrize("recipe", ["mae", "cotex", "dan"])
def test_every_recipe_times_the_loops_training_step(benchmark, recipe):
    argv = f"--recipe {recipe} --preset tiny --device cpu --dtype fp32 --steps 1 --warmup 0".split()
    argv += "--inference-batch-sizes 2 --train-batch-size 4 --matmul-sizes 64 --matmul-time 0.01".split()
    low = {"mae": "0.5", "cotex": "0"}.get(recipe)
    if low is not None:
        argv += ["--mask-ratios", low, "0.75"]
    report = benchmark.main(argv)
    phases = [row["phase"] for row in report["results"]]
    if recipe == "dan":
        assert phases == ["inference", "training"] and report["attention"]["vit"] is None
    else:
        assert phases == ["inference", f"training mask {low}", "training mask 0.75"]
        flops = report["flops_per_image"]
        # Only the kept patches go through the encoder: a more masked step does fewer FLOPs (CoTEX: about a quarter).
        assert flops["training mask 0.75"] < (0.6 if recipe == "cotex" else 0.95) * flops[f"training mask {low}"]
        assert set(report["speedup_over_first_mask_ratio"]) == {f"training mask 0.75 / training mask {low} (fp32)"}
    assert all(row["images_per_s"] > 0 and row["fraction_of_peak"] > 0 for row in report["results"])


def test_speedups_pairs_dtypes(benchmark):
    results = [
        {"phase": "inference", "batch_size": 1, "dtype": "fp32", "images_per_s": 2.0},
        {"phase": "inference", "batch_size": 1, "dtype": "bf16", "images_per_s": 3.0},
        {"phase": "training", "batch_size": 4, "dtype": "fp32", "images_per_s": 1.0},
    ]
    assert benchmark.speedups(results) == {"bf16 inference_batch1": 1.5}


def test_backends_time_the_same_inputs_through_torch_and_onnx_runtime(benchmark):
    argv = "--preset tiny --device cpu --dtype fp32 --steps 1 --warmup 0 --inference-batch-sizes 1 3".split()
    argv += "--train-batch-size 2 --matmul-sizes 64 --matmul-time 0.01 --video-frames 0".split()
    argv += "--backends torch onnx onnx-int8 --int8-matmul-sizes 64".split()
    report = benchmark.main(argv)
    rows = {(row["backend"], row["batch_size"]): row for row in report["backends"]}
    assert set(rows) == {(backend, batch) for backend in ("torch", "onnx", "onnx-int8") for batch in (1, 3)}
    assert report["peak"]["int8"]["flops_per_s"] > 0 and rows[("onnx-int8", 3)]["peak_precision"] == "int8"
    assert all(row["images_per_s"] > 0 and row["fraction_of_peak"] > 0 for row in rows.values())
    for (_, batch), row in rows.items():
        expected = row["images_per_s"] / rows[("torch", batch)]["images_per_s"]
        assert row["speedup_over_torch_fp32"] == pytest.approx(expected)
    assert max(max(values.values()) for values in report["onnx_parity_max_abs_difference"].values()) < 1e-4
