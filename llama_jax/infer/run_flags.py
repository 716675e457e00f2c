"""The flags of the commands that load a checkpoint to run it (eval, generate).

Where the model runs (``--mesh``, ``--mesh_rules``), the multi-host start-up
(``--coordinator_address``, ``--num_processes``, ``--process_id``: the same
`jax.distributed` start-up as training, see `placement.join_job`) and how it
runs (``--dtype``, ``--attention_impl``). Importing the module defines them
once, so both commands read the same names with the same meaning.
"""

from __future__ import annotations

from absl import flags

flags.DEFINE_string("mesh", None, "Mesh sizes data,fsdp,tensor,sequence (default: 1,-1,1,1).")
flags.DEFINE_string("mesh_rules", None, "Logical-axis rule overrides, 'name=axis[+axis],name=' "
                    "(see llama_jax.sharding.make_rules).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (as "
                    "training's distributed.coordinator_address; SLURM/MPI/TPU are detected).")
flags.DEFINE_integer("num_processes", None, "Multi-host: how many processes run this command.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index in [0, num_processes).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                  "Cast weights and compute to this dtype (default: weights as stored, compute in float32).")
flags.DEFINE_enum("attention_impl", "auto", ["auto", "xla", "pallas", "cudnn", "ring"],
                  "How attention runs (a run option; never read from the checkpoint).")
