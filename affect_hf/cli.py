"""`affect-hf` command line (also `python -m affect_hf`): demo, train (any recipe), make-synthetic, convert
(checkpoints), predict (faces in pictures and videos -> a table), app (a web page), evaluate (a report), export
(ONNX), predict-abaw and validate-submission (ABAW test sets).

Each command is a pair beside each other: `<name>_arguments(parser)` declares its options and `<name>(args)` runs
it; `COMMANDS` lists them. A user's mistake (a missing file, a wrong option value, a model of the wrong kind, a
missing extra) ends in one line naming it and exit status 1; `--debug` shows the traceback instead. Ctrl-C ends
with status 130.
"""

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .files import write_text_atomically


# What a user can cause and mend: bad paths and files (OSError, also a damaged training state), bad values and
# models of the wrong kind (ValueError), a training loss gone to NaN (FloatingPointError: lower the rate), a missing
# optional package (an ImportError from outside this package, see `is_user_error`). Anything else is a bug and
# keeps its traceback.
USER_ERRORS = (OSError, ValueError, FloatingPointError, ImportError)
DEMO_SCORES = ("P_VA", "P_EXPR", "P_AU", "P_MTL")
SYNTHETIC_KINDS = ("mtl", "tracks", "lsd", "affectnet", "faces")
TRACKS = ("mtl", "lsd", "va", "expr", "au")


class CommandFailed(Exception):
    """A command that ran but must end with a non-zero status (its message already said why, or says it now)."""

    def __init__(self, status: int, message: str = ""):
        super().__init__(message)
        self.status, self.message = status, message


# ---------------------------------------------------------------------------------------------------------- demo


def demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default="affect_hf_demo")
    parser.add_argument("--num_train", type=int, default=2048)
    parser.add_argument("--num_validation", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)


def demo(args: argparse.Namespace) -> None:
    """Synthetic ABAW data -> tiny EMMA trained through the real loop -> scores -> Hub folder -> pipeline."""
    from transformers import pipeline

    from .data import make_synthetic_abaw
    from .training import TrainingArguments, get_recipe, train

    output = Path(args.output_dir)
    # The demo owns its folder: a second demo writes over the first.
    data_dir = make_synthetic_abaw(
        output / "data", num_train=args.num_train, num_validation=args.num_validation, num_test=8, seed=args.seed,
        overwrite=True,
    )  # fmt: skip
    training_args = TrainingArguments(
        recipe="emma", output_dir=str(output / "run"), overwrite_output_dir=True, num_train_epochs=args.epochs,
        warmup_epochs=1, per_device_train_batch_size=32, per_device_eval_batch_size=128, base_learning_rate=8e-3,
        mixed_precision="auto", num_workers=0, report_to="none", eval_on_start=True, seed=args.seed,
    )  # fmt: skip
    emma_args = get_recipe("emma").arguments_class(
        data_dir=str(data_dir), model_config="tiny", layer_decay=0.9, drop_path_rate=0.0
    )
    state = train(training_args, emma_args)
    untrained, best = state["history"][0], state["best_scores"]
    print("\nABAW scores on the synthetic validation split:")
    print(f"{'':12s}" + "".join(f"{name:>10s}" for name in DEMO_SCORES))
    print(f"{'untrained':12s}" + "".join(f"{untrained[name]:10.3f}" for name in DEMO_SCORES))
    print(f"{'trained':12s}" + "".join(f"{best[name]:10.3f}" for name in DEMO_SCORES))

    model_dir = output / "run" / "best_model"
    print(f"\nsaved model folder: {model_dir}")
    classifier = pipeline("image-classification", model=str(model_dir), trust_remote_code=True)
    for image in sorted((Path(data_dir) / "cropped_aligned").rglob("*.jpg"))[:3]:
        top = classifier(str(image), top_k=2)
        print(f"{image.relative_to(data_dir)}: " + ", ".join(f"{p['label']} {p['score']:.2f}" for p in top))
    result = {"untrained": untrained, "trained": best, "model_dir": str(model_dir)}
    write_text_atomically(output / "demo_scores.json", json.dumps(result, indent=2))


