"""jaxllm: a small, complete GPT in JAX and Flax NNX, written to be read and run."""

__version__ = "0.1.0"
