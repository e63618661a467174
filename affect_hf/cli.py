"""`affect-hf` command line: demo, train (any recipe), make-synthetic, convert (checkpoints), predict (faces in
pictures and videos -> a table), app (a web page), evaluate (a report), export (ONNX), predict-abaw and
validate-submission (ABAW test sets)."""

import argparse
import json
import sys
from pathlib import Path

from .files import write_text_atomically


DEMO_SCORES = ("P_VA", "P_EXPR", "P_AU", "P_MTL")
SYNTHETIC_KINDS = ("mtl", "tracks", "lsd", "affectnet", "faces")


def run_demo(output_dir: str, num_train: int, num_validation: int, epochs: int, seed: int) -> dict:
    """Synthetic ABAW data -> tiny EMMA trained through the real loop -> scores -> Hub folder -> pipeline."""
    from transformers import pipeline

    from .data import make_synthetic_abaw
    from .training import TrainingArguments, train
    from .training.recipes.emma import EmmaArguments

    output = Path(output_dir)
    # The demo owns its folder: a second demo writes over the first.
    data_dir = make_synthetic_abaw(
        output / "data", num_train=num_train, num_validation=num_validation, num_test=8, seed=seed, overwrite=True
    )
    args = TrainingArguments(
        recipe="emma",
        output_dir=str(output / "run"),
        overwrite_output_dir=True,
        num_train_epochs=epochs,
        warmup_epochs=1,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        base_learning_rate=8e-3,
        mixed_precision="auto",
        num_workers=0,
        report_to="none",
        eval_on_start=True,
        seed=seed,
    )
    emma_args = EmmaArguments(data_dir=str(data_dir), model_config="tiny", layer_decay=0.9, drop_path_rate=0.0)
    state = train(args, emma_args)
    untrained, best = state["history"][0], state["best_scores"]
    print("\nABAW scores on the synthetic validation split:")
    print(f"{'':12s}" + "".join(f"{name:>10s}" for name in DEMO_SCORES))
    print(f"{'untrained':12s}" + "".join(f"{untrained[name]:10.3f}" for name in DEMO_SCORES))
    print(f"{'trained':12s}" + "".join(f"{best[name]:10.3f}" for name in DEMO_SCORES))

    model_dir = output / "run" / "best_model"
    print(f"\nsaved model folder: {model_dir}")
    classifier = pipeline("image-classification", model=str(model_dir), trust_remote_code=True)
    images = sorted((Path(data_dir) / "cropped_aligned").rglob("*.jpg"))[:3]
    for image in images:
        top = classifier(str(image), top_k=2)
        print(f"{image.relative_to(data_dir)}: " + ", ".join(f"{p['label']} {p['score']:.2f}" for p in top))
    return {"untrained": untrained, "trained": best, "model_dir": str(model_dir)}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="affect-hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train a tiny EMMA on synthetic ABAW data (about a minute on CPU)")
    demo.add_argument("--output_dir", default="affect_hf_demo")
    demo.add_argument("--num_train", type=int, default=2048)
    demo.add_argument("--num_validation", type=int, default=512)
    demo.add_argument("--epochs", type=int, default=6)
    demo.add_argument("--seed", type=int, default=0)

    commands.add_parser("train", help="train (same options as scripts/train.py)", add_help=False)

    synthetic = commands.add_parser(
        "make-synthetic",
        help="write synthetic data in a real layout: ABAW4 MTL or the Aff-Wild2 uni-task tracks (for emma), ABAW4 LSD "
        "(cotex), AffectNet (dan) or unlabeled faces (mae)",
    )
    synthetic.add_argument("root", help="an empty or new folder")
    synthetic.add_argument("--kind", default="mtl", choices=SYNTHETIC_KINDS)
    synthetic.add_argument("--num_train", type=int, default=2048, help="mtl, tracks: frames; lsd, affectnet: per class")
    synthetic.add_argument(
        "--num_validation", type=int, default=512, help="mtl, tracks: frames; lsd, affectnet: per class"
    )
    synthetic.add_argument("--num_test", type=int, default=128, help="mtl: test frames")
    synthetic.add_argument("--num_images", type=int, default=1024, help="faces: images")
    synthetic.add_argument("--num_corrupt", type=int, default=0, help="faces: broken files among them")
    synthetic.add_argument("--images_per_shard", type=int, default=0, help="faces: pack into .tar shards of N")
    synthetic.add_argument("--layout", default=None, help="lsd: abaw or authors; affectnet: folders or csv")
    synthetic.add_argument("--seed", type=int, default=0)

    converter = commands.add_parser(
        "convert", help="convert a released checkpoint (MAE, timm ViT, the authors' DAN, EMMA, CoTEX) to a model folder"
    )
    converter.add_argument("checkpoint", help="a .pth / .pkl file (read with torch.load(weights_only=True))")
    converter.add_argument("output_dir")
    converter.add_argument("--kind", default=None, help="what the file holds (affect_hf.convert); default: detected")
    converter.add_argument(
        "--allow-missing", action="append", default=[], metavar="PATTERN",
        help="model tensors (fnmatch) that may stay initialised when the checkpoint lacks them",
    )  # fmt: skip
    converter.add_argument("--image_size", type=int, default=None, help="interpolate position embeddings to it")
    converter.add_argument("--num_attention_heads", type=int, default=None, help="the ViT's (default: MAE's)")
    converter.add_argument("--decoder_num_attention_heads", type=int, default=None, help="MAE decoder's (16)")

    predict = commands.add_parser("predict-abaw", help="predict an ABAW test list and write the submission file")
    predict.add_argument(
        "--model", required=True, help="a saved model folder (EMMA for mtl, CoTEX or 6 classes for lsd)"
    )
    predict.add_argument("--data_dir", required=True, help="the track's root (with its test list)")
    predict.add_argument("--track", required=True, choices=("mtl", "lsd", "va", "expr", "au"))
    predict.add_argument("--output", required=True, help="the submission file to write")
    predict.add_argument("--batch_size", type=int, default=64)
    predict.add_argument("--num_workers", type=int, default=2)
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    predict.add_argument("--save_every", type=int, default=50, help="batches between saves of the progress")
    predict.add_argument("--max_batches", type=int, default=None, help="stop after N batches (resume later)")
    predict.add_argument("--image_dir", default=None, help="where the test images live, if not under data_dir")
    predict.add_argument(
        "--test_list", default=None, help="va, expr, au: the organisers' sample file listing every test frame"
    )

    analyse = commands.add_parser(
        "predict",
        help="faces in pictures, folders and videos -> valence, arousal, expressions and AUs per frame x face",
        description="Writes one row per frame x face (a row with an empty face_id for a frame without a face), "
        "streamed to disk as it goes; Ctrl-C keeps every row so far. Videos need `pip install affect-hf[video]`, "
        "--plots needs `affect-hf[plots]`.",
    )
    analyse.add_argument("paths", nargs="+", metavar="PATH", help="pictures, videos or folders of them")
    analyse.add_argument("--model", required=True, help="a saved affect model folder or Hub id (EMMA, CoTEX, DAN)")
    analyse.add_argument("--output", required=True, help="the table to write: FILE.csv or FILE.parquet")
    analyse.add_argument("--batch_size", type=int, default=16, help="frames per batch to the detector and model")
    analyse.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    analyse.add_argument("--every_n_frames", type=int, default=1, help="analyse one video frame in N")
    analyse.add_argument("--max_faces", type=int, default=None, help="at most N faces per frame (the most certain)")
    analyse.add_argument("--min_face_score", type=float, default=0.5, help="the detector's score threshold")
    analyse.add_argument(
        "--smoothing", type=float, default=0.0, metavar="SECONDS",
        help="time constant of an exponential moving average of each face's outputs (0: off)",
    )  # fmt: skip
    analyse.add_argument("--max_gap", type=float, default=1.0, help="seconds a lost face keeps its id")
    analyse.add_argument("--max_seconds", type=float, default=None, help="analyse only each video's first N seconds")
    analyse.add_argument(
        "--plots", nargs="?", const="", default=None, metavar="DIR",
        help="write PNG plots per video (default folder: OUTPUT without suffix + _plots)",
    )  # fmt: skip
    analyse.add_argument("--overlay", default=None, metavar="OUT.mp4", help="the video with faces and labels drawn")
    analyse.add_argument(
        "--backend", default="torch", choices=("torch", "onnx", "onnx-int8"),
        help="onnx, onnx-int8: run an `affect-hf export onnx` folder (--model, or its onnx/ subfolder) on the CPU",
    )  # fmt: skip

    app = commands.add_parser("app", help="a web page (Gradio) showing a model's answers on images and videos")
    app.add_argument("--model", required=True, help="a saved affect model folder or Hub id")
    app.add_argument("--port", type=int, default=None)
    app.add_argument("--device", default="auto")
    app.add_argument("--max_video_seconds", type=float, default=30.0, help="longer videos are cut there")
    app.add_argument("--share", action="store_true", help="a public gradio.live link")

    evaluator = commands.add_parser(
        "evaluate", help="score a model (or two, side by side) on a labelled split: scores.json and report.html"
    )
    evaluator.add_argument(
        "--model", required=True, action="append", help="a saved model folder; give twice to compare"
    )
    evaluator.add_argument("--data_dir", required=True, help="the track's root (its validation split is scored)")
    evaluator.add_argument("--track", required=True, choices=("mtl", "va", "expr", "au", "lsd"))
    evaluator.add_argument("--output_dir", required=True)
    evaluator.add_argument("--batch_size", type=int, default=64)
    evaluator.add_argument("--num_workers", type=int, default=0)
    evaluator.add_argument("--device", default="auto")

    exporter = commands.add_parser("export", help="export a model for other runtimes (ONNX)")
    exporter.add_argument("format", choices=("onnx",))
    exporter.add_argument("--model", required=True, help="a saved EMMA, CoTEX or DAN folder")
    exporter.add_argument("--output", default=None, help="the folder to write (default: MODEL/onnx)")
    exporter.add_argument("--quantize", choices=("dynamic", "static"), default=None, help="also write an int8 model")
    exporter.add_argument("--calibration_dir", default=None, help="face images for static quantisation")
    exporter.add_argument(
        "--validation_dir", default=None,
        help="face images to check parity on, and to count the decisions int8 changes",
    )  # fmt: skip
    exporter.add_argument("--max_images", type=int, default=256, help="faces used from each folder")

    validate = commands.add_parser("validate-submission", help="check a submission file against the test list")
    validate.add_argument("file")
    validate.add_argument("--track", required=True, choices=("mtl", "lsd", "va", "expr", "au"))
    validate.add_argument("--data_dir", default=".", help="the track's root (with its test list; mtl and lsd)")
    validate.add_argument("--test_list", default=None, help="va, expr, au: the organisers' sample file")

    if argv[:1] == ["train"]:
        from .training import main as train_main

        train_main(argv[1:])
        return
    args = parser.parse_args(argv)
    if args.command == "demo":
        result = run_demo(args.output_dir, args.num_train, args.num_validation, args.epochs, args.seed)
        write_text_atomically(Path(args.output_dir) / "demo_scores.json", json.dumps(result, indent=2))
    elif args.command == "predict-abaw":
        from .inference import predict_abaw

        try:
            written = predict_abaw(
                args.model, args.data_dir, args.track, args.output, batch_size=args.batch_size,
                num_workers=args.num_workers, device=args.device, save_every=args.save_every,
                max_batches=args.max_batches, image_dir=args.image_dir, test_list=args.test_list,
            )  # fmt: skip
        except (OSError, ValueError) as error:  # a missing folder or model, a bad list, a refused submission
            parser.exit(1, f"affect-hf predict-abaw: error: {error}\n")
        print(written if written is not None else f"stopped early; run again to resume ({args.output}.partial.npz)")
    elif args.command == "predict":
        run_predict(parser, args)
    elif args.command == "app":
        try:
            from .app import launch_app

            launch_app(args.model, port=args.port, device=args.device, max_video_seconds=args.max_video_seconds,
                       share=args.share)  # fmt: skip
        except (OSError, ValueError, ImportError) as error:
            parser.exit(1, f"affect-hf app: error: {error}\n")
    elif args.command == "evaluate":
        from .report import evaluate_models

        if len(args.model) > 2:
            parser.exit(2, "affect-hf evaluate: error: --model at most twice (a side-by-side of two models)\n")
        try:
            results = evaluate_models(
                args.model, args.data_dir, args.track, args.output_dir, batch_size=args.batch_size,
                num_workers=args.num_workers, device=args.device,
            )  # fmt: skip
        except (OSError, ValueError) as error:
            parser.exit(1, f"affect-hf evaluate: error: {error}\n")
        for key, entry in results["models"].items():
            print(
                f"{key} ({entry['path']}): "
                + ", ".join(
                    f"{n} {v:.4f}" for n, v in entry["scores"].items() if n.startswith(("P_", "f1_macro", "accuracy"))
                )
            )
            for task, reason in entry["unavailable"].items():
                print(f"  {task}: unavailable ({reason})")
        print(f"report: {Path(args.output_dir) / 'report.html'}")
    elif args.command == "export":
        from .export import export_onnx

        try:
            record = export_onnx(
                args.model, args.output or Path(args.model) / "onnx", quantize=args.quantize,
                calibration_dir=args.calibration_dir, validation_dir=args.validation_dir, max_images=args.max_images,
            )  # fmt: skip
        except (OSError, ValueError, ImportError) as error:  # not an affect model, a parity failure, no onnxruntime
            parser.exit(1, f"affect-hf export: error: {error}\n")
        print(json.dumps(record, indent=2))
    elif args.command == "validate-submission":
        from .inference import SubmissionError, abaw_test_names, validate_submission

        try:
            names = abaw_test_names(args.data_dir, args.track, args.test_list)
            count = validate_submission(args.file, args.track, names)
        except (SubmissionError, FileNotFoundError, ValueError) as error:
            parser.exit(1, f"affect-hf validate-submission: error: {error}\n")
        print(f"{args.file}: {count} predictions, every test image once and in order")
    elif args.command == "convert":
        from .convert import convert_to_folder

        try:
            conversion = convert_to_folder(
                args.checkpoint, args.output_dir, kind=args.kind, allow_missing=tuple(args.allow_missing),
                image_size=args.image_size, num_attention_heads=args.num_attention_heads,
                decoder_num_attention_heads=args.decoder_num_attention_heads,
            )  # fmt: skip
        except (ValueError, FileNotFoundError) as error:  # CheckpointError is a ValueError
            parser.exit(2, f"affect-hf convert: error: {error}\n")
        print(json.dumps(conversion.record(), indent=2))
    elif args.command == "make-synthetic":
        try:
            print(make_synthetic(args))
        except (FileExistsError, ValueError) as error:
            parser.exit(2, f"affect-hf make-synthetic: error: {error}\n")