# --------------------------------------------------------------------------------------------------------- train


def train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("options", nargs=argparse.REMAINDER, help="scripts/train.py's options (--recipe X --help)")


def train_command(args: argparse.Namespace) -> None:
    from .training import main as train_main

    train_main(args.options)


# ------------------------------------------------------------------------------------------------ make-synthetic


def make_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="an empty or new folder")
    parser.add_argument("--kind", default="mtl", choices=SYNTHETIC_KINDS)
    parser.add_argument("--num_train", type=int, default=2048, help="mtl, tracks: frames; lsd, affectnet: per class")
    parser.add_argument(
        "--num_validation", type=int, default=512, help="mtl, tracks: frames; lsd, affectnet: per class"
    )
    parser.add_argument("--num_test", type=int, default=128, help="mtl: test frames")
    parser.add_argument("--num_images", type=int, default=1024, help="faces: images")
    parser.add_argument("--num_corrupt", type=int, default=0, help="faces: broken files among them")
    parser.add_argument("--images_per_shard", type=int, default=0, help="faces: pack into .tar shards of N")
    parser.add_argument("--layout", default=None, help="lsd: abaw or authors; affectnet: folders or csv")
    parser.add_argument("--seed", type=int, default=0)


def make_synthetic(args: argparse.Namespace) -> None:
    """Write the synthetic set `args.kind` under `args.root` (which must be empty or new)."""
    from .data import make_synthetic_abaw, make_synthetic_affectnet, make_synthetic_faces, make_synthetic_lsd

    if args.kind in ("mtl", "tracks"):
        root = make_synthetic_abaw(
            args.root, num_train=args.num_train, num_validation=args.num_validation, num_test=args.num_test,
            seed=args.seed, layout=args.kind,
        )  # fmt: skip
    elif args.kind == "faces":
        root = make_synthetic_faces(
            args.root, num_images=args.num_images, num_corrupt=args.num_corrupt,
            images_per_shard=args.images_per_shard, seed=args.seed,
        )  # fmt: skip
    else:
        make = make_synthetic_lsd if args.kind == "lsd" else make_synthetic_affectnet
        layout = {"layout": args.layout} if args.layout else {}
        root = make(
            args.root, num_train_per_class=args.num_train, num_validation_per_class=args.num_validation,
            seed=args.seed, **layout,
        )  # fmt: skip
    print(root)


# ------------------------------------------------------------------------------------------------------- convert


def convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pth / .pkl file (read with torch.load(weights_only=True))")
    parser.add_argument("output_dir")
    parser.add_argument("--kind", default=None, help="what the file holds (affect_hf.convert); default: detected")
    parser.add_argument(
        "--allow-missing", action="append", default=[], metavar="PATTERN",
        help="model tensors (fnmatch) that may stay initialised when the checkpoint lacks them",
    )  # fmt: skip
    parser.add_argument("--image_size", type=int, default=None, help="interpolate position embeddings to it")
    parser.add_argument("--num_attention_heads", type=int, default=None, help="the ViT's (default: MAE's)")
    parser.add_argument("--decoder_num_attention_heads", type=int, default=None, help="MAE decoder's (16)")


def convert(args: argparse.Namespace) -> None:
    from .convert import convert_to_folder

    conversion = convert_to_folder(
        args.checkpoint, args.output_dir, kind=args.kind, allow_missing=tuple(args.allow_missing),
        image_size=args.image_size, num_attention_heads=args.num_attention_heads,
        decoder_num_attention_heads=args.decoder_num_attention_heads,
    )  # fmt: skip
    print(json.dumps(conversion.record(), indent=2))


# ------------------------------------------------------------------------------------------------------- predict


