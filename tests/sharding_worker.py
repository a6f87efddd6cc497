"""Multi-device checks for tests/test_sharding.py, run in a fresh process.

JAX fixes the number of (simulated) CPU devices when it starts, so the test launches this
script with ``JAX_NUM_CPU_DEVICES`` set and reads the JSON it prints on its last line.

    JAX_NUM_CPU_DEVICES=4 python tests/sharding_worker.py mesh OUT_DIR
    JAX_NUM_CPU_DEVICES=2 JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 \
        JAX_PROCESS_ID=0 python tests/sharding_worker.py multihost OUT_DIR   # and id 1

``mesh`` (one process, 4 devices) trains the same model from the same batches:

* ``one``: the ordinary :class:`jaxllm.train.Trainer` on one device (the reference);
* ``data``: ``Trainer(..., mesh=make_mesh(data=4))`` trained with ``fit`` (evaluation
  included) and checkpointed;
* ``fsdp``: ``Trainer(..., mesh=make_mesh(fsdp=4))``, its state created sharded, trained 10
  steps, checkpointed, trained 10 more;
* ``restored``: a trainer on a ``data=2 x fsdp=2`` mesh restores that step-10 checkpoint
  straight onto its mesh and trains the last 10 steps;
* ``custom``: a custom loss (masked cross-entropy with a mask in the batches) on an
  :class:`jaxllm.data.ExampleBatches` source, on one device and on ``fsdp=4``.

``multihost`` (two processes with two devices each, joined by ``initialize_distributed``)
trains ``STEPS_MULTIHOST`` steps on a global ``data=2 x fsdp=2`` mesh.
"""

from __future__ import annotations

import json
import os
import sys

from jaxllm.sharding import initialize_distributed

if __name__ == "__main__":
    MODE = sys.argv[1]
    if MODE == "multihost":
        LAUNCHER = initialize_distributed()  # before anything touches a device

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxllm import sharding as sh  # noqa: E402
from jaxllm.config import ModelConfig, TrainConfig  # noqa: E402
from jaxllm.data import ExampleBatches, load_corpus  # noqa: E402
from jaxllm.tokenizer import CharTokenizer  # noqa: E402
from jaxllm.train import Trainer  # noqa: E402

STEPS = 20
STEPS_MULTIHOST = 8
MODEL = ModelConfig(vocab_size=80, context_length=16, n_layer=1, n_head=4, d_model=32,
                    dropout=0.1)
TRAIN = TrainConfig(steps=STEPS, batch_size=8, learning_rate=1e-2, min_learning_rate=1e-3,
                    warmup_steps=2, eval_interval=STEPS, eval_batches=2, seed=0)


def corpus() -> tuple[np.ndarray, np.ndarray]:
    text = load_corpus()[:20_000]
    ids = np.asarray(CharTokenizer.from_text(load_corpus()).encode(text), np.int32)
    return ids[:18_000], ids[18_000:]


def specs(tree) -> dict[str, str]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {sh.path_name(p): str(tuple(x.sharding.spec)) for p, x in flat}


