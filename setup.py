from setuptools import find_packages, setup


# One installed name, `affect_hf`. The repository keeps the model code and the card templates at its top level (the
# model code travels to the Hub flat, beside the weights); they are installed inside the package.
MAPPED_PACKAGES = {"affect_hf.modeling": "modeling", "affect_hf.model_cards": "model_cards"}

setup(
    name="affect-hf",
    version="0.1.0",
    description="Facial affect analysis (valence/arousal, expressions, action units) on the Hugging Face stack",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license_expression="Apache-2.0",
    license_files=["LICENSE", "NOTICE"],
    python_requires=">=3.10",
    # find_packages does not see mapped packages: they are listed.
    packages=[*find_packages(include=["affect_hf", "affect_hf.*"]), *MAPPED_PACKAGES],
    package_dir=MAPPED_PACKAGES,
    package_data={
        "affect_hf.model_cards": ["*.md"],
        "affect_hf.metrics": ["abaw_mtl/*.py"],
        # MediaPipe's BlazeFace weights (Apache-2.0), converted by scripts/convert_blazeface.py; see NOTICE.
        "affect_hf.faces": ["*.safetensors"],
    },
    install_requires=[
        # torch: install the build for your machine first (see README); any 2.4+ works.
        "torch>=2.4",
        # The remote code uses 5.24's ViTMAE module names and conversion-mapping API (tested version).
        "transformers>=5.24,<6",
        "datasets>=3.0",
        "accelerate>=1.0",
        "evaluate>=0.4.3",
        "huggingface_hub>=1.0",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pillow>=10.1",
        "pyyaml>=6.0",
        # one writer per output: an advisory lock the kernel frees when its holder dies (also a datasets dependency)
        "filelock>=3.12",
        # the tracker's assignment (Hungarian method) and the head pose's least-squares fit
        "scipy>=1.10",
        "tqdm>=4.60",
        # StatefulDataLoader: the exact position of a streamed dataset across DataLoader workers (pure Python).
        "torchdata>=0.10",
    ],
    extras_require={
        "tensorboard": ["tensorboard>=2.14"],
        # affect-hf predict on videos (PyAV's wheels carry FFmpeg) and its --plots.
        "video": ["av>=12"],
        "plots": ["matplotlib>=3.7"],
        # affect-hf app (videos on the page need the video and plots extras' packages too).
        "app": ["gradio>=5.0", "av>=12", "matplotlib>=3.7"],
        # affect-hf export onnx (the dynamo exporter needs onnxscript) and predict --backend onnx.
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        # scikit-image for its real face photo (skimage.data.astronaut) in the tests.
        "dev": [
            "pytest>=8.0",
            "scikit-learn>=1.3",
            "tensorboard>=2.14",
            "av>=12",
            "matplotlib>=3.7",
            "scikit-image>=0.22",
            "onnx>=1.16",
            "onnxscript>=0.2",
            "onnxruntime>=1.18",
            "gradio>=5.0",
            # drives Debian's chromium (and chromium-driver) in the app's browser test
            "selenium>=4.10",
            # the packaging test builds the wheel offline (bdist_wheel is part of setuptools since 70.1)
            "setuptools>=77",
        ],
    },
    entry_points={"console_scripts": ["affect-hf=affect_hf.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