def model_arguments(
    parser: argparse.ArgumentParser, what: str = "a saved affect model folder or Hub id", repeat: bool = False
) -> None:
    """How every inference command names its model and where it runs (`affect_hf.models`)."""
    from .models import BACKENDS, DEVICE_CHOICES, DTYPE_CHOICES

    parser.add_argument("--model", required=True, action="append" if repeat else "store", help=what)
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES)
    parser.add_argument(
        "--backend", default="torch", choices=BACKENDS,
        help="onnx, onnx-int8: run an `affect-hf export onnx` folder (--model, or its onnx/ subfolder) on the CPU",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES,
        help="the model's precision; auto: bf16 where the device computes it natively, fp16 on older GPUs, else fp32",
    )  # fmt: skip


def temporal_arguments(parser: argparse.ArgumentParser) -> None:
    """How a command runs a temporal model over each tracked face, with --model as its frame model."""
    parser.add_argument(
        "--temporal", default=None, metavar="DIR",
        help="a --recipe temporal folder or Hub id: its answers over each tracked face's frames, in the usual columns "
        "(--model is its frame model: the EMMA it was trained on)",
    )  # fmt: skip
    parser.add_argument(
        "--strict", action="store_true", help="with --temporal: refuse a --model whose weights are not the ones it read"
    )


def face_arguments(parser: argparse.ArgumentParser) -> None:
    """How every command that finds faces finds them (`affect_hf.faces`)."""
    from .faces import DETECTORS

    parser.add_argument(
        "--detector", default="auto", choices=sorted(DETECTORS),
        help="auto: MTCNN for pictures (small, turned, crowded faces), BlazeFace for video frames (fast)",
    )  # fmt: skip
    parser.add_argument("--max_faces", type=int, default=None, help="at most N faces per frame (the most certain)")
    parser.add_argument(
        "--min_face_score", type=float, default=None, help="the detector's score threshold, in [0, 1] (its default)"
    )


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    from .data.pictures import MAX_PIXELS

    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="pictures, videos, folders of them, or .txt lists of their paths"
    )
    parser.add_argument(
        "--dataset", default=None, metavar="NAME_OR_PATH",
        help="also a `datasets` dataset (a save_to_disk folder, files load_dataset reads, or a Hub id)",
    )  # fmt: skip
    parser.add_argument("--split", default="train", help="--dataset: its split")
    parser.add_argument("--column", default=None, help="--dataset: its Image or Video column (default: the one)")
    model_arguments(parser, "a saved affect model folder or Hub id (EMMA, CoTEX or DAN)")
    parser.add_argument("--output", required=True, help="the table: FILE.csv, or a Parquet folder (FOLDER.parquet)")
    parser.add_argument("--batch_size", type=int, default=16, help="frames per batch to the detector and model")
    parser.add_argument("--every_n_frames", type=int, default=1, help="analyse one video frame in N")
    face_arguments(parser)
    parser.add_argument(
        "--smoothing", type=float, default=0.0, metavar="SECONDS",
        help="time constant of an exponential moving average of each face's outputs (0: off)",
    )  # fmt: skip
    parser.add_argument("--max_gap", type=float, default=2.0, help="seconds a lost face keeps its id")
    temporal_arguments(parser)
    parser.add_argument(
        "--max_track_seconds", type=float, default=60.0,
        help="a bidirectional --temporal model holds each face's rows until its track ends or spans this long (to the "
        "next window boundary), then cuts it, which changes no answer: the table is behind the video by up to this "
        "plus a window plus --max_gap",
    )  # fmt: skip
    parser.add_argument(
        "--keep_frame_outputs", action="store_true",
        help="with --temporal: the frame model's own answers too, in the same columns prefixed frame_",
    )  # fmt: skip
    parser.add_argument("--max_seconds", type=float, default=None, help="analyse only each video's first N seconds")
    parser.add_argument(
        "--max_pixels", type=int, default=MAX_PIXELS,
        help="pictures with more pixels are skipped (the default admits 12000 x 12000 photos)",
    )  # fmt: skip
    parser.add_argument(
        "--plots", nargs="?", const="", default=None, metavar="DIR",
        help="write PNG plots per video (default folder: OUTPUT without suffix + _plots)",
    )  # fmt: skip
    parser.add_argument("--overlay", default=None, metavar="OUT.mp4", help="the video with faces and labels drawn")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue a stopped or killed run into OUTPUT: finished inputs are kept, an unfinished one is redone",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")