def host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def masked_examples(train: np.ndarray) -> ExampleBatches:
    """Rows of 17 tokens whose loss counts only the second half (a prompt and an answer)."""
    n, T = 64, MODEL.context_length
    rows = np.stack([train[i * 50: i * 50 + T + 1] for i in range(n)])
    mask = np.zeros((n, T), bool)
    mask[:, T // 2:] = True
    return ExampleBatches({"inputs": rows[:, :-1], "targets": rows[:, 1:], "mask": mask},
                          TRAIN.batch_size, seed=1)


def mesh_checks(out_dir: str) -> dict:
    assert jax.device_count() == 4, jax.devices()
    train, val = corpus()
    res: dict = {"devices": jax.device_count()}

    one = Trainer(MODEL, TRAIN, train, val)
    one.fit(progress=False)
    res["one"] = one.history["loss"]
    res["one_eval"] = [one.history["train_loss"][-1], one.history["val_loss"][-1]]

    data = Trainer(MODEL, TRAIN, train, val, mesh=sh.make_mesh(data=4))
    data.fit(progress=False, checkpoint_dir=os.path.join(out_dir, "trainer"))
    res["data"] = data.history["loss"]
    res["data_eval"] = [data.history["train_loss"][-1], data.history["val_loss"][-1]]
    res["data_param_bytes"] = sh.bytes_per_device(data.state.params)

    # Trainer.restore of a sharded trainer loads onto its own (different) mesh.
    again = Trainer(MODEL, TRAIN, train, val, mesh=sh.make_mesh(fsdp=4))
    res["trainer_restore_step"] = again.restore(os.path.join(out_dir, "trainer"))
    res["trainer_restore_exact"] = all(
        np.array_equal(a, b) for a, b in zip(host(again.state), host(data.state), strict=True))
    kernel = again.state.params["blocks"][0]["mlp"]["fc"]["kernel"]
    res["trainer_restore_spec"] = str(tuple(kernel.sharding.spec))

    # Created sharded on an fsdp mesh (no full copy anywhere), saved halfway.
    fsdp = Trainer(MODEL, TRAIN, train, val, mesh=sh.make_mesh(fsdp=4))
    res["fsdp_init_maxdiff"] = max(
        float(np.abs(a - b).max()) for a, b in zip(host(fsdp.state.params), host(one_init()),
                                                   strict=True))
    res["fsdp_param_bytes"] = sh.bytes_per_device(fsdp.state.params)
    res["fsdp_opt_bytes"] = sh.bytes_per_device(fsdp.state.opt_state)
    qkv = fsdp.state.params["blocks"][0]["attn"]["qkv"]["kernel"]
    res["fsdp_qkv_shard_shapes"] = [list(s.data.shape) for s in qkv.addressable_shards]
    fsdp.fit(STEPS // 2, progress=False, checkpoint_dir=os.path.join(out_dir, "ckpt"))
    saved = host(fsdp.state)
    res["fsdp_specs"] = specs(fsdp.state)
    fsdp.fit(progress=False)
    res["fsdp"] = fsdp.history["loss"]

    # Restored onto a different mesh, continued.
    mesh22 = sh.make_mesh(data=2, fsdp=2)
    restored = Trainer(MODEL, TRAIN, train, val, mesh=mesh22)
    res["restored_step"] = restored.restore(os.path.join(out_dir, "ckpt"), step=STEPS // 2)
    res["restored_exact"] = all(np.array_equal(a, b)
                                for a, b in zip(saved, host(restored.state), strict=True))
    res["restored_on_target_mesh"] = all(
        x.sharding == t.sharding for x, t in zip(jax.tree.leaves(restored.state),
                                                 jax.tree.leaves(restored.abstract_state()),
                                                 strict=True))
    try:
        sh.shard_batch(np.zeros((6, MODEL.context_length), np.int32), mesh22)
        res["indivisible_batch_error"] = ""
    except ValueError as e:
        res["indivisible_batch_error"] = str(e)
    restored.fit(progress=False)
    res["restored"] = restored.history["loss"][STEPS // 2:]

    # Any loss and batch source: a masked loss on a table of examples.
    examples = masked_examples(train)
    custom = {}
    for name, mesh in (("one", None), ("fsdp", sh.make_mesh(fsdp=4))):
        t = Trainer(MODEL, TRAIN, examples, examples, mesh=mesh)
        t.fit(progress=False)
        custom[name] = t.history["loss"] + t.history["val_loss"]
    res["custom"] = custom
    return res


def one_init():
    from flax import nnx

    from jaxllm.model import GPT

    return nnx.split(GPT(MODEL, rngs=nnx.Rngs(params=jax.random.key(TRAIN.seed))))[1]


def multihost_checks() -> dict:
    train, val = corpus()
    trainer = Trainer(MODEL, TRAIN.replace(steps=STEPS), train, val,
                      mesh=sh.make_mesh(data=2, fsdp=2))
    trainer.fit(STEPS_MULTIHOST, progress=False)
    return {"launcher": LAUNCHER, "process_index": jax.process_index(),
            "process_count": jax.process_count(), "devices": jax.device_count(),
            "local_devices": jax.local_device_count(), "losses": trainer.history["loss"]}


if __name__ == "__main__":
    result = mesh_checks(sys.argv[2]) if MODE == "mesh" else multihost_checks()
    print(json.dumps(result), flush=True)
