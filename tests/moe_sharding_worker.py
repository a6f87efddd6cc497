"""Mixture-of-experts training on 4 simulated CPU devices, for tests/test_moe_sharding.py.

JAX fixes the number of devices when it starts, so the test runs this script in a fresh
process with ``JAX_NUM_CPU_DEVICES=4`` and reads the JSON it prints on its last line:

* ``one``: losses of :class:`jaxllm.train.Trainer` on one device (the reference);
* ``fsdp``: the same steps of ``Trainer(..., mesh=make_mesh(fsdp=4))``, whose state is created
  sharded: each device holds one of the 4 experts of every layer (the expert axis is split);
* the expert counts of a forward pass of the trained models, on the mesh and on one device.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from flax import nnx

from jaxllm import sharding as sh
from jaxllm.config import ModelConfig, TrainConfig
from jaxllm.train import Trainer

STEPS = 6
MODEL = ModelConfig(vocab_size=40, context_length=16, n_layer=1, n_head=2, d_model=32,
                    d_mlp=48, mlp="swiglu", norm="rmsnorm", positions="rope", bias=False,
                    tie_embeddings=False, n_experts=4, experts_per_token=2)
TRAIN = TrainConfig(steps=STEPS, batch_size=8, learning_rate=1e-2, min_learning_rate=1e-3,
                    warmup_steps=2, eval_interval=STEPS, eval_batches=1, seed=0)


def main() -> dict:
    assert jax.device_count() == 4, jax.devices()
    tokens = np.random.default_rng(0).integers(0, MODEL.vocab_size, 4000).astype(np.int32)
    one = Trainer(MODEL, TRAIN, tokens)
    batches = one.train_batches
    res: dict = {"devices": jax.device_count()}
    res["one"] = [float(one.train_step(batches[s])["loss"]) for s in range(STEPS)]

    mesh = sh.make_mesh(fsdp=4)
    sharded = Trainer(MODEL, TRAIN, tokens, mesh=mesh)
    graphdef = sharded.graphdef
    w_in = sharded.state.params["blocks"][0]["mlp"]["w_in"]
    res["w_in_spec"] = str(tuple(w_in.sharding.spec))
    res["w_in_shard_shapes"] = [list(s.data.shape) for s in w_in.addressable_shards]
    res["fsdp"] = [float(sharded.train_step(batches[s])["loss"]) for s in range(STEPS)]
    state = sharded.state

    # Expert usage of the trained model, on the mesh and gathered onto one device.
    x = sh.shard_batch(batches[0]["inputs"], mesh)

    @jax.jit
    def counts(params, x):
        return nnx.merge(graphdef, params)(x, return_aux=True)[1]["expert_counts"]

    with jax.set_mesh(mesh):
        res["counts_mesh"] = np.asarray(counts(state.params, x)).tolist()
    one_params = one.state.params  # trained the same steps on one device
    res["counts_one"] = np.asarray(counts(one_params, np.asarray(batches[0]["inputs"]))).tolist()
    return res


if __name__ == "__main__":
    print(json.dumps(main()), flush=True)