def predict_command(args: argparse.Namespace) -> None:
    """Exit 0 with rows written, 1 when nothing could be analysed, 130 on Ctrl-C (rows kept)."""
    from .inference.media import load_dataset_rows
    from .inference.predict import predict

    plots = args.plots
    if plots == "":
        plots = str(Path(args.output).with_suffix("")) + "_plots"
    if not args.paths and args.dataset is None:
        raise ValueError("nothing to analyse: give PATHs, or --dataset")
    inputs = [*args.paths, *(load_dataset_rows(args.dataset, args.split, args.column) if args.dataset else [])]
    summary = predict(
        inputs, args.model, args.output, batch_size=args.batch_size, device=args.device,
        every_n_frames=args.every_n_frames, max_faces=args.max_faces, min_face_score=args.min_face_score,
        detector=args.detector,
        smoothing=args.smoothing, max_gap=args.max_gap, plots_dir=plots, overlay=args.overlay,
        backend=args.backend, dtype=args.dtype, max_seconds=args.max_seconds, max_pixels=args.max_pixels,
        resume=args.resume, overwrite=args.overwrite, temporal=args.temporal, strict=args.strict,
        max_track_seconds=args.max_track_seconds, keep_frame_outputs=args.keep_frame_outputs,
    )  # fmt: skip
    if not summary.is_main_process:  # the first process of the launch reports for all of them
        if summary.interrupted:
            raise CommandFailed(130, f"interrupted: this process's rows so far are in {summary.output}")
        return
    media = summary.media
    if summary.resumed_inputs:
        print(f"resumed: {summary.resumed_inputs} of {summary.inputs} inputs were finished before")
    processes = f", {summary.processes} processes" if summary.processes > 1 else ""
    print(
        f"{summary.output}: {summary.rows} rows, {summary.frames} frames ({media.images} pictures, {media.videos} "
        f"videos), {summary.faces} faces, {summary.frames_without_face} frames without a face, "
        f"{summary.frames_per_second:.3g} frames/s{processes}"
    )
    for path, reason in media.skipped:
        print(f"skipped {path}: {reason}")
    for path, count in media.corrupt_packets.items():
        print(f"{path}: {count} unreadable packet(s) skipped")
    for path, seconds in media.cut_at_seconds.items():
        print(f"{path}: cut at {seconds:g} s (--max_seconds)")
    for path, (read, declared) in media.cut_short.items():
        print(f"{path}: cut short: its frames end at {read:.2f} s of the {declared:.2f} s its header declares")
    for path in summary.plots:
        print(f"plot: {path}")
    if args.overlay:
        print(f"overlay: {args.overlay}" if Path(args.overlay).is_file() else "no overlay: no video among the inputs")
    if summary.interrupted:
        kept = f"the rows so far are in {summary.output}; add --resume to continue" if summary.frames else (
            "nothing was written"
        )  # fmt: skip
        raise CommandFailed(130, f"interrupted: {kept}")
    if not summary.frames and summary.resumed_inputs < summary.inputs:
        raise CommandFailed(1, f"nothing could be read from {' '.join([*args.paths, args.dataset or ''])}")


# ----------------------------------------------------------------------------------------------------------- app


def app_arguments(parser: argparse.ArgumentParser) -> None:
    model_arguments(parser)
    face_arguments(parser)
    temporal_arguments(parser)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--max_video_seconds", type=float, default=30.0, help="longer videos are cut there")
    parser.add_argument("--share", action="store_true", help="a public gradio.live link")


def app(args: argparse.Namespace) -> None:
    from .app import launch_app

    launch_app(args.model, port=args.port, device=args.device, max_video_seconds=args.max_video_seconds,
               share=args.share, backend=args.backend, dtype=args.dtype, detector=args.detector,
               max_faces=args.max_faces, min_face_score=args.min_face_score, temporal=args.temporal,
               strict=args.strict)  # fmt: skip


