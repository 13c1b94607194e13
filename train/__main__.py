"""`torchrun --nproc_per_node N -m train --config FILE [section.key=value ...]`

Joins the process group torchrun set up (gloo on CPU, NCCL on GPU), trains, and leaves it.
`python -m train --print-config` prints the default configuration as TOML.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

import torch.distributed as dist

from core.config import render
from train.config import JobConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="TOML job configuration (see --print-config)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.shards=out batch_size=4 curriculum=[{steps=10}]"
    )
    parser.add_argument("--print-config", action="store_true", help="print the default configuration and exit")
    args = parser.parse_args(argv)
    if args.print_config:
        comment = "Training job configuration: every key with its default.\nOverride with --config FILE or KEY=VALUE."
        sys.stdout.write(render(JobConfig(), comment))
        return 0
    config = load_config(args.config, args.overrides)

    from train.parallelize import init_distributed  # torch.distributed setup only when training
    from train.trainer import Trainer

    # DTensor's notice that CPU meshes have no parallel RNG tracker: each shard is initialized once, by its owner.
    warnings.filterwarnings("ignore", message=".*rng_tracker.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.distributed.tensor")
    mesh, device = init_distributed()
    logging.basicConfig(
        level=logging.INFO if dist.get_rank() == 0 else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("train.data").setLevel(logging.WARNING)
    try:
        Trainer(config, mesh, device).train()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