def run_predict(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`affect-hf predict`: exit 0 with rows written, 1 when nothing could be analysed, 130 on Ctrl-C (rows kept)."""
    from .inference.video import predict

    plots = args.plots
    if plots == "":
        plots = str(Path(args.output).with_suffix("")) + "_plots"
    try:
        summary = predict(
            args.paths, args.model, args.output, batch_size=args.batch_size, device=args.device,
            every_n_frames=args.every_n_frames, max_faces=args.max_faces, min_face_score=args.min_face_score,
            smoothing=args.smoothing, max_gap=args.max_gap, plots_dir=plots, overlay=args.overlay,
            backend=args.backend, max_seconds=args.max_seconds,
        )  # fmt: skip
    except (OSError, ValueError, ImportError) as error:  # missing paths, not an affect model, a bad output name
        parser.exit(1, f"affect-hf predict: error: {error}\n")
    media = summary.media
    print(
        f"{summary.output}: {summary.rows} rows, {summary.frames} frames ({media.images} pictures, {media.videos} "
        f"videos), {summary.faces} faces, {summary.frames_without_face} frames without a face, "
        f"{summary.frames_per_second:.1f} frames/s"
    )
    for path, reason in media.skipped:
        print(f"skipped {path}: {reason}")
    for path, count in media.corrupt_packets.items():
        print(f"{path}: {count} unreadable packet(s) skipped")
    for path, seconds in media.cut_at_seconds.items():
        print(f"{path}: cut at {seconds:g} s (--max_seconds)")
    for path in summary.plots:
        print(f"plot: {path}")
    if args.overlay:
        print(f"overlay: {args.overlay}" if Path(args.overlay).is_file() else "no overlay: no video among the inputs")
    if summary.interrupted:
        kept = f"the {summary.rows} rows so far are in {summary.output}" if summary.frames else "nothing was written"
        parser.exit(130, f"interrupted: {kept}\n")
    if not summary.frames:
        parser.exit(1, f"affect-hf predict: error: nothing could be read from {' '.join(args.paths)}\n")


def make_synthetic(args: argparse.Namespace) -> Path:
    """Write the synthetic set `args.kind` under `args.root` (which must be empty or new)."""
    from .data import make_synthetic_abaw
    from .data.synthetic_faces import make_synthetic_affectnet, make_synthetic_faces, make_synthetic_lsd

    if args.kind in ("mtl", "tracks"):
        return make_synthetic_abaw(
            args.root, num_train=args.num_train, num_validation=args.num_validation, num_test=args.num_test,
            seed=args.seed, layout=args.kind,
        )  # fmt: skip
    if args.kind == "faces":
        return make_synthetic_faces(
            args.root, num_images=args.num_images, num_corrupt=args.num_corrupt,
            images_per_shard=args.images_per_shard, seed=args.seed,
        )  # fmt: skip
    make = make_synthetic_lsd if args.kind == "lsd" else make_synthetic_affectnet
    layout = {"layout": args.layout} if args.layout else {}
    return make(
        args.root, num_train_per_class=args.num_train, num_validation_per_class=args.num_validation, seed=args.seed,
        **layout,
    )  # fmt: skip


if __name__ == "__main__":
    main()