# ------------------------------------------------------------------------------------------------------ evaluate


def evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluation import EVALUATION_TRACKS

    model_arguments(parser, "a saved model folder or Hub id; give twice to compare two", repeat=True)
    parser.add_argument("--data_dir", required=True, help="the track's root (its validation split is scored)")
    parser.add_argument("--track", required=True, choices=EVALUATION_TRACKS)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument(
        "--strict", action="store_true",
        help="refuse a temporal model whose frame model's weights are not the ones it was trained on",
    )  # fmt: skip


def evaluate(args: argparse.Namespace) -> None:
    from .report import evaluate_models

    if len(args.model) > 2:
        raise ValueError("--model at most twice (a side-by-side of two models)")
    results = evaluate_models(
        args.model, args.data_dir, args.track, args.output_dir, batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device, backend=args.backend, dtype=args.dtype, strict=args.strict,
    )  # fmt: skip
    for key, entry in results["models"].items():
        shown = {n: v for n, v in entry["scores"].items() if n.startswith(("P_", "f1_macro", "accuracy"))}
        print(f"{key} ({entry['path']}): " + ", ".join(f"{n} {v:.4f}" for n, v in shown.items()))
        for task, reason in entry["unavailable"].items():
            print(f"  {task}: unavailable ({reason})")
    print(f"report: {Path(args.output_dir) / 'report.html'}")


# -------------------------------------------------------------------------------------------------------- export


def export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=("onnx",))
    parser.add_argument("--model", required=True, help="a saved EMMA, CoTEX or DAN folder")
    parser.add_argument("--output", default=None, help="the folder to write (default: MODEL/onnx)")
    parser.add_argument("--quantize", choices=("dynamic", "static"), default=None, help="also write an int8 model")
    parser.add_argument("--calibration_dir", default=None, help="face images for static quantisation")
    parser.add_argument(
        "--validation_dir", default=None, help="face images to check parity on, and to count the decisions int8 changes"
    )
    parser.add_argument("--max_images", type=int, default=256, help="faces used from each folder")


def export(args: argparse.Namespace) -> None:
    from .export import export_onnx

    record = export_onnx(
        args.model, args.output or Path(args.model) / "onnx", quantize=args.quantize,
        calibration_dir=args.calibration_dir, validation_dir=args.validation_dir, max_images=args.max_images,
    )  # fmt: skip
    print(json.dumps(record, indent=2))


# -------------------------------------------------------------------------------------- predict-abaw, validation


def predict_abaw_arguments(parser: argparse.ArgumentParser) -> None:
    model_arguments(parser, "a saved model folder or Hub id: EMMA for mtl, va, au; 6 classes for lsd")
    parser.add_argument("--data_dir", required=True, help="the track's root (with its test list)")
    parser.add_argument("--track", required=True, choices=TRACKS)
    parser.add_argument("--output", required=True, help="the submission file to write")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--save_every", type=int, default=50, help="batches between saves of the progress")
    parser.add_argument("--max_batches", type=int, default=None, help="stop after N batches (resume later)")
    parser.add_argument("--image_dir", default=None, help="where the test images live, if not under data_dir")
    parser.add_argument("--test_list", default=None, help="va, expr, au: the organisers' sample file of test frames")


def predict_abaw(args: argparse.Namespace) -> None:
    from .inference import predict_abaw

    written = predict_abaw(
        args.model, args.data_dir, args.track, args.output, batch_size=args.batch_size, num_workers=args.num_workers,
        device=args.device, save_every=args.save_every, max_batches=args.max_batches, image_dir=args.image_dir,
        test_list=args.test_list, backend=args.backend, dtype=args.dtype,
    )  # fmt: skip
    print(written if written is not None else f"stopped early; run again to resume ({args.output}.partial.npz)")


