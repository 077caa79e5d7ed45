"""The sections every experiment config has, with the reference's hyper-parameters as defaults.

Override any field on the command line: `python -m launch.train --config=configs/mimo7b.py --config.optimizer.lr=1e-6`.
`editreward_jax.training.config.from_config` validates every field; the comments below say what each one means.
"""

from __future__ import annotations

import ml_collections


def base_config(preset: str, base: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict()
  c.model.preset = preset  # shapes from configs/presets.py when `base` is empty (a fresh model)
  c.model.base = base  # model directory written by convert.from_hf to start from (its config, tokenizer, weights)
  c.model.tokenizer = ""  # tokenizer directory; "" = the base's
  c.model.rope_mode = "sequential"  # sequential (what released EditReward checkpoints expect) | mrope (native 3-D)
  c.model.fusion = "mean"  # mean | min | sum: how the two dimensions' outputs combine into the trained score

  c.data = ml_collections.ConfigDict()
  c.data.name = "editreward_data"  # a dataset of data.BUILDERS, prepared with python -m data.build
  c.data.data_dir = "~/tensorflow_datasets"  # TFDS data_dir; "" = <workdir>/tfds
  c.data.train_split = "train"
  c.data.eval_split = ""  # held-out split for periodic evaluation; "" = none
  c.data.tie_policy = "duplicate"  # duplicate | disagree | drop (editreward_jax/pairs.py)
  c.data.tie_weight = 1.0  # loss weight of each pair made from a tie
  c.data.bad_rows = "raise"  # raise | skip (counted and logged)
  c.data.seq_buckets = (768, 1024, 1280, 1536, 2048)  # padded sequence lengths; the largest is the budget
  c.data.patch_buckets = ()  # vision patch slots per batch shard; () = the windows rounded (4 sizes per octave)
  c.data.packed_buckets = ()  # packed tokens per pair under prefix sharing; () = rounded like sequences
  c.data.min_pixels = 200704  # smart_resize bounds: 448x448, 256 tokens per image, as the reference
  c.data.max_pixels = 200704
  c.data.prompts_file = ""  # rubric prompts file; "" = the one the base model records (else the project's)
  c.data.workers = 0  # Grain worker processes per host; 0 = read threads in the training process
  c.data.read_threads = 8
  c.data.prefetch = 2  # batches prepared ahead
  c.data.eval_max_pairs = 0  # 0 = the whole held-out split
  c.data.demo = ml_collections.ConfigDict(dict(seed=0, num_train_pairs=2000, num_test_pairs=300, image_size=112,
                                               edits_per_source=4))  # editreward_demo only

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 2e-6  # AdamW, as the reference configs
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 1.0  # global norm; 0 = off
  c.optimizer.warmup_fraction = 0.05  # linear warmup over 5% of the steps
  c.optimizer.schedule = "constant"  # constant (the reference configs) | cosine (the paper) after warmup
  # Learning-rate multiplier per parameter group; 0 freezes a group (no gradient, no optimizer state).
  c.optimizer.lr_multipliers = ml_collections.ConfigDict(dict(vision=1.0, merger=1.0, language_model=1.0,
                                                              heads=1.0, embedding=1.0))

  c.train = ml_collections.ConfigDict()
  c.train.steps = 0  # optimizer steps; 0 with epochs > 0 derives them from the data
  c.train.epochs = 2.0  # passes over the training pairs (the paper: 2); 0 = use steps
  c.train.batch_pairs = 64  # pairs per optimizer step, all processes and micro-batches together
  c.train.grad_accumulation = 4  # micro-batches per step (the reference: 2 pairs/GPU x 4 x 8 GPUs = 64)
  c.train.log_every = 10
  c.train.eval_every = 500  # 0 = evaluate at the end only
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.seed = 0  # model init (fresh parts), data order, dropout
  c.train.embedding = "reward_row"  # reward_row (the reference: only <|Reward|> trains) | all | frozen
  c.train.objective = "fused"  # fused (the reference's loss on fused outputs) | multi_dimensional
  c.train.loss_kind = "gauss_hermite"  # gauss_hermite (exact expectation) | monte_carlo (the reference) | paper
  c.train.dimension_weight = 0.0  # weight of each head's own-label term when objective=multi_dimensional
  c.train.nonfinite = "stop"  # stop (with the step named; last good checkpoint kept) | skip (update skipped, counted)

  c.runtime = ml_collections.ConfigDict()
  c.runtime.dtype = "bfloat16"  # compute dtype
  c.runtime.param_dtype = "float32"  # master weights and optimizer state
  c.runtime.remat = "dots_no_batch"  # none | full | dots | dots_no_batch
  c.runtime.attention = "xla"  # xla | cudnn (GPU) | splash (TPU)
  c.runtime.prefix_sharing = True  # a pair's common prefixes (system turn, images) through the decoder once: exact
  c.runtime.peak_tflops = 0.0  # per-device peak for the MFU metric (e.g. 989 for H100 bf16 dense); 0 = not shown

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1
  c.mesh.fsdp = -1  # -1: all remaining devices
  c.mesh.tensor = 1
  return c
