"""scripts/benchmark.py at the tiny preset: the report's structure and FLOP counts, never its timings."""

import json

import pytest

from affect_hf import benchmarking


@pytest.fixture(scope="module")
def benchmark():
    return benchmarking


def test_tiny_run_reports_every_phase(benchmark, tmp_path):
    out = tmp_path / "bench.json"
    argv = "--preset tiny --device cpu --dtype both --steps 1 --warmup 0 --inference-batch-sizes 1 2".split()
    argv += "--train-batch-size 2 --matmul-sizes 64 --matmul-time 0.01 --video-frames 3 --json".split() + [str(out)]
    report = benchmark.main(argv)

    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(report["results"]))
    assert set(report["peak"]) == {"fp32", "bf16"}
    assert report["attention"]["vit"] == "sdpa"
    assert report["attention"]["sdpa_ops_seen"]  # the ViT really called scaled_dot_product_attention
    assert report["flops_per_image"]["training"] > report["flops_per_image"]["inference"] > 0
    phases = {(r["phase"], r["batch_size"], r["dtype"]) for r in report["results"]}
    expected = [("inference", 1), ("inference", 2), ("training", 2)]
    assert phases == {(phase, batch, dtype) for phase, batch in expected for dtype in ("fp32", "bf16")}
    for result in report["results"]:
        assert result["timed_steps"] == 1
        assert result["images_per_s"] > 0 and result["fraction_of_peak"] > 0 and result["peak_memory_gib"] > 0
    assert set(report["speedup_bf16_over_fp32"]) == {"inference_batch1", "inference_batch2", "training_batch2"}
    # End to end through `affect-hf predict` on a generated two-face video and one 4x longer, then its parts alone.
    end_to_end = {row["phase"]: row for row in report["end_to_end"]}
    assert list(end_to_end) == [
        "end-to-end, short video", "end-to-end, 4x longer video", "detect + align alone (same frames)",
        "detect + align alone, 1920x1080", "model alone (same faces)",
    ]  # fmt: skip
    frames_and_faces = [(row["frames"], row["faces"]) for row in report["end_to_end"]]
    assert frames_and_faces == [(3, 6), (12, 24), (3, 6), (3, 6), (3, 6)]
    detection = end_to_end["detect + align alone (same frames)"]
    assert detection["share_of_end_to_end"] == pytest.approx(
        end_to_end["end-to-end, short video"]["frames_per_s"] / detection["frames_per_s"]
    )
    assert detection["share_of_end_to_end"] > 0
    # The crowd picture of the tests, per detector: MTCNN (the default for pictures) finds every face once.
    assert set(report["crowd"]) == {"mtcnn", "blazeface"}
    assert report["crowd"]["mtcnn"]["found_once"] == report["crowd"]["mtcnn"]["faces"] == 20
    assert report["crowd"]["blazeface"]["found_once"] < 20
    model_rate = end_to_end["model alone (same faces)"]["frames_per_s"]
    for row in report["end_to_end"]:  # each row against the model alone on the same frames
        assert row["fraction_of_model_rate"] == pytest.approx(row["frames_per_s"] / model_rate)
    assert all(row["frames_per_s"] > 0 for row in report["end_to_end"])
    assert end_to_end["end-to-end, short video"]["peak_memory_gib"] > 0


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
    assert benchmark.speedups(results) == {"inference_batch1": 1.5}


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
