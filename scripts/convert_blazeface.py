"""Convert MediaPipe's short-range BlazeFace (`face_detection_short_range.tflite`, Apache-2.0) to safetensors.

Run once by a maintainer; the result ships in `affect_hf/faces/`. Needs `pip install tflite` to read the model
file, and `ai-edge-litert` for `--check`, which runs the TFLite interpreter and our torch port on the same inputs
and prints the largest difference of each output. The `.tflite` file is in mediapipe's wheel:

    pip download --no-deps mediapipe==0.10.21 && unzip -j mediapipe-*.whl '*/face_detection_short_range.tflite'
    python scripts/convert_blazeface.py face_detection_short_range.tflite --check
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from affect_hf.faces.blazeface import BLOCKS, BlazeFace
from affect_hf.faces.detection import BLAZEFACE_WEIGHTS
from affect_hf.files import file_sha256


def tflite_constants(path: Path) -> dict[str, np.ndarray]:
    """Every constant float tensor of a .tflite file by name (fp16 weights as stored)."""
    import tflite

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    dtypes = {tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.FLOAT32: np.float32}
    constants = {}
    for index in range(graph.TensorsLength()):
        tensor = graph.Tensors(index)
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, np.ndarray) and data.size and tensor.Type() in dtypes:
            constants[tensor.Name().decode()] = np.frombuffer(data.tobytes(), dtypes[tensor.Type()]).reshape(
                tensor.ShapeAsNumpy()
            )
    return constants


def torch_state_dict(constants: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Our parameter names from MediaPipe's: OHWI kernels -> OIHW, depthwise 1HWC -> C1HW; nothing left over."""
    sources = {"stem": "conv2d"}
    for index in range(len(BLOCKS)):
        sources[f"blocks.{index}.depthwise"] = "depthwise_conv2d" + (f"_{index}" if index else "")
        sources[f"blocks.{index}.pointwise"] = f"conv2d_{index + 1}"
    for stride in (8, 16):
        sources[f"classifier_{stride}"] = f"classificator_{stride}"
        sources[f"regressor_{stride}"] = f"regressor_{stride}"
    state_dict, used = {}, set()
    for target, source in sources.items():
        kernel, bias = constants[f"{source}/Kernel"], constants[f"{source}/Bias"]
        order = (3, 0, 1, 2) if source.startswith("depthwise") else (0, 3, 1, 2)
        state_dict[f"{target}.weight"] = torch.from_numpy(kernel.transpose(order).copy())
        state_dict[f"{target}.bias"] = torch.from_numpy(bias.copy())
        used |= {f"{source}/Kernel", f"{source}/Bias"}
    left = sorted(name for name in constants if name not in used and not name.endswith("Paddings"))
    if left:
        raise ValueError(f"tensors of the .tflite file not converted: {left}")
    expected = BlazeFace().state_dict()
    for name, tensor in state_dict.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"{name}: {tuple(tensor.shape)} in the file, {tuple(expected[name].shape)} expected")
    return state_dict


def check_against_tflite(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    model = BlazeFace().eval()
    model.load_state_dict({name: tensor.float() for name, tensor in state_dict.items()})
    inputs = [np.random.default_rng(seed).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32) for seed in range(3)]
    try:
        from skimage.data import astronaut  # a real face

        face = torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float()
        face = torch.nn.functional.interpolate(face, size=(128, 128), mode="bilinear", antialias=True)
        inputs.append((face / 127.5 - 1).permute(0, 2, 3, 1).numpy())
    except ImportError:
        pass
    outputs = {detail["name"]: detail["index"] for detail in interpreter.get_output_details()}
    for array in inputs:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], array)
        interpreter.invoke()
        with torch.no_grad():
            regressors, logits = model(torch.from_numpy(array).permute(0, 3, 1, 2))
        reference_regressors = interpreter.get_tensor(outputs["regressors"])
        reference_logits = interpreter.get_tensor(outputs["classificators"])[..., 0]
        print(
            f"max |difference|: regressors {np.abs(regressors.numpy() - reference_regressors).max():.2e} "
            f"(scale {np.abs(reference_regressors).max():.1f}), "
            f"score logits {np.abs(logits.numpy() - reference_logits).max():.2e} "
            f"(best {reference_logits.max():.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tflite_file", type=Path)
    parser.add_argument("--output", type=Path, default=BLAZEFACE_WEIGHTS)
    parser.add_argument("--check", action="store_true", help="compare with the TFLite interpreter")
    arguments = parser.parse_args()
    state_dict = torch_state_dict(tflite_constants(arguments.tflite_file))
    if arguments.check:
        check_against_tflite(arguments.tflite_file, state_dict)
    source_sha256 = file_sha256(arguments.tflite_file)
    metadata = {"source": arguments.tflite_file.name, "source_sha256": source_sha256, "license": "Apache-2.0"}
    save_file({name: tensor.contiguous() for name, tensor in state_dict.items()}, arguments.output, metadata)
    print(f"wrote {arguments.output} ({sum(t.numel() for t in state_dict.values())} parameters)")


if __name__ == "__main__":
    main()