def validate_submission_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file")
    parser.add_argument("--track", required=True, choices=TRACKS)
    parser.add_argument("--data_dir", default=".", help="the track's root (with its test list; mtl and lsd)")
    parser.add_argument("--test_list", default=None, help="va, expr, au: the organisers' sample file")


def validate_submission(args: argparse.Namespace) -> None:
    from .inference import abaw_test_names, validate_submission

    count = validate_submission(args.file, args.track, abaw_test_names(args.data_dir, args.track, args.test_list))
    print(f"{args.file}: {count} predictions, every test image once and in order")


# -------------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    description: str | None = None


COMMANDS = (
    Command("demo", "train a tiny EMMA on synthetic ABAW data (about a minute on CPU)", demo_arguments, demo),
    Command("train", "train any recipe (the options of scripts/train.py)", train_arguments, train_command),
    Command(
        "make-synthetic",
        "write synthetic data in a real layout: ABAW4 MTL or the Aff-Wild2 uni-task tracks (for emma), ABAW4 LSD "
        "(cotex), AffectNet (dan) or unlabeled faces (mae)",
        make_synthetic_arguments,
        make_synthetic,
    ),  # fmt: skip
    Command(
        "convert",
        "convert a released checkpoint (MAE, timm ViT, the authors' DAN, EMMA, CoTEX) to a model folder",
        convert_arguments,
        convert,
    ),  # fmt: skip
    Command(
        "predict",
        "faces in pictures, folders and videos -> valence, arousal, expressions and AUs per frame x face",
        predict_arguments,
        predict_command,
        description="Writes one row per frame x face (a row with an empty face_id for a frame without a face), "
        "streamed to disk as it goes; Ctrl-C keeps every row so far. Videos need `pip install affect-hf[video]`, "
        "--plots needs `affect-hf[plots]`.",
    ),  # fmt: skip
    Command("app", "a web page (Gradio) showing a model's answers on images and videos", app_arguments, app),
    Command(
        "evaluate",
        "score a model (or two, side by side) on a labelled split: scores.json and report.html",
        evaluate_arguments,
        evaluate,
    ),  # fmt: skip
    Command("export", "export a model for other runtimes (ONNX)", export_arguments, export),
    Command(
        "predict-abaw",
        "predict an ABAW test list and write the submission file",
        predict_abaw_arguments,
        predict_abaw,
    ),  # fmt: skip
    Command(
        "validate-submission",
        "check a submission file against the test list",
        validate_submission_arguments,
        validate_submission,
    ),  # fmt: skip
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affect-hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also after a command)")
    subcommands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        sub = subcommands.add_parser(
            command.name, help=command.help, description=command.description or command.help,
            add_help=command.name != "train",
        )  # fmt: skip
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def is_user_error(error: BaseException) -> bool:
    """A mistake the user can mend; an import that fails inside this package is a bug, not a missing extra."""
    if isinstance(error, ImportError):
        return not (error.name or "").startswith(__package__)
    return isinstance(error, USER_ERRORS)


def one_line(error: BaseException) -> str:
    """An error as one line: its message (newlines folded), or its type when it has none."""
    message = " ".join(str(error).split())
    return message or type(error).__name__


def main(argv: list[str] | None = None) -> None:
    """Run one command; a user's mistake exits with one line and status 1 (`--debug`: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug may stand anywhere, also among the options that `train` hands on to its own parser.
    debug = "--debug" in argv
    argv = [token for token in argv if token != "--debug"]
    parser = build_parser()
    if argv[:1] == ["train"]:  # its options are parsed by the recipes' own parser (--recipe X --help lists them)
        args = argparse.Namespace(command="train", run=train_command, options=argv[1:])
    else:
        args = parser.parse_args(argv)
    name = f"{parser.prog} {args.command}"
    try:
        args.run(args)
    except CommandFailed as failed:
        if failed.message:
            print(f"{name}: {'error: ' if failed.status == 1 else ''}{failed.message}", file=sys.stderr)
        raise SystemExit(failed.status) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except USER_ERRORS as error:
        if debug or not is_user_error(error):
            raise
        print(f"{name}: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
