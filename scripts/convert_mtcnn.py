"""Convert MTCNN's three networks (P-Net, R-Net, O-Net; MIT licence) to one safetensors file.

Run once by a maintainer; the result ships in `affect_hf/faces/`. The weights are the original MTCNN's, as the
`facenet-pytorch` 2.6.0 wheel holds them (`facenet_pytorch/data/{pnet,rnet,onet}.pt`: plain state dicts, read with
`torch.load(weights_only=True)`; the package itself is never imported: it pins torch<2.3 and numpy<2):

    pip download --no-deps facenet-pytorch==2.6.0
    unzip facenet_pytorch-2.6.0-py3-none-any.whl 'facenet_pytorch/data/*'
    python scripts/convert_mtcnn.py facenet_pytorch/data
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from affect_hf.faces.detection import MTCNN_WEIGHTS
from affect_hf.faces.mtcnn import Mtcnn
from affect_hf.files import file_sha256


NETWORKS = ("pnet", "rnet", "onet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the folder holding pnet.pt, rnet.pt and onet.pt")
    parser.add_argument("--output", type=Path, default=MTCNN_WEIGHTS)
    args = parser.parse_args()
    state_dict, metadata = {}, {"license": "MIT", "source": "facenet-pytorch 2.6.0 wheel, facenet_pytorch/data"}
    for network in NETWORKS:
        path = args.folder / f"{network}.pt"
        weights = torch.load(path, map_location="cpu", weights_only=True)
        state_dict.update({f"{network}.{name}": tensor.float().contiguous() for name, tensor in weights.items()})
        metadata[f"{network}_sha256"] = file_sha256(path)
    expected = Mtcnn().state_dict()
    missing, extra = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    wrong = [name for name in expected if name in state_dict and state_dict[name].shape != expected[name].shape]
    if missing or extra or wrong:
        raise ValueError(f"the weights do not fit the networks: missing {missing}, extra {extra}, shapes {wrong}")
    save_file(state_dict, str(args.output), metadata=metadata)
    print(f"{args.output}: {len(state_dict)} tensors, {args.output.stat().st_size} bytes")


if __name__ == "__main__":
    main()
