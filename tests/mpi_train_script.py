"""Run under `mpiexec -n N` by tests/test_scale.py: train a tiny model through the Python API and
write every rank's weight checksum (as rank 0 sees them, via allgather) to argv[2]. argv[4]: the
RunConfig's `zero` (default 0)."""

import hashlib
import json
import sys

import tui_llm
from tui_llm.engine.training.distributed import World

world = World.detect()
config = tui_llm.RunConfig(train_file=sys.argv[1], out_dir=sys.argv[3], model="d2", batch_size=1, seq_len=16,
                           max_seq_len=32, total_batch_size=64, steps=5, lr=3e-3, threads=1, init_style="numpy",
                           val_every=0, sample_every=0, save_every=0,
                           zero=int(sys.argv[4]) if len(sys.argv) > 4 else 0, weight_decay=0.1, grad_clip=1.0)
trainer = tui_llm.Trainer(config, world=world)
trainer.run(lambda event: None)
digest = hashlib.sha256(trainer.model.params.flat.tobytes()).hexdigest()
digests = world.allgather_obj(digest)
if world.is_root:
    with open(sys.argv[2], "w") as f:
        json.dump(digests, f)
