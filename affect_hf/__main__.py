"""`python -m affect_hf ...` is the `affect-hf` command (also under `accelerate launch -m affect_hf`)."""

from .cli import main


if __name__ == "__main__":
    main()
