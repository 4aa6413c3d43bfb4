"""``python -m dipclip.cli.encode``: fill the feature store for a split, optionally on several GPUs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import DipclipError


def main(argv: Sequence[str] | None = None) -> int:
    """Encode a split once and store it, on one process or sharded over several with ``torchrun``::

        python -m dipclip.cli.encode --model ViT-B-16 --pretrained openai --data ~/data --dataset imagenet
        torchrun --nproc_per_node 8 -m dipclip.cli.encode --model ViT-B-16 --pretrained openai \\
            --data ~/data --dataset imagenet --split test

    Every rank encodes every ``world``-th batch of 64 images (the same batches as one process, so the stored
    features are the same); afterwards any ``dipclip eval``/``train`` on that split reads them from the store.
    """
    import torch
    import torch.distributed as dist

    from .. import api
    from ..backbones.loading import load_backbone
    from ..engine.distributed import rank_and_world
    from ..engine.features import FeatureStore


    parser = argparse.ArgumentParser(prog="python -m dipclip.cli.encode", description=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--data", default=None)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--subsample", default="all", choices=("all", "base", "new"))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--skip-bad-images", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = args.device
    if distributed:
        cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        else:
            device = "cpu"
    try:
        backbone = load_backbone(args.model, args.pretrained, device=device)
        items = api.load_data(args.data, args.dataset, None, 1, args.subsample).split(args.split)
        store = FeatureStore.default()
        encoded = store.test_features(backbone, items, workers=args.workers, skip_bad_images=args.skip_bad_images,
                                      desc=f"encode {args.dataset} {args.split}")
        if rank_and_world()[0] == 0:
            state = "read back" if store.hits else "encoded"
            print(f"{args.dataset} {args.split}: {len(items)} images {state} ({encoded.skipped} skipped); "
                  f"store {store.root if store.enabled else 'off'}")
    except DipclipError as exc:
        print(f"dipclip: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
